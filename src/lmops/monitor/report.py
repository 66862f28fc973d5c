"""A drift report on disk and in the store: ``report.json`` (the :class:`DriftReport`),
``summary.md`` (a table for people) and ``plots/<monitor>.png`` (reference against current:
overlaid histograms for scalars, bars for rates and categories, the two windows' embeddings
on their first two principal components).

:func:`record_report` registers the folder as the next version of a ``drift_report`` asset
whose metadata holds the headline (status, drifted monitors, alert states) so listings and
the alert hysteresis never open the files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmops.monitor.drift import Comparison, DriftReport, MonitorResult
from lmops.store import register_kind

if TYPE_CHECKING:
    from lmops.store import Store, Version

__all__ = ["DRIFT_REPORT", "format_summary", "load_report", "record_report", "write_report"]

DRIFT_REPORT = "drift_report"
register_kind(DRIFT_REPORT)


def _principal(comp: Comparison) -> tuple[np.ndarray, np.ndarray]:
    """Both windows' embeddings on the first two principal axes of the pooled rows (computed
    once per report: the eigenvectors of the (d, d) covariance, cheaper than an SVD of the
    rows)."""
    if comp.projection is None:
        assert comp.embeddings is not None
        r, c = comp.embeddings
        both = np.vstack([r, c]).astype(np.float64)
        centre = both.mean(0)
        _, vecs = np.linalg.eigh(np.cov(both - centre, rowvar=False))
        axes = vecs[:, ::-1][:, :2]  # (d, 2), largest eigenvalues first
        comp.projection = ((r - centre) @ axes, (c - centre) @ axes)
    return comp.projection


def _plot(m: MonitorResult, comp: Comparison, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")  # no display; the figure is only saved
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    try:
        if m.family == "embedding":
            if comp.embeddings is None:
                return False
            pr, pc = _principal(comp)
            ax.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.5, label="reference")
            ax.scatter(pc[:, 0], pc[:, 1], s=6, alpha=0.5, label="current")
            ax.set_xlabel("PC1")
            ax.set_ylabel("PC2")
        elif m.name in comp.values:
            r_vals, c_vals = comp.values[m.name]
            if m.family == "scalar":
                both = np.asarray(r_vals + c_vals, float)
                bins = np.histogram_bin_edges(both, bins=30).tolist()
                ax.hist(r_vals, bins=bins, alpha=0.5, density=True, label="reference")
                ax.hist(c_vals, bins=bins, alpha=0.5, density=True, label="current")
                ax.set_xlabel(m.name)
            else:
                cats = sorted(set(map(str, r_vals)) | set(map(str, c_vals)))
                x = np.arange(len(cats))
                for off, vals, label in ((-0.2, r_vals, "reference"), (0.2, c_vals, "current")):
                    shares = [sum(1 for v in vals if str(v) == k) / len(vals) for k in cats]
                    ax.bar(x + off, shares, width=0.4, label=label)
                ax.set_xticks(x, cats, rotation=30, fontsize=7)
                ax.set_ylabel("share")
        else:
            return False
        p = f", p={m.p_value:.3g}" if m.p_value is not None else ""
        ax.set_title(f"{m.name}: {m.statistic:.3g}{p}{' DRIFT' if m.drift else ''}", fontsize=9)
        ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.2)
        fig.savefig(path, dpi=72)
        return True
    finally:
        plt.close(fig)


def format_summary(report: DriftReport) -> str:
    """A short text for people: the headline, then one line per monitor."""
    lines = [
        f"{report.subject} vs {report.reference}: {report.status.upper()} - {report.message}",
        f"rows: reference {report.n_ref}, current {report.n_cur}",
    ]
    if report.embedder:
        note = f" ({report.embedder_note})" if report.embedder_note else ""
        lines.append(f"embedder: {report.embedder}{note}")
    elif any(m.family == "embedding" for m in report.monitors):
        lines.append("embedder: none ran (the embedding monitors were skipped)")
    for m in report.monitors:
        if m.skipped:
            lines.append(f"  {m.name:22} skipped: {m.skipped}")
            continue
        p = f"p={m.p_value:.3g}" if m.p_value is not None else ""
        flag = "DRIFT" if m.drift else "ok"
        lines.append(f"  {m.name:22} {flag:5} stat={m.statistic:.4g} {p} (n={m.n_ref}/{m.n_cur})")
    if report.canaries is not None:
        c = report.canaries
        # "failed": answered wrong; no answer and late answers are counted apart (a report
        # from before the split has no "wrong": every failure was one)
        wrong = c.get("wrong", c.get("failing") or [])
        ids = f" ({', '.join(wrong)})" if wrong else ""
        lines.append(
            f"  canaries {c.get('set')}: {c.get('passed', 0)} passed, {len(wrong)} failed{ids}"
            + (f", {c['errors']} not run: {c['error']}" if c.get("error") else "")
        )
        for key, kind in [("unanswered", "an availability"), ("slow", "a latency")]:
            if c.get(key):  # the deployment's serving, not its quality
                lines.append(
                    f"    {len(c[key])} {key} ({', '.join(c[key])}): {c.get(key + '_why')}; "
                    f"{kind} failure, not a retraining trigger"
                )
    for name, state in sorted(report.alerts.items()):
        if state.get("firing"):
            lines.append(f"  alert firing: {name}")
    for n in report.notifications:
        what = "ok" if n.get("ok") else str(n.get("error"))
        if n.get("attempt"):
            what += f" (attempt {n['attempt']}{', given up' if n.get('gave_up') else ''})"
        lines.append(f"  webhook {n.get('url')}: {what}")
    if report.undelivered:
        lines.append(f"  webhook: {len(report.undelivered)} to send again at the next check")
    return "\n".join(lines)


def write_report(comp: Comparison, folder: Path, *, plots: bool = True) -> Path:
    """Write the report's files into ``folder`` (created); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    if plots:
        (folder / "plots").mkdir(exist_ok=True)
        for m in comp.report.monitors:
            if m.skipped is None and _plot(m, comp, folder / "plots" / f"{m.name}.png"):
                m.plot = f"plots/{m.name}.png"
    (folder / "report.json").write_text(
        json.dumps(comp.report.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    (folder / "summary.md").write_text(
        "```\n" + format_summary(comp.report) + "\n```\n", encoding="utf-8"
    )
    return folder


def record_report(
    store: Store,
    comp: Comparison,
    name: str,
    *,
    inputs: Iterable[tuple[str, str]] = (),
    run_id: str | None = None,
    plots: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Version:
    """Write and register ``comp`` as the next version of the ``drift_report`` asset ``name``,
    linked to ``inputs`` (model versions as ``served_by``, the reference dataset as
    ``reference``, ...); ``metadata`` is added to the version's headline."""
    r = comp.report
    meta: dict[str, Any] = {
        "subject": r.subject,
        "reference": r.reference,
        "status": r.status,
        "drift": r.drift,
        "drifted": r.drifted,
        "message": r.message,
        "window": r.window,
        "alerts": r.alerts,
        "undelivered": r.undelivered,
        "n_ref": r.n_ref,
        "n_cur": r.n_cur,
        **(metadata or {}),
    }
    if r.canaries is not None:
        meta["canaries"] = {k: v for k, v in r.canaries.items() if k != "results"}
    with tempfile.TemporaryDirectory(prefix="lmops-drift-") as tmp:
        folder = write_report(comp, Path(tmp) / "report", plots=plots)
        return store.assets.register(
            DRIFT_REPORT,
            name,
            folder,
            metadata=meta,
            inputs=list(inputs),
            run_id=run_id,
            description=f"{r.subject} vs {r.reference}: {r.status}",
        )


def load_report(store: Store, ref: str) -> DriftReport:
    """The :class:`DriftReport` stored in a ``drift_report`` version."""
    path = store.assets.path(ref) / "report.json"
    return DriftReport.model_validate_json(path.read_text(encoding="utf-8"))
