"""``run_training(spec, store)``: one training job from spec to registered asset.

1. resolve and validate the dataset rows (bad rows are reported before any model loads);
2. record (or, with ``resume``, reopen) the run, load the base model with its method;
   a previous run of the same output that stopped with a checkpoint left must be named:
   ``resume=True`` continues it (the job must be the same), ``restart=True`` deletes its
   checkpoints and starts over; neither is an error saying so (:func:`previous_run`);
3. train: pretrain/SFT through :mod:`lmops.train.loop`; reward/DPO/KTO/ORPO through
   :mod:`lmops.train.preference`; PPO through :mod:`lmops.train.ppo`;
4. save the model (or adapter) with its tokenizer, a model card and the loss curve, and
   register it as a ``model`` (or ``adapter``) version with lineage to the base model,
   tokenizer and datasets (local folders and files as external references, recorded when
   the run starts), and to the run.

SIGINT/SIGTERM: the run is marked CANCELLED and :class:`~lmops.train.loop.Interrupted` is
raised, naming the checkpoint to resume from (every stage writes one as it stops and every
``train.save_steps``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmops import __version__
from lmops.core.errors import UserError
from lmops.models.loading import resolve_local
from lmops.train.data import (
    build_pretrain_examples,
    build_sft_examples,
    check_tool_template,
    load_training_rows,
    pack,
    split_eval,
)
from lmops.train.loop import (
    Dist,
    Interrupted,
    StopSignals,
    checkpoint_step,
    latest_checkpoint,
    train_loop,
)
from lmops.train.models import check_preset, count_parameters, load_base
from lmops.train.spec import TrainSpec
from lmops.train.tracking import StoreTracker, plot_loss_curve
from lmops.train.tracking import progress as progress_bar

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "PreviousRun",
    "TrainResult",
    "check_job",
    "find_resumable",
    "merge_adapter",
    "previous_run",
    "run_to_continue",
    "run_training",
]


@dataclass
class TrainResult:
    run_id: str
    output: str | None  # registered "name:N" (rank 0), None on other ranks
    kind: str
    steps: int
    seconds: float
    tokens: int
    trainable_params: int
    total_params: int
    final: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    output_path: Path | None = None
    # what registration needs when it happens later (sweeps register only the best trial)
    inputs: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    # rows read, used and skipped (by reason) from the dataset
    data: dict[str, Any] = field(default_factory=dict)

    def headline(self) -> str:
        """The last values of the metrics people judge a run by, as ``loss 2.31, eval_accuracy
        0.625`` (what each stage logs: loss and eval loss, a reward model's accuracy, DPO's
        margin, PPO's reward and KL)."""
        return ", ".join(f"{k} {self.final[k]:.4g}" for k in HEADLINE_METRICS if k in self.final)


# the metrics a run's one-line summary shows, in this order, where the stage logs them
HEADLINE_METRICS = ("loss", "eval_loss", "accuracy", "eval_accuracy", "margin", "reward", "kl")


def _dataset_paths(spec: TrainSpec, store: Store) -> tuple[list[Path], list[str]]:
    paths, refs = [], []
    for ds in spec.datasets:
        p, ref = resolve_local(ds, store, kind="dataset")
        paths.append(p)
        if ref:
            refs.append(ref)
    return paths, refs


def _recorded_inputs(spec: TrainSpec, store: Store, run_id: str) -> list[tuple[str, str]]:
    """Lineage inputs the rest of the job does not name: each local folder or file it reads
    (the base model or the tokenizer of a preset, the datasets, a PPO reward model; an
    existing path wins over an asset of that name, as in ``resolve_local``) recorded by
    content as an external reference, and a PPO reward model given as an asset."""
    from lmops.train.spec import ModelPreset

    named: list[tuple[str, str]] = [(ds, "dataset") for ds in spec.datasets]
    if isinstance(spec.model, ModelPreset):
        named.append((spec.model.tokenizer, "tokenizer"))
    else:
        named.append((spec.model, "base_model"))
    # a reward function, when given, is what PPO scores with (``ppo.load_reward``)
    reward = spec.ppo.reward_model if spec.stage == "ppo" and not spec.ppo.reward_fn else None
    if reward:
        named.append((reward, "reward_model"))
    local = [(Path(n).expanduser(), role) for n, role in named if Path(n).expanduser().exists()]
    out = list(store.assets.record_inputs(local, run_id=run_id))
    if reward and not Path(reward).expanduser().exists():
        with contextlib.suppress(UserError):  # not an asset: the reward loader says so
            out.append((store.assets.resolve(reward).ref, "reward_model"))
    return out


def check_job(spec: TrainSpec, store: Store) -> None:
    """What a job fails on before any weight loads, checked as :func:`run_training` checks
    it (the same one-line errors): each dataset a path or a READY dataset with rows fit for
    the stage, and the base model (or a known preset and its tokenizer) a path or a READY
    asset.
    ``lmops train --nproc N`` calls it before it starts workers, so a bad job is one line
    from one process, as without ``--nproc``."""
    from lmops.train.spec import ModelPreset

    paths, _ = _dataset_paths(spec, store)
    if spec.stage != "pretrain":
        _load_rows(spec, paths)
    if isinstance(spec.model, ModelPreset):
        check_preset(spec.model)
        resolve_local(spec.model.tokenizer, store, kind="tokenizer")
    else:
        resolve_local(spec.model, store, kind="model")


def _load_rows(spec: TrainSpec, paths: list[Path]) -> tuple[list[tuple[str, int, Any]], Any]:
    loaded = load_training_rows(
        paths,
        spec.stage,
        spec.on_error,
        columns=spec.columns,
        tags=spec.tags.given() if spec.tags else None,
    )
    return loaded.rows, loaded.summary()


# Job fields that do not change what is trained: a resumed run may differ in these.
_NOT_THE_JOB = ("description", "report_to")


@dataclass(frozen=True)
class PreviousRun:
    """An earlier run of a job's output that stopped with a checkpoint left."""

    run_id: str
    checkpoint: Path
    step: int  # steps done when it was written
    max_steps: int
    changed: list[str]  # "train.lr 0.005 -> 0.001": how this job differs ([]: the same job)
    others: list[str] = field(default_factory=list)  # older such runs of the output


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            if not prefix and k in _NOT_THE_JOB:
                continue
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} {old!r} -> {new!r}"]


