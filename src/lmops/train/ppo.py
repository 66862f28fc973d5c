"""Proximal Policy Optimization for causal LMs, compact enough to read in one sitting.

TRL no longer ships PPO, so this is our own. One step of ``train_ppo``:

1. rollout   sample a completion for each of ``ppo.rollout_batch`` prompts (the prompt is a
             user turn, and the row's ``tools``, rendered and encoded as the gateway does:
             :class:`lmops.models.chat.Literals`; ``temperature``, ``max_new_tokens``)
2. score     one scalar per completion: a reward model (a sequence classifier, as
             :func:`lmops.train.preference.train_reward` trains) or ``reward_fn(prompt,
             completion) -> float``
3. old log-probs and values from the policy (a value head ``nn.Linear(hidden, 1)`` on its
             last hidden state), log-probs from the frozen reference (a copy of the
             starting model; with an adapter, the adapter switched off)
4. rewards   per token ``-kl_coef * (logp - ref_logp)``, plus the score on the last token
5. GAE       advantages (``gamma``, ``lam``) and returns; advantages whitened
6. update    ``ppo_epochs`` passes of clipped policy loss + ``VF_COEF`` x clipped value loss
             over the rollout, in minibatches of ``train.micro_batch_size or batch_size``

Shapes: B prompts per rollout, P padded prompt length, T completion length, V vocabulary,
H hidden size. Only the policy is returned; the value head is scaffolding.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lmops.core.errors import UserError
from lmops.core.signals import StopSignals
from lmops.models.loading import load_tokenizer, resolve_local, select_device, select_dtype
from lmops.train.loop import IntervalMean, StepCheckpoints, batch_indices
from lmops.train.models import Loaded
from lmops.train.preference import lr_factor
from lmops.train.spec import MAX_PROMPT_LEN, PpoParams, TrainSpec
from lmops.train.tracking import Tracker

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = ["VF_COEF", "Prompt", "RewardFn", "RewardModel", "gae", "load_reward", "train_ppo"]

RewardFn = Callable[[str, str], float]  # (prompt, completion) -> reward
VF_COEF = 0.1  # weight of the value loss in the shared backbone's loss


@dataclass(frozen=True, slots=True)
class Prompt:
    """One PPO prompt: a user turn's text and the tools the row lists (OpenAI tool
    objects), rendered with them as SFT renders a chat with tools."""

    text: str
    tools: list[dict[str, Any]] | None = None


def _chat_ids(
    tokenizer: Any, prompt: Prompt, completion: str | None = None, max_len: int | None = None
) -> list[int]:
    """The ids of a prompt (with the generation prompt) or of prompt and completion, as the
    gateway encodes the chat; the last ``max_len`` of them."""
    from lmops.models.chat import Literals

    literals = Literals(tokenizer)
    chat = [{"role": "user", "content": prompt.text}]
    if completion is not None:
        chat.append({"role": "assistant", "content": completion})
    marked = literals.chat(chat, prompt.tools, add_generation_prompt=completion is None)
    ids = literals.encode(marked).ids
    return ids[-max_len:] if max_len else ids


class RewardModel:
    """A sequence classifier (one output) that scores a prompt + completion chat."""

    def __init__(self, model: Any, tokenizer: Any, max_len: int = 512) -> None:
        self.model, self.tokenizer, self.max_len = model.eval(), tokenizer, max_len
        self.model.config.pad_token_id = tokenizer.pad_token_id  # it pools the last non-pad token

    @torch.no_grad()
    def score(self, prompts: Sequence[str | Prompt], completions: list[str]) -> list[float]:
        tok = self.tokenizer
        ids = [
            _chat_ids(tok, p if isinstance(p, Prompt) else Prompt(p), c, self.max_len)
            for p, c in zip(prompts, completions, strict=True)
        ]
        width = max(len(x) for x in ids)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor(
            [x + [tok.pad_token_id] * (width - len(x)) for x in ids], device=device
        )
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in ids])[:, None]).to(
            device
        )
        return self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()


def load_reward(spec: TrainSpec, store: Store | None = None) -> RewardFn | RewardModel:
    """The reward ``spec.ppo`` names: ``reward_fn`` ("module:function") or ``reward_model``
    (a folder or asset ref of a sequence classifier, or of a reward adapter)."""
    if spec.ppo.reward_fn:
        module, _, name = spec.ppo.reward_fn.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise UserError(
                f"ppo.reward_fn {spec.ppo.reward_fn!r}: expected 'module:function' ({e})"
            ) from None
        if not callable(fn):
            raise UserError(f"ppo.reward_fn {spec.ppo.reward_fn!r} is not callable")
        return fn
    if not spec.ppo.reward_model:
        raise UserError("stage ppo needs ppo.reward_model or ppo.reward_fn")
    from transformers import AutoModelForSequenceClassification

    from lmops.core.modelfiles import is_reward_model
    from lmops.models.loading import load_merged

    path, _ = resolve_local(spec.ppo.reward_model, store, kind="model")
    if not is_reward_model(path):  # a causal LM would score with a random head
        raise UserError(
            f"ppo.reward_model {spec.ppo.reward_model}: not a reward model (a sequence "
            "classifier, as stage: reward trains, or its adapter); train one with stage: reward"
        )
    # the training's device and dtype (transformers would keep a float16 folder float16,
    # slow and off on a CPU); on the policy's device, where its rollouts are scored
    device = select_device(spec.device)
    dtype = select_dtype(spec.dtype, device)
    if (path / "adapter_config.json").exists():  # a LoRA reward model, merged into its base
        model = load_merged(path, store=store, dtype=dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype
        )
    model = model.to(device=device, dtype=dtype)
    return RewardModel(model, load_tokenizer(path, spec.chat_template), spec.train.max_seq_len)


def train_ppo(
    spec: TrainSpec,
    loaded: Loaded,
    prompts: Sequence[str | Prompt],
    tracker: Tracker,
    reward: RewardFn | RewardModel | None = None,
    store: Store | None = None,
) -> Any:
    """Optimize ``loaded.model`` with PPO against ``reward`` (default: :func:`load_reward`)
    for ``train.max_steps`` rollouts. Logs ``reward`` (mean score), ``kl`` (summed over
    tokens, mean over completions), ``policy_loss``, ``value_loss``, ``entropy`` (per
    token) and ``length``, each the mean over the rollouts since the last log, and ``lr``.
    Returns the policy."""
    if not prompts:
        raise UserError("stage ppo needs at least one prompt")
    asked = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
    reward = load_reward(spec, store) if reward is None else reward
    policy, tok, p, t = loaded.model, loaded.tokenizer, spec.ppo, spec.train
    device = next(policy.parameters()).device
    torch.manual_seed(t.seed)
    is_peft = hasattr(policy, "peft_config")
    ref = None if is_peft else copy.deepcopy(policy).eval().requires_grad_(False)
    hidden = policy.config.hidden_size
    value_head = nn.Linear(hidden, 1).to(device=device, dtype=next(policy.parameters()).dtype)
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    params = [q for q in policy.parameters() if q.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)
    stop_ids = _stop_ids(policy, tok)
    # the prompt keeps what the completion leaves of max_seq_len (at most max_prompt_len)
    prompt_cap = spec.preference.max_prompt_len or MAX_PROMPT_LEN
    max_prompt = max(1, min(prompt_cap, t.max_seq_len - p.max_new_tokens))
    minibatch = min(t.micro_batch_size or t.batch_size, p.rollout_batch)
    interval = IntervalMean()
    # every trained part in one module, so a checkpoint holds the value head too
    trained = nn.ModuleDict({"policy": policy, "value_head": value_head})
    saver = StepCheckpoints(tracker.run_dir / "checkpoints", t, trained, optimizer, None, interval)
    policy.eval()  # dropout off: the ratio must compare like with like
    with StopSignals() as stop:
        for step in range(saver.resume() + 1, t.max_steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = t.lr * lr_factor(t, step - 1)
            # the prompts are a function of the step (a resumed run reads what it would have)
            n = len(asked)
            batch = [asked[i] for i in batch_indices(step - 1, p.rollout_batch, n, t.seed)]

            # 1. rollout: seq [B, P+T], attn [B, P+T], completion mask m [B, T]
            seq, attn, m, texts = _rollout(policy, tok, batch, max_prompt, stop_ids, p)
            P = seq.shape[1] - m.shape[1]

            # 2. score: [B]
            if isinstance(reward, RewardModel):
                scores = torch.tensor(reward.score(batch, texts), device=device)
            else:
                scores = torch.tensor(
                    [float(reward(q.text, c)) for q, c in zip(batch, texts, strict=True)],
                    device=device,
                )

            # 3. old log-probs / values and reference log-probs: [B, T] each
            with torch.no_grad():
                old_logp, _, old_values = _forward(policy, value_head, seq, attn, P, p.temperature)
                if ref is None:
                    with policy.disable_adapter():
                        ref_logp = _forward(policy, None, seq, attn, P, p.temperature)[0]
                else:
                    ref_logp = _forward(ref, None, seq, attn, P, p.temperature)[0]

                # 4. per-token rewards: KL penalty everywhere, the score on the last real token
                kl = (old_logp - ref_logp) * m  # [B, T]
                rewards = -p.kl_coef * kl
                last = m.sum(1).long() - 1  # [B]
                rewards[torch.arange(len(batch)), last] += scores

                # 5. advantages and returns
                old_values = old_values * m
                advantages, returns = gae(rewards, old_values, m, p.gamma, p.lam)
                advantages = _whiten(advantages, m)

            # 6. PPO epochs over shuffled minibatches
            stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": []}
            for _ in range(p.ppo_epochs):
                for idx in torch.randperm(len(batch), device=device).split(minibatch):
                    logp, entropy, values = _forward(
                        policy, value_head, seq[idx], attn[idx], P, p.temperature
                    )
                    mb, adv = m[idx], advantages[idx]
                    ratio = torch.exp(logp - old_logp[idx])
                    clipped = ratio.clamp(1 - p.clip_range, 1 + p.clip_range)
                    policy_loss = _masked_mean(torch.max(-adv * ratio, -adv * clipped), mb)
                    v_old = old_values[idx]
                    v_clipped = v_old + (values - v_old).clamp(-p.value_clip, p.value_clip)
                    v_err = torch.max((values - returns[idx]) ** 2, (v_clipped - returns[idx]) ** 2)
                    value_loss = 0.5 * _masked_mean(v_err, mb)
                    (policy_loss + VF_COEF * value_loss).backward()
                    if t.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    stats["policy_loss"].append(policy_loss.item())
                    stats["value_loss"].append(value_loss.item())
                    stats["entropy"].append(float(_masked_mean(entropy.detach(), mb)))

            interval.add(
                {
                    "reward": float(scores.mean()),
                    "kl": float(kl.sum(1).mean()),
                    **{k: sum(v) / len(v) for k, v in stats.items()},
                    "length": float(m.sum(1).mean()),
                }
            )
            if step % t.log_steps == 0 or step == t.max_steps:
                tracker.log(step, {**interval.pop(), "lr": optimizer.param_groups[0]["lr"]})
            saver.after(step, stop)
    return policy


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    if not ids:
        raise UserError("the tokenizer has no EOS token; PPO cannot tell where a completion ends")
    return sorted(ids)


@torch.no_grad()
def _rollout(
    policy: Any,
    tok: Any,
    prompts: list[Prompt],
    max_prompt: int,
    stop_ids: list[int],
    p: PpoParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Sample one completion per prompt: (seq [B, P+T], attention mask [B, P+T], completion
    mask [B, T] as floats: 1 up to and including the first stop token, decoded texts)."""
    device = next(policy.parameters()).device
    prompt_ids, prompt_mask = _encode_prompts(tok, prompts, max_prompt, device)
    seq = policy.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        temperature=p.temperature,
        top_k=0,  # plain sampling: the log-probs below are of exactly this distribution
        top_p=1.0,
        max_new_tokens=p.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=stop_ids,
    )
    completion = seq[:, prompt_ids.shape[1] :]  # [B, T]
    is_stop = torch.isin(completion, torch.tensor(stop_ids, device=device)).int()
    keep = (is_stop.cumsum(1) - is_stop) == 0  # no stop token strictly before
    texts = tok.batch_decode(
        completion.masked_fill(~keep, tok.pad_token_id), skip_special_tokens=True
    )
    return seq, torch.cat([prompt_mask, keep.long()], dim=1), keep.float(), texts


