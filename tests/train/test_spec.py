"""The job spec refuses, when it is read, what would otherwise fail (or silently train on
nothing) only after the model has loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.models.loading import CHATML
from lmops.train.spec import load_spec


def _job(tmp_path: Path, *extra: str) -> Path:
    job = tmp_path / "job.yaml"
    lines = ["stage: dpo", "method: lora", "model: m", "dataset: d.jsonl", "output: o", *extra]
    job.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return job


@pytest.mark.parametrize("name", ["llama3", "qwen"])
def test_a_template_name_given_as_the_chat_template_is_refused_on_its_line(
    tmp_path: Path, name: str
) -> None:
    """LLaMA-Factory names templates (``template: llama3``); here ``chat_template`` is the
    Jinja text, and a bare name rendered every conversation as that word: SFT failed saying
    to raise max_seq_len, DPO registered a model trained on empty pairs."""
    with pytest.raises(UserError) as err:
        load_spec(_job(tmp_path, f"chat_template: {name}"))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'job.yaml'}:6: chat_template: '{name}' renders")
    assert "'chatml'" in message and "\n" not in message


def test_a_chat_template_that_does_not_compile_is_refused_on_its_line(tmp_path: Path) -> None:
    # it was an internal error (TemplateSyntaxError) once the tokenizer had loaded
    job = _job(tmp_path, "chat_template: '{% for m in messages %}{{ m.content }'")
    with pytest.raises(UserError) as err:
        load_spec(job)
    message = str(err.value)
    assert message.startswith(f"{job}:6: chat_template: not a Jinja template (unexpected '}}'")
    assert "\n" not in message


def test_chatml_names_chatml_and_a_real_template_is_kept(tmp_path: Path) -> None:
    assert load_spec(_job(tmp_path, "chat_template: chatml")).chat_template == CHATML
    own = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert load_spec(_job(tmp_path, f"chat_template: '{own}'")).chat_template == own
    # a template that refuses the probe conversation is judged later, by the tokenizer
    strict = "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    assert load_spec(_job(tmp_path, f'chat_template: "{strict}"')).chat_template == strict
    assert load_spec(_job(tmp_path)).chat_template is None


def test_eval_steps_without_held_out_rows_is_refused_on_its_line(tmp_path: Path) -> None:
    """train.eval_steps with eval_split 0 evaluated nothing, and said nothing."""
    job = _job(tmp_path, "train:", "  eval_steps: 5")
    with pytest.raises(UserError) as err:
        load_spec(job)
    assert str(err.value).startswith(f"{job}:7: train.eval_steps: evaluates on held-out rows")
    assert "set eval_split" in str(err.value)
    assert load_spec(job, ["eval_split=0.1"]).train.eval_steps == 5


def test_ppo_refuses_an_eval_split_it_would_ignore(tmp_path: Path) -> None:
    job = tmp_path / "ppo.yaml"
    job.write_text(
        "stage: ppo\nmodel: m\ndataset: d.jsonl\noutput: o\nppo: {reward_fn: 'm:f'}\n"
        "eval_split: 0.1\n"
    )
    with pytest.raises(UserError, match=r"ppo\.yaml:6: eval_split: stage ppo does not evaluate"):
        load_spec(job)


def test_train_run_help_lists_the_job_fields(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("train", "run", "--help")
    assert r.code == 0
    text = " ".join(r.out.split())  # the help is wrapped to the terminal
    assert "stage: sft" in text and "dataset: path/or/asset-ref" in text
    # each section's fields come from the spec itself
    assert "lora: r, alpha, dropout, targets" in text
    assert "preference: beta, loss_type" in text


def test_every_problem_of_a_job_is_reported_on_its_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = tmp_path / "job.yaml"
    job.write_text(
        "stage: sft\nmodel: m\ndataset: d\noutput: o\nlearning_rat: 1e-4\nlora:\n  rank: 8\n"
    )
    r = cli("train", "run", str(job))
    assert r.code == 2
    assert f"{job}:5: learning_rat: unknown field" in r.err
    assert f"{job}:7: lora.rank: unknown field" in r.err
