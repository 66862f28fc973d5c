"""The training loop for pretraining and SFT (and the base of every other stage).

Batches are a pure function of (seed, step): step ``s`` takes the next ``batch_size``
examples of a stream of seeded per-epoch permutations. Nothing else decides the data, so
a run resumed from a checkpoint sees exactly the batches an uninterrupted run would, and
``N`` data-parallel processes see the same global batch as one process: rank ``r`` takes
every ``world``-th example of it.

Loss is the mean over every loss token of the *global* batch: each micro-batch adds
``sum(token losses) / tokens_in_global_batch * world`` (DDP averages gradients over ranks,
the ``* world`` undoes that), so 1 and N processes compute the same gradient.

The logged ``loss`` (and ``grad_norm``, ``tokens_per_s``) is the mean over the steps since the
last log, as Hugging Face's Trainer logs it: one step's loss at a small batch is mostly noise.

Checkpoints (``step-000050/state.pt``: trainable weights, optimizer, scheduler, RNG, step, the
sums of the open logging interval) are written to a temp folder and renamed; the newest
``keep_checkpoints`` are kept. They are read back with ``torch.load(weights_only=True)``: a file
holding anything but tensors and plain data is refused, since unpickling it could run code.

SIGINT / SIGTERM (:class:`StopSignals`): the first lets the step in progress finish, saves a
checkpoint and raises :class:`Interrupted` (a ``KeyboardInterrupt``) naming it; a second stops
at once and names the last checkpoint (saving the finished steps first when it came between
steps or during that save); a third stops that save at once, leaving no half-written folder. A
checkpoint is only ever written between steps, so a resumed run is exact either way.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.core.errors import LmopsError, UserError
from lmops.core.signals import StopSignals
from lmops.train.data import IGNORE, collate
from lmops.train.spec import TrainSpec
from lmops.train.tracking import Tracker

__all__ = [
    "Dist",
    "Interrupted",
    "IntervalMean",
    "LoopResult",
    "StepCheckpoints",
    "StopSignals",
    "batch_indices",
    "checkpoint_step",
    "latest_checkpoint",
    "train_loop",
]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )


@dataclass
class LoopResult:
    steps: int
    tokens: int
    seconds: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    resumed_from: int | None = None


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (or Ctrl-C) after ``step`` of ``max_steps`` steps.

    ``checkpoint`` is the folder a resumed run starts from (``None``: none was written);
    ``saved`` says whether it was written for this interruption (else it is an older one);
    ``signum`` is the signal (``SIGINT`` unless told), so a command can exit ``128 + signum``."""

    def __init__(
        self,
        step: int,
        max_steps: int,
        checkpoint: Path | None,
        *,
        saved: bool = False,
        signum: int = signal.SIGINT,
    ) -> None:
        super().__init__(f"interrupted after step {step} of {max_steps}")
        self.step, self.max_steps, self.checkpoint = step, max_steps, checkpoint
        self.saved, self.signum = saved, signum


class IntervalMean:
    """Per-step metrics summed since the last log; :meth:`pop` returns their means and opens
    a new interval. ``tokens`` and ``seconds`` sums become ``tokens_per_s`` (a rate over the
    interval, not a mean of rates). Its :meth:`state` goes into checkpoints, so a resumed run
    logs exactly what an uninterrupted one does."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def mean(self, key: str) -> float:
        return self.sums[key] / self.counts[key] if self.counts.get(key) else float("nan")

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / n for k, n in self.counts.items() if n}
        tokens, seconds = out.pop("tokens", None), out.pop("seconds", None)
        if tokens is not None and seconds is not None:
            out["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
        self.sums.clear()
        self.counts.clear()
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load(self, state: dict[str, Any] | None) -> None:
        self.sums = {str(k): float(v) for k, v in (state or {}).get("sums", {}).items()}
        self.counts = {str(k): int(v) for k, v in (state or {}).get("counts", {}).items()}


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    perm = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(perm)
    return tuple(perm)


def batch_indices(step: int, batch: int, n: int, seed: int) -> list[int]:
    """The example indices of global batch ``step`` (seeded permutation per epoch, cached:
    rebuilding it every step cost 0.6 s at a million examples)."""
    out: list[int] = []
    pos = step * batch
    while len(out) < batch:
        epoch, offset = divmod(pos, n)
        perm = _permutation(n, seed, epoch)
        take = min(batch - len(out), n - offset)
        out += perm[offset : offset + take]
        pos += take
    return out


def lr_lambda(spec: TrainSpec) -> Callable[[int], float]:
    t = spec.train

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_scheduler == "constant":
            return 1.0
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
        progress = min(1.0, max(0.0, progress))
        shape = (
            0.5 * (1 + math.cos(math.pi * progress)) if t.lr_scheduler == "cosine" else 1 - progress
        )
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * shape

    return f


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir``: this loop's ``step-000050`` (its
    ``state.pt`` is renamed into place) or the Trainer's ``checkpoint-50`` of a TRL stage
    (its ``trainer_state.json`` is written last)."""
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.glob("step-*") if (p / "state.pt").exists()]
    done += [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=checkpoint_step) if done else None