def previous_run(store: Store, spec: TrainSpec) -> PreviousRun | None:
    """The newest run of ``spec.output`` that did not finish and left a checkpoint (a run
    still training on this host is an error: two jobs must not share checkpoints)."""
    config = spec.model_dump(mode="json")
    found: list[tuple[Any, Path]] = []
    for run in store.runs.list(kind="train", limit=200):
        if run.name != spec.output or run.status.value == "SUCCEEDED":
            continue
        ckpt = latest_checkpoint(Path(store.runs.dir(run.id)) / "checkpoints")
        if ckpt is None:
            continue
        if run.status.value == "RUNNING" and _alive(run.host, run.pid):
            raise UserError(
                f"run {run.id} of {spec.output!r} is still training (pid {run.pid}); "
                "wait for it or stop it (Ctrl-C saves a checkpoint) before starting this job"
            )
        found.append((run, ckpt))
    if not found:
        return None
    run, ckpt = found[0]
    return PreviousRun(
        str(run.id),
        ckpt,
        checkpoint_step(ckpt),
        int((run.config.get("train") or {}).get("max_steps") or spec.train.max_steps),
        _differences(run.config, config),
        [str(r.id) for r, _ in found[1:]],
    )


def _alive(host: str, pid: int | None) -> bool:
    if not pid or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_resumable(store: Store, spec: TrainSpec) -> str | None:
    """The id of an interrupted run of this very job that left a checkpoint."""
    prev = previous_run(store, spec)
    return prev.run_id if prev is not None and not prev.changed else None


def run_to_continue(
    store: Store, spec: TrainSpec, *, resume: bool = False, restart: bool = False
) -> str | None:
    """What becomes of an earlier interrupted run of this job's output: its id with
    ``resume`` (it continues), ``None`` with ``restart`` (its checkpoints, and those of
    older interrupted runs of the output, are deleted first). With neither flag, such a
    run is a :class:`UserError` naming its step and both flags, since starting from step 0
    silently would throw the work away; ``None`` when there is none."""
    if resume and restart:
        raise UserError("--resume and --restart exclude each other: pick one")
    prev = previous_run(store, spec)
    if prev is None:
        if resume:
            raise UserError(
                f"--resume: no interrupted training run of {spec.output!r} with a checkpoint"
            )
        return None
    if restart:
        for run_id in [prev.run_id, *prev.others]:
            shutil.rmtree(Path(store.runs.dir(run_id)) / "checkpoints", ignore_errors=True)
        return None
    where = (
        f"a previous run of {spec.output!r} (run {prev.run_id}) stopped at step "
        f"{prev.step} of {prev.max_steps} and left a checkpoint"
    )
    if prev.changed:
        shown = "; ".join(prev.changed[:3]) + ("; ..." if len(prev.changed) > 3 else "")
        raise UserError(
            f"{where}, but this job differs ({shown}): add --restart to start over "
            "(deletes its checkpoints), or restore the job and add --resume"
        )
    if not resume:
        raise UserError(
            f"{where}: add --resume to continue it, or --restart to start over "
            "(deletes its checkpoints)"
        )
    return prev.run_id


