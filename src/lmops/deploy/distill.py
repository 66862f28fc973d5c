"""Knowledge distillation: ``lmops deploy distill --teacher T --student S --dataset D``.

The student is either ``layers:N`` (the teacher with N evenly spaced decoder layers kept,
first and last included, its weights copied) or any model (a ref or folder) with the
teacher's vocabulary, e.g. one from ``lmops deploy prune --method layers``. It learns the
teacher's next-token distribution on every position of the dataset's text (packed into
blocks of ``seq_len`` tokens, :mod:`lmops.deploy._text`):

- ``kl`` (default): forward KL(teacher || student) on softmax(logits / T), times T^2 so the
  gradient scale does not depend on T (Hinton et al.);
- ``jsd``: the generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024) with
  weight ``beta``: beta * KL(p || m) + (1 - beta) * KL(q || m), m = beta p + (1 - beta) q;
- ``top_k``: the teacher's k largest logits per position are computed once per block and
  kept (in the work folder, so a resumed run reuses them); the loss is then the forward KL
  to the teacher renormalised over those k tokens (cheap for repeated epochs).

Training is a small loop written here (the train stage's loop optimises a labelled loss on
chat rows, not a teacher signal): AdamW, linear warm-up then cosine decay to 10 %, gradient
clipping at 1.0. Batches are a pure function of (seed, step) and checkpoints (student,
optimizer, step, RNG, the top-k cache, the CPU seconds spent) are written atomically every
``checkpoint_every`` steps to ``$LMOPS_HOME/work/distill/<output>-<hash of the spec>``;
running the same spec again resumes from the last one and ends with the same weights as an
uninterrupted run. SIGINT / SIGTERM (Ctrl-C, :class:`~lmops.core.signals.StopSignals`): the
first lets the step in progress finish, saves a checkpoint and raises
:class:`DistillInterrupted` naming it; a second stops at once and saves only if it came
between steps (a half-done step is never saved, so a resumed run stays exact); a third
stops that save at once.

Budgets stop early (checkpointed) and register what was reached: ``max_minutes`` of wall
time for this invocation (loading and evaluation included), ``max_cpu_minutes`` of CPU time
spent on training (``time.process_time()`` of this process over the steps: teacher
forwards, student forward/backward, optimizer, checkpoints; loading and the before/after
evaluation excluded), summed over resumed runs. With one torch thread that is the compute
the distillation used, whatever else loads the machine. A step is not started when the last
step's duration would take the run past the CPU budget. With a budget the number of steps is
unknown, so the cosine decays on the fraction of the budget used (the largest of steps,
CPU and wall fractions): the learning rate reaches its floor as the budget runs out.
``freeze_embeddings`` keeps the (tied) embeddings and LM head fixed: pruning leaves them
whole, and their gradient is a large share of a small model's step.

Held-out perplexity (the last ``eval_blocks`` blocks, never trained on) is measured for the
teacher and the student before and after; the student is registered as a ``model`` with
lineage to the teacher (``teacher``), the dataset (``dataset``) and a student model
(``student_init``) when one was given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmops.core.errors import UserError, first_line
from lmops.core.proc import temporary_owned_dir

__all__ = [
    "DistillInterrupted",
    "DistillResult",
    "DistillSpec",
    "distill",
    "distill_loss",
    "lr_factor",
    "perplexity",
]


class DistillSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: str
    student: str  # "layers:N" or a model ref / folder
    dataset: str
    output: str
    loss: Literal["kl", "jsd"] = "kl"
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.5, gt=0, lt=1)  # jsd only
    top_k: int | None = Field(None, ge=1)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(256, ge=8)
    max_blocks: int = Field(2000, ge=2)  # blocks read from the dataset (train + eval)
    eval_blocks: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    max_minutes: float | None = Field(None, gt=0)  # wall time of this invocation
    max_cpu_minutes: float | None = Field(None, gt=0)  # CPU time of training, all resumes
    freeze_embeddings: bool = False
    seed: int = 0


class DistillResult(BaseModel):
    ref: str
    steps: int  # optimizer steps done (may be < spec.steps with a time budget)
    resumed_from: int
    teacher_ppl: float
    student_ppl_start: float
    student_ppl_end: float
    params_teacher: int
    params_student: int
    seconds: float  # wall time of this invocation
    cpu_seconds: float  # CPU time of training, summed over resumed runs
    stopped_by: Literal["steps", "max_minutes", "max_cpu_minutes"] = "steps"


class DistillInterrupted(KeyboardInterrupt):
    """Distillation stopped by a signal after ``step`` of ``steps`` steps. ``checkpoint`` is
    the file the same spec resumes from (``None``: none written yet); ``saved`` says whether
    it was written for this interruption; ``signum`` lets a command exit ``128 + signum``."""

    def __init__(
        self, step: int, steps: int, checkpoint: Path | None, *, saved: bool, signum: int
    ) -> None:
        super().__init__(f"interrupted after step {step} of {steps}")
        self.step, self.steps, self.checkpoint = step, steps, checkpoint
        self.saved, self.signum = saved, signum


def distill_loss(
    student_logits: Any,
    teacher: Any,
    *,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Any:
    """Mean per-token divergence. ``teacher`` is the full logits [B, T, V], or a
    ``(values, indices)`` pair of its top-k logits [B, T, k] (forward KL over those k)."""
    import torch
    import torch.nn.functional as F

    t = temperature
    s_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    if isinstance(teacher, tuple):
        vals, idx = teacher
        p = F.softmax(vals.float() / t, dim=-1)
        q_logp = s_logp.gather(-1, idx)
        kl = (p * (torch.log(p.clamp_min(1e-30)) - q_logp)).sum(-1)
        return kl.mean() * t * t
    t_logp = F.log_softmax(teacher.float() / t, dim=-1)
    if loss == "kl":
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
        return kl.mean() * t * t
    # generalized JSD: m = beta p + (1 - beta) q, in log space for stability
    log_m = torch.logsumexp(
        torch.stack([t_logp + math.log(beta), s_logp + math.log(1 - beta)]), dim=0
    )
    kl_p = (t_logp.exp() * (t_logp - log_m)).sum(-1)
    kl_q = (s_logp.exp() * (s_logp - log_m)).sum(-1)
    return (beta * kl_p + (1 - beta) * kl_q).mean() * t * t


def perplexity(model: Any, blocks: Any, batch: int = 4) -> float:
    """exp(mean next-token negative log-likelihood) over every position of ``blocks``."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(blocks), batch):
            ids = blocks[i : i + batch]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            total += float(nll) * ids[:, 1:].numel()
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def _batch(step: int, n: int, size: int, seed: int) -> list[int]:
    """The block indices of ``step``: epochs are seeded permutations (pure in seed, step)."""
    out = []
    for j in range(step * size, (step + 1) * size):
        epoch, pos = divmod(j, n)
        perm = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        out.append(perm[pos])
    return out


