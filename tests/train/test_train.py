"""lmops train end to end on a tiny Llama: methods, resume, lineage, bad input, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.store import RunStatus, Store
from lmops.train.run import run_training
from lmops.train.spec import TrainSpec
from lmops.train.tracking import StoreTracker
from tests.train.tiny import make_model, make_tokenizer, write_alpaca


@pytest.fixture
def base(store: Store, tmp_path: Path) -> Store:
    tok = make_tokenizer(tmp_path / "tok")
    store.assets.register("tokenizer", "tok", tok)
    store.assets.register(
        "model", "tiny", make_model(tmp_path / "tiny", tok), inputs=[("tok", "tokenizer")]
    )
    store.assets.register("dataset", "adds", write_alpaca(tmp_path / "adds.jsonl", 64))
    return store


def spec(**over: object) -> TrainSpec:
    data = {
        "stage": "sft",
        "method": "lora",
        "model": "tiny",
        "dataset": "adds",
        "output": "adder",
        "train": {
            "max_steps": 8,
            "batch_size": 4,
            "max_seq_len": 48,
            "save_steps": 2,
            "lr": 5e-3,
            "warmup_steps": 0,
        },
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    }
    data.update(over)
    return TrainSpec.model_validate(data)


def test_lora_trains_only_adapter_weights_and_registers_lineage(base: Store) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    result = run_training(spec(), base, progress=False)
    assert result.output == "adder:1" and result.kind == "adapter"
    assert result.trainable_params < result.total_params / 10
    out = base.assets.path("adder")
    assert (out / "adapter_config.json").exists() and (out / "README.md").exists()
    card = (out / "README.md").read_text()
    assert "stage **sft**, method **lora**" in card and "tiny:1" in card and "max_steps: 8" in card
    assert (out / "training_loss.png").exists()
    edges = {(e.parent, e.role) for e in base.assets.lineage("adder", depth=1).upstream}
    assert edges == {("tiny:1", "base_model"), ("adds:1", "dataset")}
    # the base weights are untouched; the adapter moved away from its zero init
    from peft import PeftModel

    original = AutoModelForCausalLM.from_pretrained(str(base.assets.path("tiny")))
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base.assets.path("tiny"))), str(out)
    )
    tuned_base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in tuned.state_dict().items()
        if "lora_" not in k
    }
    for k, v in original.state_dict().items():
        assert torch.equal(v, tuned_base[k]), k
    lora_b = [v for k, v in tuned.state_dict().items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    run = base.runs.get(result.run_id)
    assert run.status is RunStatus.SUCCEEDED and len(run.metrics["loss"]) == 8
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(run.metrics)


def test_resumed_run_ends_at_the_same_loss(base: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    full = run_training(spec(output="straight"), base, progress=False)
    real_log = StoreTracker.log

    def interrupt_at_5(self: StoreTracker, step: int, metrics: dict[str, float]) -> None:
        real_log(self, step, metrics)
        if step == 5:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(StoreTracker, "log", interrupt_at_5)
        with pytest.raises(KeyboardInterrupt):
            run_training(spec(output="resumed"), base, progress=False)
    interrupted = next(r for r in base.runs.list() if r.name == "resumed")
    assert interrupted.status is RunStatus.CANCELLED
    resumed = run_training(spec(output="resumed"), base, resume=True, progress=False)
    assert resumed.run_id == interrupted.id and resumed.resumed_from == 5
    assert resumed.final["loss"] == pytest.approx(full.final["loss"], rel=1e-6)
    losses = [m.value for m in base.runs.get(resumed.run_id).metrics["loss"]]
    straight = [m.value for m in base.runs.get(full.run_id).metrics["loss"]]
    assert losses == pytest.approx(straight, rel=1e-6)
    a = torch.load(
        Path(base.runs.dir(full.run_id)) / "checkpoints" / "step-000008" / "state.pt",
        weights_only=False,
    )
    b = torch.load(
        Path(base.runs.dir(resumed.run_id)) / "checkpoints" / "step-000008" / "state.pt",
        weights_only=False,
    )
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k


def test_bad_row_is_reported_before_training(base: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"instruction": "1+1=", "output": "2"}\n{"instruction": "x", "output": "y"}\n{"instruction": "2+2="}\n'
    )
    base.assets.register("dataset", "bad", bad)
    with pytest.raises(UserError, match=r"bad\.jsonl:3: field 'output'"):
        run_training(spec(dataset="bad"), base, progress=False)
    assert [r for r in base.runs.list() if r.kind == "train"] == []
    assert not base.assets.exists("adder")


def test_qlora_on_cpu_is_refused_and_nothing_registered(base: Store) -> None:
    with pytest.raises(UserError, match="qlora needs a CUDA GPU"):
        run_training(spec(method="qlora"), base, progress=False)
    assert not base.assets.exists("adder")
    assert base.runs.list()[0].status is RunStatus.FAILED


def test_full_pretrain_from_preset_and_merge(base: Store, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "t.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"text": f"line {i} of plain text for pretraining."}) for i in range(60)
        )
    )
    base.assets.register("dataset", "text", text)
    pre = spec(
        stage="pretrain",
        method="full",
        model={"preset": "llama-tiny", "tokenizer": "tok"},
        dataset="text",
        output="scratch",
    )
    res = run_training(pre, base, progress=False)
    assert res.kind == "model" and res.final["loss"] < 6.0
    assert {(e.parent, e.role) for e in base.assets.lineage("scratch", depth=1).upstream} == {
        ("tok:1", "tokenizer"),
        ("text:1", "dataset"),
    }
    run_training(spec(), base, progress=False)
    r = cli("train", "merge", "adder", "--json")
    assert r.code == 0, r.err
    merged = json.loads(r.out)
    assert merged["kind"] == "model" and merged["asset"] == "adder-merged"
    edges = {(e.parent, e.role) for e in base.assets.lineage("adder-merged", depth=1).upstream}
    assert edges == {("adder:1", "adapter"), ("tiny:1", "base_model")}


def test_two_process_ddp_matches_one_process(base: Store, tmp_path: Path, lmops_home: Path) -> None:
    job = {
        "stage": "sft",
        "method": "full",
        "model": "tiny",
        "dataset": "adds",
        "output": "OUT",
        "train": {"max_steps": 4, "batch_size": 4, "max_seq_len": 48, "save_steps": 4, "lr": 1e-3},
    }
    losses = {}
    for n in (1, 2):
        cfg = tmp_path / f"ddp{n}.yaml"
        cfg.write_text(json.dumps({**job, "output": f"ddp{n}"}))
        env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lmops.cli.main",
                "train",
                str(cfg),
                "--nproc",
                str(n),
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        # what rank 0 did, as one process reports it (not the job's max_steps and 0.0 s)
        result = json.loads(proc.stdout)
        assert result["steps"] == 4 and result["tokens"] > 0, result
        assert result["seconds"] > 0 and result["output"] == f"ddp{n}:1", result
        run = next(r for r in Store().runs.list() if r.name == f"ddp{n}")
        losses[n] = [m.value for m in Store().runs.get(run.id).metrics["loss"]]
        assert Store().runs.get(run.id).params["world_size"] == n
    assert len(losses[1]) == len(losses[2]) == 4
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)


def test_sweep_runs_trials_and_registers_only_the_best(base: Store, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = spec(output="swept", eval_split=0.25).model_dump(mode="json")
    job["train"]["max_steps"] = 3
    job["train"]["eval_steps"] = 3
    job["sweep"] = {
        "trials": 3,
        "metric": "eval_loss",
        "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(json.dumps(job))
    r = cli("train", "sweep", str(cfg), "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert len(res["trials"]) == 3 and res["output"] == "swept:1"
    best = min(res["trials"], key=lambda t: t["eval_loss"])
    assert best["trial"] == res["best_trial"]
    assert [v.version for v in base.assets.show("swept").versions] == [1]
    assert base.assets.get("swept:1").run_id == best["run_id"]
    assert len([x for x in base.runs.list() if x.kind == "train" and x.name == "swept"]) == 3


def test_dpo_and_reward_stages_register_through_the_runner(base: Store, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w", encoding="utf-8") as fh:
        for i in range(16):
            fh.write(
                json.dumps({"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 7)})
                + "\n"
            )
    base.assets.register("dataset", "pairs", pairs)
    dpo = run_training(
        spec(
            stage="dpo",
            dataset="pairs",
            output="dpo-adder",
            train={"max_steps": 3, "batch_size": 4, "max_seq_len": 48},
        ),
        base,
        progress=False,
    )
    assert dpo.kind == "adapter" and dpo.output == "dpo-adder:1" and dpo.seconds > 0
    assert {"loss", "margin"} <= set(dpo.final)
    assert {(e.parent, e.role) for e in base.assets.lineage("dpo-adder", depth=1).upstream} == {
        ("tiny:1", "base_model"),
        ("pairs:1", "dataset"),
    }
    rm = run_training(
        spec(
            stage="reward",
            method="full",
            dataset="pairs",
            output="rm",
            train={"max_steps": 3, "batch_size": 4, "max_seq_len": 48},
        ),
        base,
        progress=False,
    )
    assert rm.kind == "model" and "accuracy" in rm.final
    bad = tmp_path / "bad_pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}) + "\n")
    base.assets.register("dataset", "bad-pairs", bad)
    with pytest.raises(UserError, match=r"bad_pairs\.jsonl:1"):
        run_training(spec(stage="dpo", dataset="bad-pairs", output="nope"), base, progress=False)


@pytest.mark.parametrize("method", ["prefix", "prompt_tuning"])
def test_prefix_and_prompt_tuning_train_virtual_tokens_only(base: Store, method: str) -> None:
    res = run_training(
        spec(method=method, output=f"adder-{method}", prefix={"num_virtual_tokens": 4}),
        base,
        progress=False,
    )
    assert res.kind == "adapter" and res.trainable_params < res.total_params / 5
    losses = [m.value for m in base.runs.get(res.run_id).metrics["loss"]]
    assert len(losses) == 8 and all(x == x for x in losses)


def test_pretrain_on_token_shards_from_the_data_stage(base: Store, tmp_path: Path) -> None:
    from lmops.data.jobs import tokenize_dataset

    text = tmp_path / "t.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"text": f"shard line {i} with some words to learn."}) for i in range(80)
        )
    )
    base.assets.register("dataset", "text", text)
    shards = tokenize_dataset(base, ["text"], "tok", "text-tokens", shard_tokens=4096)
    res = run_training(
        spec(
            stage="pretrain",
            method="full",
            dataset=shards.ref,
            output="from-shards",
            train={"max_steps": 4, "batch_size": 4, "max_seq_len": 32},
        ),
        base,
        progress=False,
    )
    assert res.kind == "model"
    assert ("text-tokens:1", "dataset") in {
        (e.parent, e.role) for e in base.assets.lineage("from-shards", depth=1).upstream
    }


@pytest.mark.gpu
def test_qlora_on_gpu(base: Store) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("QLoRA needs a CUDA GPU; run `pytest -m gpu` on a GPU machine with lmops[gpu]")
    pytest.importorskip("bitsandbytes", reason="pip install 'lmops[gpu]' for QLoRA")
    res = run_training(spec(method="qlora", device="cuda"), base, progress=False)
    assert res.kind == "adapter" and res.final["loss"] == res.final["loss"]


def test_sharding_settings_are_passed_to_trl_and_refused_by_the_own_loop(
    base: Store, tmp_path: Path
) -> None:
    from lmops.train.preference import trl_classes, trl_config

    s = spec(stage="dpo", distributed={"fsdp": {"fsdp": "full_shard", "min_num_params": 1000}})
    cfg = trl_config(trl_classes("dpo")[0], s, tmp_path, has_eval=False)
    assert cfg.fsdp and cfg.fsdp_config["min_num_params"] == 1000
    with pytest.raises(UserError, match="fsdp/deepspeed are passed through"):
        run_training(spec(distributed={"fsdp": {"fsdp": "full_shard"}}), base, progress=False)


def test_logged_lr_is_the_rate_each_step_used(base: Store) -> None:
    res = run_training(
        spec(
            output="lr",
            train={
                "max_steps": 4,
                "batch_size": 4,
                "max_seq_len": 48,
                "lr": 1e-3,
                "warmup_steps": 4,
                "lr_scheduler": "constant",
            },
        ),
        base,
        progress=False,
    )
    lrs = [m.value for m in base.runs.get(res.run_id).metrics["lr"]]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_a_lora_on_lm_head_is_refused_up_front_where_trl_cannot_train_it(stage: str) -> None:
    """TRL's DPO/KTO read lm_head.weight directly and refuse an adapter there deep inside
    the trainer; the spec says so at load time, naming the field (SFT keeps allowing it)."""
    from lmops.train.spec import spec_from_dict

    data = {"stage": stage, "method": "lora", "model": "tiny", "dataset": "d", "output": "o"}
    with pytest.raises(UserError, match=r"lora\.targets: stage .* lm_head"):
        spec_from_dict({**data, "lora": {"targets": ["q_proj", "lm_head"]}})
    assert spec(stage="sft", lora={"targets": ["q_proj", "lm_head"]}).lora.targets == [
        "q_proj",
        "lm_head",
    ]
    assert spec(stage=stage, lora={"targets": "all-linear"}).stage == stage


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_checkpoint_that_would_run_code(
    base: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    real_log = StoreTracker.log

    def interrupt_at_2(self: StoreTracker, step: int, metrics: dict[str, float]) -> None:
        real_log(self, step, metrics)
        if step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(StoreTracker, "log", interrupt_at_2)
        with pytest.raises(KeyboardInterrupt):
            run_training(spec(), base, progress=False)
    run = base.runs.list()[0]
    state_file = Path(base.runs.dir(run.id)) / "checkpoints" / "step-000002" / "state.pt"
    honest = torch.load(state_file, weights_only=True)  # what lmops wrote loads safely
    marker = tmp_path / "code-ran"
    torch.save({**honest, "optimizer": _RunsCode(marker)}, state_file)

    with pytest.raises(UserError) as err:
        run_training(spec(), base, resume=True, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(state_file) in message and "restart without --resume" in message
    assert "refused" in message
    assert not marker.exists()


def test_an_override_error_names_the_override_not_a_line_of_the_file(tmp_path: Path) -> None:
    from lmops.train.spec import load_spec

    job = tmp_path / "sft.yaml"
    job.write_text("preset: sft-lora\nmodel: tiny\ndataset: d\noutput: o\nmax_steps: x\n")
    with pytest.raises(UserError, match=r"^.*sft\.yaml:5: max_steps: "):  # the file's own line
        load_spec(job)
    job.write_text("preset: sft-lora\nmodel: tiny\ndataset: d\noutput: o\n")
    cases = [
        ("lr=1e-4", "sft.yaml: override 'lr=1e-4': lr: unknown field (check the spelling)"),
        ("lora.r=abc", "sft.yaml: override 'lora.r=abc': lora.r: Input should be a valid integer"),
        ("training.lr=1", "sft.yaml: override 'training.lr=1': training: unknown field"),
    ]
    for override, message in cases:
        with pytest.raises(UserError) as e:
            load_spec(job, [override])
        assert message in str(e.value), str(e.value)
    # an override applies to its job only: the preset it was merged with is unchanged
    assert load_spec(job, ["lora.r=4"]).lora.r == 4 and load_spec(job).lora.r != 4


def test_the_run_summary_shows_each_stages_headline_metrics() -> None:
    from lmops.train.run import TrainResult

    def result(**final: float) -> TrainResult:
        return TrainResult("r", "m:1", "model", 3, 1.0, 10, 1, 2, final=final)

    # a reward model's accuracy on its eval split was left out of the line
    reward = result(eval_accuracy=0.625, eval_loss=0.61, loss=0.7, learning_rate=1e-4)
    assert reward.headline() == "loss 0.7, eval_loss 0.61, eval_accuracy 0.625"
    assert result(reward=0.31, kl=2.5, loss=0.2).headline() == "loss 0.2, reward 0.31, kl 2.5"
    assert result(grad_norm=1.0).headline() == ""


def _job(tmp_path: Path, stage: str, section: str, **fields: object) -> Path:
    """A job YAML whose last lines are ``section:`` and its ``fields`` (one a line)."""
    lines = [f"stage: {stage}", "method: lora", "model: /no/such/model", "dataset: d.jsonl"]
    lines += ["output: o", f"{section}:"] + [f"  {k}: {v}" for k, v in fields.items()]
    job = tmp_path / "job.yaml"
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


def test_a_loss_type_the_stage_does_not_have_is_refused_when_the_spec_is_read(
    cli,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """TRL checks loss_type only once the model is loaded (an internal error after minutes);
    the spec names the file, line and field at once, with the stage's own loss types."""
    from lmops.train.spec import load_spec

    job = _job(tmp_path, "dpo", "preference", beta=0.1, loss_type="nonsense_loss")
    r = cli("train", str(job))  # the model does not exist: the spec is what fails
    assert r.code == 2, r.err
    assert r.err.strip() == (
        f"error: {job}:8: preference.loss_type: 'nonsense_loss' is not a loss of stage dpo; "
        "use one of sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, "
        "aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm "
        "(TRL's names; default sigmoid)"
    )
    refused = [
        ("kto", {"loss_type": "sigmoid"}, r":7: preference\.loss_type: 'sigmoid' is not a "
         r"loss of stage kto; use one of kto, apo_zero_unpaired"),
        ("orpo", {"loss_type": "sigmoid"}, r":7: preference\.loss_type: stage orpo has one loss"),
        ("dpo", {"loss_type": "exo_pair"}, r":7: preference\.label_smoothing: loss_type "
         r"exo_pair needs label_smoothing > 0"),
        ("kto", {"label_smoothing": 0.1}, r":7: preference\.label_smoothing: only stage dpo"),
    ]  # fmt: skip
    for stage, fields, message in refused:
        with pytest.raises(UserError, match=message):
            load_spec(_job(tmp_path, stage, "preference", **fields))
    for stage, fields in [
        ("dpo", {"loss_type": "ipo"}),
        ("dpo", {"loss_type": "exo_pair", "label_smoothing": 0.001}),
        ("kto", {"loss_type": "apo_zero_unpaired"}),
        ("orpo", {"beta": 0.2}),
    ]:
        assert load_spec(_job(tmp_path, stage, "preference", **fields)).stage == stage


