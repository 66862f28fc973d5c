"""``lmops train CONFIG.yaml``, ``lmops train merge``, ``lmops train sweep``, ``lmops train presets``."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from lmops.cli._output import console, err_console, open_store, print_json, table
from lmops.core.errors import LmopsError

if TYPE_CHECKING:
    from lmops.store import Store


class _DefaultRun(TyperGroup):
    """``lmops train JOB.yaml`` means ``lmops train run JOB.yaml``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultRun,
    help="Train: pretrain, SFT, LoRA/QLoRA/prefix, reward, DPO/KTO/ORPO, PPO. `lmops train JOB.yaml`.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


_store = open_store


def _job_fields() -> str:
    """The job YAML's fields, for ``train run --help``: the example at the top of
    :mod:`lmops.train.spec`, one field a line (Typer joins a help text's lines, except
    after a line that is only a backspace: its mark for a block kept as written)."""
    from pydantic import BaseModel

    import lmops.train.spec as spec_module

    doc = spec_module.__doc__ or ""  # None under python -OO
    if "```yaml" not in doc:
        return ""
    block = doc.split("```yaml", 1)[1].split("```", 1)[0].strip("\n")
    sections = []  # each section's own fields, read from the spec so they stay true
    for name, field in spec_module.TrainSpec.model_fields.items():
        tp = field.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            sections.append(f"{name}: " + ", ".join(tp.model_fields))
    rest = [n for n in spec_module.TrainSpec.model_fields if n + ":" not in block]
    rest = [n for n in rest if not any(s.startswith(n + ":") for s in sections)]
    return (
        "Job YAML fields:\n\n\b\n"
        + block
        + "\n\nSections:\n\n\b\n"
        + "\n".join(sections)
        + "\n\nAlso: "
        + ", ".join(rest)
        + ". Named presets: `lmops train presets`."
    )


class _RunCommand(TyperCommand):
    """``train run``, whose help ends with the job's fields: read from the spec when the
    help is shown, so that every other command starts without importing it."""

    @property
    def epilog(self) -> str:
        return _job_fields()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass  # click sets it as the command is made; the property reads the spec instead


@app.command("run", cls=_RunCommand)
def run(
    config: Annotated[Path, typer.Argument(help="Job YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides: train.lr=1e-4")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the interrupted run of this job from its last checkpoint."),
    ] = False,
    restart: Annotated[
        bool,
        typer.Option(
            help="Start over even though an interrupted run of this job left a checkpoint "
            "(its checkpoints are deleted)."
        ),
    ] = False,
    nproc: Annotated[int, typer.Option(min=1, help="Data-parallel processes (torchrun).")] = 1,
    json_: JsonOpt = False,
) -> None:
    """Train a model as the job YAML says and register the result with lineage.

    Ctrl-C (or SIGTERM) stops after the current step, saves a checkpoint and prints the
    command that resumes it. A job whose previous run stopped with a checkpoint needs
    --resume (continue) or --restart (start over)."""
    from lmops.train.loop import Interrupted
    from lmops.train.spec import load_spec

    spec = load_spec(config, overrides or [])
    store = _store()
    try:
        if nproc > 1:
            result = _launch(
                config, overrides or [], resume, restart, nproc, spec, store, progress=not json_
            )
        else:
            from lmops.train.run import run_training

            result = run_training(spec, store, resume=resume, restart=restart, progress=not json_)
    except Interrupted as e:
        from lmops.core.signals import StopSignals

        with StopSignals() as stopping:  # a further signal must not cut the line short
            stopping.hold()
            again = ["lmops", "train", "run", str(config), *(overrides or [])]
            again += [f"--nproc={nproc}"] if nproc > 1 else []
            line = interrupted_line(e, spec.stage, again)
            err_console.print(line, markup=False, soft_wrap=True)
        raise typer.Exit(128 + e.signum) from None
    if json_:
        print_json(
            result.__dict__
            | {"output_path": str(result.output_path) if result.output_path else None}
        )
        return
    final = result.headline()
    console.print(
        f"registered {result.output} ({result.kind}) after {result.steps} steps in {result.seconds:.1f} s"
        + (f" — {final}" if final else "")
        + (f" (resumed from step {result.resumed_from})" if result.resumed_from else ""),
        markup=False,
    )
    console.print(
        f"run {result.run_id}; trainable parameters {result.trainable_params:,} of {result.total_params:,}",
        markup=False,
    )
    if result.data.get("rows_skipped"):  # on_error: skip left bad rows out
        reasons = ", ".join(f"{k} {v}" for k, v in result.data["skipped_by_reason"].items())
        console.print(
            f"rows: {result.data['rows_used']:,} used of {result.data['rows_read']:,} read, "
            f"{result.data['rows_skipped']:,} skipped ({reasons})",
            markup=False,
        )
    shapes = result.data.get("row_shapes") or {}
    if set(shapes) - NATIVE_SHAPES:  # say how rows in another tool's shape were read
        read_as = ", ".join(f"{k} {v:,}" for k, v in shapes.items())
        console.print(f"rows read as: {read_as}", markup=False)


