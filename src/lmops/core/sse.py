"""Server-sent events: the ``data`` of each event in a byte stream, for the clients lmops
has (the gateway's upstream relay, the ``lmops eval perf`` load generator)."""

from __future__ import annotations

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """The ``data`` of each server-sent event in a byte stream (multi-line data joined by
    newlines). Lines end in LF or CRLF; fields other than ``data`` and comments are skipped."""

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # an unfinished line
        self._data: list[bytes] = []  # the data lines of the event being read

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events completed by ``chunk``."""
        lines = (self._tail + chunk if self._tail else chunk).split(b"\n")
        self._tail = lines.pop()
        return self._lines(lines)

    def close(self) -> list[bytes]:
        """The events left at the end of the stream, without their closing blank line."""
        lines = [self._tail, b""] if self._tail else [b""]
        self._tail = b""
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line == b"data":  # a field without a colon has an empty value
                data.append(b"")
        return events
