"""The data run report: what each operator kept and dropped and why, time per operator,
length histograms before and after, PII found per type, read errors. JSON for machines,
a short text summary for people, and a PNG plot.

Dropped examples are recorded when they are dropped, which may be before the recipe's
``pii_mask``; the report masks them with the recipe's masking before it keeps them, so a
masked dataset never carries PII in clear in its report.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from lmops.data.executor import EDGES, LengthHistogram
from lmops.data.ops import EXAMPLE_CHARS
from lmops.data.recipe import Recipe

__all__ = ["build_report", "format_examples", "format_summary", "write_report_files"]


def build_report(
    recipe: Recipe,
    stage_stats: list[list[dict[str, Any]]],
    *,
    wall_seconds: float,
    shards: int,
    workers: int,
    inputs: list[str],
    input_refs: list[str] | None = None,
) -> dict[str, Any]:
    """The run's report. ``inputs``: what it read (dataset refs, local paths);
    ``input_refs``: the refs its lineage records for them (local files by their external
    references; empty without a store)."""
    ops: list[dict[str, Any]] = []
    before, after = LengthHistogram(), LengthHistogram()
    errors: Counter[str] = Counter()
    n_errors = 0
    for stats in stage_stats:
        merged: list[dict[str, Any]] = []
        for shard in stats:
            if shard.get("hist_in"):
                before.merge(shard["hist_in"])
            if shard.get("hist_out"):
                after.merge(shard["hist_out"])
            n_errors += shard["errors"]["count"]
            errors.update(shard["errors"]["by_reason"])
            for j, op in enumerate(shard["ops"]):
                if j == len(merged):
                    merged.append(
                        {
                            **op,
                            "dropped": Counter(op["dropped"]),
                            "counters": Counter(op["counters"]),
                            "examples": {k: list(v) for k, v in op["examples"].items()},
                        }
                    )
                    continue
                m = merged[j]
                m["docs_in"] += op["docs_in"]
                m["docs_out"] += op["docs_out"]
                m["seconds"] += op["seconds"]
                m["dropped"].update(op["dropped"])
                m["counters"].update(op["counters"])
                for reason, ex in op["examples"].items():
                    kept = m["examples"].setdefault(reason, [])
                    kept.extend(ex[: max(0, 3 - len(kept))])
        ops.extend(merged)
    redact = recipe.redactor()
    for i, op in enumerate(ops):
        op["examples"] = {
            reason: [
                {**ex, "text": (redact(ex["text"]) if redact else ex["text"])[:EXAMPLE_CHARS]}
                for ex in examples
            ]
            for reason, examples in op["examples"].items()
        }
        op["step"] = i
        op["dropped"] = dict(op["dropped"].most_common())
        op["counters"] = dict(sorted(op["counters"].items()))
        op["docs_per_s"] = op["docs_in"] / op["seconds"] if op["seconds"] > 0 else None
    pii: Counter[str] = Counter()
    for op in ops:
        if op["name"].startswith("pii"):
            pii.update(op["counters"])
    docs_in = before.docs
    docs_out = after.docs
    # A resumed run reuses the shard stages an interrupted one finished: its throughput is
    # over the documents it processed itself (in the stage that processed the most), not
    # over every document in a fraction of the time.
    processed = max((_processed(stats) for stats in stage_stats), default=0)
    resumed = sum(1 for stats in stage_stats for unit in stats if unit.get("reused"))
    return {
        "recipe": recipe.name,
        "inputs": inputs,
        "input_refs": input_refs or [],
        "shards": shards,
        "workers": workers,
        "wall_seconds": round(wall_seconds, 3),
        "docs_in": docs_in,
        "docs_out": docs_out,
        "docs_per_s": round(processed / wall_seconds, 1) if wall_seconds > 0 else None,
        "docs_processed": processed,
        "resumed_shards": resumed,
        "shard_stages": sum(len(stats) for stats in stage_stats),
        "ops": ops,
        "pii": dict(sorted(pii.items())),
        "errors": {"count": n_errors, "by_reason": dict(errors)},
        "length": {"before": before.to_json(), "after": after.to_json()},
    }


def _processed(stats: list[dict[str, Any]]) -> int:
    """Documents one stage processed in this run (its shards not reused)."""
    n = 0
    for unit in stats:
        if not unit.get("reused"):
            n += (
                unit["ops"][0]["docs_in"]
                if unit["ops"]
                else (unit.get("hist_in") or {}).get("docs", 0)
            )
    return n


def _speed(report: dict[str, Any]) -> str:
    rate = f"{report['docs_per_s'] or 0:,.0f} docs/s"
    resumed = report.get("resumed_shards", 0)
    if not resumed:
        return rate
    of = report.get("shard_stages", resumed)
    return (
        f"resumed: {resumed:,} of {of:,} shard stages reused; {rate} over the "
        f"{report.get('docs_processed', 0):,} documents processed in this run"
    )


def format_summary(report: dict[str, Any]) -> str:
    kept = report["docs_out"]
    total = report["docs_in"]
    pct = 100 * kept / total if total else 0.0
    stages, resumed = report.get("shard_stages", 0), report.get("resumed_shards", 0)
    if stages and resumed == stages:  # a re-run after the last stage: no rate to give
        head = (
            f"recipe {report['recipe']}: nothing left to run: all {stages:,} shard stages were "
            f"done before the interrupt; kept {kept:,} of {total:,} documents ({pct:.1f} %)"
        )
    else:
        head = (
            f"recipe {report['recipe']}: kept {kept:,} of {total:,} documents ({pct:.1f} %) in "
            f"{report['wall_seconds']:.1f} s ({_speed(report)}, "
            f"{report['shards']} shard(s), {report['workers']} worker(s))"
        )
    lines = [head]
    for op in report["ops"]:
        dropped = op["docs_in"] - op["docs_out"]
        line = f"  {op['step']:>2}. {op['name']:<22} {op['docs_in']:>9,} → {op['docs_out']:>9,}"
        if dropped:
            # the most frequent; past five, the rest summed, so the counts shown add up
            items = list(op["dropped"].items())
            shown = [f"{r} {n:,}" for r, n in items[: 5 if len(items) == 5 else 4]]
            if len(items) > 5:
                rest = items[4:]
                shown.append(f"{len(rest)} other reasons {sum(n for _, n in rest):,}")
            line += f"  dropped {dropped:,} ({', '.join(shown)})"
        if op["counters"]:
            line += "  " + ", ".join(f"{k} {v:,}" for k, v in op["counters"].items())
        lines.append(line)
    if report["pii"]:
        lines.append("  PII masked: " + ", ".join(f"{k} {v:,}" for k, v in report["pii"].items()))
    if report["errors"]["count"]:
        lines.append(
            f"  unreadable rows skipped: {report['errors']['count']:,} "
            + json.dumps(report["errors"]["by_reason"], ensure_ascii=False)
        )
    b, a = report["length"]["before"], report["length"]["after"]
    if b["docs"] and a["docs"]:
        lines.append(
            f"  mean length: {b['total_chars'] / b['docs']:,.0f} → {a['total_chars'] / a['docs']:,.0f} chars, "
            f"{b['total_tokens'] / b['docs']:,.0f} → {a['total_tokens'] / a['docs']:,.0f} tokens (approx.)"
        )
    if report.get("dataset"):
        lines.append(f"  registered dataset {report['dataset']}")
    if report.get("dropped"):  # keep_dropped: where every dropped document is
        lines.append("  dropped documents: " + _dropped_where(report["dropped"]))
    return "\n".join(lines)


def _dropped_where(dropped: dict[str, Any]) -> str:
    if not dropped["docs"]:
        return "none to keep"
    ref = dropped.get("dataset")
    where = [w for w in (dropped.get("path"), ref and f"dataset {ref}") if w]
    if not where:  # output.dataset alone, and no store to register it in
        return f"{dropped['docs']:,}, kept nowhere (no store)"
    how = f" (read it: lmops assets path {ref})" if ref else ""
    return f"{dropped['docs']:,}, each with its step and reason, in {' and '.join(where)}{how}"


def format_examples(report: dict[str, Any], width: int = 100) -> str:
    """The dropped examples of each step and reason, one line each, cut to ``width``
    characters (``report.json`` holds up to three per reason, 300 characters each)."""
    lines = []
    for op in report["ops"]:
        for reason, examples in op.get("examples", {}).items():
            if not examples:
                continue
            n = op["dropped"].get(reason, len(examples))
            lines.append(f"  {op['step']:>2}. {op['name']} {reason} ({n:,} dropped), e.g.:")
            for ex in examples:
                text = " ".join(ex["text"].split()) or "(empty)"
                line = f"        {ex['id']}: {text}"
                lines.append(line if len(line) <= width else line[: width - 1] + "…")
    if not lines:
        return ""
    return "dropped examples (the first per reason):\n" + "\n".join(lines)


def write_report_files(report: dict[str, Any], folder: Path, png: Path | None = None) -> None:
    """``report.json`` and ``report.png`` (length histograms before/after, drops by reason);
    ``png``: the same report's plot, already drawn, copied rather than drawn again (drawing
    takes about half a second)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    if png is not None and png.exists():
        shutil.copyfile(png, folder / "report.png")
        return
    with contextlib.suppress(ImportError):  # matplotlib is optional for the report files
        plot_report(report, folder / "report.png")


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e:,}" if e < 1000 else f"{e // 1024}k" for e in EDGES]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, unit in zip(axes[:2], ("chars", "tokens"), strict=True):
        x = range(len(EDGES))
        ax.bar([i - 0.2 for i in x], report["length"]["before"][unit], width=0.4, label="before")
        ax.bar([i + 0.2 for i in x], report["length"]["after"][unit], width=0.4, label="after")
        ax.set_xticks(list(x), labels, rotation=60, fontsize=7)
        ax.set_title(f"document length ({unit}, bin lower edge)")
        ax.set_ylabel("documents")
        ax.legend()
    drops: Counter[str] = Counter()
    for op in report["ops"]:
        for reason, n in op["dropped"].items():
            drops[f"{op['name']}:{reason}"] += n
    ax = axes[2]
    if drops:
        items = drops.most_common(12)[::-1]
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.tick_params(axis="y", labelsize=7)
    ax.set_title("documents dropped, by reason")
    fig.suptitle(f"{report['recipe']}: {report['docs_in']:,} → {report['docs_out']:,} documents")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
