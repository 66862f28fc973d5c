"""Comparing eval reports: side-by-side tables with deltas and paired significance,
a PNG chart, and a leaderboard over every registered report.

Nothing is cut silently: a long table shows its group rows and every task outside a group,
and says how many subtask rows it left out and how to see them (``visible_rows``); the
chart draws the rows the table shows. The leaderboard gives equal scores the same rank and
flags a task whose reports scored different numbers of documents."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lmops.core.errors import UserError
from lmops.eval.run import NOT_METRICS

__all__ = [
    "CompareResult",
    "Hidden",
    "compare_reports",
    "leaderboard",
    "plot_compare",
    "visible_rows",
]

# Tables longer than this show their group rows and ungrouped tasks only (unless asked).
MAX_ROWS = 40

T = TypeVar("T")


@dataclass
class Hidden:
    """What a table left out: subtask rows of groups whose group row it shows."""

    rows: int = 0
    tasks: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)

    def message(self, how: str = "--all shows them, --json prints everything") -> str:
        if not self.rows:
            return ""
        return (
            f"{self.rows} rows of {len(self.tasks)} subtasks of {', '.join(sorted(self.groups))} "
            f"not shown (their group rows are); {how}"
        )


def visible_rows(
    rows: list[T],
    subtask_of: Callable[[T], tuple[str, str] | None],
    *,
    show_all: bool = False,
    max_rows: int = MAX_ROWS,
) -> tuple[list[T], Hidden]:
    """The rows a table shows: all of them when ``show_all`` or when they fit in
    ``max_rows``; otherwise every row but those of subtasks whose group has its own row
    (``subtask_of(row)`` gives ``(group, task)`` for such a row, None for a group row or a
    task outside any group). Order is kept; what was left out is counted."""
    hidden = Hidden()
    if show_all or len(rows) <= max_rows:
        return rows, hidden
    shown = []
    for r in rows:
        sub = subtask_of(r)
        if sub is None:
            shown.append(r)
            continue
        hidden.rows += 1
        hidden.groups.add(sub[0])
        hidden.tasks.add(sub[1])
    return shown, hidden


def _load(store: Any, ref: str) -> tuple[Any, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    v = store.assets.resolve(ref)
    if v.kind != "eval_report":
        raise UserError(f"{ref!r} is a {v.kind}, not an eval_report")
    folder = store.assets.path(v.ref)
    report = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    if not isinstance(report.get("results"), dict):
        raise UserError(
            f"{v.ref} holds no task results (a judge or safety report); eval compare "
            "compares the reports of eval run"
        )
    items: dict[str, list[dict[str, Any]]] = {}
    f = folder / "items.jsonl"
    if f.exists():
        for line in f.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                row = json.loads(line)
                items.setdefault(row["task"], []).append(row)
    return v, report, items


@dataclass
class CompareRow:
    task: str
    metric: str
    values: list[float | None]
    deltas: list[float | None]  # value - first report's value
    p_values: list[float | None]  # paired test against the first report (same items)
    significant: list[bool | None]
    group: str | None = None  # the group this task belongs to (a subtask row)
    is_group: bool = False  # a group's row: its subtasks' document-weighted mean


@dataclass
class CompareResult:
    reports: list[str]
    models: list[str]
    rows: list[CompareRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reports": self.reports,
            "models": self.models,
            "rows": [r.__dict__ for r in self.rows],
        }


def _is_score(metric: str, value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and "stderr" not in metric
        and metric not in NOT_METRICS
    )


def compare_reports(store: Any, refs: list[str], *, alpha: float = 0.05) -> CompareResult:
    """Every (task, metric) of the first report, then every group's, compared with the
    other reports. A difference is significant when a paired permutation test on the
    per-item scores of the same items gives p < ``alpha`` (a group: its subtasks' items
    together)."""
    from lmops.eval.metrics import paired_comparison

    if len(refs) < 2:
        raise UserError("compare needs at least two eval reports")
    loaded = [_load(store, r) for r in refs]
    out = CompareResult(
        [v.ref for v, _, _ in loaded],
        [rep["model"].get("ref") or rep["model"].get("name") for _, rep, _ in loaded],
    )

    def group_items(rep: dict[str, Any], items: dict[str, list[Any]], g: str) -> list[Any]:
        members = [t for t, r in rep["results"].items() if r.get("group") == g]
        return [it for t in members for it in items.get(t, [])]

    _, first, first_items = loaded[0]
    sections: list[tuple[str, dict[str, Any], bool]] = [
        (t, m, False) for t, m in first["results"].items()
    ] + [(g, m, True) for g, m in (first.get("groups") or {}).items()]
    for task, metrics, is_group in sections:
        for metric, value in metrics.items():
            if not _is_score(metric, value):
                continue
            values: list[float | None] = []
            deltas: list[float | None] = []
            pvals: list[float | None] = []
            sig: list[bool | None] = []
            base = group_items(first, first_items, task) if is_group else first_items.get(task, [])
            for j, (_v, rep, items) in enumerate(loaded):
                section = (rep.get("groups") or {}) if is_group else rep["results"]
                other = section.get(task, {}).get(metric)
                values.append(float(other) if isinstance(other, int | float) else None)
                if j == 0 or other is None:
                    deltas.append(None)
                    pvals.append(None)
                    sig.append(None)
                    continue
                deltas.append(float(other) - float(value))
                mine = group_items(rep, items, task) if is_group else items.get(task, [])
                a = [it.get("scores", {}).get(metric) for it in base]
                b = [it.get("scores", {}).get(metric) for it in mine]
                same_items = (
                    len(a) == len(b)
                    and a
                    and None not in a
                    and None not in b
                    and [it.get("context") for it in base] == [it.get("context") for it in mine]
                )
                if same_items:
                    cmp = paired_comparison(
                        [float(x) for x in b], [float(x) for x in a], alpha=alpha
                    )
                    pvals.append(cmp.p_value)
                    sig.append(cmp.significant)
                else:
                    pvals.append(None)
                    sig.append(None)
            group = None if is_group else metrics.get("group")
            out.rows.append(CompareRow(task, metric, values, deltas, pvals, sig, group, is_group))
    names = {task for task, _, _ in sections}  # by name: a task whose scores are all null counts
    for j in range(1, len(loaded)):
        rep = loaded[j][1]
        if not names & {*rep["results"], *(rep.get("groups") or {})}:
            raise UserError(_disjoint(refs[j], loaded[j], loaded[0]))
    return out


def _disjoint(asked: str, other: Any, first: Any) -> str:
    """The one-line refusal of a report that shares no scored task with the first one."""

    def tasks(rep: dict[str, Any]) -> str:
        names = [*(rep.get("groups") or {}), *(t for t, m in rep["results"].items()
                                              if not m.get("group"))]  # fmt: skip
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    v, rep, _ = other
    msg = (
        f"{v.ref} shares no task with {first[0].ref}: it has {tasks(rep) or 'no task'}, the "
        f"first has {tasks(first[1]) or 'no task'}"
    )
    if ":" not in asked and "@" not in asked and v.version > 1:  # a bare name: the newest
        msg += (
            f"; {asked!r} names its newest version (:{v.version}): give the one to compare, "
            f"e.g. {v.asset}:{v.version - 1} (lmops assets show {v.asset} lists them)"
        )
    return msg + "; compare reports of the same tasks"


def _finite(v: float | None) -> float:
    return float(v) if v is not None and not math.isnan(v) else 0.0


def plot_compare(
    result: CompareResult, path: Path, *, rows: list[CompareRow] | None = None
) -> Path:
    """Grouped bars: one group per (task, metric), one bar per report; * marks significance.
    ``rows``: the rows to draw (the table's; default every row but contamination
    fractions). Nothing else is left out: the chart widens with the rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r for r in (result.rows if rows is None else rows) if not r.metric.endswith("_fraction")
    ]
    width = 0.8 / max(1, len(result.reports))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    for j, name in enumerate(result.models):
        xs = [i + j * width for i in range(len(rows))]
        ys = [_finite(r.values[j]) for r in rows]
        bars = ax.bar(xs, ys, width=width, label=str(name))
        for bar, r in zip(bars, rows, strict=True):
            if r.significant[j]:
                ax.annotate(
                    "*",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                )
    ax.set_xticks([i + width * (len(result.reports) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels(
        [f"{'[group] ' if r.is_group else ''}{r.task}\n{r.metric}" for r in rows],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set_title("eval comparison (* = significant vs the first, paired test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def leaderboard(
    store: Any, *, task: str | None = None, metric: str | None = None
) -> list[dict[str, Any]]:
    """Every READY eval report's scores, best first per (task, metric). Each row has its
    ``rank`` (equal scores share one: 1, 1, 3), ``n_differs``: the reports of this
    (task, metric) scored different numbers of documents (another ``--limit``, data
    version or excluded rows), and ``basis_differs``: they were judged on another question
    set or by another judge (judge reports' ``basis``); either way their scores are not
    comparable as they stand."""
    rows = []
    for asset in store.assets.list(kind="eval_report"):
        for v in store.assets.show(asset.name).versions:
            if v.status.value != "READY":
                continue
            model = (v.metadata.get("model") or {}).get("ref") or (
                v.metadata.get("model") or {}
            ).get("name")
            sections = [(t, m, False) for t, m in (v.metadata.get("results") or {}).items()]
            sections += [(g, m, True) for g, m in (v.metadata.get("groups") or {}).items()]
            for t, metrics, is_group in sections:
                if task and t != task and (is_group or not t.startswith(task)):
                    continue
                for m, value in metrics.items():
                    if not _is_score(m, value) or (metric and m != metric):
                        continue
                    rows.append(
                        {
                            "task": t,
                            "metric": m,
                            "model": model,
                            "value": float(value),
                            "report": v.ref,
                            "n": metrics.get("n"),
                            "group": is_group,
                            "basis": v.metadata.get("basis"),
                        }
                    )
    lower_better = ("perplexity", "bits_per_byte", "contaminated_fraction")

    def better_first(r: dict[str, Any]) -> float:
        # rounded, so one score summed in another order is still a tie
        v = round(r["value"], 10)
        return v if any(x in r["metric"] for x in lower_better) else -v

    rows.sort(key=lambda r: (r["task"], r["metric"], better_first(r)))
    blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault((r["task"], r["metric"]), []).append(r)
    for block in blocks.values():
        differs = len({r["n"] for r in block}) > 1
        bases = len({json.dumps(r["basis"], sort_keys=True) for r in block}) > 1
        for i, r in enumerate(block):
            same = i > 0 and better_first(block[i - 1]) == better_first(r)
            r["rank"] = block[i - 1]["rank"] if same else i + 1
            r["n_differs"] = differs
            r["basis_differs"] = bases
    return rows
