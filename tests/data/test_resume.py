"""What a re-run keeps of a run that failed on a bad row or was interrupted: the way out
the error names (fix the file, or on_error: skip) must not redo the shards that were fine,
and what was skipped is listed once."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import lmops.data.executor as executor
from lmops.core.errors import UserError
from lmops.data.executor import run_recipe
from lmops.data.recipe import load_recipe

RECIPE = """\
name: demo
inputs: [raw/*.jsonl]
process:
  - op: clean_whitespace
  - op: exact_dedup
  - op: length_filter
    min_chars: 5
output: {path: out/demo}
executor: {workers: 1}
"""
BAD_LINE = '{"text": "an unfinished line\n'


def _corpus(raw: Path, *, bad: bool) -> None:
    """Three files of four rows each; the last file has a malformed line when ``bad``."""
    raw.mkdir(parents=True, exist_ok=True)
    for f in range(3):
        rows = [json.dumps({"id": f"{f}-{i}", "text": f"File {f} says thing {i}."}) + "\n"
                for i in range(4)]  # fmt: skip
        if bad and f == 2:
            rows.insert(2, BAD_LINE)
        (raw / f"part{f}.jsonl").write_text("".join(rows))


def _recipe(tmp_path: Path, *overrides: str) -> Any:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPE))
    return load_recipe(path, list(overrides))


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def _fail_on_the_bad_row(tmp_path: Path) -> None:
    _corpus(tmp_path / "raw", bad=True)
    with pytest.raises(UserError, match=r"part2\.jsonl:3: malformed JSON"):
        run_recipe(_recipe(tmp_path), base_dir=tmp_path, progress=False)
    finished = sorted(p.name for p in (tmp_path / "out/demo.lmops-work/stage0").glob("*.stats*"))
    assert finished == ["00000.stats.json", "00001.stats.json"]


def _expected(tmp_path: Path, *overrides: str) -> dict[str, bytes]:
    """The parts an uninterrupted run over the corpus as it is now writes."""
    other = tmp_path / "fresh"
    (other / "raw").mkdir(parents=True)
    for f in (tmp_path / "raw").iterdir():
        (other / "raw" / f.name).write_bytes(f.read_bytes())
    res = run_recipe(_recipe(other, *overrides), base_dir=other, progress=False)
    return _parts(Path(res.output_path or ""))


def test_a_resumed_shard_lists_each_skipped_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _corpus(tmp_path / "raw", bad=True)
    run_shard = executor.run_local_shard

    def killed_before_its_stats(job: Any) -> Any:
        stats = run_shard(job)
        if job.shard.index == 2:  # its error file written, its stats not yet
            Path(job.work, "stage0", "00002.stats.json").unlink()
            raise KeyboardInterrupt
        return stats

    with monkeypatch.context() as m:
        m.setattr(executor, "run_local_shard", killed_before_its_stats)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(_recipe(tmp_path, "on_error=skip"), base_dir=tmp_path, progress=False)
    res = run_recipe(_recipe(tmp_path, "on_error=skip"), base_dir=tmp_path, progress=False)
    errors = (Path(res.output_path or "") / "_errors.jsonl").read_text().splitlines()
    assert res.report["errors"]["count"] == 1
    assert [json.loads(e)["where"] for e in errors] == [
        str(tmp_path / "raw" / "part2.jsonl") + ":3"
    ]
