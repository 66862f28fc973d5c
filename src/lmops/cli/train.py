"""``lmops train CONFIG.yaml``, ``lmops train merge``, ``lmops train sweep``, ``lmops train presets``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from lmops.cli._output import console, print_json, table
from lmops.core.errors import LmopsError, UserError


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


def _store() -> Any:
    from lmops.store import Store

    return Store(origin="cli")


@app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="Job YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides: train.lr=1e-4")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the interrupted run of this output from its last checkpoint."),
    ] = False,
    nproc: Annotated[int, typer.Option(min=1, help="Data-parallel processes (torchrun).")] = 1,
    json_: JsonOpt = False,
) -> None:
    """Train a model as the job YAML says and register the result with lineage."""
    from lmops.train.spec import load_spec

    spec = load_spec(config, overrides or [])
    store = _store()
    if nproc > 1:
        result = _launch(config, overrides or [], resume, nproc, spec, store)
    else:
        from lmops.train.run import run_training

        result = run_training(spec, store, resume=resume, progress=not json_)
    if json_:
        print_json(
            result.__dict__
            | {"output_path": str(result.output_path) if result.output_path else None}
        )
        return
    final = ", ".join(
        f"{k} {v:.4g}"
        for k, v in sorted(result.final.items())
        if k in ("loss", "eval_loss", "margin", "reward", "accuracy")
    )
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


def _launch(
    config: Path, overrides: list[str], resume: bool, nproc: int, spec: Any, store: Any
) -> Any:
    """Start ``nproc`` worker processes under torchrun; rank 0 registers the output."""
    from lmops.store import RunStatus
    from lmops.train.run import TrainResult, find_resumable

    run_id = find_resumable(store, spec) if resume else None
    if resume and run_id is None:
        raise UserError(
            f"--resume: no interrupted training run of {spec.output!r} with a checkpoint"
        )
    if run_id is None:
        run_id = store.runs.start("train", name=spec.output, config=spec.model_dump(mode="json")).id
        store.runs.finish(run_id, RunStatus.FAILED, "launching workers")  # rank 0 reopens it
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lmops.train.worker",
        str(config),
        "--run-id",
        run_id,
        *(["--resume"] if resume else []),
        *[a for o in overrides for a in ("--set", o)],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env)
    run = store.runs.get(run_id)
    if proc.returncode != 0 or run.status is not RunStatus.SUCCEEDED:
        raise LmopsError(
            f"distributed training failed (exit {proc.returncode}); see `lmops runs show {run_id}`"
        )
    out = run.outputs[-1] if run.outputs else None
    v = store.assets.get(out) if out else None
    return TrainResult(
        run_id,
        out,
        v.kind if v else "",
        spec.train.max_steps,
        0.0,
        0,
        int(run.params.get("trainable_params", 0)),
        int(run.params.get("total_params", 0)),
        {k: s[-1].value for k, s in run.metrics.items() if s},
    )


@app.command("merge")
def merge(
    adapter: Annotated[str, typer.Argument(help="Adapter asset ref.")],
    output: Annotated[
        str | None, typer.Option(help="Model asset name (default: <adapter>-merged).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model and register a full model."""
    from lmops.train.run import merge_adapter

    v = merge_adapter(_store(), adapter, output)
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