def run_training(
    spec: TrainSpec,
    store: Store,
    *,
    resume: bool = False,
    restart: bool = False,
    ignore_previous: bool = False,
    progress: bool = True,
    run_id: str | None = None,
    dist: Dist | None = None,
    register: bool = True,
) -> TrainResult:
    """Run one training job; ``register=False`` saves the output in the run folder
    without registering it (see :func:`register_output`). ``resume`` / ``restart``: what
    to do with an earlier interrupted run of the output (:func:`run_to_continue`); a
    caller passing ``run_id`` (the distributed launcher) has decided already, and one
    passing ``ignore_previous`` (a sweep's trials) starts a fresh run and leaves earlier
    runs and their checkpoints alone."""
    dist = dist or Dist.from_env()
    paths, dataset_refs = _dataset_paths(spec, store)
    rows, counts = _load_rows(spec, paths) if spec.stage != "pretrain" else ([], {})
    config = spec.model_dump(mode="json")
    if run_id is None and not ignore_previous:
        run_id = run_to_continue(store, spec, resume=resume, restart=restart)
        resume = run_id is not None
    if dist.main:
        if run_id is None:
            run_id = store.runs.start("train", name=spec.output, config=config).id
        else:
            store.runs.reopen(run_id)
    assert run_id is not None
    # SIGTERM ends the run like Ctrl-C (recorded, checkpoint named); the SFT/pretrain loop
    # installs its own handlers, which stop between steps and save first. Once stopping, a
    # further signal is ignored (hold) while the run is recorded CANCELLED: it ended the
    # process there, leaving the run RUNNING and no line.
    with StopSignals(graceful=False, once=True) as stop:
        try:
            recorded = _recorded_inputs(spec, store, run_id) if dist.main else []
            result = _train(
                spec,
                store,
                run_id,
                rows,
                paths,
                dataset_refs,
                resume=resume,
                progress=progress,
                dist=dist,
                register=register,
                counts=counts,
                recorded=recorded,
            )
        except KeyboardInterrupt as e:
            stop.hold()
            if not isinstance(e, Interrupted):  # stopped outside the loop (loading, TRL)
                # or at once by a second signal inside a stage's own loop (reward, PPO, TRL's),
                # whose StopSignals saw the first: the exception says which it was
                ckpt = latest_checkpoint(Path(store.runs.dir(run_id)) / "checkpoints")
                e = Interrupted(
                    checkpoint_step(ckpt) if ckpt else 0,
                    spec.train.max_steps,
                    ckpt,
                    signum=getattr(e, "signum", None) or stop.signum or signal.SIGINT,
                )
            if dist.main:
                from lmops.store import RunStatus

                where = f"checkpoint at step {e.step}" if e.checkpoint else "no checkpoint"
                store.runs.finish(run_id, RunStatus.CANCELLED, f"interrupted ({where})")
            raise e from None
        except BaseException as e:
            if dist.main:
                from lmops.store import RunStatus

                store.runs.finish(run_id, RunStatus.FAILED, f"{type(e).__name__}: {e}")
            raise
    if dist.main:
        store.runs.finish(run_id)
    return result


