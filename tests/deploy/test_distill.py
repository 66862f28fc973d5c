"""Distillation (issue #15 item 4): the losses against direct formulas; a layer-dropped
student gets closer to its teacher (held-out KL and perplexity) with lineage to teacher and
data; an interrupted run saves a checkpoint between steps (never mid-step), resumes from it
and ends with exactly the weights of an uninterrupted one (top-k teacher cache included);
Ctrl-C prints the command that resumes; a CPU-time budget stops a run, which is
registered with its lineage, and the learning rate decays over the budget used; bad students
are one-line errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmops.core.errors import NotFoundError, UserError
from lmops.deploy import distill as distill_mod
from lmops.deploy.distill import DistillInterrupted, DistillSpec, distill, distill_loss, lr_factor
from tests.deploy.test_prune import llama, save
from tests.train.tiny import SENTENCES, make_tokenizer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("distill")
    model, tok = llama(root / "t", tok_dir, layers=4, seed=1)
    with torch.no_grad():  # a teacher whose 2-layer student can get close in a few steps
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    return save(model, tok, root / "t")


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES * 2))
    return path


def test_losses_match_their_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    p, q = t.softmax(-1), s.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(distill_loss(s, t), kl)
    p2, q2 = (t / 2).softmax(-1), (s / 2).softmax(-1)
    kl2 = (p2 * (p2.log() - q2.log())).sum(-1).mean() * 4
    torch.testing.assert_close(distill_loss(s, t, temperature=2.0), kl2)
    m = 0.3 * p + 0.7 * q
    jsd = (0.3 * (p * (p / m).log()).sum(-1) + 0.7 * (q * (q / m).log()).sum(-1)).mean()
    torch.testing.assert_close(distill_loss(s, t, loss="jsd", beta=0.3), jsd)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    # top-k with k = vocabulary is the full forward KL
    vals, idx = torch.topk(t, 11, dim=-1)
    torch.testing.assert_close(distill_loss(s, (vals, idx)), kl)


def _held_out_kl(teacher: Path, student: Path, text: Path) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(teacher))
    ids = torch.tensor([tok(text.read_text()[-400:], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        t = AutoModelForCausalLM.from_pretrained(str(teacher))(input_ids=ids).logits
        s = AutoModelForCausalLM.from_pretrained(str(student))(input_ids=ids).logits
    return float(distill_loss(s, t))


def test_student_learns_the_teacher(store: Any, teacher: Path, text: Path, tmp_path: Path) -> None:
    store.assets.register("model", "teacher", teacher)
    store.assets.register("dataset", "corpus", text)
    start = distill(
        DistillSpec(teacher="teacher", student="layers:2", dataset="corpus", output="s0",
                    steps=1, lr=1e-9, seq_len=32, eval_blocks=2),
        store=store,
    )  # fmt: skip
    r = distill(
        DistillSpec(teacher="teacher", student="layers:2", dataset="corpus", output="s",
                    loss="jsd", steps=40, lr=3e-3, warmup=2, seq_len=32, eval_blocks=2),
        store=store,
    )  # fmt: skip
    assert r.params_student < r.params_teacher and r.steps == 40
    # held-out perplexity moves to the teacher's
    assert abs(r.student_ppl_end - r.teacher_ppl) < 0.5 * abs(r.student_ppl_start - r.teacher_ppl)
    kl_start = _held_out_kl(teacher, store.assets.path(start.ref), text)
    kl_end = _held_out_kl(teacher, store.assets.path(r.ref), text)
    assert kl_end < 0.5 * kl_start, (kl_start, kl_end, r)
    parents = {(e.parent, e.role) for e in store.assets.lineage(r.ref).upstream}
    assert {("teacher:1", "teacher"), ("corpus:1", "dataset")} <= parents


def test_resume_is_exact(
    store: Any, teacher: Path, text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def spec(output: str) -> DistillSpec:
        return DistillSpec(
            teacher=str(teacher), student="layers:2", dataset=str(text), output=output,
            top_k=8, steps=6, checkpoint_every=2, lr=1e-3, seq_len=32, eval_blocks=2,
        )  # fmt: skip

    whole = distill(spec("whole"), store=store)

    def crash(step: int, _loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    # stopped between steps: step 3 is saved on the way out (checkpoints come every 2)
    with pytest.raises(DistillInterrupted) as e:
        distill(spec("split"), store=store, on_step=crash)
    assert (e.value.step, e.value.saved) == (3, True)
    resumed = distill(spec("split"), store=store)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    # stopped inside step 4 (in its loss): half a step is never saved, so the run
    # resumes from the checkpoint of step 2
    real = distill_mod.distill_loss
    calls = itertools.count(1)

    def loss_crash(*a: Any, **k: Any) -> Any:
        if next(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(distill_mod, "distill_loss", loss_crash)
    with pytest.raises(DistillInterrupted) as e:
        distill(spec("mid"), store=store)
    assert (e.value.step, e.value.saved) == (3, False)
    monkeypatch.setattr(distill_mod, "distill_loss", real)
    mid = distill(spec("mid"), store=store)
    assert mid.resumed_from == 2 and mid.steps == 6
    from safetensors.torch import load_file

    a = load_file(str(store.assets.path(whole.ref) / "model.safetensors"))
    for other in (resumed, mid):
        b = load_file(str(store.assets.path(other.ref) / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (other.ref, k)


def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_that_resumes(
    cli: Any, store: Any, teacher: Path, text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first Ctrl-C lets the step finish, saves it (checkpoints come every 50 steps, so
    15 steps were lost before) and prints the command; that command resumes there."""
    import shlex
    import signal

    real = distill_mod.lr_factor

    def ctrl_c_in_step_3(step: int, *a: Any) -> float:
        if step == 2:  # the third step (0-based), mid-way
            signal.raise_signal(signal.SIGINT)
        return real(step, *a)

    monkeypatch.setattr(distill_mod, "lr_factor", ctrl_c_in_step_3)
    r = cli("deploy", "distill", "--teacher", str(teacher), "--student", "layers:2",
            "--dataset", str(text), "-o", "ctrl-c", "--steps", "8", "--seq-len", "32",
            "--eval-blocks", "2", "--lr", "1e-3", "--freeze-embeddings")  # fmt: skip
    assert r.code == 130, (r.out, r.err)
    line = r.err.strip().splitlines()[-1]
    assert line.startswith("interrupted after step 3 of 8; checkpoint saved: "), line
    ckpt = Path(line.split("checkpoint saved: ")[1].split(";")[0])
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    again = shlex.split(line.split("resume with: ")[1])
    assert again[:3] == ["lmops", "deploy", "distill"] and "--freeze-embeddings" in again
    monkeypatch.setattr(distill_mod, "lr_factor", real)
    r = cli(*again[1:], "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["resumed_from"] == 3 and out["steps"] == 8


class _RunsCode:
    """Pickles to a call of ``touch PATH``: what a planted checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        import os

        return (os.system, (f"touch {self.path}",))


def test_a_budgeted_run_shows_the_budget_used(
    store: Any, teacher: Path, text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its steps are unknown (``steps`` is only a ceiling), so the progress counts the
    budget: no "about 3,991 h left" from a step total it will never reach."""
    spec = DistillSpec(teacher=str(teacher), student="layers:2", dataset=str(text),
                       output="shown", steps=100_000, seq_len=32, eval_blocks=2, batch_size=2,
                       max_cpu_minutes=0.01)  # fmt: skip
    r = distill(spec, store=store, show_progress=True)
    assert r.stopped_by == "max_cpu_minutes"
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("distill: ")]
    assert lines[0].startswith("distill: 0/100 % of the time budget"), lines
    done = int(lines[-1].split(": ")[1].split("/")[0])
    assert 50 <= done <= 100 and "steps" not in lines[-1], lines


