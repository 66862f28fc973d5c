"""SIGTERM sent to a real ``lmops deploy export`` / ``deploy quantize`` process
mid-job. They had no signal handlers of their own: a SIGTERM ended the process with no line,
its run left RUNNING and its temporary folder in /tmp. Now the job stops at once, removes what
it had written, registers nothing, records the run CANCELLED and prints one line saying what it
stopped and that nothing was kept, exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmops.store import RunStatus, Store
from tests.train.tiny import make_model, make_tokenizer

# The real CLI entry point, with each progress report slowed and announced on stderr, so the
# signal lands mid-job. SIGINT handled as at a terminal (a runner started in the background
# leaves it ignored, which the child inherits and lmops rightly respects).
SLOW_CLI = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from lmops.cli import _deploy_models as m\n"
    "real = m._Bar.__call__\n"
    "def call(self, done, total):\n"
    "    real(self, done, total)\n"
    "    print('PROGRESS', done, file=sys.stderr, flush=True)\n"
    "    time.sleep(0.5)\n"
    "m._Bar.__call__ = call\n"
    "from lmops.cli.main import main\n"
    "sys.argv[0] = 'lmops'\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sigterm")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=7)


@pytest.mark.parametrize(
    ("command", "what", "unit", "sig"),
    [
        (["export", "tiny", "--quant", "q8_0"], "exporting tiny to gguf q8_0", "tensors", "TERM"),
        (["quantize", "tiny", "--method", "int8"], "quantizing tiny (int8)", "layers", "TERM"),
    ],
    ids=["export", "quantize"],  # (SIGINT: tests/deploy/test_interrupts.py)
)
def test_a_signal_mid_job_removes_its_files_and_says_so(
    tiny: Path,
    tmp_path: Path,
    lmops_home: Path,
    command: list[str],
    what: str,
    unit: str,
    sig: str,
) -> None:
    signum = signal.Signals[f"SIG{sig}"]
    temp = tmp_path / "tmp"  # the job's temporary folders go here, to be seen removed
    temp.mkdir()
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    store = Store()
    store.assets.register("model", "tiny", tiny)
    store.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "deploy", *command, "-o", "out"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the job has reported its first unit: it is writing
        seen.append(line)
        if line.startswith("PROGRESS"):
            break
    assert proc.poll() is None, "".join(seen)[-2000:]
    if command[0] == "export":  # (quantize writes its folder at the end, from memory)
        assert any(p.name.startswith("lmops-") for p in temp.iterdir()), list(temp.iterdir())
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    done = int(seen[-1].split()[1])
    assert lines[-1].startswith(f"interrupted {what} after {done} of "), lines[-3:]
    assert lines[-1].endswith(f" {unit}; nothing was written (out not registered)"), lines[-1]
    assert not [p for p in temp.iterdir() if p.name.startswith("lmops-")]  # removed
    store = Store()
    try:
        assert not store.assets.exists("out")
        runs = [r for r in store.runs.list() if r.kind != "register"]
        assert runs and runs[0].status is RunStatus.CANCELLED, [(r.kind, r.status) for r in runs]
    finally:
        store.close()


# The same, with the step where a second signal is sent slowed and announced: the job's own
# removal of its temporary folder, or the report after the stop (its bar closed).
SLOW_STOP = {
    "cleanup": (
        "import shutil, pathlib\n"
        "rmtree = shutil.rmtree\n"
        "def slow(p, *a, **k):\n"
        "    if pathlib.Path(p).name.startswith('lmops-'):\n"
        "        print('STOPPING', file=sys.stderr, flush=True)\n"
        "        time.sleep(1.0)\n"
        "    rmtree(p, *a, **k)\n"
        "shutil.rmtree = slow\n"
    ),
    "report": (
        "close = m._Bar.close\n"
        "def slow_close(self, stopped=False):\n"
        "    if stopped:\n"
        "        print('STOPPING', file=sys.stderr, flush=True)\n"
        "        time.sleep(1.0)\n"
        "    close(self, stopped)\n"
        "m._Bar.close = slow_close\n"
    ),
}


@pytest.mark.parametrize("during", ["cleanup", "report"])
def test_a_second_signal_while_stopping_is_ignored(
    tiny: Path, tmp_path: Path, lmops_home: Path, during: str
) -> None:
    """A second SIGTERM while the export removes its temporary folder or while the command
    reports the stop: the default handler was back by then (or none covered the cleanup), so
    the process ended at once (exit -15) without a line, its folder left and its run RUNNING.
    Now it is ignored: the cleanup and the line run whole, exit 143."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "LMOPS_HOME": str(lmops_home), "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    store = Store()
    store.assets.register("model", "tiny", tiny)
    store.close()
    cli = SLOW_CLI.replace("from lmops.cli.main", SLOW_STOP[during] + "from lmops.cli.main")
    proc = subprocess.Popen(
        [sys.executable, "-c", cli, "deploy", "export", "tiny", "--quant", "q8_0", "-o", "out"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("PROGRESS"):
            proc.send_signal(signal.SIGTERM)  # the first: stop
        if line.startswith("STOPPING"):
            proc.send_signal(signal.SIGTERM)  # the second, while it stops
            break
    assert seen and seen[-1].startswith("STOPPING"), "".join(seen)[-2000:]
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted exporting tiny to gguf q8_0 after "), lines[-3:]
    assert lines[-1].endswith("; nothing was written (out not registered)"), lines[-1]
    assert not [p for p in temp.iterdir() if p.name.startswith("lmops-")]  # removed
    store = Store()
    try:
        runs = [r for r in store.runs.list() if r.kind != "register"]
        assert runs and runs[0].status is RunStatus.CANCELLED, [(r.kind, r.status) for r in runs]
    finally:
        store.close()
