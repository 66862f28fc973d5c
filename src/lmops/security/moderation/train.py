"""Training and evaluating the moderation classifier on labelled rows."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError
from lmops.core.jsonl import json_objects
from lmops.security.moderation.encoder import Encoder
from lmops.security.moderation.features import (
    DEFAULT_BITS,
    DEFAULT_POWER,
    Featurizer,
    _clean,
    _ngrams,
    _normalize,
    builtin_featurizer,
    deobfuscate,
)
from lmops.security.moderation.model import ModerationModel
from lmops.text.logistic import fit_logistic
from lmops.text.words import WORD_RE

# ============================================================================ data
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LABELS = {"harmful": True, "benign": False, "1": True, "0": False, "true": True, "false": False}


@dataclass(frozen=True, slots=True)
class LabeledText:
    """One training or evaluation row. ``group``: rows sharing it are wordings of one idea
    and stay on one side of a fold; ``split``: ``"test"`` rows are never trained on;
    ``info``: the row's other fields (language, obfuscation, ...), for reports;
    ``calibrate``: False for a benign row that is trained on but left out of the threshold
    rule's false-positive count (see :func:`train_moderation_classifier`)."""

    text: str
    harmful: bool
    category: str | None = None
    group: str | None = None
    split: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    calibrate: bool = True