def checkpoint_step(path: Path) -> int:
    """The step a ``step-000050`` (or a Trainer's ``checkpoint-50``) folder was written after."""
    return int(path.name.removeprefix("step-").removeprefix("checkpoint-"))


def _trainable_state(model: Any) -> dict[str, Any]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def _save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    keep: int,
    tokens: int,
    interval: IntervalMean,
) -> Path:
    import torch

    final = ckpt_dir / f"step-{step:06d}"
    tmp = ckpt_dir / f".tmp-step-{step:06d}"
    aside = ckpt_dir / f".old-step-{step:06d}"  # a `final` being replaced, until tmp is in
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        state = {
            "step": step,
            "tokens": tokens,
            "model": _trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "interval": interval.state(),
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        torch.save(state, tmp / "state.pt")
        # replacing a checkpoint of the same step: two renames, so at every instant one
        # complete step-N exists (removing it first, a signal before the rename left none)
        if final.exists():
            os.rename(final, aside)
        os.rename(tmp, final)
    except BaseException as e:
        # a full disk, or a signal mid-write: no half-written folder left beside the good
        # ones, and the checkpoint this one was replacing put back
        if aside.exists() and not final.exists():
            os.rename(aside, final)
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError):
            raise
        last = latest_checkpoint(ckpt_dir)
        raise LmopsError(
            f"checkpoint at step {step} could not be written ({e.strerror or e}); "
            f"the last good checkpoint {last.name if last else '(none)'} is kept: free space and rerun with --resume"
        ) from None
    shutil.rmtree(aside, ignore_errors=True)
    others = sorted(p for p in ckpt_dir.glob("step-*") if p != final)
    for old in others[: max(0, len(others) - (keep - 1))]:  # keep the newest `keep`
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_state(file: Path) -> dict[str, Any]:
    """The checkpoint dict in ``file``, read with ``weights_only=True``: tensors, numbers,
    strings and containers only. A full unpickle would run whatever a crafted file names
    (``__reduce__``), so anything else is refused before it is built."""
    import pickle

    import torch

    fix = f"delete {file.parent} to resume from the one before it, or restart without --resume"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message runs over several lines; one of them names the refused global.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" such as {found.group(1)}" if found else ""
        raise UserError(
            f"{file}: refused, the checkpoint holds objects other than tensors and plain data"
            f"{what} (unpickling it could run code); {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise UserError(f"{file}: not a readable checkpoint ({first}); {fix}") from None
    expected = {"step", "tokens", "model", "optimizer", "scheduler", "rng"}
    if not isinstance(state, dict) or not expected <= set(state):
        raise UserError(f"{file}: not an lmops checkpoint (needs keys {sorted(expected)}); {fix}")
    return state


def _load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, interval: IntervalMean
) -> tuple[int, int]:
    import torch

    state = _read_state(path / "state.pt")
    missing = set(_trainable_state(model)) - set(state["model"])
    if missing:
        raise UserError(
            f"{path}: checkpoint does not match this model/method (missing {sorted(missing)[:3]})"
        )
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    interval.load(state.get("interval"))  # older checkpoints have none: an empty interval
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), int(state["tokens"])


