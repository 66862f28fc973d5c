"""Packed token shards: the hand-off from the data stage to pretraining (the format and
its reader, below both stages; the data stage writes them, :mod:`lmops.data.shards`).

Layout of a shard set::

    out_dir/
      shard-00000.bin       token ids, raw little-endian uint16 or uint32, back to back
      shard-00000.idx.npy   uint64 start offset (in tokens) of each document in that shard
      shard-00001.bin ...
      meta.json             dtype, vocab_size, eos_id, tokenizer name + digest, totals, and
                            per shard: name, num_tokens, num_docs, sha256 of the .bin

Each document is its token ids followed by the EOS id (``append_eos=True``), so the shards
can be read as one continuous stream for packed pretraining while document boundaries stay
recoverable from the ``.idx.npy`` files. A document is never split across shards: a shard
is closed before the document that would take it past ``shard_tokens`` (a single document
longer than ``shard_tokens`` gets a shard of its own). Every file is written under a temp
name and renamed; ``meta.json`` is written last, so a set with a ``meta.json`` is complete.

``numpy.memmap(path, dtype="<u2")`` reads a ``.bin`` with no lmops code;
:class:`TokenShards` does that for the whole set.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError

__all__ = ["FORMAT", "META", "VERSION", "ShardInfo", "ShardSetInfo", "TokenShards", "choose_dtype"]

META = "meta.json"
FORMAT = "lmops.token_shards"
VERSION = 1
_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One ``.bin`` + ``.idx.npy`` pair."""

    name: str  # "shard-00000.bin"
    index: str  # "shard-00000.idx.npy"
    num_tokens: int
    num_docs: int
    sha256: str  # of the .bin file


@dataclass(frozen=True, slots=True)
class ShardSetInfo:
    """What :func:`write_token_shards` wrote; also the content of ``meta.json``."""

    path: Path
    dtype: str  # "uint16" | "uint32", little-endian
    vocab_size: int
    eos_id: int | None
    append_eos: bool
    tokenizer_name: str
    tokenizer_digest: str  # sha256 of tokenizer.json; the id mapping the shards assume
    num_tokens: int
    num_docs: int
    shards: tuple[ShardInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        """The ``meta.json`` document (without ``path``)."""
        d = asdict(self)
        del d["path"]
        d["shards"] = [asdict(s) for s in self.shards]
        return {"format": FORMAT, "version": VERSION, **d}


def choose_dtype(vocab_size: int) -> Literal["uint16", "uint32"]:
    """``uint16`` when every id fits (ids are ``0..vocab_size-1`` <= 65535), else ``uint32``."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


class TokenShards:
    """Read a shard set through memory maps; nothing is loaded whole.

    ``len(shards)`` is the number of tokens. Windows from :meth:`sample_windows` and
    :meth:`iter_packed` are ``int64`` and ``seq_len + 1`` long: inputs are ``w[:, :-1]``,
    next-token targets ``w[:, 1:]``.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        meta_file = self.path / META
        if not meta_file.is_file():
            raise UserError(
                f"no {META} in {self.path}; it is not a (complete) token shard set - "
                "write one with write_token_shards()"
            )
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise UserError(f"{meta_file} is not a token shard set (format {meta.get('format')!r})")
        self.meta: dict[str, Any] = meta
        self.dtype = _DTYPES[meta["dtype"]]
        self.vocab_size: int = meta["vocab_size"]
        self.eos_id: int | None = meta["eos_id"]
        self._tokens: list[npt.NDArray[Any]] = []
        self._starts: list[npt.NDArray[np.uint64]] = []
        for s in meta["shards"]:
            n = int(s["num_tokens"])
            # np.memmap refuses empty files; an empty shard is an empty array.
            self._tokens.append(
                np.memmap(self.path / s["name"], dtype=self.dtype, mode="r", shape=(n,))
                if n
                else np.empty(0, dtype=self.dtype)
            )
            self._starts.append(np.load(self.path / s["index"], mmap_mode="r"))
        # Cumulative counts: first global doc / token of each shard, plus the totals.
        self._doc_base = np.cumsum([0, *(len(s) for s in self._starts)]).tolist()
        self._tok_base = np.cumsum([0, *(len(t) for t in self._tokens)]).tolist()

    def __len__(self) -> int:
        return int(self._tok_base[-1])

    @property
    def num_docs(self) -> int:
        return int(self._doc_base[-1])

    @property
    def num_shards(self) -> int:
        return len(self._tokens)

    def document(self, i: int) -> npt.NDArray[Any]:
        """Token ids of document ``i`` (EOS included when the set was written with it)."""
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for {self.num_docs} documents")
        i %= self.num_docs
        shard = bisect_right(self._doc_base, i) - 1
        local = i - self._doc_base[shard]
        starts = self._starts[shard]
        start = int(starts[local])
        end = int(starts[local + 1]) if local + 1 < len(starts) else len(self._tokens[shard])
        return np.asarray(self._tokens[shard][start:end])

    def iter_documents(self) -> Iterator[npt.NDArray[Any]]:
        """Every document in order."""
        for i in range(self.num_docs):
            yield self.document(i)

    def sample_windows(
        self, seq_len: int, batch_size: int, rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        """``(batch_size, seq_len + 1)`` windows at uniformly random token offsets.

        Windows ignore document boundaries (documents are separated by EOS) but never cross
        a shard end; every valid window of every shard is equally likely.
        """
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        width = seq_len + 1
        # Number of valid start offsets per shard.
        starts = np.array([max(0, len(t) - width + 1) for t in self._tokens], dtype=np.int64)
        total = int(starts.sum())
        if total == 0:
            longest = max((len(t) for t in self._tokens), default=0)
            raise UserError(
                f"no shard holds {width} tokens (the longest has {longest}); "
                "use a smaller seq_len or larger shards"
            )
        flat = rng.integers(0, total, size=batch_size)
        bounds = np.cumsum(starts)
        shard_of = np.searchsorted(bounds, flat, side="right")
        out = np.empty((batch_size, width), dtype=np.int64)
        for row, (g, s) in enumerate(zip(flat, shard_of, strict=True)):
            offset = int(g - (bounds[s] - starts[s]))
            out[row] = self._tokens[s][offset : offset + width]
        return out

    def iter_packed(self, seq_len: int) -> Iterator[npt.NDArray[np.int64]]:
        """Consecutive ``seq_len + 1`` windows over the whole set, in order.

        Window ``k`` covers tokens ``[k * seq_len, k * seq_len + seq_len + 1)`` of the
        concatenated stream (shards joined in order), so consecutive windows share one token
        and every token after the first is a target exactly once. An incomplete last window
        is dropped.
        """
        if seq_len < 1:
            raise UserError(f"seq_len must be >= 1, got {seq_len}")
        total = len(self)
        pos = 0
        while pos + seq_len + 1 <= total:
            yield self._span(pos, pos + seq_len + 1)
            pos += seq_len

    def _span(self, start: int, end: int) -> npt.NDArray[np.int64]:
        # Tokens [start, end) of the concatenated stream, possibly across shards.
        parts: list[npt.NDArray[Any]] = []
        shard = bisect_right(self._tok_base, start) - 1
        while start < end:
            base = self._tok_base[shard]
            stop = min(end, self._tok_base[shard + 1])
            parts.append(self._tokens[shard][start - base : stop - base])
            start = stop
            shard += 1
        return np.concatenate(parts).astype(np.int64)