def test_the_loss_types_are_the_ones_trl_takes() -> None:
    """The spec's lists against TRL's own: DPOConfig's documented values, KTOConfig's
    choices (TRL is pinned; a new TRL with other names fails here, not in a user's run)."""
    import re

    from trl import DPOConfig, KTOConfig

    from lmops.train.spec import LOSS_TYPES

    dpo = DPOConfig.__dataclass_fields__["loss_type"]
    assert LOSS_TYPES["dpo"] == tuple(re.findall(r"`'(\w+)'`", dpo.metadata["help"]))
    assert dpo.default_factory() == [LOSS_TYPES["dpo"][0]]  # type: ignore[misc]
    kto = KTOConfig.__dataclass_fields__["loss_type"]
    assert LOSS_TYPES["kto"] == tuple(kto.metadata["choices"])
    assert kto.default == LOSS_TYPES["kto"][0]


def test_ppo_settings_that_fail_late_are_refused_when_the_spec_is_read(tmp_path: Path) -> None:
    from lmops.train.spec import load_spec

    cases = [
        ({"reward_fn": "score_answers"}, r":7: ppo\.reward_fn: 'score_answers': expected "
         r"'module:function'"),
        ({"reward_fn": "m:f", "reward_model": "rm"}, r":7: ppo\.reward_fn: give ppo\."
         r"reward_model or ppo\.reward_fn, not both"),
        ({"reward_fn": "m:f", "max_new_tokens": 600}, r":8: ppo\.max_new_tokens: 600 leaves "
         r"no room for the prompt in train\.max_seq_len 512"),
    ]  # fmt: skip
    for fields, message in cases:
        with pytest.raises(UserError, match=message):
            load_spec(_job(tmp_path, "ppo", "ppo", **fields))
    assert load_spec(_job(tmp_path, "ppo", "ppo", reward_fn="pkg.rewards:score")).ppo.reward_fn