def _train(
    spec: TrainSpec,
    store: Store,
    run_id: str,
    rows: list[tuple[str, int, Any]],
    paths: list[Path],
    dataset_refs: list[str],
    *,
    resume: bool,
    progress: bool,
    dist: Dist,
    register: bool = True,
    counts: dict[str, Any] | None = None,
    recorded: list[tuple[str, str]] | None = None,
) -> TrainResult:
    import torch

    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = spec.distributed.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    run_dir = Path(store.runs.dir(run_id))
    tracker = StoreTracker(store, run_id, list(spec.report_to) if dist.main else [])
    reward = None
    if spec.stage == "ppo":  # an unusable reward model or function fails before the policy loads
        from lmops.train import ppo

        reward = ppo.load_reward(spec, store)
    loaded = load_base(spec, store, for_reward=spec.stage == "reward")
    model, tok = loaded.model, loaded.tokenizer
    device = str(next(model.parameters()).device.type)
    trainable, total = count_parameters(model)
    if dist.main:
        store.runs.update(
            run_id,
            params={"trainable_params": trainable, "total_params": total, "world_size": dist.world},
        )
    steps, seconds, tokens, resumed_from = spec.train.max_steps, 0.0, 0, None
    # the stages below draw no bar of their own (the pretraining / SFT loop does)
    title, shown = f"{spec.stage} {spec.output}", progress and dist.main
    counts = dict(counts or {})
    if dist.main and spec.stage not in ("pretrain", "sft"):
        store.runs.update(run_id, params={"data": counts})
    if spec.stage in ("pretrain", "sft"):
        if spec.stage == "pretrain":
            examples, stats = build_pretrain_examples(
                paths, tok, spec.train.max_seq_len, spec.text_column, spec.on_error
            )
            keys = ("rows_read", "rows_used", "rows_skipped", "skipped_by_reason")
            counts = {k: stats.pop(k) for k in keys if k in stats}
        else:
            examples, stats = build_sft_examples(rows, tok, spec.train.max_seq_len)
        if dist.main:
            store.runs.update(run_id, params={"data": {**counts, **stats}})
        train_ex, eval_ex = split_eval(examples, spec.eval_split, spec.train.seed)
        packed = spec.packing and spec.stage == "sft"
        train_items: list[Any] = pack(train_ex, spec.train.max_seq_len) if packed else train_ex
        eval_items: list[Any] = pack(eval_ex, spec.train.max_seq_len) if packed else eval_ex
        res = train_loop(
            spec,
            model,
            train_items,
            eval_items,
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            packed=packed,
            tracker=tracker,
            ckpt_dir=run_dir / "checkpoints",
            resume=resume,
            progress=progress,
            dist=dist,
            device=device,
        )
        steps, seconds, tokens, resumed_from = res.steps, res.seconds, res.tokens, res.resumed_from
        history = res.history
    elif spec.stage == "ppo":
        from lmops.train import ppo

        prompts = []
        for where, _n, r in rows:  # its tools render with its prompt, as SFT renders them
            check_tool_template(tok, r, where)  # where: the row's file:line
            prompts.append(ppo.Prompt(_prompt_of(r, where), r.get("tools") or None))
        began = time.perf_counter()
        resumed_from = _resumed_from(run_dir)
        with progress_bar(
            tracker, title, spec.train.max_steps, start=resumed_from or 0, enabled=shown
        ) as shows:
            model = ppo.train_ppo(spec, loaded, prompts, shows, reward=reward, store=store)
        seconds = time.perf_counter() - began
        history = tracker.history
    else:
        from lmops.train import preference

        resumed_from = _resumed_from(run_dir)
        for where, _n, r in rows:  # before TRL's trainer spends a minute starting
            check_tool_template(loaded.tokenizer, r, where)
        fn = {
            "reward": preference.train_reward,
            "dpo": preference.train_dpo,
            "kto": preference.train_kto,
            "orpo": preference.train_orpo,
        }[spec.stage]
        began = time.perf_counter()
        steps_done = resumed_from or 0
        with progress_bar(
            tracker, title, spec.train.max_steps, start=steps_done, enabled=shown
        ) as shows:
            model = fn(spec, loaded, [r for _f, _n, r in rows], shows)
        seconds = time.perf_counter() - began
        history = tracker.history
    final = {k: v[-1][1] for k, v in history.items() if v}
    if not dist.main:
        return TrainResult(
            run_id,
            None,
            "",
            steps,
            seconds,
            tokens,
            trainable,
            total,
            final,
            resumed_from,
            data=counts,
        )
    out_dir, kind, meta, inputs = _save_output(
        spec, run_id, run_dir, model, loaded, dataset_refs, final, history, trainable, total
    )
    inputs += recorded or []  # local folders and files (external references)
    result = TrainResult(
        run_id,
        None,
        kind,
        steps,
        seconds,
        tokens,
        trainable,
        total,
        final,
        resumed_from,
        out_dir,
        inputs,
        meta,
        counts,
    )
    if register:
        result.output = register_output(store, spec, result).ref
    return result


def _resumed_from(run_dir: Path) -> int | None:
    """The step a stage with checkpoints of its own folder resumes from (reward, PPO and
    the TRL stages read the run's newest checkpoint; a fresh run has none)."""
    last = latest_checkpoint(run_dir / "checkpoints")
    return checkpoint_step(last) if last is not None else None


