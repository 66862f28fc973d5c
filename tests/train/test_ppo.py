"""PPO on a tiny Llama, on CPU: GAE against a hand computation, reward loading, and a toy
objective the policy must learn (completions rich in the letter "a")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lmops.core.errors import UserError
from lmops.models.loading import load_tokenizer
from lmops.train.models import load_base
from lmops.train.ppo import RewardModel, gae, load_reward, train_ppo
from lmops.train.tracking import MemoryTracker
from tests.train.conftest import WORDS, make_spec

PROMPTS = [f"Tell me about the {w}." for w in WORDS]
FAST = {"batch_size": 8, "max_seq_len": 64, "lr_scheduler": "constant"}


def letter_a_share(prompt: str, completion: str) -> float:
    """The toy reward: the share of the completion's characters that are "a"."""
    return completion.count("a") / max(1, len(completion))


def test_gae_matches_a_hand_computation() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2 ends after 2 tokens
    # gamma = lam = 1: the advantage is the reward-to-go minus the value.
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5, 0.5], [1.5, 1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 1.0], [2.5, 2.0, 0.0]]))
    # lam = 0: one-step TD errors r_t + gamma * V_{t+1} - V_t.
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    expected = torch.tensor([[0.9 * 0.5 - 0.5, 0.9 * 0.5 - 0.5, 0.5], [0.5 + 0.9 - 1.0, 1.0, 0.0]])
    assert torch.allclose(adv, expected)


def test_reward_fn_is_loaded_from_the_spec(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "ppo", ppo={"reward_fn": "tests.train.test_ppo:letter_a_share"})
    assert load_reward(spec) is letter_a_share
    bad = make_spec(tmp_path, "ppo", ppo={"reward_fn": "tests.train.test_ppo:no_such_fn"})
    with pytest.raises(UserError, match="module:function"):
        load_reward(bad)


def test_ppo_raises_the_reward_on_a_toy_objective(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(
        tiny_model_dir,
        "ppo",
        "full",
        train={**FAST, "max_steps": 30, "lr": 3e-3, "seed": 0},
        ppo={
            "reward_fn": "tests.train.test_ppo:letter_a_share",
            "rollout_batch": 16,
            "max_new_tokens": 8,
            "kl_coef": 0.01,
        },
    )
    loaded = load_base(spec, None)
    tracker = MemoryTracker(tmp_path)
    train_ppo(spec, loaded, PROMPTS, tracker)
    reward = [v for _, v in tracker.history["reward"]]
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    print(f"PPO reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last > first + 0.1 and last > 2 * first
    for key in ("kl", "policy_loss", "value_loss", "entropy", "length"):
        values = [v for _, v in tracker.history[key]]
        assert len(values) == 30 and all(math.isfinite(v) for v in values), key
    entropy = [v for _, v in tracker.history["entropy"]]
    assert entropy[-1] < entropy[0]  # the policy sharpens towards "a"-rich tokens
    assert [v for _, v in tracker.history["kl"]][-1] > 0  # and drifts from the reference


def test_ppo_with_lora_and_a_reward_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The adapter-off reference and the reward-model path: a random sequence classifier
    saved as a folder, named in the spec."""
    from transformers import AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=1
    ).save_pretrained(str(rm_dir))
    load_tokenizer(tiny_model_dir).save_pretrained(str(rm_dir))
    spec = make_spec(
        tiny_model_dir,
        "ppo",
        "lora",
        train={**FAST, "max_steps": 3, "lr": 1e-2},
        ppo={"reward_model": str(rm_dir), "rollout_batch": 4, "max_new_tokens": 6},
    )
    assert isinstance(load_reward(spec), RewardModel)
    loaded = load_base(spec, None)
    base_before = {k: v.clone() for k, v in loaded.model.named_parameters() if "lora_" not in k}
    tracker = MemoryTracker(tmp_path)
    model = train_ppo(spec, loaded, PROMPTS[:6], tracker)
    for key in ("reward", "kl", "policy_loss", "value_loss", "entropy"):
        values = [v for _, v in tracker.history[key]]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    assert all(
        torch.equal(v, base_before[k]) for k, v in model.named_parameters() if k in base_before
    )
    assert any(v.abs().sum() > 0 for k, v in model.named_parameters() if "lora_B" in k)


def test_a_ppo_prompt_may_be_a_one_turn_chat_and_a_longer_one_is_named() -> None:
    from lmops.core.errors import UserError
    from lmops.train.run import _prompt_of

    one = [{"role": "user", "content": "Tell me about the sea."}]
    assert _prompt_of({"prompt": one, "chosen": "a", "rejected": "b"}, "p.jsonl:1") == (
        "Tell me about the sea."
    )
    assert _prompt_of({"messages": [*one, {"role": "assistant", "content": "x"}]}, "p:1") == (
        "Tell me about the sea."
    )
    assert _prompt_of({"prompt": "plain"}, "p.jsonl:1") == "plain"
    system = [{"role": "system", "content": "Be brief."}, *one]
    for row in ({"prompt": system}, {"messages": [*system, {"role": "assistant", "content": "x"}]}):
        with pytest.raises(UserError, match=r"^p.jsonl:7: stage ppo needs a one-turn prompt"):
            _prompt_of(row, "p.jsonl:7")


def test_a_float16_reward_model_scores_in_the_trainings_dtype(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A reward model saved in float16 (as a GGUF import keeps it), whole or as an adapter
    over a float16 base, loads in the training's dtype (float32 on a CPU), not in the
    folder's: transformers' default would keep float16, slow and off on a CPU."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(tiny_model_dir)
    whole, base, adapter = tmp_path / "rm", tmp_path / "base", tmp_path / "rm-lora"
    classifier = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=1
    ).half()
    classifier.save_pretrained(str(whole))
    assert json.loads((whole / "config.json").read_text())["dtype"] == "float16"
    classifier.save_pretrained(str(base))
    lora = get_peft_model(
        classifier, LoraConfig(task_type="SEQ_CLS", r=2, target_modules="all-linear")
    )
    lora.save_pretrained(str(adapter))
    (adapter / "lmops_base.json").write_text(json.dumps({"base_path": str(base)}))
    for folder in (whole, base, adapter):
        tok.save_pretrained(str(folder))
    for folder in (whole, adapter):
        spec = make_spec(tiny_model_dir, "ppo", ppo={"reward_model": str(folder)})
        reward = load_reward(spec)
        assert isinstance(reward, RewardModel)
        assert {p.dtype for p in reward.model.parameters()} == {torch.float32}, folder.name
        assert all(math.isfinite(s) for s in reward.score(["2+2?"], ["4"]))