def test_an_unusable_reward_model_fails_before_the_policy_loads(
    base: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.train.run as runner

    def no_policy(*args: object, **kwargs: object) -> None:
        raise AssertionError("the policy was loaded before the reward model was checked")

    monkeypatch.setattr(runner, "load_base", no_policy)
    job = spec(stage="ppo", output="ppo-out", ppo={"reward_model": "no-such-rm"})
    with pytest.raises(UserError, match="'no-such-rm' is neither an existing path"):
        run_training(job, base, progress=False)


def test_a_ppo_row_that_is_no_one_turn_prompt_is_named_by_its_file_and_line(
    base: Store, tmp_path: Path
) -> None:
    """The row is named once, as ``file:line``."""
    rows = tmp_path / "ppo.jsonl"
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rows.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"prompt": system}) + "\n")
    job = spec(stage="ppo", output="ppo-out", dataset=str(rows),
               ppo={"reward_fn": "tests.train.test_ppo:letter_a_share"})  # fmt: skip
    with pytest.raises(UserError) as e:
        run_training(job, base, progress=False)
    assert str(e.value).startswith(f"{rows}:2: stage ppo needs a one-turn prompt"), str(e.value)


def test_a_max_prompt_len_that_leaves_no_room_for_the_answer_is_refused(tmp_path: Path) -> None:
    from lmops.train.spec import load_spec

    with pytest.raises(UserError, match=(
        r"job\.yaml:7: preference\.max_prompt_len: 512 leaves no room for the answer in "
        r"train\.max_seq_len 512 .* lower it \(e\.g\. 256\) or raise train\.max_seq_len$"
    )):  # fmt: skip
        load_spec(_job(tmp_path, "orpo", "preference", max_prompt_len=512))
    assert load_spec(_job(tmp_path, "orpo", "preference", max_prompt_len=511)).prompt_len == 511
    assert load_spec(_job(tmp_path, "orpo", "preference", beta=0.1)).prompt_len == 256
    assert load_spec(_job(tmp_path, "sft", "preference", max_prompt_len=512)).stage == "sft"