def _prompt_of(row: Any, where: str) -> str:
    """A PPO row's prompt: a text field, or a one-turn chat (TRL's conversational
    ``prompt``, a ``messages`` list whose turns before the first answer are one user
    message) as its user turn's text. A system turn is refused, not dropped."""
    if isinstance(row, dict):
        for key in ("prompt", "instruction", "query", "text", "messages"):
            value = row.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and value:
                asked = []
                for m in value:
                    if isinstance(m, dict) and m.get("role") == "assistant":
                        break
                    asked.append(m)
                one = asked[0] if len(asked) == 1 and isinstance(asked[0], dict) else {}
                if one.get("role") == "user" and isinstance(one.get("content"), str):
                    return str(one["content"])
                break
    raise UserError(
        f"{where}: stage ppo needs a one-turn prompt: a 'prompt' (or instruction/query/text) "
        "string, or a chat of one user message (no system turn)"
    )


def register_output(store: Store, spec: TrainSpec, result: TrainResult) -> Any:
    """Register a saved training output with its lineage and run."""
    assert result.output_path is not None
    return store.assets.register(
        result.kind,
        spec.output,
        result.output_path,
        metadata=result.metadata,
        inputs=result.inputs,
        run_id=result.run_id,
        description=spec.description,
    )


def _save_output(
    spec: TrainSpec,
    run_id: str,
    run_dir: Path,
    model: Any,
    loaded: Any,
    dataset_refs: list[str],
    final: dict[str, float],
    history: dict[str, list[tuple[int, float]]],
    trainable: int,
    total: int,
) -> tuple[Path, str, dict[str, Any], list[tuple[str, str]]]:
    out = run_dir / "output"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    inner = getattr(model, "module", model)  # unwrap DDP
    is_adapter = hasattr(inner, "peft_config")
    inner.save_pretrained(str(out), **_embedding_layers(inner) if is_adapter else {})
    loaded.tokenizer.save_pretrained(str(out))
    if is_adapter:
        (out / "lmops_base.json").write_text(
            json.dumps(
                {
                    "base_path": str(loaded.base_path) if loaded.base_path else None,
                    "base_ref": loaded.base_ref,
                }
            )
        )
    plot = plot_loss_curve(history, run_dir / "loss.png", f"{spec.stage} {spec.output}")
    if plot is not None:
        shutil.copy(plot, out / "training_loss.png")
    (out / "README.md").write_text(
        _model_card(spec, run_id, loaded, dataset_refs, final, trainable, total, plot is not None)
    )
    kind = "adapter" if is_adapter else "model"
    meta = {
        "stage": spec.stage,
        "method": spec.method,
        "base_model": loaded.base_ref or (str(loaded.base_path) if loaded.base_path else None),
        "trainable_params": trainable,
        "total_params": total,
        "metrics": final,
        "lmops_version": __version__,
    }
    inputs: list[tuple[str, str]] = [(ref, role) for ref, role in loaded.inputs]
    inputs += [(ref, "dataset") for ref in dataset_refs]
    return out, kind, meta, inputs


