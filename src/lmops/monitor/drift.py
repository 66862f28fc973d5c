"""The monitors: compare a current :class:`~lmops.monitor.features.Sample` with a reference
one, feature by feature, and say what moved.

=====================  =========  ==================================================
monitor                family     test (decision)
=====================  =========  ==================================================
prompt_chars, ...      scalar     PSI over reference deciles, KS (PSI > psi_threshold
                                  and KS p < alpha: both a real and a sizeable move;
                                  latency/TTFT also need the median to move by
                                  timing_min_change, 20 %)
error/refusal/pii_rate rate       two-proportion z-test (p < alpha and |delta| >= min_delta)
language, guardrail    category   chi-square (p < alpha and category PSI > 0.1)
embedding_mmd          embedding  MMD, permutation p-value (p < alpha)
embedding_classifier   embedding  logistic-regression AUC, analytic null (p < alpha)
=====================  =========  ==================================================

A monitor runs only where both samples have at least ``min_rows`` values of its feature
(a dataset reference has no latency; a log without bodies has no texts); the others are
listed as skipped with the reason. The :data:`OPERATIONAL` monitors (latency, TTFT, error
rate) watch the serving, not what is asked or answered: they alert, but retraining from the
logs cannot fix them, so the closed loop does not retrain on them unless told to. Scores are
computed once: :class:`MonitorResult` keeps
every test's statistic so a threshold can be re-decided from a stored report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import name_hint
from lmops.core.progress import Progress
from lmops.core.yamlcfg import FieldError
from lmops.monitor import stats
from lmops.monitor.embed import Embedder, get_embedder
from lmops.monitor.features import REFUSAL, Sample, language
from lmops.monitor.wording import counted

__all__ = [
    "MONITORS",
    "OPERATIONAL",
    "Comparison",
    "DriftReport",
    "MonitorConfig",
    "MonitorResult",
    "compare_samples",
    "known_monitors",
]

Family = Literal["scalar", "rate", "category", "embedding"]
Status = Literal["ok", "drift", "empty", "no_overlap"]

# name -> (family, feature extractor); extractors return one value or None per row
_SCALARS: dict[str, Callable[[Sample], list[Any]]] = {
    "prompt_chars": lambda s: [len(t) if t is not None else None for t in s.prompts],
    "response_chars": lambda s: [len(t) if t is not None else None for t in s.responses],
    "prompt_tokens": lambda s: s.prompt_tokens,
    "completion_tokens": lambda s: s.completion_tokens,
    "latency_ms": lambda s: s.latency_ms,
    "ttft_ms": lambda s: s.ttft_ms,
}
_RATES: dict[str, Callable[[Sample], list[Any]]] = {
    "error_rate": lambda s: s.error,
    "refusal_rate": lambda s: [
        bool(REFUSAL.search(t)) if t is not None else None for t in s.responses
    ],
    "pii_rate": lambda s: s.pii,
}
_CATEGORIES: dict[str, Callable[[Sample], list[Any]]] = {
    "language": lambda s: [language(t) if t is not None else None for t in s.prompts],
    "guardrail": lambda s: s.guardrail,
}
_EMBEDDING = ("embedding_mmd", "embedding_classifier")
MONITORS: tuple[str, ...] = (*_SCALARS, *_RATES, *_CATEGORIES, *_EMBEDDING)
# how the deployment serves, not what it is asked or answers: a retrain cannot fix these
OPERATIONAL: tuple[str, ...] = ("latency_ms", "ttft_ms", "error_rate")
# timings on a few hundred requests: KS and PSI flag any change at all (a 7 % slowdown
# gave p=5e-11 on 80 requests), so a timing also needs a move its users would notice
_TIMINGS = ("latency_ms", "ttft_ms")


class MonitorConfig(BaseModel):
    """Thresholds and costs of one evaluation (defaults are the published ones)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt threshold must not run on defaults
    alpha: float = Field(0.01, gt=0, lt=1, description="significance level of every test")
    psi_threshold: float = Field(0.2, gt=0, description="PSI above which a scalar moved")
    rate_min_delta: float = Field(0.02, ge=0, le=1, description="smallest rate change that counts")
    timing_min_change: float = Field(
        0.2, ge=0, description="latency/TTFT: smallest relative move of the median that counts"
    )
    min_rows: int = Field(20, ge=2, description="fewer values on a side: the monitor is skipped")
    embedder: str = Field("auto", description="auto, minilm or hashed")
    max_embed: int = Field(1000, ge=10, description="rows per side embedded (a random subset)")
    permutations: int = Field(500, ge=50, description="MMD permutations")
    monitors: list[str] | None = Field(None, description="run only these (default: all)")
    plots: bool = Field(True, description="draw a plot per monitor into the report")
    seed: int = 0

    @field_validator("monitors")
    @classmethod
    def _known_monitors(cls, v: list[str] | None) -> list[str] | None:
        return known_monitors(v)