class _NoScheduler:
    """The scheduler slot of a checkpoint of a loop that sets its learning rate itself."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class StepCheckpoints:
    """Checkpoints for a stage with a loop of its own (reward, PPO), written and read as
    :func:`train_loop` writes them: ``model`` (a module holding every trained part: PPO's
    policy and value head), ``optimizer``, ``scheduler`` (``None``: the loop sets its rate
    from the step), ``interval``, RNG. Use::

        saver = StepCheckpoints(ckpt_dir, spec.train, model, optimizer, None, interval)
        with StopSignals() as stop:
            for step in range(saver.resume(), max_steps):
                ...  # one step, which uses batch_indices(step, ...) for its data
                saver.after(step + 1, stop)

    :meth:`resume` loads the newest checkpoint of ``ckpt_dir`` (a resumed run's own: a
    fresh run's folder is empty) and returns the steps it holds; :meth:`after` writes one
    every ``save_steps`` and at the end, and on a first signal writes one and raises
    :class:`Interrupted` naming it."""

    def __init__(
        self,
        ckpt_dir: Path,
        train: Any,
        model: Any,
        optimizer: Any,
        scheduler: Any | None,
        interval: IntervalMean,
        *,
        main: bool | None = None,
    ) -> None:
        self.dir, self.train, self.model, self.optimizer = ckpt_dir, train, model, optimizer
        self.scheduler = scheduler if scheduler is not None else _NoScheduler()
        self.interval = interval
        self.saved = 0
        # under torchrun every rank runs the loop; only the first writes (as train_loop)
        self.main = Dist.from_env().main if main is None else main

    def resume(self) -> int:
        last = latest_checkpoint(self.dir)
        if last is None:
            return 0
        step, _ = _load_checkpoint(last, self.model, self.optimizer, self.scheduler, self.interval)
        self.saved = step
        return step

    def after(self, done: int, stop: StopSignals) -> None:
        t = self.train
        if done % t.save_steps == 0 or done == t.max_steps:
            self._save(done)
        if stop.requested and done < t.max_steps:
            if done > self.saved:
                self._save(done)
            raise Interrupted(
                done,
                t.max_steps,
                latest_checkpoint(self.dir),
                saved=True,
                signum=stop.signum or signal.SIGINT,
            )

    def _save(self, done: int) -> None:
        t = self.train
        if not self.main:
            return
        _save_checkpoint(
            self.dir,
            done,
            self.model,
            self.optimizer,
            self.scheduler,
            t.keep_checkpoints,
            0,
            self.interval,
        )
        self.saved = done


def _loss_sum(model: Any, batch: Any, device: str) -> Any:
    """Sum of next-token cross-entropy over loss tokens of a micro-batch."""
    import torch.nn.functional as F

    # use_cache=False: no KV cache in training, which is also what lets transformers see
    # packed rows (position ids restarting at 0) and build a block-diagonal causal mask.
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids.to(device), "use_cache": False}
    if batch.attention_mask is not None:
        kwargs["attention_mask"] = batch.attention_mask.to(device)
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids.to(device)
    logits = model(**kwargs).logits.float()
    labels = batch.labels.to(device)
    if logits.shape[1] != labels.shape[1]:  # prefix/prompt tuning prepend virtual tokens
        logits = logits[:, -labels.shape[1] :]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _tokens(items: list[Any], packed: bool) -> int:
    if packed:
        return sum(sum(1 for x in lab[1:] if x != IGNORE) for _ids, lab, _pos in items)
    return sum(sum(1 for x in ex.labels[1:] if x != IGNORE) for ex in items)


def _input_tokens(items: list[Any], packed: bool) -> int:
    return sum(len(it[0]) if packed else len(it) for it in items)


def evaluate(
    model: Any, items: list[Any], spec: TrainSpec, pad_id: int, packed: bool, device: str
) -> float:
    import torch

    if not items:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    micro = spec.train.micro_batch_size or spec.train.batch_size
    with torch.no_grad():
        for i in range(0, len(items), micro):
            chunk = items[i : i + micro]
            total += float(_loss_sum(model, collate(chunk, pad_id, packed), device))
            count += _tokens(chunk, packed)
    model.train()
    return total / max(1, count)


def train_loop(
    spec: TrainSpec,
    model: Any,
    train_items: list[Any],
    eval_items: list[Any],
    *,
    pad_id: int,
    packed: bool,
    tracker: Tracker,
    ckpt_dir: Path,
    resume: bool = False,
    progress: bool = True,
    dist: Dist | None = None,
    device: str = "cpu",
) -> LoopResult:
    import torch

    dist = dist or Dist()
    t = spec.train
    if spec.distributed.fsdp or spec.distributed.deepspeed:
        # Honest refusal rather than silently training with plain DDP: sharded training is
        # passed through to the TRL-backed stages (reward/dpo/kto/orpo) only, for now.
        raise UserError(
            f"distributed.fsdp/deepspeed are passed through to the reward/dpo/kto/orpo stages; "
            f"stage {spec.stage} uses lmops' own loop, which runs DDP: remove them or use --nproc with DDP"
        )
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    if t.batch_size % dist.world:
        raise UserError(
            f"train.batch_size {t.batch_size} must be divisible by the {dist.world} processes"
        )
    local_batch = t.batch_size // dist.world
    micro = min(t.micro_batch_size or local_batch, local_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"method {spec.method} left no trainable parameter")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        betas=t.adam_betas,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(spec))
    wrapped = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model, device_ids=[dist.local_rank] if device == "cuda" else None)

    start, tokens_seen, resumed_from = 0, 0, None
    interval = IntervalMean()
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        start, tokens_seen = _load_checkpoint(last, model, optimizer, scheduler, interval)
        resumed_from = start
    history: dict[str, list[tuple[int, float]]] = {}

    def log(step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            history.setdefault(k, []).append((step, v))
        if dist.main:
            tracker.log(step, metrics)

    def save(step: int) -> Path:
        return _save_checkpoint(
            ckpt_dir, step, model, optimizer, scheduler, t.keep_checkpoints, tokens_seen, interval
        )

    from lmops.core.progress import Progress

    # a bar on a terminal, a plain line every 30 s otherwise (a log file, nohup, CI)
    bar = Progress(
        t.max_steps,
        label=f"{spec.stage} {spec.output}",
        unit="steps",
        enabled=progress and dist.main,
        start=start,
    )
    model.train()
    began = time.perf_counter()
    completed = saved = start
    # between_steps: the weights, optimizer, scheduler and RNG are those after `completed`
    # steps, so a checkpoint written now resumes exactly (not so inside a step's update).
    between_steps = True
    with bar, StopSignals() as stop:
        try:
            for step in range(start, t.max_steps):
                between_steps = False
                t0 = time.perf_counter()
                global_idx = batch_indices(step, t.batch_size, len(train_items), t.seed)
                global_items = [train_items[i] for i in global_idx]
                n_loss = max(1, _tokens(global_items, packed))
                mine = global_items[dist.rank :: dist.world]
                chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
                loss_sum = 0.0
                for j, chunk in enumerate(chunks):
                    sync = j == len(chunks) - 1
                    ctx = wrapped.no_sync() if (dist.world > 1 and not sync) else _null()
                    with ctx:
                        s = _loss_sum(wrapped, collate(chunk, pad_id, packed), device)
                        (s / n_loss * dist.world).backward()
                    loss_sum += float(s.detach())
                grad_norm: float = (
                    float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
                    if t.max_grad_norm
                    else float(
                        torch.norm(
                            torch.stack([p.grad.norm() for p in params if p.grad is not None])
                        )
                    )
                )
                lr_used = float(scheduler.get_last_lr()[0])  # the rate this step used
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                completed = step + 1
                between_steps = True
                stopping = stop.requested
                if dist.world > 1:
                    # one all-reduce for the loss and the stop request: every rank stops
                    # after the same step, whichever rank the signal reached
                    tl = torch.tensor([loss_sum, float(stopping)], dtype=torch.float64)
                    torch.distributed.all_reduce(tl)
                    loss_sum, stopping = float(tl[0]), bool(tl[1] > 0)
                n_in = _input_tokens(global_items, packed)
                tokens_seen += n_in
                interval.add(
                    {
                        "loss": loss_sum / n_loss,
                        "grad_norm": grad_norm,
                        "tokens": n_in,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                done = step + 1
                # held-out rows are always scored at the end (as the reward and TRL stages
                # do), and every train.eval_steps steps when set
                eval_now = bool(
                    eval_items
                    and ((t.eval_steps and done % t.eval_steps == 0) or done == t.max_steps)
                )
                if done % t.log_steps == 0 or done == t.max_steps or eval_now:
                    metrics = {**interval.pop(), "lr": lr_used}
                    if eval_now:
                        metrics["eval_loss"] = evaluate(
                            model, eval_items, spec, pad_id, packed, device
                        )
                    log(done, metrics)
                running = interval.mean("loss")
                shown = running if math.isfinite(running) else history["loss"][-1][1]
                tps = n_in / max(1e-9, time.perf_counter() - t0)
                bar.describe(f"loss {shown:.4f}, {tps:,.0f} tok/s")
                bar.advance(1)
                if dist.main and (done % t.save_steps == 0 or done == t.max_steps):
                    save(done)
                    saved = done
                if stopping and done < t.max_steps:
                    if dist.main and done > saved:
                        save(done)
                        saved = done
                    raise Interrupted(
                        done,
                        t.max_steps,
                        latest_checkpoint(ckpt_dir),
                        saved=True,
                        signum=stop.signum or signal.SIGINT,
                    )
        except Interrupted:
            raise
        except KeyboardInterrupt as e:
            # stopped at once (a second signal, also one during the first one's save): keep
            # the work done so far when that is safe, else name the last checkpoint; --resume
            # continues from it either way. A third signal stops this save at once (its
            # temporary folder removed) and the stop is reported unsaved. The second signal
            # may land after the first one's save renamed step-N into place (while it prunes
            # older ones): then step-N is complete and not written again.
            def complete() -> bool:
                return (ckpt_dir / f"step-{completed:06d}" / "state.pt").exists()

            if dist.main and between_steps and completed > saved and not complete():
                with contextlib.suppress(KeyboardInterrupt), StopSignals(graceful=False):
                    save(completed)
            # whether step-N is on disk, not whether save() returned: a third signal after
            # its rename (while it prunes) still leaves it complete
            wrote = dist.main and between_steps and completed > saved and complete()
            raise Interrupted(
                completed,
                t.max_steps,
                latest_checkpoint(ckpt_dir),
                saved=wrote,
                signum=getattr(e, "signum", None) or stop.signum or signal.SIGINT,
            ) from e
    return LoopResult(t.max_steps, tokens_seen, time.perf_counter() - began, history, resumed_from)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None