def lr_factor(step: int, spec: DistillSpec, budget_used: float = 0.0) -> float:
    """The learning rate of ``step`` over ``spec.lr``: linear warm-up over ``spec.warmup``
    steps, then cosine from 1 to 0.1 over the larger of the steps' fraction and
    ``budget_used`` (the fraction of a time budget spent, 0-1)."""
    if step < spec.warmup:
        return (step + 1) / (spec.warmup + 1)
    frac = max((step - spec.warmup) / max(1, spec.steps - spec.warmup), budget_used)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _work_dir(store: Any, spec: DistillSpec) -> Path:
    key = hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode()).hexdigest()
    return Path(store.settings.home) / "work" / "distill" / f"{spec.output}-{key[:12]}"


def _student(
    spec: DistillSpec, teacher: Any, tok: Any, store: Any, run_id: str
) -> tuple[Any, list[Any]]:
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from lmops.deploy.prune import drop_layers, evenly_spaced
    from lmops.models.loading import load_tokenizer, resolve_local

    if spec.student.startswith("layers:"):
        n = len(teacher.model.layers)
        try:
            keep = int(spec.student.split(":", 1)[1])
        except ValueError:
            raise UserError(
                f"--student {spec.student!r}: expected layers:N (N an integer)"
            ) from None
        if not 1 <= keep < n:
            raise UserError(
                f"--student layers:{keep}: the teacher has {n} layers; keep 1 to {n - 1}"
            )
        return drop_layers(copy.deepcopy(teacher), evenly_spaced(n, keep)), []
    path, version = resolve_local(spec.student, store, kind="model")
    inputs = (
        [(version, "student_init")]
        if version
        else store.assets.record_inputs([(path, "student_init")], run_id=run_id)
    )
    if load_tokenizer(path).get_vocab() != tok.get_vocab():
        raise UserError(
            f"--student {spec.student}: its tokenizer differs from the teacher's; a student "
            "must share the teacher's vocabulary (or use --student layers:N)"
        )
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32), inputs


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # a signal mid-write, too: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise


