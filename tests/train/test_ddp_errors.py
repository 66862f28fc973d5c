"""``lmops train --nproc N`` fails as one process does: a bad job is one line and exit 2
before any worker starts; a worker that fails later is one line too, printed once by the
launcher, with no torchrun traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmops.store import RunStatus, Store
from tests.train.tiny import make_tokenizer, write_alpaca

JOB = {
    "stage": "sft",
    "method": "full",
    "output": "ddp-bad",
    "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 32, "save_steps": 2},
}


def _lmops(lmops_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1"}
    env.pop("LMOPS_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "lmops.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_bad_job_is_one_line_and_exit_2_before_any_worker_starts(
    tmp_path: Path, store: Store, cli: Any
) -> None:
    tok = make_tokenizer(tmp_path / "tok")
    missing = tmp_path / "nothere.jsonl"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({**JOB, "model": str(tok), "dataset": str(missing)}))
    one = cli("train", str(cfg))
    two = cli("train", str(cfg), "--nproc", "2")
    assert (one.code, two.code) == (2, 2), two.err
    said = f"error: {str(missing)!r} is neither an existing path nor a READY asset"
    assert two.err.strip().splitlines() == [said]
    assert two.err == one.err
    assert store.runs.list() == []  # no run recorded for workers that never started
    # a bad row and an unknown preset, too
    rows = write_alpaca(tmp_path / "adds.jsonl", 8)
    rows.write_text(rows.read_text() + "{not json\n")
    cfg.write_text(json.dumps({**JOB, "model": str(tok), "dataset": str(rows)}))
    bad_row = cli("train", str(cfg), "--nproc", "2")
    assert bad_row.code == 2 and len(bad_row.err.strip().splitlines()) == 1, bad_row.err
    assert f"{rows}:9" in bad_row.err
    preset = {"preset": "llama-nope", "tokenizer": str(tok)}
    cfg.write_text(json.dumps({**JOB, "stage": "pretrain", "model": preset, "dataset": str(rows)}))
    unknown = cli("train", str(cfg), "--nproc", "2")
    assert unknown.code == 2 and "model.preset 'llama-nope' unknown" in unknown.err
    assert store.runs.list() == []


def test_a_worker_that_fails_after_launch_ends_with_one_line(
    tmp_path: Path, lmops_home: Path
) -> None:
    tok = make_tokenizer(tmp_path / "tok")
    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": f"line {i} of words"}) + "\n" for i in range(16)))
    # heads that do not divide the hidden size: known only when the model is built
    preset = {
        "preset": "llama-tiny",
        "tokenizer": str(tok),
        "overrides": {"num_attention_heads": 3},
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({**JOB, "stage": "pretrain", "model": preset, "dataset": str(text)}))
    proc = _lmops(lmops_home, "train", str(cfg), "--nproc", "2")
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    # a worker's user error is said as itself, with the user-error exit code
    assert proc.returncode == 2, proc.stderr
    assert lines[0].startswith("error: model.overrides: ")
    assert "not a multiple of the number of attention heads (3)" in lines[0]
    (run,) = Store().runs.list()
    assert run.status is RunStatus.FAILED