def test_a_planted_checkpoint_never_runs_code(store: Any, teacher: Path, text: Path,
                                              tmp_path: Path) -> None:  # fmt: skip
    from lmops.deploy.distill import _work_dir

    spec = DistillSpec(teacher=str(teacher), student="layers:2", dataset=str(text),
                       output="safe", steps=2, seq_len=32, eval_blocks=2)  # fmt: skip
    work = _work_dir(store, spec)
    work.mkdir(parents=True, exist_ok=True)
    ran = tmp_path / "ran"
    torch.save({"student": _RunsCode(ran), "step": 1}, work / "checkpoint.pt")
    with pytest.raises(UserError, match=r"checkpoint\.pt: not a checkpoint lmops loads safely"):
        distill(spec, store=store)
    assert not ran.exists()
    with pytest.raises(NotFoundError):  # nothing half-made was registered
        store.assets.resolve("safe")


def test_bad_students(store: Any, teacher: Path, text: Path, tmp_path: Path) -> None:
    base = {"teacher": str(teacher), "dataset": str(text), "output": "x", "seq_len": 32}
    with pytest.raises(UserError, match="keep 1 to 3"):
        distill(DistillSpec(student="layers:4", **base), store=store)
    other, tok = llama(tmp_path / "o", make_tokenizer(tmp_path / "otok", vocab_size=300))
    with pytest.raises(UserError, match="tokenizer differs"):
        distill(DistillSpec(student=str(save(other, tok, tmp_path / "o")), **base), store=store)