def known_monitors(names: list[str] | None) -> list[str] | None:
    """``names`` when each is a monitor; else a :class:`FieldError` at the first unknown one,
    with a did-you-mean (an unknown name must not leave a check running on the others)."""
    for i, name in enumerate(names or []):
        if name not in MONITORS:
            hint = name_hint(name, list(MONITORS), "")
            if not hint.startswith("did you mean"):
                hint = "the monitors are " + ", ".join(MONITORS)
            raise FieldError((i,), f"unknown monitor {name!r}; {hint}")
    return names


class MonitorResult(BaseModel):
    """One monitor's outcome; ``statistic``/``p_value``/``threshold`` are its deciding test's."""

    name: str
    family: Family
    drift: bool = False
    statistic: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    tests: list[stats.TestResult] = Field(default_factory=list)
    n_ref: int = 0
    n_cur: int = 0
    ref_summary: dict[str, Any] = Field(default_factory=dict)
    cur_summary: dict[str, Any] = Field(default_factory=dict)
    plot: str | None = None  # file name inside the report asset
    skipped: str | None = None


class DriftReport(BaseModel):
    """One evaluation of the monitors: what was compared, and every monitor's result."""

    subject: str  # "deployment:NAME" or "dataset:REF"
    reference: str  # a dataset ref, or a description of the reference window
    window: dict[str, Any] = Field(default_factory=dict)
    status: Status = "ok"
    message: str = ""
    drift: bool = False
    drifted: list[str] = Field(default_factory=list)
    n_ref: int = 0
    n_cur: int = 0
    embedder: str | None = None
    embedder_note: str | None = None  # why it is not the one asked for (auto's fallback)
    seconds: float = 0.0
    monitors: list[MonitorResult] = Field(default_factory=list)
    alerts: dict[str, Any] = Field(default_factory=dict)  # of this alert_scope only
    alert_scope: str | None = None  # what the alerts are about (monitor.checks.alert_scope)
    # alerts firing in the deployment's other scopes (another reference's checks): the
    # exported gauges stay 1 while any scope fires, whichever check ran last
    firing_elsewhere: list[str] = Field(default_factory=list)
    canaries: dict[str, Any] | None = None
    notifications: list[dict[str, Any]] = Field(default_factory=list)
    # webhook payloads not delivered yet, {"payload", "attempts"}: the next evaluation
    # of the same subject sends them again (monitor.alerts.deliver)
    undelivered: list[dict[str, Any]] = Field(default_factory=list)

    def monitor(self, name: str) -> MonitorResult:
        return next(m for m in self.monitors if m.name == name)


@dataclass
class Comparison:
    """A report plus what its plots are drawn from (values per monitor, embeddings)."""

    report: DriftReport
    values: dict[str, tuple[list[Any], list[Any]]] = field(default_factory=dict)
    embeddings: tuple[np.ndarray, np.ndarray] | None = None
    projection: tuple[np.ndarray, np.ndarray] | None = None  # 2-D, for the plots


def _known(values: list[Any]) -> list[Any]:
    return [v for v in values if v is not None]


def _describe(xs: np.ndarray) -> dict[str, Any]:
    return {
        "mean": float(xs.mean()),
        "p50": float(np.median(xs)),
        "p90": float(np.quantile(xs, 0.9)),
    }


