"""``lmops eval run | tasks | compare | leaderboard | perf``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmops.cli._output import console, err_console, open_store, print_json, table
from lmops.core.errors import UserError
from lmops.eval.endpoint import DEFAULT_CONCURRENCY
from lmops.eval.jobs import open_model

app = typer.Typer(
    help="Evaluate models: benchmarks, generation metrics, judges, safety, serving performance.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help=f"Requests in flight at once at the endpoint (default {DEFAULT_CONCURRENCY}).",
        show_default=False,
    ),
]


_store = open_store


@app.command("run")
def run(
    spec_file: Annotated[
        str | None,
        typer.Argument(
            metavar="[SPEC.yaml]",
            help="Eval job YAML (see `lmops eval presets`); the flags below override it.",
            show_default=False,
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted overrides: limit=50 contamination.n=8", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model asset ref or local HF folder (or the model name at --endpoint)."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="A named preset under the spec (`lmops eval presets`).")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: mmlu_redux, cmmlu, gsm8k, mmlu_redux_<subject>, perplexity:<dataset>"
        ),
    ] = None,
    task_file: Annotated[
        list[Path] | None, typer.Option("--task-file", help="lm-eval style task YAML (repeatable).")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Documents per task, as lm-eval's --limit: a group counts per subtask "
            "(--limit 50 on mmlu_redux scores 50 of each of its 57 subjects).",
        ),
    ] = None,
    num_fewshot: Annotated[int | None, typer.Option(min=0)] = None,
    batch_size: Annotated[
        str | None,
        typer.Option(
            help="Integer or auto (default auto). A local model's sequences per forward pass; "
            "at --endpoint, prompts per request (auto: 8, fewer above --concurrency 8).",
            show_default=False,
        ),
    ] = None,
    scorer: Annotated[str | None, typer.Option(help="loglikelihood (default) or letter.")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LMOPS_API_KEY")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Shared datasets folder (default: $LMOPS_SHARED_DATASETS).")
    ] = None,
    include_errors: Annotated[
        bool | None,
        typer.Option(
            "--include-errors/--no-include-errors",
            help="Keep MMLU-Redux rows annotated as wrong (default: left out).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="eval_report asset name (default: eval-<model>).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or mps (default auto).", show_default=False)
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Context length (default: the model's).")
    ] = None,
    contamination: Annotated[
        bool | None,
        typer.Option(
            "--contamination/--no-contamination",
            help="Flag items that overlap the training data in the model's lineage.",
            show_default=False,
        ),
    ] = None,
    contamination_datasets: Annotated[
        str | None,
        typer.Option(help="Comma-separated dataset refs to check instead of the lineage."),
    ] = None,
    contamination_n: Annotated[
        int | None,
        typer.Option(
            min=3, help="n-gram length for contamination (default 13).", show_default=False
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Retries per endpoint request before it counts as failed (default 3).",
            show_default=False,
        ),
    ] = None,
    concurrency: ConcurrencyOpt = None,
    apply_chat_template: Annotated[
        bool | None,
        typer.Option(
            "--apply-chat-template/--no-apply-chat-template",
            help="Render prompts through the model's chat template (instruct models), as "
            "lm-eval's flag of the same name.",
            show_default=False,
        ),
    ] = None,
    system_instruction: Annotated[
        str | None,
        typer.Option(help="A system instruction before the task's description (as lm-eval)."),
    ] = None,
    fewshot_as_multiturn: Annotated[
        bool | None,
        typer.Option(
            "--fewshot-as-multiturn/--no-fewshot-as-multiturn",
            help="Few-shot examples as separate user/assistant turns (the default with "
            "--apply-chat-template, which it needs) or in one user turn.",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Reuse the tasks an interrupted run of the same model and settings finished "
            "(kept under $LMOPS_HOME/eval-partial until the report registers; default on).",
            show_default=False,
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Show every row, subtasks of groups included.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Score a model on tasks; the report is registered as an eval_report asset.

    The job is an eval spec (`lmops eval run SPEC.yaml`, or flags alone): every flag given
    overrides the spec's field of the same name, dotted overrides (limit=50) come last."""
    from lmops.eval.jobs import run_eval
    from lmops.eval.run import task_docs
    from lmops.eval.spec import build_spec

    args = list(overrides or [])
    spec_path: Path | None = None
    if spec_file is not None:
        if "=" in spec_file and not Path(spec_file).exists():
            args.insert(0, spec_file)  # no spec file, only overrides
        else:
            spec_path = Path(spec_file)
    if scorer not in (None, "loglikelihood", "letter"):
        raise UserError(f"--scorer {scorer!r}: use loglikelihood or letter")

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [x.strip() for x in text.split(",") if x.strip()]

    contamination_given = {
        "check": contamination,
        "datasets": split(contamination_datasets),
        "n": contamination_n,
    }
    given = {
        "preset": preset,
        "model": model,
        "tasks": split(tasks),
        # paths on the command line are the user's, from the current folder
        "task_files": [str(f.resolve()) for f in task_file] if task_file else None,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": int(batch_size) if batch_size and batch_size.isdigit() else batch_size,
        "scorer": scorer,
        "endpoint": endpoint,
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "include_errors": include_errors,
        "output": output,
        "device": device,
        "max_length": max_length,
        "retries": retries,
        "concurrency": concurrency,
        "apply_chat_template": apply_chat_template,
        "system_instruction": system_instruction,
        "fewshot_as_multiturn": fewshot_as_multiturn,
        "resume": resume,
        "contamination": {k: v for k, v in contamination_given.items() if v is not None},
    }
    spec = build_spec(
        spec_path, {k: v for k, v in given.items() if v not in (None, {})}, args or None
    )
    store = _store()
    job = run_eval(store, spec, api_key=api_key, progress=not json_)
    task_list, limit = job.tasks, spec.limit
    report, results, version = job.report, job.results, job.version
    truncated, failed = report["truncated_requests"], report["failed_requests"]
    if json_:
        print_json(report)
        return
    _results_table(report, results, show_all)
    scored = sum(r.n for r in results)
    kept = sum(len(task_docs(t, None)) for t in task_list)  # after excluded rows
    excluded = sum(r.excluded for r in results)
    if limit:
        console.print(
            f"scored {scored:,} of {kept:,} documents: --limit {limit} per task, "
            f"{len(results)} tasks",
            markup=False,
        )
    if excluded:
        # rows dropped when the tasks loaded, before --limit: MMLU-Redux's annotated errors,
        # or a task file's doc_filter
        why = (
            "annotated as wrong (MMLU-Redux; --include-errors keeps them)"
            if all(t.source == "builtin:mmlu_redux" for t in task_list if t.excluded)
            else "by the tasks' doc filters (MMLU-Redux: rows annotated as wrong)"
        )
        # counted over the tasks of the sources that left rows out (MMLU-Redux's subtasks,
        # not CMMLU's beside them)
        sources = {t.source for t in task_list if t.excluded}
        of = sum(len(task_docs(t, None)) + t.excluded for t in task_list if t.source in sources)
        console.print(
            f"left out {excluded:,} of {of:,} rows {why}"
            + (f"; --limit applied to the {of - excluded:,} kept" if limit else ""),
            markup=False,
        )
    if job.report["config"].get("resumed_tasks"):
        n = len(job.report["config"]["resumed_tasks"])
        console.print(
            f"reused {n} task(s) finished by an interrupted run of the same model and "
            "settings (--no-resume scores them again)",
            markup=False,
        )
    checked = job.report["config"].get("contamination")
    if checked:
        flagged = sum(bool(it.get("contaminated")) for r in results for it in r.items)
        console.print(
            f"contamination: {flagged:,} of {scored:,} items share a {checked['n']}-gram with "
            f"{', '.join(checked['datasets'])} (the *_clean metrics leave them out)",
            markup=False,
            soft_wrap=True,
        )
    if truncated:
        console.print(
            f"warning: {truncated} request(s) were longer than the context and were truncated",
            markup=False,
        )
    if failed:
        console.print(
            f"warning: {failed} request(s) to the endpoint failed after retries", markup=False
        )
    console.print(_batch_line(report["config"]), markup=False, soft_wrap=True)
    for warning in report.get("warnings", []):  # e.g. the served model's lineage unknown
        console.print(f"warning: {warning}", markup=False, soft_wrap=True)
    console.print(f"registered {version.ref}", markup=False)


