"""The moderation model: scoring, its file format, loading and the built-in model."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lmops.core.atomic import write_atomic
from lmops.core.errors import UserError
from lmops.security.moderation.features import (
    DEFAULT_BITS,
    DEFAULT_POWER,
    EMPTY_STATS,
    FEATURES,
    FORMAT,
    FORMAT_VERSION,
    HARMFUL,
    Featurizer,
    TextStats,
    _clean,
    _ngrams,
    _normalize,
    _resource,
    builtin_featurizer,
    deobfuscate,
    features,
)
from lmops.text.words import WORD_RE


# ============================================================================ model
def _sigmoid(z: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * z))  # the logistic function, without overflow


@dataclass
class ModerationModel:
    """A trained moderation classifier; ``model(text)`` is ``{category: P(harmful)}``."""

    weights: npt.NDArray[np.float32]  # (1 + len(categories), 2**bits) n-gram weights
    biases: npt.NDArray[np.float64]  # (1 + len(categories),)
    dense_in: npt.NDArray[np.float32]  # (hidden, dims): W of v . relu(W u + c)
    dense_bias: npt.NDArray[np.float32]  # (hidden,): c
    dense_out: npt.NDArray[np.float32]  # (hidden,): v
    pool_in: npt.NDArray[np.float32]  # (hidden, dims): Q of q . max(0, max_t Q e_t)
    pool_out: npt.NDArray[np.float32]  # (hidden,): q
    categories: tuple[str, ...]
    threshold: float
    bits: int = DEFAULT_BITS
    power: float = DEFAULT_POWER
    meta: dict[str, Any] = field(default_factory=dict)
    featurizer: Featurizer = field(default_factory=builtin_featurizer, repr=False)

    def __post_init__(self) -> None:
        self._w0 = np.ascontiguousarray(self.weights[0])
        self._b0 = float(self.biases[0])
        # Each word's row and its projection by the pooled layer, side by side: a text
        # costs one gather, one sum, one max and the mean layer's product with the sum (it
        # is linear: not stored per row, which would cost 63 MB a process more for 62,000
        # rows; a float16 table would be smaller, but numpy converts its rows back 7x slower
        # than it gathers them).
        v = self.featurizer.vectors
        self._dims = v.shape[1]
        self._dense_in = np.ascontiguousarray(self.dense_in, dtype=np.float32)
        # The mean layer's output for a text with no embedding row (a zero direction), as
        # training computes it: relu(bias) @ out.
        self._no_rows = float(np.maximum(self.dense_bias, 0.0) @ self.dense_out)
        self._table = np.ascontiguousarray(np.hstack([v, v @ self.pool_in.T]), dtype=np.float32)

    def __call__(self, text: str) -> dict[str, float]:
        return self.score_normalized(_normalize(text))

    # ------------------------------------------------------------------ scoring
    def stats(self, deobfuscated: str) -> TextStats:
        """:class:`TextStats` of a :func:`deobfuscate`-d text."""
        t = _clean(deobfuscated)
        if not t:
            return EMPTY_STATS
        words = WORD_RE.findall(t)
        idx = _ngrams(t, words, self.bits, ordered=False)
        ids = self.featurizer.ids(words, t)
        if not ids:
            return TextStats(float(self._w0[idx].sum()), int(idx.size), None, None, 0)
        rows = self._table[ids]  # (words, dims + hidden)
        dims = self._dims
        pooled = rows[:, dims:].max(axis=0)
        np.maximum(pooled, 0.0, out=pooled)
        total = rows[:, :dims].sum(axis=0)
        embedding = np.concatenate((total, self._dense_in @ total))
        return TextStats(float(self._w0[idx].sum()), int(idx.size), embedding, pooled,
                         len(ids))  # fmt: skip

    def logit(self, s: TextStats) -> float:
        """Head 0's logit of ``s``."""
        z = self._b0
        if s.ngrams:
            z += s.ngram_sum * s.ngrams**-self.power
        if s.embedding is not None and s.pooled is not None:
            # embedding = [sum of rows, dense_in @ that sum]: dense_in @ unit = the second
            # half over the norm of the first.
            e = s.embedding
            norm = math.sqrt(float(e[: self._dims] @ e[: self._dims]))
            if norm > 0:
                h = e[self._dims :] * (1.0 / norm) + self.dense_bias
                z += float(np.maximum(h, 0.0, out=h) @ self.dense_out)
            else:
                z += self._no_rows
            z += float(s.pooled @ self.pool_out)
        else:  # no word with a row (the pooled part is 0 then)
            z += self._no_rows
        return z

    def prob_stats(self, s: TextStats) -> float:
        """P(harmful) of a text with stats ``s`` (0 for an empty one)."""
        return _sigmoid(self.logit(s)) if s.ngrams or s.words else 0.0

    def category(self, deobfuscated: str) -> str:
        """The most likely category of a (harmful) text."""
        if not self.categories:
            return HARMFUL
        idx, val = features(deobfuscated, self.bits, self.power)
        heads = self.weights[1:, idx].sum(axis=1) * (float(val[0]) if val.size else 0.0)
        return self.categories[int(np.argmax(heads + self.biases[1:]))]

    def score_deobfuscated(self, deobfuscated: str) -> dict[str, float]:
        """:meth:`__call__` on ``deobfuscate(normalize_text(text))``."""
        s = self.stats(deobfuscated)
        if not s.ngrams:
            return {}
        return self.verdict(s, deobfuscated)

    def verdict(
        self, s: TextStats, deobfuscated: str | None, p: float | None = None
    ) -> dict[str, float]:
        """``{category: P(harmful)}`` of a text with stats ``s`` (``p``: its P(harmful),
        where the caller has it); the category heads read ``deobfuscated`` and run only for
        a likely harmful text (nearly all traffic is clearly benign)."""
        if p is None:
            p = self.prob_stats(s)
        if not self.categories:
            return {HARMFUL: p}
        if p < 0.5 * self.threshold or deobfuscated is None:
            return {self.categories[0] if p < 0.5 * self.threshold else HARMFUL: p}
        return {self.category(deobfuscated): p}

    def score_normalized(self, normalized: str) -> dict[str, float]:
        """:meth:`__call__` on ``normalize_text(text)``, for callers that have it."""
        return self.score_deobfuscated(deobfuscate(normalized))

    def prob(self, text: str) -> float:
        """P(harmful) of ``text``."""
        return self.prob_stats(self.stats(deobfuscate(_normalize(text))))

    # ------------------------------------------------------------------ file
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one ``.npz`` file (via a temp file and a rename)."""
        target = Path(path)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "bits": self.bits,
                  "power": self.power, "features": FEATURES,
                  "static": self.featurizer.digest, "categories": list(self.categories),
                  "threshold": self.threshold, "meta": self.meta}  # fmt: skip
        arrays: dict[str, npt.NDArray[Any]] = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "weights": self.weights.astype(np.float16),
            "biases": np.asarray(self.biases, dtype=np.float64),
            "dense_in": self.dense_in.astype(np.float32),
            "dense_bias": self.dense_bias.astype(np.float32),
            "dense_out": self.dense_out.astype(np.float32),
            "pool_in": self.pool_in.astype(np.float32),
            "pool_out": self.pool_out.astype(np.float32),
        }
        write_atomic(target, lambda fh: np.savez_compressed(fh, allow_pickle=False, **arrays))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModerationModel:
        """Read a model written by :meth:`save`; :class:`UserError` if it is not one."""
        p = Path(path)
        retrain = "retrain it with `lmops guard train`"
        if not p.is_file():
            raise UserError(
                f"{p}: no such moderation classifier; train one with `lmops guard train`"
            )
        featurizer = builtin_featurizer()
        try:
            with np.load(p, allow_pickle=False) as z:
                head = json.loads(z["header"].tobytes()) if "header" in z.files else {}
                if head.get("format") != FORMAT:
                    raise UserError(
                        f"{p}: not an lmops moderation classifier; train one with "
                        "`lmops guard train`"
                    )
                if head.get("version") != FORMAT_VERSION or head.get("features") != FEATURES:
                    raise UserError(
                        f"{p}: moderation classifier format {head.get('version')} "
                        f"({head.get('features')}), this lmops reads {FORMAT_VERSION} "
                        f"({FEATURES}); {retrain}"
                    )
                if head.get("static") != featurizer.digest:
                    raise UserError(
                        f"{p}: trained with other static embeddings than this lmops ships; "
                        f"{retrain}"
                    )
                arrays = {k: z[k] for k in ("weights", "biases", "dense_in", "dense_bias",
                                            "dense_out", "pool_in", "pool_out")}  # fmt: skip
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{p}: not a readable moderation classifier ({e})") from None
        bits, cats = int(head["bits"]), tuple(head["categories"])
        w, b = arrays["weights"].astype(np.float32), arrays["biases"].astype(np.float64)
        d_in = arrays["dense_in"].astype(np.float32)
        hidden = d_in.shape[0]
        if (
            w.shape != (1 + len(cats), 1 << bits)
            or b.shape != (1 + len(cats),)
            or d_in.shape != (hidden, featurizer.dims)
            or arrays["dense_bias"].shape != (hidden,)
            or arrays["dense_out"].shape != (hidden,)
            or arrays["pool_in"].shape != (hidden, featurizer.dims)
            or arrays["pool_out"].shape != (hidden,)
        ):
            raise UserError(f"{p}: damaged moderation classifier (weights do not match header)")
        f32 = {k: arrays[k].astype(np.float32) for k in ("dense_bias", "dense_out", "pool_in",
                                                          "pool_out")}  # fmt: skip
        return cls(w, b, d_in, f32["dense_bias"], f32["dense_out"], f32["pool_in"],
                   f32["pool_out"], cats, float(head["threshold"]), bits,
                   float(head["power"]), dict(head["meta"]), featurizer)  # fmt: skip


@cache
def _load_cached(path: str, mtime_ns: int, size: int) -> ModerationModel:
    return ModerationModel.load(path)


def load_model(path: str | os.PathLike[str]) -> ModerationModel:
    """:meth:`ModerationModel.load`, shared between callers while the file is unchanged."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return ModerationModel.load(p)  # raises the one-line error
    return _load_cached(str(p), st.st_mtime_ns, st.st_size)


def builtin_model_path() -> Path:
    return _resource("model.npz")


def builtin_data_path() -> Path:
    return _resource("data.jsonl.gz")


def builtin_model() -> ModerationModel:
    """The shipped model (trained on the ``train`` rows of the shipped data set)."""
    return load_model(builtin_model_path())
