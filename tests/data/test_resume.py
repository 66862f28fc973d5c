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
from lmops.data.report import format_summary

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


def test_on_error_skip_after_a_bad_row_keeps_the_finished_shards(tmp_path: Path) -> None:
    _fail_on_the_bad_row(tmp_path)
    res = run_recipe(_recipe(tmp_path, "on_error=skip"), base_dir=tmp_path, progress=False)
    assert res.resumed_shards == 2  # part0 and part1 were not read again
    assert res.report["errors"]["count"] == 1 and res.report["docs_in"] == 12
    assert _parts(Path(res.output_path or "")) == _expected(tmp_path, "on_error=skip")


def test_fixing_the_bad_file_redoes_only_its_shard(tmp_path: Path) -> None:
    _fail_on_the_bad_row(tmp_path)
    bad = tmp_path / "raw" / "part2.jsonl"
    bad.write_text(bad.read_text().replace(BAD_LINE, ""))
    res = run_recipe(_recipe(tmp_path), base_dir=tmp_path, progress=False)
    assert res.resumed_shards == 2
    assert res.report["docs_in"] == 12 and res.report["errors"]["count"] == 0
    assert _parts(Path(res.output_path or "")) == _expected(tmp_path)


def test_a_changed_input_is_read_again_even_when_its_shard_had_finished(tmp_path: Path) -> None:
    _fail_on_the_bad_row(tmp_path)
    first = tmp_path / "raw" / "part0.jsonl"  # finished, then edited: its work is stale
    first.write_text(first.read_text().replace("File 0 says", "File zero says"))
    res = run_recipe(_recipe(tmp_path, "on_error=skip"), base_dir=tmp_path, progress=False)
    assert res.resumed_shards == 1
    out = b"".join(_parts(Path(res.output_path or "")).values())
    assert b"File zero says" in out and b"File 0 says" not in out


def _interrupt_before_the_global_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(executor, "run_global_stage", interrupted)


def test_a_shard_that_skipped_rows_is_redone_when_the_rerun_asks_to_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _corpus(tmp_path / "raw", bad=True)
    with monkeypatch.context() as m:
        _interrupt_before_the_global_stage(m)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(_recipe(tmp_path, "on_error=skip"), base_dir=tmp_path, progress=False)
    # every shard of stage 0 finished, one of them skipping the bad row: under raise that
    # shard is read again, and refused
    with pytest.raises(UserError, match=r"part2\.jsonl:3: malformed JSON"):
        run_recipe(_recipe(tmp_path), base_dir=tmp_path, progress=False)


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


LOCAL_ONLY = """\
name: local
inputs: [raw/*.jsonl]
process:
  - op: clean_whitespace
  - op: length_filter
    min_chars: 5
output: {path: out/local}
"""


def test_docs_per_s_of_a_resumed_run_counts_only_what_it_processed(tmp_path: Path) -> None:
    # it divided every document by the resumed run's time: 3x too fast here
    _corpus(tmp_path / "raw", bad=True)
    path = tmp_path / "local.yaml"
    path.write_text(LOCAL_ONLY)
    with pytest.raises(UserError, match=r"part2\.jsonl:3: malformed JSON"):
        run_recipe(load_recipe(path), base_dir=tmp_path, progress=False)
    bad = tmp_path / "raw" / "part2.jsonl"
    bad.write_text(bad.read_text().replace(BAD_LINE, ""))
    res = run_recipe(load_recipe(path), base_dir=tmp_path, progress=False)
    rep = res.report
    assert rep["docs_in"] == 12 and rep["docs_processed"] == 4 and rep["resumed_shards"] == 2
    head = format_summary(rep).splitlines()[0]
    assert "resumed: 2 of 3 shard stages reused" in head, head
    assert "over the 4 documents processed in this run" in head, head
    # a run from the start processes every document, and says nothing of resuming
    path.write_text(LOCAL_ONLY.replace("out/local", "out/fresh"))
    rep = run_recipe(load_recipe(path), base_dir=tmp_path, progress=False).report
    assert rep["docs_processed"] == 12 and rep["resumed_shards"] == 0
    head = format_summary(rep).splitlines()[0]
    assert "resumed" not in head and "processed in this run" not in head


def test_a_removed_input_redoes_the_global_stages_that_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last file removed after a run that stopped once its stages were done: every
    remaining shard is unchanged, but the dedup (a global stage) had read the removed one,
    so it runs again (its work was reused: the report counted the removed file's rows)."""
    _corpus(tmp_path / "raw", bad=False)

    def stopped(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(executor, "_finish", stopped)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(_recipe(tmp_path), base_dir=tmp_path, progress=False)
    (tmp_path / "raw" / "part2.jsonl").unlink()
    res = run_recipe(_recipe(tmp_path), base_dir=tmp_path, progress=False)
    dedup = next(op for op in res.report["ops"] if op["name"] == "exact_dedup")
    assert dedup["docs_in"] == 8 and res.report["docs_out"] == 8
    assert _parts(Path(res.output_path or "")) == _expected(tmp_path)


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """cp -p, rsync -a or an archive unpacked again put the mtime back; the inode's
    change time still moves, so the shard is read again."""
    import os

    _fail_on_the_bad_row(tmp_path)
    first = tmp_path / "raw" / "part0.jsonl"
    st = first.stat()
    first.write_text(first.read_text().replace("File 0 says", "File O says"))  # same size
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = run_recipe(_recipe(tmp_path, "on_error=skip"), base_dir=tmp_path, progress=False)
    assert res.resumed_shards == 1
    assert b"File O says" in b"".join(_parts(Path(res.output_path or "")).values())
