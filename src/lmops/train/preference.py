"""Preference training: a reward model (a compact loop of our own) and DPO / KTO / ORPO
through TRL 1.16.

Every trainer takes preference rows (``prompt`` / ``chosen`` / ``rejected``, strings or chat
messages; see :func:`lmops.core.formats.to_preference`; rows in other tools' shapes arrive
in this form from :mod:`lmops.core.shapes`; tool calls and a row's ``tools`` too) and
renders them once, with the tokenizer's chat template as the gateway renders a chat
(:mod:`lmops.models.chat`), into text: the prompt ends with the generation prompt
(``<|im_start|>assistant\\n`` in ChatML) and each answer is its continuation. TRL then sees
plain strings, so all four trainers score exactly the same tokens.

    train_reward  Bradley-Terry loss -log σ(r_chosen - r_rejected) on a sequence classifier
                  (``load_base(spec, store, for_reward=True)``, one output).
    train_dpo     trl.DPOTrainer; the reference is the starting model: with an adapter,
                  TRL's frozen copy of it (a fresh LoRA adds nothing: the base model);
                  full/freeze: a frozen copy of the model.
    train_kto     trl.KTOTrainer on unpaired examples: each pair gives one desirable and one
                  undesirable example (kept adjacent: KTO's KL estimate needs sequential
                  batches of at least 2 examples); an unpaired row (``prompt`` /
                  ``completion`` / ``label``, TRL's KTO rows) gives one.
    train_orpo    trl.experimental.orpo.ORPOTrainer (ORPO left TRL's stable API); no reference.

Each returns the trained model (a PEFT model for adapter methods) for the runner to save.
This module imports torch and transformers: import it when a preference stage runs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import signal
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from lmops.core.errors import UserError
from lmops.core.formats import as_messages, to_preference
from lmops.core.logging import get_logger
from lmops.core.signals import StopSignals
from lmops.models.loading import select_device
from lmops.train.loop import (
    Interrupted,
    IntervalMean,
    StepCheckpoints,
    batch_indices,
    latest_checkpoint,
)
from lmops.train.models import Loaded
from lmops.train.spec import TrainParams, TrainSpec
from lmops.train.tracking import Tracker

__all__ = [
    "Completion",
    "Pair",
    "TrackerCallback",
    "lr_factor",
    "render_pairs",
    "render_rows",
    "train_dpo",
    "train_kto",
    "train_orpo",
    "train_reward",
    "trl_classes",
    "trl_config",
]


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Pair:
    """One preference pair as rendered text: ``prompt + chosen`` is the whole chosen chat.
    ``literal``: a message's text holds special-token strings, so the gateway's ids for the
    chat differ from the texts' tokens; then ``ids`` holds them (of prompt, chosen and
    rejected), otherwise nothing (the texts' tokens are the gateway's)."""

    prompt: str
    chosen: str
    rejected: str
    ids: tuple[list[int], ...] = field(default=(), compare=False)
    literal: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Completion:
    """One unpaired KTO example as rendered text: desirable when ``label`` (``ids``,
    ``literal``: as :class:`Pair`'s, of prompt and completion)."""

    prompt: str
    completion: str
    label: bool
    ids: tuple[list[int], ...] = field(default=(), compare=False)
    literal: bool = field(default=False, compare=False)


def render_pairs(
    rows: Iterable[Mapping[str, Any]], tokenizer: Any, max_prompt_len: int
) -> list[Pair]:
    """Render preference rows with the tokenizer's chat template.

    The prompt is cut where the rendered prompt stops being a prefix of both rendered chats
    (templates that render a prompt differently on its own still split cleanly), and keeps
    its last ``max_prompt_len`` tokens: the end of a long prompt is what the answer follows.
    """
    pairs = []
    for row in rows:
        prompt, chosen, rejected = to_preference(row)
        text, (c, r), ids, literal = _render(
            tokenizer, prompt, [chosen, rejected], max_prompt_len, row.get("tools")
        )
        pairs.append(Pair(text, c, r, ids, literal))
    if not pairs:
        raise UserError("no preference rows to train on")
    return pairs


def render_rows(
    rows: Iterable[Mapping[str, Any]], tokenizer: Any, max_prompt_len: int
) -> list[Pair | Completion]:
    """:func:`render_pairs` for KTO's rows, which may also be unpaired (``prompt``,
    ``completion``, ``label``; strings or messages, as in a preference row)."""
    items: list[Pair | Completion] = []
    for row in rows:
        if "label" not in row:
            items += render_pairs([row], tokenizer, max_prompt_len)
            continue
        prompt = as_messages(row["prompt"], "user")
        completion = as_messages(row["completion"], "assistant")
        text, (c,), ids, literal = _render(
            tokenizer, prompt, [completion], max_prompt_len, row.get("tools")
        )
        items.append(Completion(text, c, bool(row["label"]), ids, literal))
    if not items:
        raise UserError("no preference rows to train on")
    return items


def _render(
    tokenizer: Any,
    prompt: list[dict[str, Any]],
    answers: list[list[dict[str, Any]]],
    max_prompt_len: int,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[str], tuple[list[int], ...], bool]:
    """(prompt text, each answer's text, the ids of the prompt and of each answer, whether
    a message's text holds special-token strings): the prompt cut where the rendered prompt
    stops being a prefix of every rendered chat, keeping its last ``max_prompt_len`` tokens.
    Chats and their ``tools`` are rendered and encoded as the gateway does
    (:class:`lmops.models.chat.Literals`).

    A chat without special-token strings in its messages is what its texts tokenize to, so
    it has no ids here (the trainer tokenizes the texts). One with them has (the prompt's
    cut where its ids stop being a prefix of every chat's): its texts only name them."""
    from lmops.models.chat import Literals

    literals = Literals(tokenizer)
    head = literals.chat(prompt, tools, add_generation_prompt=True)
    full = [literals.chat(prompt + a, tools) for a in answers]
    k = literals.boundary(full[0], min(_common_prefix_len(head, f) for f in full))
    if not literals.texts:
        text = full[0][:k]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_len:
            text = tokenizer.decode(ids[-max_prompt_len:], skip_special_tokens=False)
        return text, [f[k:] for f in full], (), False
    prompt_ids = literals.encode(full[0][:k]).ids
    full_ids = [literals.encode(f).ids for f in full]
    p = min(_common_prefix_len(prompt_ids, f) for f in full_ids)
    text = literals.plain(full[0][:k])
    ids = prompt_ids[:p]
    if len(ids) > max_prompt_len:
        ids = ids[-max_prompt_len:]
        text = tokenizer.decode(ids, skip_special_tokens=False)
    cut = len(literals.plain(full[0][:k]))
    answers_text = [literals.plain(f)[cut:] for f in full]
    return text, answers_text, (ids, *(f[p:] for f in full_ids)), bool(literals.texts)


def _common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _split(pairs: list[_T], eval_split: float, seed: int) -> tuple[list[_T], list[_T]]:
    """(train, held-out): a seeded shuffle, then the last ``eval_split`` share held out."""
    if eval_split <= 0:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(pairs) * eval_split))
    if n_eval >= len(pairs):
        raise UserError(f"eval_split {eval_split} leaves no training pairs out of {len(pairs)}")
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def lr_factor(train: TrainParams, step: int) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warmup, then
    constant, or a linear / cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if step < train.warmup_steps:
        return (step + 1) / (train.warmup_steps + 1)
    if train.lr_scheduler == "constant":
        return 1.0
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    decay = (
        1 - progress if train.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    )
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * decay