def test_pipeline_prune_then_distill(store: Any, teacher: Path, text: Path, tmp_path: Path) -> None:
    """Structured pruning feeding distillation as pipeline steps; a re-run is all cached."""
    import yaml

    from lmops.pipelines.runner import run_pipeline
    from lmops.pipelines.spec import load_pipeline

    steps = {
        "short": {"type": "prune", "model": str(teacher), "output": "short", "method": "layers",
                  "drop": 2, "calibration": str(text), "samples": 4, "seq_len": 32},
        "heal": {"type": "distill", "teacher": str(teacher), "student": "${steps.short.output}",
                 "dataset": str(text), "output": "healed", "steps": 4, "seq_len": 32,
                 "eval_blocks": 2},
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "compress", "steps": steps}, sort_keys=False))
    first = run_pipeline(load_pipeline(path), store, progress=False)
    assert first.ok, first.failed
    assert first.steps["heal"].outputs["output"] == "healed:1"
    parents = {(e.parent, e.role) for e in store.assets.lineage("healed:1").upstream}
    assert ("short:1", "student_init") in parents
    again = run_pipeline(load_pipeline(path), store, progress=False)
    assert again.executed() == []


def test_schedule_decays_over_the_budget() -> None:
    spec = DistillSpec(teacher="t", student="layers:1", dataset="d", output="o", steps=1000,
                       warmup=4, lr=1e-3)  # fmt: skip
    warm = [lr_factor(s, spec) for s in range(4)]
    assert warm == sorted(warm) and warm[-1] < 1.0
    # with a time budget the decay follows the fraction of it used, not the step count
    by_budget = [lr_factor(10, spec, used) for used in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)]
    assert by_budget[0] == pytest.approx(1.0, abs=1e-3)
    assert all(a > b for a, b in itertools.pairwise(by_budget[:5]))
    assert by_budget[2] == pytest.approx(0.55) and by_budget[4] == by_budget[5] == 0.1
    # without one, the steps' fraction
    assert lr_factor(502, spec) == pytest.approx(0.55) and lr_factor(1000, spec) == 0.1


def test_cpu_budget_stops_and_registers(cli: Any, store: Any, teacher: Path, text: Path) -> None:
    res = cli("deploy", "distill", "--teacher", str(teacher), "--student", "layers:2",
              "--dataset", str(text), "-o", "budget", "--steps", "100000", "--seq-len", "32",
              "--eval-blocks", "2", "--batch-size", "2", "--warmup", "0", "--lr", "1e-3",
              "--max-cpu-minutes", "0.02", "--freeze-embeddings", "--json")  # fmt: skip
    assert res.code == 0, res.err
    r = json.loads(res.out)
    assert r["stopped_by"] == "max_cpu_minutes" and 2 <= r["steps"] < 100_000
    # a step is not started when it would overrun: the budget (1.2 s) holds, within a step
    assert 0 < r["cpu_seconds"] <= 1.2 + 0.5, r
    v = store.assets.resolve(r["ref"])
    assert v.metadata["stopped_by"] == "max_cpu_minutes" and v.metadata["steps"] == r["steps"]
    parents = {
        role for _, role in ((e.parent, e.role) for e in store.assets.lineage(r["ref"]).upstream)
    }
    assert {"teacher", "dataset"} <= parents
    # the learning rate fell with the budget used, to near its 10 % floor by the end
    lrs = [m.value for m in store.runs.get(v.run_id).metrics["lr"]]
    assert all(a >= b for a, b in itertools.pairwise(lrs)) and lrs[-1] < 0.3 * lrs[0]
    # the embeddings (tied with the LM head) did not move
    from safetensors.torch import load_file

    got = load_file(str(store.assets.path(r["ref"]) / "model.safetensors"))
    want = load_file(str(teacher / "model.safetensors"))
    assert torch.equal(got["model.embed_tokens.weight"], want["model.embed_tokens.weight"])