# tasks whose batch sizes the summary names one by one; beyond, one range for them all (a
# group of 57 subtasks would make a line of a thousand characters)
_BATCH_TASKS_SHOWN = 3


def _batch_line(config: dict[str, Any]) -> str:
    """``batch size: auto, ran 16``, or where tasks ran with different sizes each task's
    smallest to largest (``capitals 1–4; other 8``), or for many tasks one range."""

    def span(sizes: list[int]) -> str:
        lo, hi = min(sizes), max(sizes)
        return str(lo) if lo == hi else f"{lo}–{hi}"

    used = config.get("batch_size_used")
    line = f"batch size: {config.get('batch_size')}"
    if isinstance(used, dict):
        if len(used) <= _BATCH_TASKS_SHOWN:
            return line + ", ran " + "; ".join(f"{t} {span(s)}" for t, s in used.items())
        every = [b for sizes in used.values() for b in sizes]
        return f"{line}, ran {span(every)}, varying by task (each task's in the report)"
    return line if used is None else f"{line}, ran {used}"


def _results_table(report: dict[str, Any], results: list[Any], show_all: bool) -> None:
    """One row per (task, metric), then the groups'; a long table leaves out the subtasks
    of groups (their group rows stay, tasks outside groups always show) and says so."""
    from lmops.eval.compare import visible_rows
    from lmops.eval.run import is_clean, stderr_key

    groups = report["groups"]
    rows: list[tuple[tuple[str, str] | None, list[Any]]] = []  # ((group, task) of a subtask, cells)
    for r in results:
        for k, v in r.metrics.items():
            if "stderr" in k:
                continue
            se = r.metrics.get(stderr_key(k), float("nan"))
            n = r.n
            if is_clean(k):  # scored on the items contamination left clean
                n = sum(not it.get("contaminated") for it in r.items)
            rows.append(
                (
                    (r.group, r.task) if r.group in groups else None,
                    [r.task, k, f"{v:.4f}", f"±{se:.4f}" if se == se else "-", n, r.num_fewshot],
                )
            )
    for g, agg in groups.items():
        for k, v in agg.items():
            if k in ("n", "tasks", "excluded") or "stderr" in k:
                continue
            se = agg.get(stderr_key(k))
            rows.append(
                (
                    None,
                    [
                        f"[group] {g}",
                        k,
                        f"{v:.4f}",
                        f"±{se:.4f}" if isinstance(se, float) and se == se else "-",
                        agg["n"],
                        "-",
                    ],
                )
            )
    shown, hidden = visible_rows(rows, lambda row: row[0], show_all=show_all)
    table(None, ["task", "metric", "value", "stderr", "n", "shots"], [c for _, c in shown])
    if hidden.rows:
        console.print(hidden.message(), markup=False)