def _micro_and_accum(train: TrainParams) -> tuple[int, int]:
    """(sequences per forward pass, gradient-accumulation steps) for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro = train.micro_batch_size or max(1, train.batch_size // world)
    return micro, max(1, train.batch_size // (micro * world))


# -- reward model ----------------------------------------------------------------------------------
def _encode(
    tokenizer: Any, ids: Sequence[list[int]], max_len: int, device: Any
) -> dict[str, torch.Tensor]:
    """Right-padded ids [N, L] and mask [N, L]; each row keeps its last ``max_len`` tokens
    (the classifier reads the last token, so the answer's end must survive truncation)."""
    ids = [x[-max_len:] for x in ids]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}


def _pair_rewards(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar rewards (r_chosen [B], r_rejected [B]) from one forward pass over 2B chats
    (their ids as the gateway reads them: a pair's texts tokenized, or its
    :attr:`Pair.ids` where a message's text holds special-token strings)."""

    def chat(p: Pair, answer: int) -> list[int]:
        if p.literal:
            return p.ids[0] + p.ids[answer]
        text = p.prompt + (p.chosen if answer == 1 else p.rejected)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    ids = [chat(p, 1) for p in pairs] + [chat(p, 2) for p in pairs]
    device = next(model.parameters()).device
    scores = model(**_encode(tokenizer, ids, max_len, device)).logits[:, 0].float()  # [2B]
    return scores[: len(pairs)], scores[len(pairs) :]


def train_reward(
    spec: TrainSpec, loaded: Loaded, rows: Iterable[Mapping[str, Any]], tracker: Tracker
) -> Any:
    """Train ``loaded.model`` (a sequence classifier with one output) as a Bradley-Terry
    reward model. Logs ``loss``, ``accuracy`` (share of pairs ranked right), ``margin``
    (mean r_chosen - r_rejected), each the mean over the steps since the last log, and
    ``lr``; with ``spec.eval_split > 0`` also
    ``eval_accuracy`` / ``eval_loss`` / ``eval_margin`` on held-out pairs every
    ``train.eval_steps`` steps and at the end. Returns the model, in eval mode."""
    model, tokenizer, t = loaded.model, loaded.tokenizer, spec.train
    # The classifier pools the last token that is not padding: it must agree with the
    # tokenizer on what padding is.
    model.config.pad_token_id = tokenizer.pad_token_id
    train_pairs, eval_pairs = _split(
        render_pairs(rows, tokenizer, spec.prompt_len), spec.eval_split, t.seed
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(t, s))
    micro, _ = _micro_and_accum(t)
    interval = IntervalMean()
    saver = StepCheckpoints(
        tracker.run_dir / "checkpoints", t, model, optimizer, scheduler, interval
    )
    torch.manual_seed(t.seed)
    n = len(train_pairs)

    model.train()
    with StopSignals() as stop:
        for step in range(saver.resume() + 1, t.max_steps + 1):
            # the batch is a function of the step (a resumed run reads what it would have)
            batch = [
                train_pairs[i] for i in batch_indices(step - 1, min(t.batch_size, n), n, t.seed)
            ]
            r_c, r_r = [], []
            for i in range(0, len(batch), micro):
                chunk = batch[i : i + micro]
                c, r = _pair_rewards(model, tokenizer, chunk, t.max_seq_len)
                # Weighted so the accumulated gradient is that of the batch mean.
                (-F.logsigmoid(c - r).sum() / len(batch)).backward()
                r_c.append(c.detach())
                r_r.append(r.detach())
            if t.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            diff = torch.cat(r_c) - torch.cat(r_r)  # [B]
            interval.add(_pair_metrics(diff))
            if step % t.log_steps == 0 or step == t.max_steps:
                tracker.log(step, {**interval.pop(), "lr": lr})
            if eval_pairs and ((t.eval_steps and step % t.eval_steps == 0) or step == t.max_steps):
                model.eval()
                with torch.no_grad():
                    chunks = [eval_pairs[i : i + micro] for i in range(0, len(eval_pairs), micro)]
                    scored = [_pair_rewards(model, tokenizer, c, t.max_seq_len) for c in chunks]
                    diff = torch.cat([c - r for c, r in scored])  # [N_eval]
                tracker.log(step, {f"eval_{k}": v for k, v in _pair_metrics(diff).items()})
                model.train()
            saver.after(step, stop)
    return model.eval()


def _pair_metrics(diff: torch.Tensor) -> dict[str, float]:
    """``diff`` [N]: r_chosen - r_rejected per pair."""
    return {
        "loss": float(-F.logsigmoid(diff).mean()),
        "accuracy": float((diff > 0).float().mean()),
        "margin": float(diff.mean()),
    }


# -- TRL: DPO / KTO / ORPO ---------------------------------------------------------------------------
# TRL's log keys -> ours (eval keys keep an ``eval_`` prefix).
_TRL_METRICS = {
    "loss": "loss",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "rewards/margins": "margin",
    "rewards/accuracies": "accuracy",
    "kl": "kl",
    "nll_loss": "nll_loss",
    "log_odds_ratio": "log_odds_ratio",
}


class TrackerCallback(TrainerCallback):
    """Forwards a Trainer's logs to a :class:`Tracker`, renamed to lmops metric names.

    They are already means over the logging interval: the Trainer logs the summed loss
    divided by the steps since the last log, and TRL's DPO/KTO/ORPO trainers average the
    ``rewards/*`` (and ``kl``, ``nll_loss``...) they stored each step; ``grad_norm`` is
    the last step's and ``learning_rate`` the current one."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        metrics = {}
        for key, value in (logs or {}).items():
            prefix = "eval_" if key.startswith("eval_") else ""
            name = _TRL_METRICS.get(key.removeprefix("eval_"))
            if name is not None and isinstance(value, int | float) and math.isfinite(value):
                metrics[prefix + name] = float(value)
        if metrics:
            self.tracker.log(state.global_step, metrics)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # The last steps are logged too when train.log_steps does not divide max_steps, as
        # lmops' own loop logs them: the Trainer logged only multiples, so a run shorter than
        # log_steps logged no training metric at all.
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


def trl_classes(stage: str) -> tuple[Any, Any]:
    """(config class, trainer class) of a TRL stage. In TRL 1.16 DPO and KTO are stable
    (``trl``); ORPO lives in ``trl.experimental.orpo``, whose import warns that the API may
    change: TRL is pinned, so the warning tells us nothing."""
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if stage == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if stage == "orpo":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    raise ValueError(f"no TRL trainer for stage {stage!r}")


def trl_config(
    config_cls: type, spec: TrainSpec, run_dir: Path, *, has_eval: bool = False, **extra: Any
) -> Any:
    """A TRL config (DPOConfig, KTOConfig, ORPOConfig, ...) from ``spec``, CPU-safe.

    TRL defaults to bf16 autocast and gradient checkpointing, which on CPU make a run several
    times slower: both are off on CPU, and ``use_cpu`` keeps accelerate off any GPU. On a
    GPU, bf16 autocast follows the weights' dtype (``spec.dtype``) and checkpointing stays
    on. The Trainer writes its checkpoints (``checkpoint-50``: weights, optimizer,
    scheduler, RNG) every ``train.save_steps`` steps into ``run_dir/checkpoints``, where the
    runner finds them to resume, keeping the newest ``train.keep_checkpoints``; metrics go
    through :class:`TrackerCallback`, not TRL's integrations (``report_to=[]``).
    """
    t = spec.train
    device = select_device(spec.device)
    on_gpu = device == "cuda"
    micro, accum = _micro_and_accum(t)
    scheduler, scheduler_kwargs = {
        "constant": ("constant_with_warmup", None),
        "linear": ("linear", None),
        "cosine": ("cosine_with_min_lr", {"min_lr_rate": t.min_lr_ratio}),
    }[t.lr_scheduler]
    kwargs: dict[str, Any] = {
        "output_dir": str(run_dir / "checkpoints"),
        "max_steps": t.max_steps,
        "learning_rate": t.lr,
        "per_device_train_batch_size": micro,
        "per_device_eval_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": scheduler,
        "lr_scheduler_kwargs": scheduler_kwargs,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm or 0.0,  # 0 turns clipping off
        "adam_beta1": t.adam_betas[0],
        "adam_beta2": t.adam_betas[1],
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_strategy": "steps",
        "logging_steps": t.log_steps,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": (t.eval_steps or t.max_steps) if has_eval else None,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.keep_checkpoints,
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": device == "cpu",
        "bf16": on_gpu and spec.dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported(),
        "fp16": on_gpu and spec.dtype == "float16",
        # transformers 5 renamed gradient_checkpointing; setting the new name also sets the
        # old one, which TRL reads (and defaults to True).
        "activation_checkpointing": on_gpu,
        "beta": spec.preference.beta,
        "max_length": t.max_seq_len,
        **extra,
    }
    # GPU clusters: FSDP / DeepSpeed settings go to the Trainer unchanged (run under
    # `lmops train --nproc N`, which launches through torchrun).
    if spec.distributed.deepspeed:
        kwargs["deepspeed"] = spec.distributed.deepspeed
    if spec.distributed.fsdp:
        fsdp = dict(spec.distributed.fsdp)
        kwargs["fsdp"] = fsdp.pop("fsdp", "full_shard auto_wrap")
        kwargs["fsdp_config"] = fsdp
    return config_cls(**kwargs)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """TRL tokenizes with ``datasets.map``, which draws progress bars; ours print nothing."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


class _StopCallback(TrainerCallback):
    """Ctrl-C / SIGTERM (``stop``, graceful) ends training after the step in progress, with
    a checkpoint. Under DDP the ranks agree on the step (one all-reduce of the request)."""

    def __init__(self, stop: StopSignals) -> None:
        self.stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        requested = self.stop.requested
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([float(requested)], device=args.device)
            torch.distributed.all_reduce(flag)
            requested = bool(flag.item() > 0)
        if requested and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
        return control


def _run(trainer: Any) -> Any:
    """Train (from the newest checkpoint in the output folder: a resumed run's own) and
    return the trained model; a first Ctrl-C saves a checkpoint after the step in progress
    and raises :class:`~lmops.train.loop.Interrupted` naming it."""
    from transformers import PrinterCallback, ProgressCallback

    # Progress output belongs to the caller; metrics reach it through TrackerCallback.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    ckpt_dir = Path(trainer.args.output_dir)
    last = latest_checkpoint(ckpt_dir)
    with StopSignals() as stop:
        trainer.add_callback(_StopCallback(stop))
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    state = trainer.state
    if stop.requested and state.global_step < state.max_steps:
        raise Interrupted(
            state.global_step,
            state.max_steps,
            latest_checkpoint(ckpt_dir),
            saved=True,
            signum=stop.signum or signal.SIGINT,
        )
    return trainer.accelerator.unwrap_model(trainer.model)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def _frozen_copy(model: Any) -> Any:
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def _pair_dataset(pairs: list[Pair]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    )


def _train_preference(
    stage: str,
    spec: TrainSpec,
    loaded: Loaded,
    rows: Iterable[Mapping[str, Any]],
    tracker: Tracker,
    *,
    dataset: Callable[[list[Any]], Any] = _pair_dataset,
    render: Callable[[Iterable[Mapping[str, Any]], Any, int], list[Any]] = render_pairs,
    reference: bool = True,
    **config: Any,
) -> Any:
    """The set-up DPO, KTO and ORPO share: render and split the pairs, build the TRL config
    (``config``: stage-specific fields), a reference model where the method has one, run,
    and return the trained model. ``render`` turns rows into pairs (KTO: also unpaired
    examples), ``dataset`` those into the trainer's rows."""
    from lmops.train.escaped import LiteralTexts, check_read, literal_table, reading_ids

    Config, Trainer = trl_classes(stage)
    model, tokenizer = loaded.model, loaded.tokenizer
    pairs = render(rows, tokenizer, spec.prompt_len)
    # rows whose message text holds special-token strings train on the gateway's ids
    pairs, table = literal_table(pairs)
    Trainer = reading_ids(Trainer, table)
    _check_answers_fit(stage, pairs, LiteralTexts(tokenizer, table), spec)
    train_pairs, eval_pairs = _split(pairs, spec.eval_split, spec.train.seed)
    args = trl_config(Config, spec, tracker.run_dir, has_eval=bool(eval_pairs), **config)
    # With an adapter TRL keeps a frozen "ref" copy of it as it starts (a fresh LoRA is the
    # identity: the reference is the base), so only full/freeze need a copy.
    ref = {"ref_model": None if _is_peft(model) else _frozen_copy(model)} if reference else {}
    with _quiet_datasets():
        trainer = Trainer(
            model=model,
            **ref,
            args=args,
            train_dataset=dataset(train_pairs),
            eval_dataset=dataset(eval_pairs) if eval_pairs else None,
            processing_class=tokenizer,
            callbacks=[TrackerCallback(tracker)],
        )
    check_read(trainer, pairs, stage)
    trained = _run(trainer)
    return _drop_ref_adapter(trained) if reference else trained


def _prompt_tokens(stage: str, tokenizer: Any, prompt: str) -> int:
    """The prompt's length as the TRL trainer counts it: tokenized with the tokenizer's own
    special tokens; ORPO also puts a BOS before a prompt that does not start with one."""
    ids = tokenizer(prompt)["input_ids"]
    bos = tokenizer.bos_token_id
    return len(ids) + int(stage == "orpo" and bos is not None and (not ids or ids[0] != bos))


def _check_answers_fit(
    stage: str, pairs: Sequence[Pair | Completion], tokenizer: Any, spec: TrainSpec
) -> None:
    """A row whose prompt fills ``train.max_seq_len`` keeps no answer token: TRL's ORPO
    trains on it with a loss of 0 (DPO and KTO drop it). None left is one error, before
    training that would report success; some is a warning with the count."""
    limit = spec.train.max_seq_len
    empty = sum(_prompt_tokens(stage, tokenizer, p.prompt) >= limit for p in pairs)
    if not empty:
        return
    what = (
        f"{empty} of {len(pairs)} preference rows keep no answer token: their prompts fill "
        f"train.max_seq_len {limit} (prompts keep their last {spec.prompt_len} tokens)"
    )
    fix = "raise train.max_seq_len or lower preference.max_prompt_len"
    if empty == len(pairs):
        raise UserError(f"stage {stage}: {what}; nothing would train: {fix}")
    get_logger(__name__).warning(
        "stage %s: %s; %s",
        stage,
        what,
        "they train on nothing" if stage == "orpo" else "TRL drops them",
    )


def _drop_ref_adapter(model: Any) -> Any:
    """DPO/KTO add a frozen ``ref`` copy of a PEFT model's adapter; it must not be saved."""
    if _is_peft(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")
    return model


def train_dpo(
    spec: TrainSpec, loaded: Loaded, rows: Iterable[Mapping[str, Any]], tracker: Tracker
) -> Any:
    """Direct Preference Optimization with ``trl.DPOTrainer`` (``spec.preference``: beta,
    loss_type, label_smoothing, max_prompt_len). Logs ``loss``, ``reward_chosen``,
    ``reward_rejected``, ``margin``, ``accuracy``, ``lr`` (and ``eval_*`` with an eval
    split)."""
    p = spec.preference
    loss: dict[str, Any] = {"loss_type": [p.loss_type]} if p.loss_type else {}  # else sigmoid
    return _train_preference(
        "dpo", spec, loaded, rows, tracker, label_smoothing=p.label_smoothing, **loss
    )


def _unpaired(items: list[Pair | Completion]) -> Any:
    """KTO's rows: each pair as a desirable (chosen) and an undesirable (rejected) example,
    each unpaired example as it is."""
    from datasets import Dataset

    examples = []
    for p in items:
        if isinstance(p, Completion):
            examples.append({"prompt": p.prompt, "completion": p.completion, "label": p.label})
            continue
        examples.append({"prompt": p.prompt, "completion": p.chosen, "label": True})
        examples.append({"prompt": p.prompt, "completion": p.rejected, "label": False})
    return Dataset.from_list(examples)


def train_kto(
    spec: TrainSpec, loaded: Loaded, rows: Iterable[Mapping[str, Any]], tracker: Tracker
) -> Any:
    """Kahneman-Tversky Optimization with ``trl.KTOTrainer``. Each pair becomes a desirable
    (chosen) and an undesirable (rejected) example, so a batch of ``train.batch_size``
    examples holds half as many pairs; an unpaired row (``label``) is one example. Logs ``loss``, ``reward_chosen``,
    ``reward_rejected``, ``margin``, ``kl``, ``lr``. ``preference.loss_type``: kto (TRL's
    default) or apo_zero_unpaired."""
    if _micro_and_accum(spec.train)[0] < 2:
        raise UserError(
            "stage kto needs at least 2 examples per forward pass (train.micro_batch_size / batch_size)"
        )
    loss: dict[str, Any] = (
        {"loss_type": spec.preference.loss_type} if spec.preference.loss_type else {}
    )
    return _train_preference(
        "kto", spec, loaded, rows, tracker, dataset=_unpaired, render=render_rows, **loss
    )


def train_orpo(
    spec: TrainSpec, loaded: Loaded, rows: Iterable[Mapping[str, Any]], tracker: Tracker
) -> Any:
    """Odds Ratio Preference Optimization with ``trl.experimental.orpo.ORPOTrainer``: SFT on
    the chosen answer plus ``beta`` x an odds-ratio term; no reference model. Logs
    ``loss``, ``nll_loss``, ``log_odds_ratio``, ``reward_chosen``, ``reward_rejected``,
    ``margin``, ``accuracy``, ``lr``."""
    # ORPO's collator needs its prompt/chosen/rejected columns kept.
    return _train_preference(
        "orpo", spec, loaded, rows, tracker, reference=False, remove_unused_columns=False
    )