def read_labeled(path: str | os.PathLike[str]) -> list[LabeledText]:
    """Rows of a JSONL file (``.gz`` read as gzip): ``{"text": str, "label": "harmful" |
    "benign" (or 1/0, true/false), "category": str (optional), "group": str, "split": str
    (optional), "calibrate": bool (optional, default true)}``. A bad row raises
    :class:`UserError` naming ``file:line`` and the field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        data = (gzip.decompress(raw) if p.suffix == ".gz" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{p}: cannot read it ({e})") from None
    rows = []
    for _, where, row in json_objects(data, str(p)):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: text: need a non-empty string")
        label = row.get("label")
        harmful = _LABELS.get(str(label).lower()) if isinstance(label, str | int | bool) else None
        if harmful is None:
            raise UserError(
                f"{where}: label: {label!r} is not one of harmful, benign (or 1, 0, true, false)"
            )
        category = row.get("category")
        if category is not None and (
            not isinstance(category, str) or not _CATEGORY.fullmatch(category)
        ):
            raise UserError(
                f"{where}: category: {category!r}; use lower-case letters, digits and '_'"
            )
        for name in ("group", "split"):
            if row.get(name) is not None and not isinstance(row[name], str):
                raise UserError(f"{where}: {name}: need a string")
        calibrate = row.get("calibrate", True)
        if not isinstance(calibrate, bool):
            raise UserError(f"{where}: calibrate: {calibrate!r}; use true or false")
        info = {k: v for k, v in row.items() if k not in ("text", "label", "category")}
        rows.append(
            LabeledText(
                text,
                harmful,
                category if harmful else None,
                row.get("group"),
                row.get("split"),
                info,
                calibrate,
            )
        )
    if not rows:
        raise UserError(f"{p}: no rows; write one JSON object per line with text and label")
    return rows


# ============================================================================ training
class _Encoded(NamedTuple):
    """Training features of every row: n-gram buckets and word rows (CSR-like), unit
    embedding directions."""

    idx: npt.NDArray[np.intp]  # all rows' buckets, concatenated
    start: npt.NDArray[np.intp]  # row i's buckets: idx[start[i]:start[i + 1]]
    scale: npt.NDArray[np.float64]  # n ** -power of each row
    unit: npt.NDArray[np.float32]  # (rows, dims): embedding direction, zero without one
    tok: npt.NDArray[np.intp]  # all rows' embedding rows, concatenated
    tok_start: npt.NDArray[np.intp]
    vectors: npt.NDArray[np.float32]  # the static table

    def take(self, rows: npt.NDArray[np.intp]) -> tuple[Any, Any, Any]:
        """(buckets, value, row number within ``rows``) of the n-grams of ``rows``."""
        pos, row = _spans(self.start, rows)
        return self.idx[pos], self.scale[rows][row], row

    def words(self, rows: npt.NDArray[np.intp]) -> tuple[Any, Any]:
        """(embedding rows, row number within ``rows``) of the words of ``rows``."""
        pos, row = _spans(self.tok_start, rows)
        return self.tok[pos], row


def _spans(start: npt.NDArray[np.intp], rows: npt.NDArray[np.intp]) -> tuple[Any, Any]:
    lo, hi = start[rows], start[rows + 1]
    counts = hi - lo
    pos = np.repeat(hi - np.cumsum(counts), counts) + np.arange(int(counts.sum()))
    return pos, np.repeat(np.arange(len(rows)), counts)


def _encode(texts: Sequence[str], bits: int, power: float, fz: Featurizer) -> _Encoded:
    parts, starts, scales, units = [], [0], [], np.zeros((len(texts), fz.dims), np.float32)
    toks: list[list[int]] = []
    tok_starts = [0]
    for i, text in enumerate(texts):
        t = _clean(deobfuscate(_normalize(text)))
        words = WORD_RE.findall(t)
        idx = _ngrams(t, words, bits) if t else np.zeros(0, dtype=np.intp)
        parts.append(idx)
        starts.append(starts[-1] + idx.size)
        scales.append(float(idx.size) ** -power if idx.size else 0.0)
        ids = fz.ids(words, t)
        toks.append(ids)
        tok_starts.append(tok_starts[-1] + len(ids))
        if ids:
            e = fz.vectors[ids].sum(axis=0)
            n = float(np.sqrt(e @ e))
            if n > 0:
                units[i] = e / n
    flat = np.fromiter((i for ids in toks for i in ids), dtype=np.intp, count=tok_starts[-1])
    return _Encoded(np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp),
                    np.array(starts), np.array(scales), units, flat, np.array(tok_starts),
                    fz.vectors)  # fmt: skip


class _Dense(NamedTuple):
    w: npt.NDArray[np.float64]  # n-gram weights (2**bits,)
    b: float
    d_in: npt.NDArray[np.float64]  # (hidden, dims)
    d_bias: npt.NDArray[np.float64]
    d_out: npt.NDArray[np.float64]
    p_in: npt.NDArray[np.float64]  # (hidden, dims)
    p_out: npt.NDArray[np.float64]


def _pool(
    p_in: npt.NDArray[np.float64], enc: _Encoded, batch: npt.NDArray[np.intp]
) -> tuple[Any, Any, Any, Any]:
    """(pooled (rows, hidden), word projections, word rows, row of each word): pooled is
    ``max(0, max over the row's words of p_in @ e)``."""
    tok, row = enc.words(batch)
    e = enc.vectors[tok].astype(np.float64)
    proj = e @ p_in.T
    pooled = np.zeros((len(batch), p_in.shape[0]))
    if tok.size:
        counts = enc.tok_start[batch + 1] - enc.tok_start[batch]
        some = counts > 0
        firsts = (np.cumsum(counts) - counts)[some]  # each row's words are contiguous
        pooled[some] = np.maximum(np.maximum.reduceat(proj, firsts, axis=0), 0.0)
    return pooled, proj, e, row


def _logits(m: _Dense, enc: _Encoded, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    out = np.zeros(len(rows))
    for lo in range(0, len(rows), 4096):
        batch = rows[lo : lo + 4096]
        idx, val, row = enc.take(batch)
        z = np.bincount(row, weights=m.w[idx] * val, minlength=len(batch)) + m.b
        h = np.maximum(enc.unit[batch] @ m.d_in.T + m.d_bias, 0.0)
        pooled = _pool(m.p_in, enc, batch)[0]
        out[lo : lo + 4096] = z + h @ m.d_out + pooled @ m.p_out
    return out


def fit_moderation(
    enc: _Encoded,
    y: npt.NDArray[np.float64],
    rows: npt.NDArray[np.intp],
    *,
    bits: int,
    hidden: int = 64,
    epochs: int = 6,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 0.5,
    dense_rate: float = 3e-3,
    l2: float = 1e-6,
    weight_decay: float = 1e-4,
    dropout: float = 0.0,
) -> _Dense:
    """Head 0 on the training ``rows`` of ``enc``: the n-gram weights by sparse Adagrad
    (as :func:`lmops.text.logistic.fit_logistic`, lazy L2), the dense layers (mean and
    max-pooled embeddings) by Adam with weight decay, jointly on the class-weighted log
    loss (each class weighs half). Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    yr = y[rows]
    n_pos = float((yr > 0.5).sum())
    sample_weight = np.where(yr > 0.5, len(yr) / (2 * n_pos), len(yr) / (2 * (len(yr) - n_pos)))
    dims = enc.unit.shape[1]
    w = np.zeros(1 << bits)
    g2 = np.zeros(1 << bits)
    # He initialisation of the hidden layers; the outputs start at zero.
    scale = math.sqrt(2.0 / dims)
    dense = [rng.normal(0.0, scale, (hidden, dims)), np.zeros(hidden), np.zeros(hidden),
             np.zeros(1), rng.normal(0.0, scale, (hidden, dims)), np.zeros(hidden)]  # fmt: skip
    decay = (0, 2, 4, 5)  # weight decay on the matrices and output vectors, not biases
    mom = [np.zeros_like(p) for p in dense]
    vel = [np.zeros_like(p) for p in dense]
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    for _ in range(epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            batch = rows[pick]
            idx, val, row = enc.take(batch)
            if dropout:  # n-gram dropout: no single phrase may carry a verdict alone
                val = val * ((rng.random(idx.size) >= dropout) / (1.0 - dropout))
            u = enc.unit[batch]
            pre = u @ dense[0].T + dense[1]
            h = np.maximum(pre, 0.0)
            pooled, proj, e, wrow = _pool(dense[4], enc, batch)
            z = np.bincount(row, weights=w[idx] * val, minlength=len(batch))
            z += h @ dense[2] + dense[3][0] + pooled @ dense[5]
            err = (0.5 * (1.0 + np.tanh(0.5 * z)) - yr[pick]) * sample_weight[pick] / len(batch)
            touched, inv = np.unique(idx, return_inverse=True)
            grad = np.bincount(inv, weights=err[row] * val) + l2 * w[touched]
            g2[touched] += grad * grad
            w[touched] -= learning_rate * grad / (np.sqrt(g2[touched]) + eps)
            dh = np.outer(err, dense[2]) * (pre > 0)
            # The max passes its gradient to the word that won it (none where 0 won).
            won = (proj == pooled[wrow]) & (proj > 0)
            dproj = won * (err[wrow, None] * dense[5])
            grads = [dh.T @ u, dh.sum(axis=0), h.T @ err, np.array([err.sum()]), dproj.T @ e,
                     pooled.T @ err]  # fmt: skip
            step += 1
            for k, (p, g) in enumerate(zip(dense, grads, strict=True)):
                if k in decay:
                    g = g + weight_decay * p
                mom[k] = beta1 * mom[k] + (1 - beta1) * g
                vel[k] = beta2 * vel[k] + (1 - beta2) * g * g
                p -= (
                    dense_rate
                    * (mom[k] / (1 - beta1**step))
                    / (np.sqrt(vel[k] / (1 - beta2**step)) + eps)
                )
    return _Dense(w, float(dense[3][0]), dense[0], dense[1], dense[2], dense[4], dense[5])


def fit_ensemble(
    enc: _Encoded,
    y: npt.NDArray[np.float64],
    rows: npt.NDArray[np.intp],
    *,
    seeds: int = 1,
    seed: int = 0,
    **fit: Any,
) -> _Dense:
    """The mean of ``seeds`` models of :func:`fit_moderation` (seeds ``seed``,
    ``seed + 1``, ...), as one model of the same shape: every part of a logit is linear in
    its output weights, so the mean of the members' logits is the logit of their n-gram
    weights and biases averaged and their hidden units side by side (outputs divided by
    ``seeds``). The members differ in initialisation, order and dropout; their mean ranks
    unseen rows better than any one of them (the variance of a member's verdict on a new
    wording is large)."""
    members = [fit_moderation(enc, y, rows, seed=seed + k, **fit) for k in range(seeds)]
    if seeds == 1:
        return members[0]
    return _Dense(
        np.mean([m.w for m in members], axis=0), float(np.mean([m.b for m in members])),
        np.vstack([m.d_in for m in members]), np.concatenate([m.d_bias for m in members]),
        np.concatenate([m.d_out for m in members]) / seeds,
        np.vstack([m.p_in for m in members]), np.concatenate([m.p_out for m in members]) / seeds,
    )  # fmt: skip


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_moderation_classifier` did. ``cv_*`` are out-of-fold figures at
    the chosen threshold (None without folds)."""

    path: str
    harmful: int
    benign: int
    categories: dict[str, int]
    threshold: float
    threshold_rule: str
    cv_recall: float | None
    cv_false_positive_rate: float | None
    # The rule at other caps: {"0.5%": {"threshold", "recall"}, "1%": ..., ...}.
    cv_curve: dict[str, dict[str, float]]
    # With max_fp_by: {value: out-of-fold false-positive rate} of each value the rule checked.
    cv_false_positive_rate_by: dict[str, float]
    folds: int
    fold_by: str
    bits: int
    power: float
    hidden: int
    epochs: int
    seed: int
    seeds: int
    dropout: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# max_fp_by: a value with fewer counted benign rows is left to the shared cap: at least
# 50, and enough for the cap to allow one false positive (200 at 0.5 %), so that no single
# row decides the threshold.
MAX_FP_MIN_ROWS = 50


def _min_rows(cap: float) -> int:
    return max(MAX_FP_MIN_ROWS, math.ceil(1 / cap - 1e-9)) if cap > 0 else MAX_FP_MIN_ROWS


def _capped_threshold(
    pos: npt.NDArray[np.float64],
    neg: npt.NDArray[np.float64],
    cap: float,
    groups: Mapping[str, npt.NDArray[np.float64]],
) -> tuple[float, str | None]:
    """The lowest threshold with false positives <= ``cap`` on ``neg`` and on each of
    ``groups`` (parts of it) with at least :func:`_min_rows` rows; and the group that
    decided it (None: ``neg`` as a whole)."""
    t, binding = _threshold_at_fp(pos, neg, cap), None
    for key, own in groups.items():
        if own.size >= _min_rows(cap):
            t_key = _threshold_at_fp(pos, own, cap)
            if t_key > t:
                t, binding = t_key, key
    return t, binding


def _fold_of(row: LabeledText, i: int, folds: int, by: str) -> int:
    value = row.group if by == "group" else row.info.get(by)
    key = str(value if value is not None else f"row:{i}").encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") % folds


def _threshold_at_fp(
    pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64], max_fp: float
) -> float:
    """The lowest threshold (so the highest recall) whose false-positive rate on ``neg``
    is at most ``max_fp``: just above the benign score that would make it exceed."""
    allowed = math.floor(max_fp * len(neg))  # benign rows that may score at or over it
    s = np.sort(neg)[::-1]
    if allowed >= len(s):
        return 0.01
    t = float(np.nextafter(s[allowed], 1.0))
    return min(max(t, 0.01), 0.99)


def train_moderation_classifier(
    rows: Iterable[LabeledText],
    output: str | os.PathLike[str],
    *,
    bits: int = DEFAULT_BITS,
    power: float = DEFAULT_POWER,
    hidden: int = 64,
    epochs: int = 6,
    seed: int = 0,
    seeds: int = 4,
    dropout: float = 0.3,
    folds: int = 4,
    max_fp: float = 0.02,
    threshold: float | None = None,
    fold_by: str = "family+group",
    max_fp_by: str | None = None,
) -> TrainReport:
    """Train on ``rows`` (``split == "test"`` rows are left out), save to ``output``.

    ``threshold`` None: the rule of the module docstring; 0.5 with ``folds`` < 2. Folds
    follow ``fold_by``: fields joined by ``+`` (``group`` or an ``info`` field such as the
    template ``family``; a row without one is alone), each hashed to a fold; fold ``k``'s
    model is trained on the rows none of whose fields fall in ``k`` and scores the rows
    any of whose fields do (their logits averaged where several folds score a row), so
    that, as on the held-out split, a scored row's template or idea or both were never
    trained on. Category heads are trained when the harmful rows name two categories or
    more. ``seeds`` models are averaged (:func:`fit_ensemble`), in every fold as in the
    final model, so that the threshold is chosen on the kind of model that ships;
    ``dropout`` is their n-gram dropout. Benign rows with ``calibrate`` False train but
    are left out of the false positives the rule counts: free text that is no look-alike
    of a harmful row (most ordinary prose is easy) would let the threshold fall, as the
    rule's share of a larger, easier benign set.
    """
    train = [r for r in rows if r.split != "test"]
    pos = sum(r.harmful for r in train)
    if pos < 2 or len(train) - pos < 2:
        raise UserError(
            f"moderation training: got {pos} harmful and {len(train) - pos} benign rows "
            "(split test left out); give at least 2 of each (hundreds for a useful model)"
        )
    if threshold is None and folds >= 2 and all(r.harmful or not r.calibrate for r in train):
        raise UserError(
            "moderation training: every benign row has calibrate false; the threshold rule "
            "needs benign rows it counts (mark some calibrate true, or give a threshold)"
        )
    if not 0 <= max_fp < 1 or (threshold is not None and not 0 < threshold < 1):
        raise UserError("moderation training: need 0 <= max_fp < 1 and 0 < threshold < 1")
    if max_fp_by is not None:
        if not _CATEGORY.fullmatch(max_fp_by):
            raise UserError(
                f"moderation training: max_fp_by {max_fp_by!r}: give a row field's name "
                "(lower-case letters, digits and _, e.g. kind)"
            )
        sizes = Counter(
            str(r.info[max_fp_by]) for r in train
            if not r.harmful and r.calibrate and r.info.get(max_fp_by) is not None
        )  # fmt: skip
        if threshold is not None or folds < 2:
            raise UserError(
                "moderation training: max_fp_by shapes the out-of-fold threshold rule; it "
                "needs folds >= 2 and no fixed threshold"
            )
        need, largest = _min_rows(max_fp), max(sizes.values(), default=0)
        if largest < need:
            raise UserError(
                f"moderation training: max_fp_by {max_fp_by!r}: no value of that field has "
                f"{need} counted benign rows (the most: {largest}); name a field the rows "
                "carry, give more rows of a value, or leave max_fp_by out"
            )
    if seeds < 1 or not 0 <= dropout < 1:
        raise UserError("moderation training: need seeds >= 1 and 0 <= dropout < 1")
    fz = builtin_featurizer()
    enc = _encode([r.text for r in train], bits, power, fz)
    y = np.array([1.0 if r.harmful else 0.0 for r in train])
    fit: dict[str, Any] = {"bits": bits, "hidden": hidden, "epochs": epochs, "seed": seed,
                           "seeds": seeds, "dropout": dropout}  # fmt: skip
    everything = np.arange(len(train))

    rule = "fixed"
    cv_recall = cv_fp = None
    cv_fp_by: dict[str, float] = {}
    curve: dict[str, dict[str, float]] = {}
    if folds >= 2:
        # (rows, keys): the fold of each row under each key of fold_by ("family+group").
        fold = np.array([[_fold_of(r, i, folds, key) for key in fold_by.split("+")]
                         for i, r in enumerate(train)])  # fmt: skip
        total, times = np.zeros(len(train)), np.zeros(len(train))
        for k in range(folds):
            in_k = (fold == k).any(axis=1)  # held out by one of its keys
            held, kept = everything[in_k], everything[~in_k]
            if not held.size or len(set(y[kept])) < 2:
                continue
            total[held] += _logits(fit_ensemble(enc, y, kept, **fit), enc, held)
            times[held] += 1
        oof = np.where(times > 0, total / np.maximum(times, 1), np.nan)
        scored = ~np.isnan(oof)
        p = 0.5 * (1.0 + np.tanh(0.5 * oof[scored]))
        counted = np.fromiter((r.harmful or bool(r.calibrate) for r in train), bool, len(train))
        counted = counted[scored]
        pos_s, neg_s = p[y[scored] > 0.5], p[(y[scored] < 0.5) & counted]
        # With max_fp_by: the counted benign rows' scores by that field's value.
        groups: dict[str, npt.NDArray[np.float64]] = {}
        if max_fp_by is not None:
            keys = [None if r.info.get(max_fp_by) is None else str(r.info[max_fp_by])
                    for r in train]  # fmt: skip
            neg_keys = np.array(keys, dtype=object)[scored][(y[scored] < 0.5) & counted]
            groups = {k: neg_s[neg_keys == k] for k in sorted(set(neg_keys) - {None})}
        if pos_s.size and neg_s.size:
            for cap in (0.005, 0.01, 0.02, 0.03, 0.05):
                t_cap, _ = _capped_threshold(pos_s, neg_s, cap, groups)
                curve[f"{cap:.1%}"] = {"threshold": round(t_cap, 4),
                                       "recall": float(np.mean(pos_s >= t_cap))}  # fmt: skip
        if threshold is None and pos_s.size and neg_s.size:
            threshold, binding = _capped_threshold(pos_s, neg_s, max_fp, groups)
            rule = f"lowest with out-of-fold false positives <= {max_fp:g} (folds by {fold_by})"
            if max_fp_by is not None:
                checked = sum(v.size >= _min_rows(max_fp) for v in groups.values())
                decides = binding or "the cap on all"
                rule += (f", in all and in each {max_fp_by} of >= {_min_rows(max_fp)} counted "
                         f"benign rows ({checked} checked; {decides} decides)")  # fmt: skip
            if not counted.all():
                rule += f"; {int((~counted).sum())} benign rows with calibrate false not counted"
        if threshold is not None and pos_s.size and neg_s.size:
            cv_recall = float(np.mean(pos_s >= threshold))
            cv_fp = float(np.mean(neg_s >= threshold))
            cv_fp_by = {k: float(np.mean(v >= threshold)) for k, v in groups.items()
                        if v.size >= _min_rows(max_fp)}  # fmt: skip
    if threshold is None:
        threshold, rule = 0.5, "0.5 (no folds)"

    head = fit_ensemble(enc, y, everything, **fit)
    by_cat = Counter(r.category for r in train if r.harmful and r.category)
    cats = tuple(sorted(by_cat)) if len(by_cat) >= 2 else ()
    heads, biases = [head.w], [head.b]
    harmful = [i for i, r in enumerate(train) if r.harmful and r.category in by_cat]
    for cat in cats:
        labels = [1.0 if train[i].category == cat else 0.0 for i in harmful]
        feats = []
        for i in harmful:
            lo, hi = enc.start[i], enc.start[i + 1]
            feats.append((enc.idx[lo:hi], np.full(hi - lo, enc.scale[i])))
        w, b = fit_logistic(feats, labels, epochs=epochs, seed=seed, bits=bits)
        heads.append(w)
        biases.append(b)
    report = TrainReport(
        path=str(output),
        harmful=pos,
        benign=len(train) - pos,
        categories=dict(sorted(by_cat.items())),
        threshold=round(threshold, 4),
        threshold_rule=rule,
        cv_recall=cv_recall,
        cv_false_positive_rate=cv_fp,
        cv_curve=curve,
        cv_false_positive_rate_by=cv_fp_by,
        folds=folds if cv_recall is not None else 0,
        fold_by=fold_by,
        bits=bits,
        power=power,
        hidden=hidden,
        epochs=epochs,
        seed=seed,
        seeds=seeds,
        dropout=dropout,
    )
    meta = {k: v for k, v in report.to_dict().items() if k != "path"}
    model = ModerationModel(
        np.stack(heads).astype(np.float32), np.array(biases),
        head.d_in.astype(np.float32), head.d_bias.astype(np.float32),
        head.d_out.astype(np.float32), head.p_in.astype(np.float32),
        head.p_out.astype(np.float32), cats, report.threshold, bits, power, meta, fz,
    )  # fmt: skip
    model.save(output)
    return report


# ============================================================================ evaluation
def evaluate(
    model: ModerationModel,
    rows: Iterable[LabeledText],
    *,
    threshold: float | None = None,
    by: Sequence[str] = (),
    encoder: Encoder | None = None,
) -> dict[str, Any]:
    """Recall on harmful rows and false-positive rate on benign rows at ``threshold``
    (default: the model's), overall and per value of each ``info`` field in ``by``; with
    ``encoder``, a row the model is unsure of is the encoder's to decide, as in the guard."""
    t = model.threshold if threshold is None else threshold

    def flagged(text: str) -> bool:
        deep = deobfuscate(_normalize(text))
        p = model.prob_stats(model.stats(deep))
        return p >= t or (encoder is not None and encoder.flags(p, t, deep))

    def tally(pairs: list[tuple[LabeledText, bool]]) -> dict[str, Any]:
        pos = [hit for r, hit in pairs if r.harmful]
        neg = [hit for r, hit in pairs if not r.harmful]
        return {
            "harmful": len(pos),
            "benign": len(neg),
            "recall": sum(pos) / len(pos) if pos else None,
            "false_positive_rate": sum(neg) / len(neg) if neg else None,
        }

    pairs = [(r, flagged(r.text)) for r in rows]
    out: dict[str, Any] = {"threshold": t, **tally(pairs)}
    if encoder is not None:
        out["encoder"] = {"path": str(encoder.path), "low": encoder.low,
                          "threshold": encoder.threshold}  # fmt: skip
    for name in by:
        groups: dict[str, list[tuple[LabeledText, bool]]] = {}
        for r, hit in pairs:
            groups.setdefault(str(r.info.get(name, "-")), []).append((r, hit))
        out[f"by_{name}"] = {k: tally(v) for k, v in sorted(groups.items())}
    return out
