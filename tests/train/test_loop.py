"""The pretraining / SFT loop as a user configures it."""

from __future__ import annotations

from pathlib import Path

from lmops.store import Store
from lmops.train.run import run_training
from lmops.train.spec import TrainSpec
from tests.train.tiny import make_model, make_tokenizer, write_alpaca


def test_held_out_rows_are_scored_at_the_end_without_eval_steps(
    store: Store, tmp_path: Path
) -> None:
    """eval_split held rows out of training and, without train.eval_steps, never scored
    them (the reward and TRL stages score them at the end): the run said only its loss."""
    tok = make_tokenizer(tmp_path / "tok")
    model = make_model(tmp_path / "tiny", tok)
    spec = TrainSpec.model_validate(
        {
            "stage": "sft",
            "method": "lora",
            "model": str(model),
            "dataset": str(write_alpaca(tmp_path / "adds.jsonl", 24)),
            "output": "adder",
            "device": "cpu",
            "eval_split": 0.25,
            "train": {"max_steps": 3, "batch_size": 4, "max_seq_len": 48, "log_steps": 2},
            "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        }
    )
    result = run_training(spec, store, progress=False)
    assert "eval_loss" in result.final and result.final["eval_loss"] > 0
    history = store.runs.get(result.run_id).metrics["eval_loss"]
    assert [m.step for m in history] == [3]  # once, at the end
    assert "eval_loss" in result.headline()
