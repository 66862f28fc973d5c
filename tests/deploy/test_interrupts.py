"""Ctrl-C in the deploy commands (a real SIGINT, raised inside the job). Typer turns a
KeyboardInterrupt into a silent exit 130, so ``deploy export`` and ``deploy quantize`` said
nothing; now each prints one line saying what stopped, where, and that nothing was written
(and registers nothing). ``deploy unpack`` exits 130 with one ``interrupted`` line when it
stops before its folder is in place, and 0 when the folder was in place before the Ctrl-C
(it exited 130 after printing ``unpacked 6 files ... into ...``)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.train.tiny import SENTENCES, make_model, make_tokenizer


@pytest.fixture(autouse=True)
def _sigint_raises() -> Iterator[None]:
    """Python's own SIGINT handler (KeyboardInterrupt), also where the test runner was
    started with SIGINT ignored (a background job)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interrupts")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=7)


def _sigint_on_call(n: int, real: Any) -> Any:
    """``real``, but the ``n``-th call first gets a SIGINT (as a Ctrl-C does)."""
    calls = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    return wrapped


def _nothing_registered(name: str) -> None:
    from lmops.store import Store

    store = Store()
    try:
        assert not store.assets.exists(name)
        assert [r.status.value for r in store.runs.list()][:1] == ["CANCELLED"]
    finally:
        store.close()


def test_interrupted_export_says_where_and_that_nothing_was_written(
    cli: Any, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    monkeypatch.setattr(gguf.quants, "quantize", _sigint_on_call(4, gguf.quants.quantize))
    r = cli("deploy", "export", "tiny", "--quant", "q8_0", "-o", "t8")
    assert r.code == 130, (r.out, r.err)
    lines = r.err.splitlines()
    assert lines[-2].endswith(", stopped"), lines  # the bar (a plain line off a terminal)
    # the SIGINT came as the 4th matrix was quantized (the embeddings, a norm, down_proj and
    # gate_proj were written: tensors are written in their safetensors order)
    assert lines[-1] == (
        "interrupted exporting tiny to gguf q8_0 after 4 of 20 tensors; nothing was written "
        "(t8 not registered)"
    ), lines
    _nothing_registered("t8")


def test_a_ctrl_c_after_the_export_was_registered_says_it_is_kept(
    cli: Any, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SIGINT comes while the run's metrics are written, after registration: the
    version is there, and the line says so (it said "not registered")."""
    from lmops.store import Store
    from lmops.store.runs import RunTracker

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    monkeypatch.setattr(RunTracker, "log_metrics", _sigint_on_call(1, RunTracker.log_metrics))
    r = cli("deploy", "export", "tiny", "--quant", "q8_0", "-o", "t8k")
    assert r.code == 130, (r.out, r.err)
    assert r.err.splitlines()[-1] == (
        "interrupted exporting tiny to gguf q8_0 after registering t8k:1; it is kept"
    ), r.err
    store = Store()
    try:
        assert store.assets.resolve("t8k").ref == "t8k:1"
    finally:
        store.close()


def test_interrupted_gptq4_says_where_and_that_nothing_was_written(
    cli: Any, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.deploy import quantize

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(SENTENCES))
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    real = quantize.gptq_quantize_weight
    monkeypatch.setattr(quantize, "gptq_quantize_weight", _sigint_on_call(3, real))
    r = cli("deploy", "quantize", "tiny", "--method", "gptq4", "--calibration", str(text),
            "--calibration-samples", "2", "--seq-len", "16", "-o", "t4")  # fmt: skip
    assert r.code == 130, (r.out, r.err)
    assert r.err.splitlines()[-1] == (
        "interrupted quantizing tiny (gptq4) after 2 of 15 layers; nothing was written "
        "(t4 not registered)"
    ), r.err
    _nothing_registered("t4")


@pytest.fixture
def sealed(cli: Any, folder: Path, tmp_path: Path) -> str:
    """A signed package of the conftest's small folder (three files), as asset ``pkg``."""
    keyfile = tmp_path / "keys.json"
    assert cli("deploy", "keygen", "--output", str(keyfile)).code == 0
    r = cli("deploy", "package", str(folder), "--sign", str(keyfile), "-o", "pkg", "--json")
    assert r.code == 0, r.err
    return "pkg"


def test_unpack_stopped_midway_writes_nothing_and_says_so(
    cli: Any, sealed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.core.sealed import Package

    monkeypatch.setattr(Package, "iter_chunks", _sigint_on_call(2, Package.iter_chunks))
    out = tmp_path / "out"
    r = cli("deploy", "unpack", sealed, "--output", str(out))
    assert r.code == 130, (r.out, r.err)
    lines = r.err.splitlines()
    assert lines[-2].endswith(", stopped"), lines
    assert lines[-1] == f"interrupted unpacking pkg; nothing was written ({out} not created)"
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []  # its temp folder too


@pytest.mark.parametrize("at", ["after the rename", "while printing"])
def test_unpack_interrupted_after_it_finished_exits_0(
    cli: Any, sealed: str, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    import os

    from lmops.cli import _deploy_packages

    out = tmp_path / "out"
    if at == "after the rename":  # the folder is in place; the job has not returned yet

        def replace(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            if Path(dst) == out:
                signal.raise_signal(signal.SIGINT)

        real_replace = os.replace
        monkeypatch.setattr("lmops.core.sealed.os.replace", replace)
    else:
        monkeypatch.setattr(
            _deploy_packages.console, "print", _sigint_on_call(1, _deploy_packages.console.print)
        )
    r = cli("deploy", "unpack", sealed, "--output", str(out))
    assert r.code == 0, (r.out, r.err)
    assert "interrupted" not in r.err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())
    if at == "after the rename":  # it says what is there
        said = r.out.replace("\n", "")  # the console wraps the path at 80 columns
        assert said.startswith("unpacked 3 files (") and said.endswith(f") into {out}"), said


def test_a_ctrl_c_before_the_command_starts_says_so(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the command tree is built (typer's own handler is not there yet) the entry
    point catches it; its line used to be a bare ``interrupted``."""
    import typer

    def interrupted(*_: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_command", interrupted)
    r = cli("deploy", "unpack", "pkg", "--output", "x")
    assert r.code == 130
    assert r.err == "interrupted before the command started; nothing was done\n"