def _scalar(name: str, r: list[Any], c: list[Any], cfg: MonitorConfig) -> MonitorResult:
    rx, cx = np.asarray(r, float), np.asarray(c, float)
    p = stats.psi(rx, cx, threshold=cfg.psi_threshold)
    k = stats.ks(rx, cx, alpha=cfg.alpha)
    tests = [p, k]
    if name in _TIMINGS:
        r50, c50 = float(np.median(rx)), float(np.median(cx))
        change = abs(c50 - r50) / r50 if r50 > 0 else (0.0 if c50 == r50 else float("inf"))
        tests.append(
            stats.TestResult(
                test="median_change",
                statistic=change,
                threshold=cfg.timing_min_change,
                drift=change > cfg.timing_min_change,
                detail={"ref_median": r50, "cur_median": c50},
            )
        )
    return MonitorResult(
        name=name,
        family="scalar",
        drift=all(t.drift for t in tests),
        statistic=p.statistic,
        p_value=k.p_value,
        threshold=cfg.psi_threshold,
        tests=tests,
        ref_summary=_describe(rx),
        cur_summary=_describe(cx),
    )


def _rate(name: str, r: list[Any], c: list[Any], cfg: MonitorConfig) -> MonitorResult:
    t = stats.two_proportions(
        sum(map(bool, r)),
        len(r),
        sum(map(bool, c)),
        len(c),
        alpha=cfg.alpha,
        min_delta=cfg.rate_min_delta,
    )
    return MonitorResult(
        name=name,
        family="rate",
        drift=t.drift,
        statistic=t.statistic,
        p_value=t.p_value,
        threshold=cfg.alpha,
        tests=[t],
        ref_summary={"rate": t.detail["ref_rate"]},
        cur_summary={"rate": t.detail["cur_rate"]},
    )


