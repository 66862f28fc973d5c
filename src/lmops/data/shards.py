"""Packed token shards: the hand-off from the data stage to pretraining.

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

Resuming (``progress=``, what ``lmops data tokenize`` does): after each shard is renamed into
place, its entry is added to a progress file kept outside the set. A run killed at any point
(``kill -9`` included) and started again with the same progress file keeps the shards it
records, deletes everything else in the folder (the ``.tmp`` file being written, a shard not
yet recorded), skips the documents those shards hold and writes on from the next shard. A
shard closes at the same document whether or not the run was interrupted, so the set is
byte-identical to one written in one go.

``numpy.memmap(path, dtype="<u2")`` reads a ``.bin`` with no lmops code;
:class:`TokenShards` does that for the whole set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError
from lmops.core.shards import (
    _DTYPES,
    META,
    ShardInfo,
    ShardSetInfo,
    TokenShards,
    choose_dtype,
)
from lmops.data.document import Document
from lmops.data.tokenizer import load_tokenizer, read_tokenizer_config, tokenizer_digest

__all__ = ["ShardInfo", "ShardSetInfo", "TokenShards", "choose_dtype", "write_token_shards"]


def write_token_shards(
    docs: Iterable[Document] | Iterable[str],
    tokenizer_dir: Path | str,
    out_dir: Path | str,
    *,
    shard_tokens: int = 50_000_000,
    append_eos: bool = True,
    dtype: Literal["auto", "uint16", "uint32"] = "auto",
    batch_size: int = 1000,
    parse_special: bool = False,
    progress: Path | str | None = None,
) -> ShardSetInfo:
    """Tokenize ``docs`` (documents or plain strings) into packed shards under ``out_dir``.

    Texts are encoded ``batch_size`` at a time with ``Tokenizer.encode_batch`` and without
    the tokenizer's own special tokens; ``append_eos`` appends the EOS id (the
    ``eos_token`` of ``tokenizer_config.json``) after every document, empty ones included,
    so document ``i`` of the input is document ``i`` of the set. Special-token strings in
    the text (``<|endoftext|>``, ``<|im_start|>``) are tokenized as ordinary text, so raw
    data cannot forge a document boundary; ``parse_special=True`` maps them to their ids
    instead (for text that is already rendered with a chat template). ``out_dir`` must be empty
    or absent. Raises :class:`UserError` for a non-empty ``out_dir``, bad sizes, a dtype
    too narrow for the vocabulary, or ``append_eos`` without an EOS token.

    ``progress``: a file outside ``out_dir`` recording the finished shards; ``out_dir`` may
    then hold an interrupted run's work, which is resumed (see the module docstring) when
    the progress file was written with the same tokenizer and settings, and deleted when not.
    """
    if shard_tokens < 1:
        raise UserError(f"shard_tokens must be >= 1, got {shard_tokens}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    tok = load_tokenizer(tokenizer_dir)
    tok.encode_special_tokens = not parse_special
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    if dtype == "auto":
        dtype = choose_dtype(vocab_size)
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose auto, uint16 or uint32")
    if dtype == "uint16" and choose_dtype(vocab_size) != "uint16":
        raise UserError(
            f"dtype uint16 cannot hold ids of a {vocab_size}-token vocabulary; use uint32"
        )
    np_dtype = _DTYPES[dtype]
    eos_id: int | None = None
    eos_token = read_tokenizer_config(tokenizer_dir).get("eos_token")
    if isinstance(eos_token, str):
        eos_id = tok.token_to_id(eos_token)
    if append_eos and eos_id is None:
        raise UserError(
            f"tokenizer at {tokenizer_dir} has no eos_token in tokenizer_config.json; "
            "set one or pass append_eos=False"
        )
    out = Path(out_dir)
    digest = tokenizer_digest(tokenizer_dir)
    done: list[ShardInfo] = []
    record: _Progress | None = None
    if progress is not None:
        settings = {
            "dtype": dtype,
            "shard_tokens": shard_tokens,
            "append_eos": append_eos,
            "parse_special": parse_special,
            "tokenizer_digest": digest,
        }
        record = _Progress(Path(progress), settings)
        done = record.resume(out, np_dtype.itemsize)
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {out} is not empty; choose a new one or delete it")
    out.mkdir(parents=True, exist_ok=True)

    writer = _ShardWriter(out, np_dtype, shard_tokens, done, record)
    skip = sum(s.num_docs for s in done)  # the documents of the shards already written
    for batch in _batches(docs, batch_size, skip):
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            ids = enc.ids
            if append_eos:
                assert eos_id is not None
                ids = [*ids, eos_id]
            writer.add(np.asarray(ids, dtype=np_dtype))
    shards = writer.close()

    info = ShardSetInfo(
        path=out,
        dtype=dtype,
        vocab_size=vocab_size,
        eos_id=eos_id,
        append_eos=append_eos,
        tokenizer_name=Path(tokenizer_dir).resolve().name,
        tokenizer_digest=digest,
        num_tokens=sum(s.num_tokens for s in shards),
        num_docs=sum(s.num_docs for s in shards),
        shards=tuple(shards),
    )
    tmp = out / f".{META}.tmp"
    tmp.write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / META)
    return info


# -- writing ---------------------------------------------------------------------------------------
class _ShardWriter:
    """Appends documents to the current shard; rolls over before it would overflow."""

    def __init__(
        self,
        out: Path,
        dtype: np.dtype[Any],
        shard_tokens: int,
        done: list[ShardInfo],
        progress: _Progress | None,
    ) -> None:
        self.out = out
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.shards: list[ShardInfo] = list(done)
        self.progress = progress
        self._file: Any = None
        self._starts: list[int] = []
        self._n = 0
        self._hash = hashlib.sha256()

    def add(self, ids: npt.NDArray[Any]) -> None:
        if self._file is not None and self._starts and self._n + len(ids) > self.shard_tokens:
            self._finish()
        if self._file is None:
            self._open()
        self._starts.append(self._n)
        data = ids.astype(self.dtype, copy=False).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._n += len(ids)

    def close(self) -> list[ShardInfo]:
        if self._file is not None:
            self._finish()
        return self.shards

    def _names(self) -> tuple[str, str]:
        k = len(self.shards)
        return f"shard-{k:05d}.bin", f"shard-{k:05d}.idx.npy"

    def _open(self) -> None:
        name, _ = self._names()
        self._file = open(self.out / f".{name}.tmp", "wb")  # noqa: SIM115 - closed in _finish
        self._starts = []
        self._n = 0
        self._hash = hashlib.sha256()

    def _finish(self) -> None:
        name, index = self._names()
        self._file.close()
        self._file = None
        os.replace(self.out / f".{name}.tmp", self.out / name)
        tmp_idx = self.out / f".{index}.tmp"
        with open(tmp_idx, "wb") as f:  # a file object, so np.save adds no ".npy"
            np.save(f, np.asarray(self._starts, dtype=np.uint64))
        os.replace(tmp_idx, self.out / index)
        self.shards.append(
            ShardInfo(
                name=name,
                index=index,
                num_tokens=self._n,
                num_docs=len(self._starts),
                sha256=self._hash.hexdigest(),
            )
        )
        if self.progress is not None:
            self.progress.write(self.shards)


class _Progress:
    """The finished shards of a resumable run, in a JSON file beside the set (not in it)."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings = settings

    def write(self, shards: list[ShardInfo]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({**self.settings, "shards": [asdict(s) for s in shards]}))
        os.replace(tmp, self.path)

    def resume(self, out: Path, itemsize: int) -> list[ShardInfo]:
        """The recorded shards still in ``out`` (a prefix of the set); everything else in
        ``out`` is deleted: a writer killed before recording it left it."""
        try:
            old = json.loads(self.path.read_text())
            shards = old.pop("shards")
            # written with other settings: start over
            recorded = [ShardInfo(**s) for s in shards] if old == self.settings else []
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            recorded = []  # none, or unreadable: start over
        done: list[ShardInfo] = []
        for k, shard in enumerate(recorded):
            bin_file = out / shard.name
            if (
                shard.name != f"shard-{k:05d}.bin"
                or not bin_file.is_file()
                or bin_file.stat().st_size != shard.num_tokens * itemsize
                or not (out / shard.index).is_file()
            ):
                break
            done.append(shard)
        keep = {n for s in done for n in (s.name, s.index)}
        if out.is_dir():
            for entry in out.iterdir():
                if entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.write(done)
        return done


def _batches(
    docs: Iterable[Document] | Iterable[str], size: int, skip: int = 0
) -> Iterator[list[str]]:
    batch: list[str] = []
    for n, doc in enumerate(docs, 1):
        if n <= skip:
            continue
        if isinstance(doc, Document):
            batch.append(doc.text)
        elif isinstance(doc, str):
            batch.append(doc)
        else:
            raise UserError(f"item #{n} has type {type(doc).__name__}; expected a Document or str")
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