def distill(
    spec: DistillSpec,
    *,
    store: Any | None = None,
    show_progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Run (or resume) one distillation and register the student (module docstring).
    ``on_step(step, loss)`` is called after each optimizer step."""

    import torch

    from lmops.core.progress import Progress
    from lmops.core.signals import StopSignals
    from lmops.deploy._source import check_output
    from lmops.deploy._text import resolve_source, token_blocks
    from lmops.deploy.prune import count_params, load_model, save_model

    if store is None:
        from lmops.store import Store

        store = Store(origin="cli")
    check_output(store, spec.output)
    started = time.monotonic()
    with store.runs.track("distill", name=spec.output, config=spec.model_dump()) as run:
        teacher, tok, _path, t_inputs = load_model(spec.teacher, store, run.id)
        inputs = [(ref, "teacher") for ref, _ in t_inputs]
        data, d_inputs = resolve_source(spec.dataset, store, run.id, "dataset")
        inputs += d_inputs
        blocks = token_blocks(data, tok, seq_len=spec.seq_len, max_blocks=spec.max_blocks)
        if len(blocks) <= spec.eval_blocks:
            raise UserError(
                f"{spec.dataset}: {len(blocks)} blocks of {spec.seq_len} tokens; need more than "
                f"the {spec.eval_blocks} held out for evaluation (more text or smaller --seq-len)"
            )
        train, held = blocks[: -spec.eval_blocks], blocks[-spec.eval_blocks :]
        student, s_inputs = _student(spec, teacher, tok, store, run.id)
        inputs += s_inputs
        for p in teacher.parameters():
            p.requires_grad_(False)
        if spec.freeze_embeddings:
            for m in (student.get_input_embeddings(), student.get_output_embeddings()):
                for p in m.parameters() if m is not None else []:
                    p.requires_grad_(False)
        trained = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=spec.lr, weight_decay=spec.weight_decay)
        work = _work_dir(store, spec)
        work.mkdir(parents=True, exist_ok=True)
        ckpt = work / "checkpoint.pt"
        step, cache, cpu_before = 0, {}, 0.0
        info_file = work / "info.json"
        info: dict[str, float] = json.loads(info_file.read_text()) if info_file.exists() else {}
        if ckpt.exists():
            # tensors, numbers and tuples only: a checkpoint never runs code when resumed
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                first = first_line(e)
                raise UserError(
                    f"{ckpt}: not a checkpoint lmops loads safely ({first}); "
                    "delete it to start the distillation over"
                ) from None
            student.load_state_dict(state["student"])
            opt.load_state_dict(state["optimizer"])
            step, cache = int(state["step"]), state["topk"]
            cpu_before = float(state.get("cpu_seconds", 0.0))
            random.setstate(state["rng"]["python"])
            torch.set_rng_state(state["rng"]["torch"])
        resumed_from = step
        if "teacher_ppl" not in info:
            info["teacher_ppl"] = perplexity(teacher, held)
            info["student_ppl_start"] = perplexity(student, held)
            info_file.write_text(json.dumps(info))

        cpu_start = time.process_time()

        def cpu_used() -> float:
            return cpu_before + time.process_time() - cpu_start

        saved = step  # the step the checkpoint on disk holds

        def save(at: int) -> None:
            nonlocal saved
            rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
            _save_atomic(
                {"student": student.state_dict(), "optimizer": opt.state_dict(), "step": at,
                 "topk": cache, "rng": rng, "cpu_seconds": cpu_used()},
                ckpt,
            )  # fmt: skip
            saved = at

        cpu_budget = 60 * spec.max_cpu_minutes if spec.max_cpu_minutes else None
        wall_budget = 60 * spec.max_minutes if spec.max_minutes else None
        stopped_by: Literal["steps", "max_minutes", "max_cpu_minutes"] = "steps"
        last_step_cpu = 0.0  # a step is not started when it would overrun the CPU budget
        # with a time budget the bar counts the budget (its steps are unknown), else steps
        budgeted = bool(cpu_budget or wall_budget)
        total, unit = (100, "% of the time budget") if budgeted else (spec.steps, "steps")

        def advance_to(bar: Progress) -> None:
            used = [step / spec.steps]
            if wall_budget:
                used.append((time.monotonic() - started) / wall_budget)
            if cpu_budget:
                used.append(cpu_used() / cpu_budget)
            done = min(total, int(100 * max(used))) if budgeted else step
            bar.advance(max(0, done - bar.done))

        stop = StopSignals()
        between = True  # no step half done: the student, optimizer and step agree

        def interrupted(wrote: bool, signum: int | None = None) -> DistillInterrupted:
            """The stop to raise; ``wrote``: its checkpoint was written for this stop."""
            return DistillInterrupted(
                step,
                spec.steps,
                ckpt if ckpt.exists() else None,
                saved=wrote,
                signum=signum or stop.signum or signal.SIGINT,
            )

        try:
            with Progress(total, label="distill", unit=unit, enabled=show_progress) as bar, stop:
                advance_to(bar)
                while step < spec.steps and not stop.requested:
                    used = [0.0]
                    if wall_budget:
                        used.append((time.monotonic() - started) / wall_budget)
                        if used[-1] >= 1:
                            stopped_by = "max_minutes"
                            break
                    if cpu_budget:
                        used.append(cpu_used() / cpu_budget)
                        if cpu_used() + last_step_cpu > cpu_budget:
                            stopped_by = "max_cpu_minutes"
                            break
                    step_start = time.process_time()
                    between = False
                    student.train()
                    for g in opt.param_groups:
                        g["lr"] = spec.lr * lr_factor(step, spec, max(used))
                    idx = _batch(step, len(train), spec.batch_size, spec.seed)
                    ids = train[idx]
                    target: Any
                    if spec.top_k:
                        missing = [i for i in idx if i not in cache]
                        if missing:
                            with torch.no_grad():
                                logits = teacher(input_ids=train[missing], use_cache=False).logits
                            vals, tix = torch.topk(logits, spec.top_k, dim=-1)
                            for j, i in enumerate(missing):
                                cache[i] = (vals[j].clone(), tix[j].clone())
                        target = (
                            torch.stack([cache[i][0] for i in idx]),
                            torch.stack([cache[i][1] for i in idx]),
                        )
                    else:
                        with torch.no_grad():
                            target = teacher(input_ids=ids, use_cache=False).logits
                    out = student(input_ids=ids, use_cache=False).logits
                    loss = distill_loss(
                        out, target, loss=spec.loss, temperature=spec.temperature, beta=spec.beta
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trained, 1.0)
                    opt.step()
                    step += 1
                    between = True
                    lr_now = opt.param_groups[0]["lr"]
                    store.runs.log_metrics(
                        run.id, {"loss": float(loss.detach()), "lr": lr_now}, step
                    )
                    advance_to(bar)
                    if step % spec.checkpoint_every == 0 or step == spec.steps:
                        save(step)
                    last_step_cpu = time.process_time() - step_start
                    if on_step is not None:
                        on_step(step, float(loss.detach()))
                if stop.requested and step < spec.steps:
                    # the step in progress finished first; saved while the handlers are
                    # still ours, so a second signal during the save stops it as one does
                    # mid-step (the default SIGTERM would end the process without a word)
                    fresh = step > saved
                    if fresh:
                        save(step)
                    raise interrupted(fresh)
        except DistillInterrupted:
            raise
        except KeyboardInterrupt as e:  # a second signal, or Ctrl-C outside the handler
            # keep the last whole step (a second signal during the first one's save lands
            # here too): ours are no longer the handlers, so the save runs under handlers
            # that stop it at once (the default SIGTERM would end the process without a
            # word, leaving checkpoint.pt.tmp), and a stopped save is reported unsaved
            fresh = between and step > saved
            if fresh:
                with contextlib.suppress(KeyboardInterrupt), StopSignals(graceful=False):
                    save(step)
            # the signal the exception carries (core.signals' SignalInterrupt, a nested
            # StopSignals'), else the first one ours saw
            raise interrupted(fresh and saved == step, getattr(e, "signum", None)) from e
        cpu_total = cpu_used()
        if step % spec.checkpoint_every and step != spec.steps:
            save(step)  # stopped by a time budget: resumable from here
        end_ppl = perplexity(student, held)
        metrics = {
            "teacher_ppl": info["teacher_ppl"],
            "student_ppl_start": info["student_ppl_start"],
            "student_ppl_end": end_ppl,
        }
        store.runs.log_metrics(run.id, {**metrics, "cpu_seconds": cpu_total}, step)
        with temporary_owned_dir("lmops-distill-") as tmp:
            out_dir = save_model(student, tok, Path(tmp) / spec.output)
            v = store.assets.register(
                "model",
                spec.output,
                out_dir,
                metadata={
                    "distilled_from": spec.teacher,
                    "student": spec.student,
                    "steps": step,
                    "loss": spec.loss,
                    "cpu_seconds": round(cpu_total, 1),
                    "stopped_by": stopped_by,
                    **{k: round(x, 4) for k, x in metrics.items()},
                },
                inputs=inputs,
                run_id=run.id,
            )
        shutil.rmtree(work, ignore_errors=True)  # registered: nothing left to resume
    return DistillResult(
        ref=v.ref,
        steps=step,
        resumed_from=resumed_from,
        teacher_ppl=round(info["teacher_ppl"], 4),
        student_ppl_start=round(info["student_ppl_start"], 4),
        student_ppl_end=round(end_ppl, 4),
        params_teacher=count_params(teacher),
        params_student=count_params(student),
        seconds=round(time.monotonic() - started, 1),
        cpu_seconds=round(cpu_total, 1),
        stopped_by=stopped_by,
    )
