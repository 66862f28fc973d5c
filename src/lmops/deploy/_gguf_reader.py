"""One parse of a GGUF file's metadata for a whole ``lmops assets import gguf``.

``gguf.GGUFReader(path)`` walks every metadata field part by part: SmolLM2-135M's vocabulary
(49,152 tokens and 48,900 merges) is about a million parts, 2.7-3.8 s of CPU each time on a
loaded 2-core machine. An import used to parse the same file 8 times: lmops's own checks
(magic and architecture, the dtype of its matrices, llama3 rope factors, the pre-tokenizer,
the ``general.*`` fields) and transformers' loader (the config for the model, the weights,
the config for the tokenizer, the tokenizer), 25 of its 48 CPU seconds.

:func:`one_reader` parses it once: while it is open, ``gguf.GGUFReader(file)`` returns one
reader, to lmops's code and to transformers' (which imports ``GGUFReader`` from ``gguf`` in
each call). The reader is read-only (a ``numpy.memmap`` in mode ``r``; tensors are views
that the loaders dequantize into new arrays), so sharing it changes no result. Any other
path, or a mode other than ``r``, gets a reader of its own as before.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["one_reader"]

_lock = threading.Lock()
_shared: dict[str, list[Any]] = {}  # realpath -> [reader, how many imports hold it]
_original: Any = None  # gguf.GGUFReader while the sharing one is installed
_real: Any = None  # gguf.GGUFReader itself, for a caller that kept _reader past the block


def _reader(path: Any, mode: str = "r") -> Any:
    key = os.path.realpath(os.fspath(path))
    with _lock:
        held = _shared.get(key) if mode == "r" else None
        original = _original or _real
        if held is not None and held[0] is not None:
            return held[0]
    reader = original(path, mode)  # parsed outside the lock: seconds
    if held is not None:
        with _lock:
            if held[0] is None:
                held[0] = reader
            return held[0]
    return reader


@contextlib.contextmanager
def one_reader(file: Path) -> Iterator[None]:
    """Inside the block, every ``gguf.GGUFReader(file)`` (mode ``r``) is one reader, parsed
    at the first such call (so a file that is not GGUF still fails where it is first read,
    with that caller's message). Nested and concurrent blocks are counted: the original
    class is put back when the last one ends."""
    global _original, _real
    import gguf

    key = os.path.realpath(file)
    with _lock:
        if _original is None:
            _original = _real = gguf.GGUFReader
            gguf.GGUFReader = _reader  # type: ignore[misc,assignment]
        held = _shared.setdefault(key, [None, 0])
        held[1] += 1
    try:
        yield
    finally:
        with _lock:
            held[1] -= 1
            if held[1] == 0:
                del _shared[key]
            if not _shared:
                gguf.GGUFReader = _original  # type: ignore[misc]
                _original = None