def test_a_merged_reward_adapter_keeps_its_score_head_and_is_never_run_as_a_chat_model(
    base: Store,
    cli,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Merging a reward LoRA once gave a LlamaForCausalLM (the trained score head dropped);
    as ppo.reward_model it then scored with a random head. Merged, it is a sequence
    classifier that scores like the adapter; eval run and serve refuse either in one line."""
    from transformers import AutoModelForSequenceClassification

    from lmops.serve.deployments import parse_model_args, preflight
    from lmops.train.ppo import load_reward
    from tests.eval.test_resume import write_task

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 7)} for i in range(8)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base.assets.register("dataset", "pairs", pairs)
    train = {"max_steps": 3, "batch_size": 4, "max_seq_len": 48, "lr": 1e-2}
    rm = run_training(spec(stage="reward", dataset="pairs", output="rm", train=train), base,
                      progress=False)  # fmt: skip
    assert rm.kind == "adapter"

    merged = cli("train", "merge", "rm", "--json")
    assert merged.code == 0, merged.err
    folder = base.assets.path("rm-merged")
    assert json.loads((folder / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"
    ]
    _, info = AutoModelForSequenceClassification.from_pretrained(
        str(folder), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]  # score.weight loaded

    prompts, answers = ["2+1=", "5+1=", "7+1="], ["3", "12", "8"]
    scores = {}
    for ref in ("rm", "rm-merged"):
        job = spec(stage="ppo", output="o", ppo={"reward_model": ref})
        scores[ref] = load_reward(job, base).score(prompts, answers)  # type: ignore[union-attr]
    assert scores["rm-merged"] == pytest.approx(scores["rm"], abs=1e-5)
    with pytest.raises(UserError, match=r"ppo\.reward_model tiny: not a reward model"):
        load_reward(spec(stage="ppo", output="o", ppo={"reward_model": "tiny"}), base)
    with pytest.raises(
        UserError, match=r"rm is a reward model .* cannot be trained with stage sft"
    ):
        run_training(spec(model="rm", output="o"), base, progress=False)

    task = write_task(tmp_path, "caps", 2)
    for ref in ("rm", "rm-merged"):
        r = cli("eval", "run", "--model", ref, "--task-file", str(task))
        assert r.code == 2, r.err
        assert r.err.strip() == (
            f"error: {ref}:1 is a reward model (a sequence classifier: it scores answers and "
            "generates no text), so it cannot be evaluated; use it as a PPO job's "
            "ppo.reward_model"
        )
        with pytest.raises(UserError, match=rf"deployment 'chat': {ref}:1 is a reward model"):
            preflight(parse_model_args([f"chat={ref}"]), base)
    assert not base.assets.list(kind="eval_report")


def test_a_reward_model_cannot_start_from_a_language_model_adapter(base: Store) -> None:
    """Merged, an SFT adapter is a causal LM: a reward LoRA on it would have no score head
    to train. Refused before any training, with the way round it."""
    from lmops.train.models import load_base

    one_step = {"max_steps": 1, "batch_size": 2, "max_seq_len": 48, "save_steps": 1}
    run_training(spec(train=one_step), base, progress=False)  # the "adder" adapter
    with pytest.raises(UserError, match=r"stage reward cannot start from a language-model "
                       r"adapter; merge it first \(lmops train merge\)"):  # fmt: skip
        load_base(spec(stage="reward", model="adder"), base, for_reward=True)