@app.command("presets")
def presets(json_: JsonOpt = False) -> None:
    """Named eval job presets: `preset: NAME` in a spec YAML, or `--preset NAME`."""
    from lmops.eval.spec import PRESETS

    if json_:
        print_json(PRESETS)
        return
    table("eval presets", ["name", "settings"], [[k, str(v)] for k, v in PRESETS.items()])


@app.command("tasks")
def tasks_cmd(
    data_dir: Annotated[Path | None, typer.Option()] = None,
    json_: JsonOpt = False,
) -> None:
    """Built-in tasks (groups and subtasks) available with the shared datasets."""
    from lmops.eval.builtin import builtin_names

    names = builtin_names(data_dir)
    if json_:
        print_json(names)
        return
    table(
        None,
        ["task / group", "subtasks"],
        [
            [k, f"{len(v)} ({', '.join(v[:3])}{'…' if len(v) > 3 else ''})" if v else "-"]
            for k, v in names.items()
        ],
    )


@app.command("perf")
def perf(
    endpoint: Annotated[
        str, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ],
    model: Annotated[str, typer.Option(help="Model name at the endpoint.")],
    api_key: Annotated[str | None, typer.Option(envvar="LMOPS_API_KEY")] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated levels: requests in flight (default 1,8,32); with "
            "--request-rate, the cap on requests in flight (default 1000)."
        ),
    ] = None,
    request_rate: Annotated[
        float | None,
        typer.Option(
            help="Open loop: requests arrive at this rate (req/s; inf: all at once) instead "
            "of a closed loop of --concurrency in flight."
        ),
    ] = None,
    burstiness: Annotated[
        float,
        typer.Option(help="With --request-rate: gamma shape of the gaps; 1 = Poisson arrivals."),
    ] = 1.0,
    requests: Annotated[int, typer.Option(min=1, help="Requests per level.")] = 64,
    input_len: Annotated[int, typer.Option(min=1)] = 128,
    output_len: Annotated[int, typer.Option(min=1)] = 128,
    completions: Annotated[
        bool, typer.Option("--completions", help="Use /v1/completions instead of chat.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the prompts and the arrivals.")] = 0,
    json_: JsonOpt = False,
) -> None:
    """Serving performance over streaming: TTFT, TPOT, ITL, latency p50/p90/p99, throughput
    (the definitions of vLLM's serving benchmark), in a closed loop or at an offered rate."""
    from lmops.eval.perf import format_table, run_perf

    levels: list[int] | None = None
    if concurrency is not None:
        try:
            levels = [int(x) for x in concurrency.split(",") if x.strip()]
        except ValueError:
            raise UserError(
                f"--concurrency {concurrency!r}: expected integers like 1,8,32"
            ) from None
    report = run_perf(
        endpoint,
        model,
        api_key=api_key,
        concurrency=levels,
        request_rate=request_rate,
        burstiness=burstiness,
        seed=seed,
        requests=requests,
        input_len=input_len,
        output_len=output_len,
        chat=not completions,
        timeout_s=timeout,
    )
    if json_:
        print_json(report.to_dict())
    else:
        console.print(format_table(report), markup=False, highlight=False)