def _encode_prompts(
    tokenizer: Any, prompts: list[Prompt], max_len: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids [B, P] and mask [B, P]: generation continues every row at P."""
    ids = [_chat_ids(tokenizer, prompt, max_len=max_len) for prompt in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor(
        [[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids], device=device
    )
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    return input_ids, mask


def _forward(
    model: Any,
    value_head: nn.Module | None,
    seq: torch.Tensor,
    attn: torch.Tensor,
    P: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs [B, T] of the completion tokens under ``softmax(logits / temperature)``
    (the sampling distribution), entropies [B, T] and values [B, T] (zeros without a head).
    Position i's outputs predict token i+1, so completion token j is read at P+j-1."""
    positions = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    out = model(
        input_ids=seq,
        attention_mask=attn,
        position_ids=positions,
        output_hidden_states=value_head is not None,
    )
    logits = out.logits[:, P - 1 : -1].float() / temperature  # [B, T, V]
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, seq[:, P:, None]).squeeze(-1)  # [B, T]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T]
    if value_head is None:
        return logp, entropy, torch.zeros_like(logp)
    hidden = out.hidden_states[-1][:, P - 1 : -1]  # [B, T, H]
    return logp, entropy, value_head(hidden).squeeze(-1).float()


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over [B, T] tensors, backwards in time:
    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``;
    returns (advantages, returns = advantages + values). Past a row's last real token
    rewards, values and so advantages are 0."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # A_{t+1}, [B]
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens; padding stays 0."""
    mean = _masked_mean(x, mask)
    var = _masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask
