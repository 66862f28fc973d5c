"""Recipes end to end: validation, local executor, report, lineage, resume after kill -9,
no worker outliving a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.data.executor import run_recipe
from lmops.data.ops import build_op, get_op, list_ops
from lmops.data.recipe import load_recipe
from lmops.store import Store


def make_corpus(folder: Path, files: int = 3, per_file: int = 60) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        rows = []
        for i in range(per_file):
            text = f"Document {f}-{i} talks about topic {i % 7} in plain words."
            if i % 20 == 0:
                text = "The same boilerplate notice appears in many files."
            rows.append({"id": f"f{f}-{i:03d}", "text": text})
        (folder / f"part{f}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


RECIPE = """\
name: demo
inputs: [raw/*.jsonl]
process:
  - op: clean_unicode
  - op: exact_dedup
  - op: clean_whitespace
output: {path: out/demo, dataset: demo-clean}
executor: {type: local, workers: 1, shard_bytes: 2048}
"""


def test_unknown_operator_and_parameter_name_the_line(tmp_path: Path) -> None:
    bad_op = write_recipe(
        tmp_path / "a.yaml", RECIPE.replace("op: exact_dedup", "op: exact_dedupe")
    )
    with pytest.raises(
        UserError, match=r"a\.yaml:5: process\[1\]: unknown operator 'exact_dedupe'"
    ):
        load_recipe(bad_op)
    bad_param = write_recipe(
        tmp_path / "b.yaml",
        RECIPE.replace("op: exact_dedup", "op: exact_dedup\n    normalise: false"),
    )
    with pytest.raises(UserError, match=r"b\.yaml:6: process\[1\]: .*parameter 'normalise'"):
        load_recipe(bad_param)
    bad_field = write_recipe(tmp_path / "c.yaml", RECIPE.replace("output:", "outptu:"))
    with pytest.raises(UserError, match=r"c\.yaml"):
        load_recipe(bad_field)
    # a dataset name the store would refuse after the run: refused now, at its line
    bad_name = write_recipe(tmp_path / "d.yaml", RECIPE.replace("demo-clean", "'bad name:3'"))
    with pytest.raises(UserError, match=r"d\.yaml:7: output\.dataset: invalid asset name"):
        load_recipe(bad_name)


def test_a_bad_import_and_a_missing_input_name_the_file_and_line(
    tmp_path: Path, store: Store, cli: Any
) -> None:
    bad_import = write_recipe(
        tmp_path / "i.yaml", RECIPE.replace("inputs:", "imports: [os, my_company.ops]\ninputs:")
    )
    r = cli("data", "run", str(bad_import))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"error: {bad_import}:2: imports[1]: cannot import 'my_company.ops'" in r.err
    make_corpus(tmp_path / "raw", files=1, per_file=5)
    missing = write_recipe(
        tmp_path / "m.yaml", RECIPE.replace("[raw/*.jsonl]", "\n  - raw/*.jsonl\n  - raw-web:3")
    )
    r = cli("data", "run", str(missing))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"error: {missing}:4: inputs[1]: 'raw-web:3' is neither an existing path" in r.err
    store.assets.register("model", "raw-web", tmp_path / "raw")
    with pytest.raises(UserError, match=r"m\.yaml:4: inputs\[1\]: 'raw-web:3' is neither"):
        run_recipe(load_recipe(missing), base_dir=tmp_path, store=store)
    # inputs given instead of the file's (a pipeline step's) have no line there
    recipe = load_recipe(missing)
    recipe.inputs = ["raw-web:1"]
    with pytest.raises(UserError, match=r"^inputs\[0\]: 'raw-web:1' is a model, not a dataset"):
        run_recipe(recipe, base_dir=tmp_path, store=store)


def test_a_maximum_below_its_minimum_is_refused_when_the_recipe_is_read(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        """\
        name: p2
        inputs: [raw/*.jsonl]
        process: [{op: length_filter, min_chars: 500, max_chars: 10}]
        output: {dataset: p2}
        """,
    )
    with pytest.raises(
        UserError,
        match=r"^.*r\.yaml:3: process\[0\]: operator 'length_filter': parameter 'max_chars': "
        r"must be >= min_chars \(500\), got 10$",
    ):
        load_recipe(recipe)
    assert build_op("length_filter", min_chars=10, max_chars=10)  # one length is a range


def _bound_pairs() -> list[tuple[str, str, str]]:
    pairs = []
    for name, cls in list_ops().items():
        fields = cls.Params.model_fields
        for low in fields:
            high = low.replace("min_", "max_", 1)
            if "min_" in low and high in fields:
                pairs.append((name, low, high))
    return pairs


def test_every_min_max_pair_of_every_operator_is_checked() -> None:
    pairs = _bound_pairs()
    assert {
        ("length_filter", "min_words", "max_words"),
        ("perplexity_filter", "min_perplexity", "max_perplexity"),
        ("gopher_quality", "zh_min_avg_word_length", "zh_max_avg_word_length"),
        ("char_ratio_filter", "min_digit_ratio", "max_digit_ratio"),
    } <= set(pairs)
    for name, low, high in pairs:
        fields = get_op(name).Params.model_fields
        required = {k: "x" for k, f in fields.items() if f.is_required()}
        with pytest.raises(UserError, match=rf"parameter '{high}': must be >= {low} \(1(\.0)?\)"):
            build_op(name, **required, **{low: 1, high: 0})


def test_run_registers_dataset_with_report_and_lineage(tmp_path: Path, store: Store) -> None:
    make_corpus(tmp_path / "raw")
    store.assets.register("dataset", "raw", tmp_path / "raw")
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace("[raw/*.jsonl]", "[raw:1]"))
    result = run_recipe(load_recipe(recipe), base_dir=tmp_path, store=store, progress=False)
    report = result.report
    assert report["docs_in"] == 180 and report["docs_out"] == 180 - 8  # 9 copies of one text -> 1
    dedup = report["ops"][1]
    assert dedup["name"] == "exact_dedup" and dedup["dropped"] == {"exact_duplicate": 8}
    assert dedup["examples"]["exact_duplicate"][0]["text"].startswith("The same boilerplate")
    assert result.dataset == "demo-clean:1"
    lineage = store.assets.lineage("demo-clean")
    assert [(e.parent, e.role) for e in lineage.upstream] == [("raw:1", "input")]
    run = store.runs.get(result.run_id or "")
    assert run.config["name"] == "demo" and run.outputs == ["demo-clean:1"]
    assert run.last("docs_out") == 172
    out = Path(result.output_path or "")
    parts = sorted(out.glob("part-*.jsonl"))
    ids = [json.loads(line)["id"] for p in parts for line in p.read_text().splitlines()]
    assert len(ids) == 172 == len(set(ids)) and ids[0] == "f0-000"
    assert (out / "_report" / "report.json").exists() and (out / "_report" / "report.png").exists()
    assert not out.with_name("demo.lmops-work").exists()
    # the registered dataset is readable as the input of the next recipe
    again = write_recipe(
        tmp_path / "r2.yaml",
        RECIPE.replace("[raw/*.jsonl]", "[demo-clean]")
        .replace("out/demo", "out/again")
        .replace("demo-clean}", "again}"),
    )
    second = run_recipe(load_recipe(again), base_dir=tmp_path, store=store, progress=False)
    assert second.report["docs_in"] == 172 and second.report["docs_out"] == 172


def test_the_report_lists_local_inputs_as_the_lineage_records_them(
    tmp_path: Path, store: Store
) -> None:
    make_corpus(tmp_path / "raw", files=2, per_file=10)
    make_corpus(tmp_path / "more", files=1, per_file=10)
    store.assets.register("dataset", "more", tmp_path / "more")
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", RECIPE.replace("[raw/*.jsonl]", "[raw/*.jsonl, more:1]"))
    )
    res = run_recipe(recipe, base_dir=tmp_path, store=store, progress=False)
    files = [str(tmp_path / "raw" / f"part{i}.jsonl") for i in range(2)]
    upstream = [e.parent for e in store.assets.lineage("demo-clean").upstream]
    on_disk = json.loads((Path(res.output_path or "") / "_report" / "report.json").read_text())
    for report in (res.report, on_disk):
        assert report["inputs"] == ["more:1", *files]
        assert sorted(report["input_refs"]) == sorted(upstream) and len(upstream) == 3
    assert [store.assets.get(r).metadata["path"] for r in on_disk["input_refs"][1:]] == files
    # without a store, nothing is recorded, and the files are still named
    recipe = load_recipe(
        write_recipe(
            tmp_path / "n.yaml",
            RECIPE.replace("out/demo", "out/n").replace(", dataset: demo-clean", ""),
        )
    )
    res = run_recipe(recipe, base_dir=tmp_path, progress=False)
    assert res.report["inputs"] == files and res.report["input_refs"] == []


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    make_corpus(tmp_path / "raw", files=1)
    (tmp_path / "out" / "demo").mkdir(parents=True)
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", RECIPE.replace("dataset: demo-clean", "overwrite: false"))
    )
    with pytest.raises(UserError, match=r"output path .*exists"):
        run_recipe(recipe, base_dir=tmp_path, progress=False)
    recipe.output.overwrite = True
    assert run_recipe(recipe, base_dir=tmp_path, progress=False).report["docs_out"] == 58


def test_parallel_workers_give_identical_output(tmp_path: Path) -> None:
    make_corpus(tmp_path / "raw", files=4, per_file=100)
    outputs = []
    for workers in (1, 2):
        r = load_recipe(
            write_recipe(
                tmp_path / f"w{workers}.yaml",
                RECIPE.replace("out/demo", f"out/w{workers}").replace(", dataset: demo-clean", ""),
            )
        )
        res = run_recipe(r, base_dir=tmp_path, workers=workers, progress=False)
        outputs.append(
            {p.name: p.read_bytes() for p in sorted(Path(res.output_path or "").glob("part-*"))}
        )
    assert outputs[0] == outputs[1] and len(outputs[0]) > 4


def test_skip_mode_reports_and_keeps_bad_rows_aside(tmp_path: Path) -> None:
    make_corpus(tmp_path / "raw", files=1, per_file=10)
    with open(tmp_path / "raw" / "part0.jsonl", "a") as fh:
        fh.write("{not json\n")
    strict = write_recipe(tmp_path / "s.yaml", RECIPE.replace(", dataset: demo-clean", ""))
    with pytest.raises(UserError, match=r"part0\.jsonl:11: malformed JSON"):
        run_recipe(load_recipe(strict), base_dir=tmp_path, progress=False)
    lenient = write_recipe(
        tmp_path / "l.yaml", RECIPE.replace(", dataset: demo-clean", "") + "on_error: skip\n"
    )
    res = run_recipe(load_recipe(lenient), base_dir=tmp_path, progress=False)
    assert res.report["errors"]["count"] == 1 and res.report["docs_in"] == 10
    bad = (Path(res.output_path or "") / "_errors.jsonl").read_text()
    assert "part0.jsonl:11" in bad


SLOW_OPS = '''
import time
from lmops.data.ops import Mapper, OpParams, register

@register("slow_copy")
class SlowCopy(Mapper):
    """Copies documents slowly (test helper for killing a run mid-way)."""
    class Params(OpParams):
        seconds: float = 0.002
    def apply(self, doc):
        time.sleep(self.params.seconds)
        return doc
'''


def _env(tmp_path: Path, lmops_home: Path) -> dict[str, str]:
    """A subprocess's environment: the test's operators importable from ``tmp_path``, and
    lmops from where this test imports it (a checkout's ``src`` on PYTHONPATH included)."""
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "LMOPS_HOME": str(lmops_home)}


def _slow_recipe(tmp_path: Path, lmops_home: Path, *, workers: int) -> tuple[str, dict[str, str]]:
    """A recipe over a fresh corpus with a slow stage 2 (``slow_copy``), to be stopped
    mid-way, and the environment its subprocess needs to find the op."""
    make_corpus(tmp_path / "raw", files=6, per_file=150)
    (tmp_path / "slow_ops.py").write_text(SLOW_OPS)
    body = (
        RECIPE.replace("name: demo", "name: demo\nimports: [slow_ops]")
        .replace("  - op: clean_whitespace", "  - op: clean_whitespace\n  - op: slow_copy")
        .replace(", dataset: demo-clean", "")
        .replace("workers: 1", f"workers: {workers}")
    )
    return body, _env(tmp_path, lmops_home)


def _wait_for_shards(proc: subprocess.Popen[Any], work: Path, n: int) -> None:
    """Until the running ``proc`` has finished ``n`` shards of the stage in ``work``."""
    deadline = time.time() + 60
    while len(list(work.glob("*.stats.json"))) < n:
        assert proc.poll() is None, "the run finished before it could be stopped"
        assert time.time() < deadline
        time.sleep(0.01)


def test_kill_9_then_rerun_is_byte_identical(tmp_path: Path, lmops_home: Path) -> None:
    body, env = _slow_recipe(tmp_path, lmops_home, workers=2)
    cmd = [sys.executable, "-m", "lmops.cli.main", "data", "run"]

    write_recipe(tmp_path / "full.yaml", body.replace("out/demo", "out/full"))
    subprocess.run(
        [*cmd, "full.yaml", "--json"], cwd=tmp_path, env=env, check=True, capture_output=True
    )

    write_recipe(tmp_path / "killed.yaml", body.replace("out/demo", "out/killed"))
    proc = subprocess.Popen(
        [*cmd, "killed.yaml", "--json"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = tmp_path / "out" / "killed.lmops-work" / "stage2"
    _wait_for_shards(proc, work, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out" / "killed").exists()  # no partial output
    done_before = len(list(work.glob("*.stats.json")))

    rerun = subprocess.run(
        [*cmd, "killed.yaml", "--json"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(rerun.stdout)["resumed_shards"] >= done_before
    full = {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "full").glob("part-*"))}
    killed = {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "killed").glob("part-*"))}
    assert full == killed and len(full) > 6


def test_ctrl_c_says_how_to_resume_and_the_rerun_resumes(tmp_path: Path, lmops_home: Path) -> None:
    body, env = _slow_recipe(tmp_path, lmops_home, workers=1)
    write_recipe(tmp_path / "r.yaml", body)
    cmd = [sys.executable, "-m", "lmops.cli.main", "data", "run", "r.yaml", "--workers", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, start_new_session=True, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    work = tmp_path / "out" / "demo.lmops-work" / "stage2"
    _wait_for_shards(proc, work, 1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().endswith(
        "interrupted; the finished shards are kept: resume with: lmops data run r.yaml --workers 1"
    ), err
    rerun = subprocess.run([*cmd, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] >= 1


def test_ctrl_c_with_workers_stops_the_stage_instead_of_finishing_it(
    tmp_path: Path, lmops_home: Path
) -> None:
    """Ctrl-C used to leave the process pool's ``with``, which waited for every shard still
    queued: the run went on through the whole stage before it exited."""
    body, env = _slow_recipe(tmp_path, lmops_home, workers=2)
    write_recipe(
        tmp_path / "r.yaml",
        body.replace("  - op: slow_copy", "  - op: slow_copy\n    seconds: 0.02"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmops.cli.main", "data", "run", "r.yaml"],
        cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    work = tmp_path / "out" / "demo.lmops-work" / "stage2"
    _wait_for_shards(proc, work, 1)
    os.killpg(proc.pid, signal.SIGINT)
    done_then = len(list(work.glob("*.stats.json")))
    assert proc.wait(timeout=60) == 130
    total = len(list((tmp_path / "out" / "demo.lmops-work" / "stage0").glob("*.stats.json")))
    done = len(list(work.glob("*.stats.json")))
    assert total > 20 and done <= done_then + 2, (done_then, done, total)  # two were running


ENV_SLOW_OPS = '''
import os, time
from lmops.data.ops import Mapper, register

@register("env_slow_copy")
class EnvSlowCopy(Mapper):
    """Copies documents, each taking $SLOW_SECONDS (test helper: slow, then fast on resume),
    and waits (at most 5 minutes) while the file $HOLD_FILE exists."""
    def apply(self, doc):
        time.sleep(float(os.environ["SLOW_SECONDS"]))
        hold, deadline = os.environ.get("HOLD_FILE"), time.time() + 300
        while hold and os.path.exists(hold) and time.time() < deadline:
            time.sleep(0.05)
        return doc
'''


def test_a_second_run_of_a_work_folder_is_refused_and_a_killed_run_blocks_none(
    tmp_path: Path, lmops_home: Path
) -> None:
    make_corpus(tmp_path / "raw", files=6, per_file=150)
    (tmp_path / "env_slow_ops.py").write_text(ENV_SLOW_OPS)
    write_recipe(
        tmp_path / "r.yaml",
        RECIPE.replace("name: demo", "name: demo\nimports: [env_slow_ops]")
        .replace("  - op: clean_whitespace", "  - op: clean_whitespace\n  - op: env_slow_copy")
        .replace("workers: 1", "workers: 2"),
    )
    env = _env(tmp_path, lmops_home)
    cmd = [sys.executable, "-m", "lmops.cli.main", "data", "run", "r.yaml"]
    hold = tmp_path / "hold"  # while it exists the first run cannot finish, however slow
    first = subprocess.Popen(
        cmd, cwd=tmp_path, env={**env, "SLOW_SECONDS": "0.05", "HOLD_FILE": str(hold)},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    work = tmp_path / "out" / "demo.lmops-work"
    try:
        _wait_for_shards(first, work / "stage2", 1)
        hold.touch()
        second = subprocess.run(
            cmd, cwd=tmp_path, env={**env, "SLOW_SECONDS": "0"}, capture_output=True, text=True
        )
        assert first.poll() is None, "the first run ended before the second was tried"
        assert second.returncode == 2
        assert second.stderr == (
            f"error: another lmops data run (pid {first.pid}) is using the work folder {work}; "
            f"wait for it to finish or stop it (kill {first.pid})\n"
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its workers: no unlock
        first.wait()
    assert (work / "run.lock").exists()  # left behind, and held by nobody
    rerun = subprocess.run(
        [*cmd, "--json"], cwd=tmp_path, env={**env, "SLOW_SECONDS": "0"}, capture_output=True,
        text=True,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] >= 1
    assert not work.exists()


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody reaped (PID 1 in a container)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workers_die_with_a_kill_9_driver_and_the_rerun_resumes(
    tmp_path: Path, lmops_home: Path
) -> None:
    import psutil

    body, env = _slow_recipe(tmp_path, lmops_home, workers=2)
    cmd = [sys.executable, "-m", "lmops.cli.main", "data", "run"]
    write_recipe(tmp_path / "full.yaml", body.replace("out/demo", "out/full"))
    full_run = subprocess.run(
        [*cmd, "full.yaml", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert full_run.returncode == 0, full_run.stderr

    write_recipe(tmp_path / "killed.yaml", body.replace("out/demo", "out/killed"))
    driver = subprocess.Popen(
        [*cmd, "killed.yaml", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        work = tmp_path / "out" / "killed.lmops-work" / "stage2"  # the slow stage
        _wait_for_shards(driver, work, 1)
        workers = [c.pid for c in psutil.Process(driver.pid).children()]
        assert workers, "no worker processes found"
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        driver.wait()
        deadline = time.time() + 30  # a liveness check: they should go at once
        while not all(_gone(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert [pid for pid in workers if not _gone(pid)] == [], "workers outlived the driver"
    finally:
        for pid in workers:  # whatever this test started and left behind
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "out" / "killed").exists()
    done_before = len(list(work.glob("*.stats.json")))

    rerun = subprocess.run(
        [*cmd, "killed.yaml", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] >= done_before
    full = {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "full").glob("part-*"))}
    killed = {p.name: p.read_bytes() for p in sorted((tmp_path / "out" / "killed").glob("part-*"))}
    assert full == killed and len(full) > 6


def test_shard_emptied_by_an_operator_flows_to_the_next_stage(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"id": "1", "text": "same text"}\n')
    (raw / "b.jsonl").write_text('{"id": "2", "text": "same text"}\n')  # all dropped by dedup
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.replace(", dataset: demo-clean", ""))
    res = run_recipe(load_recipe(recipe), base_dir=tmp_path, progress=False)
    parts = sorted(Path(res.output_path or "").glob("part-*"))
    assert [p.read_text().count("\n") for p in parts] == [1]  # the emptied shard: no part


def test_shards_left_empty_write_no_part_file_and_parts_have_no_gaps(
    tmp_path: Path, store: Store
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"id": "a", "text": "a document long enough to keep"}\n')
    (raw / "b.jsonl").write_text('{"id": "b", "text": "hi 1"}\n{"id": "c", "text": "hi 2"}\n')
    (raw / "c.jsonl").write_text("")  # an empty input file, skipped with on_error: skip
    (raw / "d.jsonl").write_text('{"id": "d", "text": "another document long enough"}\n')
    recipe = write_recipe(
        tmp_path / "r.yaml",
        """\
        name: p12
        inputs: [raw/*.jsonl]
        process: [{op: length_filter, min_chars: 20}]
        output: {path: out/p12, dataset: p12}
        on_error: skip
        """,
    )
    res = run_recipe(load_recipe(recipe), base_dir=tmp_path, store=store, progress=False)
    out = Path(res.output_path or "")
    parts = {
        p.name: [json.loads(x)["id"] for x in p.read_text().splitlines()]
        for p in sorted(out.glob("part-*"))
    }
    assert parts == {"part-00000.jsonl": ["a"], "part-00001.jsonl": ["d"]}
    assert sorted(p.name for p in store.assets.path("p12:1").glob("part-*")) == list(parts)


def test_a_run_that_keeps_nothing_fails_registers_nothing_and_keeps_its_work(
    cli,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    make_corpus(tmp_path / "raw", files=2, per_file=30)
    (tmp_path / "raw" / "bad.jsonl").write_text("{oops\n")
    recipe = write_recipe(
        tmp_path / "r.yaml",
        """\
        name: p2
        inputs: [raw/*.jsonl]
        process:
          - op: length_filter
            min_chars: 50
          - op: length_filter
            max_chars: 49
        output: {path: out/p2, dataset: p2}
        executor: {workers: 2}
        on_error: skip
        """,
    )
    for _ in range(2):  # the rerun resumes the kept work and says the same
        r = cli("data", "run", str(recipe))
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
        assert r.err.startswith(
            "error: recipe p2: all 60 documents were dropped (length_filter:too_short 56, "
            "length_filter:too_long 4); unreadable rows skipped: 1 (malformed JSON"
        ), r.err
        assert "nothing was written or registered; loosen the steps that dropped them" in r.err
    work = tmp_path / "out" / "p2.lmops-work"
    assert f"kept in {work}" in r.err
    assert len(list(work.glob("stage0/*.stats.json"))) == 3
    assert json.loads((work / "_report" / "report.json").read_text())["docs_in"] == 60
    assert not (tmp_path / "out" / "p2").exists()
    assert "p2" not in cli("assets", "list").out
    runs = json.loads(cli("runs", "list", "--json").out)
    assert [x["status"] for x in runs] == ["FAILED", "FAILED"]


def test_a_run_that_reads_no_document_says_so(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text("")
    recipe = write_recipe(
        tmp_path / "r.yaml", "name: e\ninputs: [raw/*.jsonl]\noutput: {path: out}\non_error: skip\n"
    )
    with pytest.raises(
        UserError,
        match=r"^recipe e: no document was read: unreadable rows skipped: 1 \(empty file 1\); "
        r"nothing was written or registered; check the inputs \(",
    ):
        run_recipe(load_recipe(recipe), base_dir=tmp_path, progress=False)
    assert not (tmp_path / "out").exists() and (tmp_path / "out.lmops-work").is_dir()


def test_cli_run_report_and_ops(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_corpus(tmp_path / "raw", files=2, per_file=30)
    (tmp_path / "raw" / "pii.jsonl").write_text(
        json.dumps(
            {"id": "p1", "text": "联系我：13812345678 或 me@example.com，谢谢。"},
            ensure_ascii=False,
        )
        + "\n"
    )
    recipe = write_recipe(
        tmp_path / "r.yaml",
        RECIPE.replace(
            "  - op: clean_whitespace", "  - op: clean_whitespace\n  - op: pii_mask"
        ).replace("out/demo", str(tmp_path / "out" / "demo")),
    )
    r = cli("data", "run", str(recipe), "--json")
    assert r.code == 0, r.err
    run = json.loads(r.out)
    assert run["dataset"] == "demo-clean:1" and run["report"]["pii"] == {"EMAIL": 1, "PHONE": 1}
    rep = cli("data", "report", "demo-clean")
    assert rep.code == 0 and "PII masked: EMAIL 1, PHONE 1" in rep.out and "exact_dedup" in rep.out
    ops = json.loads(cli("data", "ops", "--json").out)
    by_name = {o["name"]: o for o in ops}
    assert {
        "gopher_quality",
        "minhash_dedup",
        "pii_mask",
        "clean_html",
        "perplexity_filter",
    } <= set(by_name)
    assert {p["name"]: p["default"] for p in by_name["minhash_dedup"]["params"]}["num_bands"] == 14
    types = {p["name"]: p["type"] for p in by_name["minhash_dedup"]["params"]}
    assert types["num_bands"] == "int"  # as written in code, not "<class 'int'>"
    assert not [p for o in ops for p in o["params"] if "<class" in p["type"]]
    bad = cli(
        "data",
        "run",
        str(write_recipe(tmp_path / "bad.yaml", RECIPE.replace("op: exact_dedup", "op: nope"))),
    )
    assert bad.code == 2 and "unknown operator 'nope'" in bad.err


def _finish_holding_the_lock(work: Path, ready: Any) -> None:
    from lmops.data._worklock import retire as _retire
    from lmops.data._worklock import work_lock

    with work_lock(work):
        (work / "fingerprint").write_text("KEY")
        for stage in ("stage1", "stage2"):
            (work / stage).mkdir()
            for i in range(3000):
                (work / stage / f"{i:05d}.jsonl").write_text("x")
        ready.set()
        _retire(work)  # what a finished run does, still holding the lock


def test_a_run_starting_as_another_finishes_never_sees_its_folder_half_deleted(
    tmp_path: Path,
) -> None:
    """The finishing run removes its work folder while it holds the lock; a run that takes
    the lock meanwhile must find a new, empty folder, not one being deleted under it."""
    import multiprocessing as mp

    from lmops.core.errors import ConflictError
    from lmops.data._worklock import work_lock
    from lmops.data.executor import _reuse_or_reset

    work = tmp_path / "demo.lmops-work"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    first = ctx.Process(target=_finish_holding_the_lock, args=(work, ready))
    first.start()
    assert ready.wait(60)
    while True:
        try:
            with work_lock(work):
                _reuse_or_reset(work, "KEY")  # the same recipe: it would resume
                left = sorted(p.name for p in work.iterdir())
                break
        except ConflictError:
            time.sleep(0.001)
    first.join(60)
    assert left == ["fingerprint", "run.lock"]  # nothing of the finished run's to resume