# The shapes of lmops's own row formats; others (ShareGPT, TRL's...) are named when read.
NATIVE_SHAPES = {"sft_alpaca", "sft_chat", "pretrain", "preference", "any"}


def interrupted_line(e: Any, stage: str, command: list[str]) -> str:
    """The one line printed when training stops on a signal: where the checkpoint is and
    the exact command that continues from it (or, with none, that starts again)."""
    from lmops.train.loop import checkpoint_step

    if e.checkpoint is None:
        return (
            f"interrupted: stage {stage} stopped with no checkpoint (none was written yet); "
            f"start it again with: {shlex.join(command)}"
        )
    done = f"after step {e.step} of {e.max_steps}"
    saved = (
        f"checkpoint saved: {e.checkpoint}"
        if e.saved
        else f"last checkpoint: {e.checkpoint} (step {checkpoint_step(e.checkpoint)})"
    )
    return f"interrupted {done}; {saved}; resume with: {shlex.join([*command, '--resume'])}"


def _launch(
    config: Path,
    overrides: list[str],
    resume: bool,
    restart: bool,
    nproc: int,
    spec: Any,
    store: Store,
    *,
    progress: bool = True,
) -> Any:
    """Start ``nproc`` worker processes under torchrun; rank 0 registers the output (and
    shows the progress bar, unless ``progress`` is false: ``--json`` prints only JSON).

    The job is checked here first (:func:`~lmops.train.run.check_job`), so a bad one is one
    line and no worker starts. A worker that fails later writes its one-line error for this
    process to print (the first to fail is the cause; the others were stopped), and rank 0
    writes its result (steps, seconds, tokens) as one process would return it.

    torchrun runs in its own session, so a Ctrl-C at the terminal reaches only this
    process, which forwards it once: torchrun passes it to each worker, and the workers
    agree on the step to stop after (a second Ctrl-C is forwarded too: stop at once)."""
    import tempfile

    from lmops.store import RunStatus
    from lmops.train.loop import Interrupted, checkpoint_step, latest_checkpoint
    from lmops.train.run import check_job, run_to_continue

    check_job(spec, store)
    run_id = run_to_continue(store, spec, resume=resume, restart=restart)
    resume = run_id is not None
    if run_id is None:
        run_id = store.runs.start("train", name=spec.output, config=spec.model_dump(mode="json")).id
        store.runs.finish(run_id, RunStatus.FAILED, "launching workers")  # rank 0 reopens it
    with tempfile.TemporaryDirectory(prefix="lmops-ddp-") as tmp:
        report_dir = Path(tmp)
        cmd = [
            sys.executable,
            "-m",
            "lmops.train.launch",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "lmops.train.worker",
            str(config),
            "--run-id",
            run_id,
            "--report-dir",
            str(report_dir),
            *(["--resume"] if resume else []),
            *([] if progress else ["--no-progress"]),
            *[a for o in overrides for a in ("--set", o)],
        ]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        got: list[int] = []

        def forward(signum: int, _frame: Any) -> None:
            got.append(signum)
            proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            returncode = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        run = store.runs.get(run_id)
        if got or run.status is RunStatus.CANCELLED:
            ckpt = latest_checkpoint(Path(store.runs.dir(run_id)) / "checkpoints")
            step = checkpoint_step(ckpt) if ckpt else 0
            signum = got[0] if got else signal.SIGINT
            raise Interrupted(step, spec.train.max_steps, ckpt, signum=signum)
        failure = _first_failure(report_dir)
        if failure is not None:
            raise failure
        if returncode != 0 or run.status is not RunStatus.SUCCEEDED:
            raise LmopsError(
                f"distributed training failed (exit {returncode}); see `lmops runs log {run_id}`"
            )
        return _result(report_dir, run_id)