def _shares(xs: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for x in xs:
        out[x] = out.get(x, 0.0) + 1 / len(xs)
    return dict(sorted(out.items()))


def _category(name: str, r: list[Any], c: list[Any], cfg: MonitorConfig) -> MonitorResult:
    t = stats.chi_square(r, c, alpha=cfg.alpha)
    return MonitorResult(
        name=name,
        family="category",
        drift=t.drift,
        statistic=t.statistic,
        p_value=t.p_value,
        threshold=cfg.alpha,
        tests=[t],
        ref_summary=_shares(r),
        cur_summary=_shares(c),
    )


def _subset(texts: list[str], n: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= n:
        return texts
    return [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]


def _embed(emb: Embedder, texts: list[str], bar: Progress, batch: int = 256) -> np.ndarray:
    parts = []
    for i in range(0, len(texts), batch):
        parts.append(emb.embed(texts[i : i + batch]))
        bar.advance(len(parts[-1]))
    return np.vstack(parts)


def _no_overlap_cause(skipped: list[MonitorResult], min_rows: int) -> str:
    """Why no monitor ran, from what each skipped one had: too few rows on a side where
    both have the feature, else features that only one side has (texts need bodies)."""
    both = [m for m in skipped if m.n_ref and m.n_cur]
    if both:  # the data is there, just not enough of it
        n_ref, n_cur = max(m.n_ref for m in both), max(m.n_cur for m in both)
        short = [f"the reference has {n_ref}"] if n_ref < min_rows else []
        short += [f"the current window has {n_cur}"] if n_cur < min_rows else []
        return (
            f"too few rows to compare: {' and '.join(short)}, and every monitor needs "
            f"{min_rows} on each side (min_rows); give more rows, or lower min_rows"
        )
    texts = [m for m in skipped if m.family == "embedding"]
    if texts and not texts[0].n_cur and texts[0].n_ref:
        return (
            "no feature is on both sides: the current window has no prompt texts (log "
            "bodies on the deployment) and the reference has nothing else to compare"
        )
    return (
        "no feature is on both sides (e.g. a dataset reference has texts and token counts "
        "only; a log without bodies has no texts); pick a reference with the current side's "
        "features, or log bodies on the deployment"
    )


def compare_samples(
    ref: Sample,
    cur: Sample,
    cfg: MonitorConfig | None = None,
    *,
    subject: str,
    reference: str,
    embedder: Embedder | None = None,
    progress: bool = False,
) -> Comparison:
    """Run every selected monitor on ``cur`` against ``ref``. Never raises for missing data:
    an empty current window gives status ``empty``, no monitor with data on both sides
    ``no_overlap``; each skipped monitor says why."""
    cfg = cfg or MonitorConfig()
    started = time.process_time()
    wanted = cfg.monitors or list(MONITORS)
    report = DriftReport(subject=subject, reference=reference, n_ref=len(ref), n_cur=len(cur))
    out = Comparison(report)
    if not len(cur) or not len(ref):
        side = "current window" if not len(cur) else "reference"
        report.status, report.message = "empty", f"the {side} has no rows; nothing was compared"
        return out
    families: list[tuple[Family, dict[str, Callable[[Sample], list[Any]]], Any]] = [
        ("scalar", _SCALARS, _scalar),
        ("rate", _RATES, _rate),
        ("category", _CATEGORIES, _category),
    ]
    for family, extractors, run in families:
        for name, get in extractors.items():
            if name not in wanted:
                continue
            r, c = _known(get(ref)), _known(get(cur))
            if min(len(r), len(c)) < cfg.min_rows:
                report.monitors.append(
                    MonitorResult(
                        name=name,
                        family=family,
                        n_ref=len(r),
                        n_cur=len(c),
                        skipped=f"{counted(len(r), 'reference value')} and "
                        f"{counted(len(c), 'current value')}; needs {cfg.min_rows} on each side",
                    )
                )
                continue
            res = run(name, r, c, cfg)
            res.n_ref, res.n_cur = len(r), len(c)
            report.monitors.append(res)
            out.values[name] = (r, c)
    emb_wanted = [n for n in _EMBEDDING if n in wanted]
    if emb_wanted:
        r_txt = [t for t in ref.prompts if t and t.strip()]
        c_txt = [t for t in cur.prompts if t and t.strip()]
        if min(len(r_txt), len(c_txt)) < cfg.min_rows:
            for name in emb_wanted:
                report.monitors.append(
                    MonitorResult(
                        name=name,
                        family="embedding",
                        n_ref=len(r_txt),
                        n_cur=len(c_txt),
                        skipped=f"{counted(len(r_txt), 'reference prompt text')} and "
                        f"{counted(len(c_txt), 'current prompt text')} (bodies logged?); "
                        f"needs {cfg.min_rows} on each side",
                    )
                )
        else:
            emb = embedder or get_embedder(cfg.embedder)
            report.embedder = emb.name
            report.embedder_note = getattr(emb, "note", None)
            rng = np.random.default_rng(cfg.seed)
            r_sub, c_sub = _subset(r_txt, cfg.max_embed, rng), _subset(c_txt, cfg.max_embed, rng)
            with Progress(
                len(r_sub) + len(c_sub), label="embed", unit="texts", enabled=progress
            ) as bar:
                re_, ce = _embed(emb, r_sub, bar), _embed(emb, c_sub, bar)
            out.embeddings = (re_, ce)
            for name in emb_wanted:
                t = (
                    stats.mmd_test(
                        re_, ce, alpha=cfg.alpha, permutations=cfg.permutations, seed=cfg.seed
                    )
                    if name == "embedding_mmd"
                    else stats.classifier_test(re_, ce, alpha=cfg.alpha, seed=cfg.seed)
                )
                report.monitors.append(
                    MonitorResult(
                        name=name,
                        family="embedding",
                        drift=t.drift,
                        statistic=t.statistic,
                        p_value=t.p_value,
                        threshold=t.threshold,
                        tests=[t],
                        n_ref=len(re_),
                        n_cur=len(ce),
                    )
                )
    ran = [m for m in report.monitors if m.skipped is None]
    report.drifted = [m.name for m in ran if m.drift]
    report.drift = bool(report.drifted)
    if not ran:
        report.status = "no_overlap"
        report.message = _no_overlap_cause(report.monitors, cfg.min_rows)
    else:
        report.status = "drift" if report.drift else "ok"
        report.message = (
            f"drift in {', '.join(report.drifted)}" if report.drift else "no drift"
        ) + f" ({counted(len(ran), 'monitor')}, {len(report.monitors) - len(ran)} skipped)"
    report.seconds = time.process_time() - started
    return out
