"""``lmops assets import gguf`` on a first day: it says which phase it is in (a real
SmolLM2 import sat silent for ~80 s after transformers' tensor bar), and it parses the
file's metadata once, not once per check and per transformers loader (8 times: half the
import's CPU on SmolLM2's 49k-token vocabulary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.train.tiny import make_model, make_tokenizer


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmops.deploy.gguf import write_gguf

    root = tmp_path_factory.mktemp("gguf-progress")
    model = make_model(root / "m", make_tokenizer(root / "tok"), seed=3)
    file = root / "tiny.q8_0.gguf"
    write_gguf(model, file, "q8_0")
    return file


def test_the_import_parses_the_file_once_and_keeps_the_reader_class(
    cli: Any, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf

    parsed: list[str] = []
    original = gguf.GGUFReader

    class Counting(original):  # type: ignore[misc,valid-type]
        def __init__(self, path: Any, mode: str = "r") -> None:
            parsed.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    r = cli("assets", "import", "gguf", str(tiny_gguf), "--name", "imp")
    assert r.code == 0, r.err
    # lmops's checks (magic, dtype, rope, pre-tokenizer, general.*) and transformers'
    # config, weights and tokenizer loads all read one parse
    assert len(parsed) == 1, parsed
    assert gguf.GGUFReader is Counting  # put back after the import
    import numpy as np

    assert isinstance(gguf.GGUFReader(str(tiny_gguf)).tensors[0].data, np.ndarray)
    assert len(parsed) == 2  # outside an import, a reader of its own again


def test_each_phase_prints_a_line_when_stderr_is_not_a_terminal(cli: Any, tiny_gguf: Path) -> None:
    from lmops.deploy.gguf import IMPORT_PHASES

    r = cli("assets", "import", "gguf", str(tiny_gguf), "--name", "imp")
    assert r.code == 0, r.err
    lines = [ln for ln in r.err.splitlines() if ln.startswith("import: ")]
    n = len(IMPORT_PHASES)
    for i, phase in enumerate(IMPORT_PHASES):
        assert any(ln.startswith(f"import: {i}/{n} steps") and f"({phase})" in ln for ln in lines)
    assert lines[-1].startswith(f"import: {n}/{n} steps (100.0%)"), lines
    assert "imported imp:1" in " ".join(r.out.split())
    quiet = cli("assets", "import", "gguf", str(tiny_gguf), "--name", "imp2", "--json")
    assert quiet.code == 0 and "import: " not in quiet.err  # --json: stdout is the result


def test_a_file_refused_up_front_is_one_line(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    r = cli("assets", "import", "gguf", str(bad), "--name", "x")
    assert r.code == 2
    assert r.err.startswith(f"error: {bad}: unreadable GGUF") and r.err.count("\n") == 1, r.err


def test_a_reader_taken_inside_the_block_still_reads_after_it(tiny_gguf: Path) -> None:
    # code that did `from gguf import GGUFReader` while an import was running (another
    # thread's load) keeps the sharing function; after the block it must still parse
    import gguf

    from lmops.deploy._gguf_reader import one_reader

    real = gguf.GGUFReader
    with one_reader(tiny_gguf):
        kept = gguf.GGUFReader
        assert kept is not real
    assert gguf.GGUFReader is real
    assert len(kept(str(tiny_gguf)).tensors) > 0


def test_a_ctrl_c_once_registering_began_waits_and_the_model_is_imported(
    cli: Any, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two Ctrl-Cs as the temporary folder is removed, after the model was registered: the
    # import used to say "imp2 not registered" (exit 130) of a registered model
    import signal

    import lmops.deploy.gguf as gguf_mod

    real = gguf_mod.shutil.rmtree

    def pressed(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_mod.shutil, "rmtree", pressed)
    r = cli("assets", "import", "gguf", str(tiny_gguf), "--name", "imp2")
    assert r.code == 0, r.err
    assert "not registered" not in r.err
    assert "imported imp2:1" in " ".join(r.out.split())