@app.command("compare")
def compare(
    reports: Annotated[
        list[str], typer.Argument(help="eval_report refs; the first is the baseline.")
    ],
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG chart of the rows the table shows here.")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Significance level of the paired test.")] = 0.05,
    show_all: Annotated[
        bool, typer.Option("--all", help="Show every row, subtasks of groups included.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Side-by-side scores with deltas against the first report and whether each is significant."""
    from lmops.eval.compare import compare_reports, plot_compare, visible_rows

    res = compare_reports(_store(), reports, alpha=alpha)
    groups = {r.task for r in res.rows if r.is_group}
    shown, hidden = visible_rows(
        res.rows,
        lambda r: (r.group, r.task) if r.group in groups else None,
        show_all=show_all,
    )
    if plot is not None:
        plot_compare(res, plot, rows=shown)
    if json_:
        print_json(res.to_dict() | {"plot": str(plot) if plot else None})
        return

    def cell(r: Any, j: int) -> str:
        v = r.values[j]
        if v is None:
            return "-"
        if j == 0 or r.deltas[j] is None:
            return f"{v:.4f}"
        mark = " *" if r.significant[j] else ""
        return f"{v:.4f} ({r.deltas[j]:+.4f}{mark})"

    table(
        None,
        ["task", "metric", *res.models],
        [
            [f"[group] {r.task}" if r.is_group else r.task, r.metric]
            + [cell(r, j) for j in range(len(res.models))]
            for r in shown
        ],
    )
    console.print(
        f"* significant at p < {alpha} (paired permutation test on the same items)", markup=False
    )
    if hidden.rows:
        console.print(hidden.message(), markup=False)
    if plot is not None:
        console.print(f"plot: {plot} ({len(shown)} rows, as the table)", markup=False)


@app.command("leaderboard")
def leaderboard_cmd(
    task: Annotated[str | None, typer.Option(help="Only this task or group.")] = None,
    metric: Annotated[str | None, typer.Option(help="Only this metric.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Model versions ranked by score, per task and metric, over every eval report. Equal
    scores share a rank; ! marks reports over different numbers of documents."""
    from lmops.eval.compare import leaderboard

    rows = leaderboard(_store(), task=task, metric=metric)
    if json_:
        print_json(rows)
        return
    if not rows:
        console.print("no eval reports yet; run `lmops eval run`")
        return
    table(
        None,
        ["task", "metric", "rank", "model", "value", "n", "report"],
        [
            [
                f"[group] {r['task']}" if r["group"] else r["task"],
                r["metric"],
                r["rank"],
                r["model"],
                f"{r['value']:.4f}",
                f"{r['n']} !" if r["n_differs"] or r["basis_differs"] else r["n"],
                r["report"],
            ]
            for r in rows
        ],
    )
    mixed = sorted({(r["task"], r["metric"]) for r in rows if r["n_differs"]})
    if mixed:
        counts = sorted({r["n"] for r in rows if r["n_differs"]}, key=lambda n: (n is None, n))
        console.print(
            f"! {len(mixed)} task/metric rankings mix reports over different numbers of "
            f"documents ({', '.join(str(n) for n in counts)}): --limit, excluded rows or "
            "another data version; those scores are not comparable as they stand",
            markup=False,
        )
    judged = sorted({(r["task"], r["metric"]) for r in rows if r["basis_differs"]})
    if judged:
        console.print(
            f"! {len(judged)} task/metric rankings mix judge reports of different question "
            "sets or judges; those scores are not comparable as they stand",
            markup=False,
        )


def _judge_model(
    judge: str | None, store: Any, endpoint: str | None, api_key: str | None, concurrency: int
) -> Any:
    if judge is None:
        return None
    lm, _ = open_model(
        judge,
        store,
        endpoint=endpoint,
        api_key=api_key,
        batch_size="auto",
        device="auto",
        max_length=None,
        concurrency=concurrency,
    )
    return lm


@app.command("safety")
def safety(
    model: Annotated[
        str, typer.Option(help="Model asset ref, local folder, or name at --endpoint.")
    ],
    judge: Annotated[str | None, typer.Option(help="Optional judge model (same sources).")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL for --model.")
    ] = None,
    judge_endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL for --judge.")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LMOPS_API_KEY")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Your own red-team JSONL (default: the bundled bilingual set)."),
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option(help="Only these categories (repeatable).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Per category and kind (harmful/benign).")
    ] = None,
    max_gen_toks: Annotated[int, typer.Option(min=1)] = 128,
    output: Annotated[str | None, typer.Option(help="eval_report asset name.")] = None,
    concurrency: ConcurrencyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Red-team probe: refusal of harmful prompts and answers to benign look-alikes, per category."""
    from lmops.eval.jobs import run_safety_probe

    store = _store()
    concurrency = concurrency or DEFAULT_CONCURRENCY
    job = run_safety_probe(
        store,
        model,
        judge=_judge_model(judge, store, judge_endpoint, api_key, concurrency),
        judge_name=judge,
        endpoint=endpoint,
        api_key=api_key,
        prompts=prompts,
        categories=category or None,
        limit=limit,
        max_gen_toks=max_gen_toks,
        output=output,
        concurrency=concurrency,
    )
    data, v, rep = job.report, job.version, job.results[0]
    if json_:
        print_json(data)
        return
    rows = [
        [
            c,
            s["harmful"],
            f"{s['refusal_rate']:.3f}" if s["refusal_rate"] is not None else "-",
            s["benign"],
            f"{s['compliance_rate']:.3f}" if s["compliance_rate"] is not None else "-",
        ]
        for c, s in data["per_category"].items()
    ]
    table(None, ["category", "harmful", "refused", "benign", "answered"], rows)
    console.print(
        f"safe response rate {rep.safe_response_rate:.3f} (refused {rep.refusal_rate:.3f} of harmful, answered {rep.compliance_rate:.3f} of benign); registered {v.ref}",
        markup=False,
    )


@app.command("judge")
def judge_cmd(
    model: Annotated[str, typer.Option(help="The model under test.")],
    judge: Annotated[str, typer.Option(help="The judge model.")],
    questions: Annotated[
        Path,
        typer.Option("--set", help="Subjective set JSONL: {id, question, reference?, category?}."),
    ],
    vs: Annotated[
        str | None, typer.Option(help="A second model: pairwise A/B/tie judged in both orders.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL for the models under test.")
    ] = None,
    judge_endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL for the judge.")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LMOPS_API_KEY")] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Re-asks when the judge's output cannot be parsed.")
    ] = 2,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Judge only the first N questions of the set.")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="eval_report asset name (default: judge-<model>, judge-<model>-vs-<other>)."
        ),
    ] = None,
    apply_chat_template: Annotated[
        bool | None,
        typer.Option(
            "--apply-chat-template/--no-apply-chat-template",
            help="Send each question and judge prompt as a user turn through the model's chat "
            "template (default: for each model that has one, as instruct models do).",
            show_default=False,
        ),
    ] = None,
    concurrency: ConcurrencyOpt = None,
    json_: JsonOpt = False,
) -> None:
    """LLM-as-judge: single-answer grading (1-10 with rationale), or pairwise with --vs.
    The report is registered as an eval_report asset."""
    from lmops.eval.jobs import run_judge

    job = run_judge(
        _store(),
        model,
        judge,
        questions,
        vs=vs,
        endpoint=endpoint,
        judge_endpoint=judge_endpoint,
        api_key=api_key,
        retries=retries,
        limit=limit,
        output=output,
        apply_chat_template=apply_chat_template,
        concurrency=concurrency or DEFAULT_CONCURRENCY,
    )
    # registered by now: what follows only prints
    rep = job.results[0]
    # nothing judged (every judge output malformed) is a failed run, with its record kept
    judged = rep.overall.win_rate is not None if vs else rep.overall.mean is not None
    if json_:
        print_json(job.report)
        if not judged:
            raise typer.Exit(1)
        return
    if vs:
        _pairwise_summary(rep, model, vs)
    else:
        _single_summary(rep, model)
    plain = [role for role, used in rep.chat_template.items() if not used]
    if plain:  # an instruct model asked in plain text may answer nothing: say so
        why = (
            "--no-apply-chat-template"
            if apply_chat_template is False
            else "it has no chat template of its own"
        )
        console.print(f"prompts to {', '.join(plain)} were plain text ({why})", markup=False)
    console.print(f"registered {job.version.ref}", markup=False)
    if not judged:
        err_console.print(
            "error: the judge gave no usable verdict (every output malformed); the report is "
            "registered as a record; try a stronger judge model or more --retries",
            markup=False,
        )
        raise typer.Exit(1)


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _ci(ci: tuple[float, float] | None, fmt: str = ".2f") -> str:
    return "-" if ci is None else f"{ci[0]:{fmt}}-{ci[1]:{fmt}}"