def _first_failure(report_dir: Path) -> LmopsError | None:
    """The error of the worker that failed first, as the one process would raise it: a
    user error as itself (exit 2), anything else naming its rank (exit 1)."""
    import json

    from lmops.core.errors import UserError
    from lmops.train.worker import ERROR_GLOB

    found = [json.loads(p.read_text()) for p in report_dir.glob(ERROR_GLOB)]
    if not found:
        return None
    first = min(found, key=lambda e: e["time"])
    if first["exit_code"] == UserError.exit_code:
        return UserError(first["message"])
    return LmopsError(f"distributed training failed on rank {first['rank']}: {first['message']}")


def _result(report_dir: Path, run_id: str) -> Any:
    """Rank 0's :class:`~lmops.train.run.TrainResult`."""
    import json

    from lmops.train.run import TrainResult
    from lmops.train.worker import RESULT

    path = report_dir / RESULT
    if not path.is_file():
        raise LmopsError(f"distributed training left no result; see `lmops runs log {run_id}`")
    data = json.loads(path.read_text())
    data["inputs"] = [tuple(i) for i in data.get("inputs") or []]
    if data.get("output_path"):
        data["output_path"] = Path(data["output_path"])
    return TrainResult(**data)


@app.command("merge")
def merge(
    adapter: Annotated[str, typer.Argument(help="Adapter asset ref.")],
    output: Annotated[
        str | None, typer.Option(help="Model asset name (default: <adapter>-merged).")
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto (default: the base model's), float32, bfloat16 or float16: what the "
            "merged weights are computed and stored in.",
        ),
    ] = "auto",
    json_: JsonOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model and register a full model."""
    from lmops.train.run import merge_adapter

    v = merge_adapter(_store(), adapter, output, dtype=dtype)
    if json_:
        print_json(v)
    else:
        console.print(f"registered {v.ref} (model merged from {adapter})", markup=False)


@app.command("presets")
def presets(json_: JsonOpt = False) -> None:
    """Named job presets (use `preset: NAME` in a job YAML) and model presets."""
    from lmops.train.models import MODEL_PRESETS
    from lmops.train.spec import PRESETS

    if json_:
        print_json({"jobs": PRESETS, "models": MODEL_PRESETS})
        return
    table("job presets", ["name", "settings"], [[k, str(v)] for k, v in PRESETS.items()])
    table("model presets", ["name", "config"], [[k, str(v)] for k, v in MODEL_PRESETS.items()])


@app.command("sweep")
def sweep(
    config: Annotated[Path, typer.Argument(help="Job YAML with a `sweep:` section.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides: sweep.trials=4")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Search hyper-parameters with Optuna; each trial is a run; the best is registered."""
    from lmops.train.spec import load_spec
    from lmops.train.sweep import run_sweep

    spec = load_spec(config, overrides or [])
    res = run_sweep(spec, _store(), progress=not json_)
    if json_:
        print_json(res.__dict__)
        return
    table(
        None,
        ["trial", "run", "params", "value"],
        [
            [
                t["trial"],
                t["run_id"],
                ", ".join(f"{k}={v}" for k, v in t["params"].items()),
                f"{list(t.values())[-1]:.5g}",
            ]
            for t in res.trials
        ],
    )
    console.print(
        f"best trial {res.best_trial} ({res.best_value:.5g}): registered {res.output}", markup=False
    )
