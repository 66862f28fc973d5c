"""The optimiser's model answers: asked in parallel, each journaled as it arrives, so a
run that stops (an endpoint failure, Ctrl-C) resumes from what finished.

Ctrl-C stops at once: the queued requests are never sent, the answers that arrived are
journaled, and the requests in flight are left to daemon threads (nothing waits for them;
they are asked again on resume). :class:`OptimizeInterrupted` says how many answers the
journal keeps.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["Asker", "Journal", "OptimizeInterrupted"]

Messages = list[dict[str, str]]
Request = str | Messages  # a plain-text prompt or chat messages


class OptimizeInterrupted(KeyboardInterrupt):
    """Ctrl-C during an optimisation; ``kept``: the answers in its journal."""

    def __init__(self, kept: int) -> None:
        super().__init__(f"interrupted; {kept} answers kept; rerun the same command to resume")
        self.kept = kept


class Journal:
    """Answers already obtained (``kind/key/row -> reply``), appended line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that answer is asked again
                self.done[rec["id"]] = rec["reply"]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def add(self, id_: str, reply: str) -> None:
        self.done[id_] = reply
        self._fh.write(json.dumps({"id": id_, "reply": reply}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Asker:
    """Asks ``send`` (one request to the model: its reply) for every (id, request) not in
    the journal, ``workers`` at a time, journaling each answer as it arrives; counts the
    calls made and replayed."""

    def __init__(self, send: Callable[[Request], str], journal: Journal, workers: int) -> None:
        self.send = send
        self.journal = journal
        self.workers = workers
        self.calls = 0  # answers used (asked now or replayed from the journal)

    def ask(self, items: Sequence[tuple[str, Request]]) -> dict[str, str]:
        todo = [(i, m) for i, m in items if i not in self.journal.done]
        if todo:
            self._run(todo)
        self.calls += len(items)
        return {i: self.journal.done[i] for i, _ in items}

    def _run(self, todo: list[tuple[str, Request]]) -> None:
        # daemon threads, not a ThreadPoolExecutor: its exit (and the interpreter's) waits
        # for every queued request, so Ctrl-C took the whole batch's time and lost it
        jobs: queue.SimpleQueue[tuple[str, Request]] = queue.SimpleQueue()
        done: queue.SimpleQueue[tuple[str, str | None, Exception | None]] = queue.SimpleQueue()
        stop = threading.Event()
        for job in todo:
            jobs.put(job)

        def work() -> None:
            while not stop.is_set():
                try:
                    i, m = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, self.send(m), None))
                except Exception as e:
                    done.put((i, None, e))

        for n in range(min(self.workers, len(todo))):
            threading.Thread(target=work, name=f"optimize-ask-{n}", daemon=True).start()
        error: Exception | None = None
        try:
            for _ in todo:
                i, reply, e = done.get()
                if e is None:
                    self.journal.add(i, str(reply))
                else:  # keep what finished; report the first failure
                    error = error or e
        except KeyboardInterrupt:
            stop.set()  # nothing queued is sent
            while True:  # what arrived meanwhile is kept
                try:
                    i, reply, e = done.get_nowait()
                except queue.Empty:
                    break
                if e is None:
                    self.journal.add(i, str(reply))
            raise OptimizeInterrupted(len(self.journal.done)) from None
        if error is not None:
            raise error