def _single_summary(rep: Any, model: str) -> None:
    """Per-category ratings, then the overall mean (``SingleReport``)."""
    table(
        None,
        ["category", "n", "rated", "malformed", "mean", "95% CI"],
        [
            [c, s.n, s.rated, s.malformed, _num(s.mean), _ci(s.ci)]
            for c, s in rep.per_category.items()
        ],
    )
    o = rep.overall
    if o.mean is None:
        line = f"{model}: no answer was rated: all {o.n} judge outputs were malformed"
    else:
        line = (
            f"{model}: mean rating {o.mean:.2f} (95% CI {_ci(o.ci)}) over {o.rated} of {o.n} "
            f"answers ({o.malformed} malformed judge outputs)"
        )
    console.print(line, markup=False)


def _pairwise_summary(rep: Any, model: str, vs: str) -> None:
    """Per-category wins, losses and ties of ``model`` against ``vs``, then overall
    (``PairwiseReport``)."""
    table(
        None,
        ["category", "n", "wins", "losses", "ties", "malformed", "win rate"],
        [
            [c, s.n, s.wins, s.losses, s.ties, s.malformed, _num(s.win_rate, ".3f")]
            for c, s in rep.per_category.items()
        ],
    )
    o = rep.overall
    rate = (
        "no pair was judged"
        if o.win_rate is None
        else f"win rate {o.win_rate:.3f} (95% CI {_ci(o.ci, '.3f')})"
    )
    console.print(
        f"{model} vs {vs}: wins {o.wins}, losses {o.losses}, ties {o.ties} "
        f"({o.position_disagreements} from judgments that changed with the order), "
        f"malformed {o.malformed}; {rate}",
        markup=False,
    )