def _embedding_layers(model: Any) -> dict[str, Any]:
    """An adapter that targets ``lm_head`` / ``embed_tokens`` is saved with those layers, as
    PEFT's ``"auto"`` decides, but said explicitly: ``"auto"`` warns every time."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    targets = getattr(model.peft_config.get("default"), "target_modules", None) or ()
    hit = not isinstance(targets, str) and any(name in targets for name in EMBEDDING_LAYER_NAMES)
    return {"save_embedding_layers": True} if hit else {}


def _model_card(
    spec: TrainSpec,
    run_id: str,
    loaded: Any,
    dataset_refs: list[str],
    final: dict[str, float],
    trainable: int,
    total: int,
    has_plot: bool,
) -> str:
    base = loaded.base_ref or (
        str(loaded.base_path) if loaded.base_path else f"random init ({spec.model})"
    )
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final.items())) or "| - | - |"
    lines = [
        "---",
        f"library_name: {'peft' if spec.method in ('lora', 'qlora', 'prefix', 'prompt_tuning') else 'transformers'}",
        "tags: [lmops, " + spec.stage + ", " + spec.method + "]",
        "---",
        f"# {spec.output}",
        "",
        f"Trained by lmops {__version__} (run `{run_id}`): stage **{spec.stage}**, method **{spec.method}**.",
        "",
        "## Data and base",
        f"- base model: `{base}`",
        f"- datasets: {', '.join(f'`{d}`' for d in (dataset_refs or spec.datasets))}",
        f"- parameters: {trainable:,} trainable of {total:,}",
        "",
        "## Metrics (last logged values)",
        "| metric | value |",
        "| --- | --- |",
        metrics,
        "",
    ]
    if has_plot:
        lines += ["![training loss](training_loss.png)", ""]
    lines += [
        "## Configuration",
        "```yaml",
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "## Use",
        f"`lmops assets lineage {spec.output}` traces it to its data; `lmops serve --model {spec.output}={spec.output}` serves it.",
        "",
    ]
    return "\n".join(lines)


MERGE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _not_finite(model: Any) -> str | None:
    """The first parameter of ``model`` holding a NaN or inf, or None."""
    return next((n for n, p in model.named_parameters() if not p.isfinite().all()), None)


def merge_adapter(
    store: Store, adapter_ref: str, output: str | None = None, *, dtype: str = "auto"
) -> Any:
    """Merge a LoRA adapter into its base model and register the result as a model.

    ``dtype``: what the merged weights are computed and saved in; ``auto`` keeps the base's
    (a float16 base stays float16). The version's metadata says which (``dtype``,
    ``dtype_from``) and the merge run's config records what was asked. A float16 merge whose
    weights leave float16's range (|w| > 65504, inf once saved) is done again in float32 under
    ``auto`` (as ``assets import gguf`` does; ``dtype_from`` says why) and refused under an
    explicit ``--dtype float16``; weights that hold NaN/inf in any other dtype are refused
    (the adapter or the base carries them). Nothing is written when refused."""
    import torch
    from transformers import AutoTokenizer

    from lmops.models.loading import load_merged, quiet_transformers

    if dtype not in MERGE_DTYPES:
        raise UserError(f"--dtype {dtype!r}: pick one of {', '.join(MERGE_DTYPES)}")
    quiet_transformers()
    v = store.assets.resolve(adapter_ref)
    if v.kind != "adapter":
        raise UserError(f"{adapter_ref!r} is a {v.kind}, not an adapter")
    path = store.assets.path(v.ref)
    base_info = json.loads((path / "lmops_base.json").read_text())
    base_ref = base_info.get("base_ref")
    base_path = store.assets.path(base_ref) if base_ref else Path(base_info["base_path"])
    if not base_path or not Path(base_path).exists():
        raise UserError(
            f"the base model of {v.ref} ({base_ref or base_info['base_path']}) is not available"
        )
    name = output or f"{v.asset}-merged"
    config = {"adapter": v.ref, "base": base_ref, "dtype": dtype}
    with store.runs.track("merge", name=name, config=config) as run:
        # "auto": the dtype the base's config names (transformers' own "auto")
        merged = load_merged(path, store=store, dtype=getattr(torch, dtype, "auto"))
        saved = str(merged.dtype).removeprefix("torch.")
        why = "--dtype" if dtype != "auto" else "auto (the base's)"
        bad = _not_finite(merged)
        if bad is not None and saved == "float16":
            if dtype != "auto":
                raise UserError(
                    f"merging {v.ref} in float16 left {bad} beyond its range (|w| > 65504); "
                    "merge with --dtype float32 or bfloat16"
                )
            del merged
            merged = load_merged(path, store=store, dtype=torch.float32)
            saved, why = "float32", "auto (the base's float16 cannot hold the merge)"
            bad = _not_finite(merged)
        if bad is not None:
            raise UserError(
                f"merging {v.ref} in {saved}: {bad} holds NaN or inf, which no dtype fixes; "
                "the adapter or its base carries them: retrain the adapter from a finite base"
            )
        out = Path(store.runs.dir(run.id)) / "output"
        merged.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(str(path)).save_pretrained(str(out))
        if (path / "README.md").exists():
            (out / "README.md").write_text(
                (path / "README.md").read_text() + f"\n\nMerged from adapter `{v.ref}`.\n"
            )
        inputs = [(v.ref, "adapter")] + (
            [(base_ref, "base_model")]
            if base_ref
            else store.assets.record_inputs([(base_path, "base_model")], run_id=run.id)
        )
        return store.assets.register(
            "model",
            name,
            out,
            metadata={
                **v.metadata,
                "merged_from": v.ref,
                "dtype": saved,  # what the weights are stored in, and why
                "dtype_from": why,
            },
            inputs=inputs,
            run_id=run.id,
        )
