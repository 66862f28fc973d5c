"""A GGUF load through transformers draws no tqdm bar of its own. Its loader wrapped every
import in "Converting and de-quantizing GGUF tensors..." on stderr (a ``tqdm.auto`` bar that
``disable_progress_bar()`` does not reach): noise in ``assets import gguf``, ``deploy report``
and the gateway's log. lmops's own progress lines stay, and the bar is silenced only for
lmops's loads: transformers' loader has its own tqdm again afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.train.tiny import make_model, make_tokenizer

BAR = ("de-quantizing", "it/s", "\r")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quiet")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=5)


def test_import_and_report_of_a_gguf_print_no_tqdm_bar(
    cli: Any, tiny: Path, tmp_path: Path
) -> None:
    import transformers.modeling_gguf_pytorch_utils as loader

    from tests.train.tiny import SENTENCES

    before = loader.tqdm
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "export", "tiny", "--quant", "f16", "-o", "t-gguf")
    assert r.code == 0, r.err
    assert "export" in r.err and "tensors" in r.err, r.err  # lmops's own progress line

    r = cli("assets", "import", "gguf", "t-gguf", "--name", "back")
    assert r.code == 0, r.err
    assert not [b for b in BAR if b in r.err], r.err
    assert r.out.startswith("imported "), r.out

    text = tmp_path / "ref.txt"
    text.write_text(" ".join(SENTENCES[:10]))
    r = cli("deploy", "report", "t-gguf", "--text", str(text), "--max-tokens", "64", "--json")
    assert r.code == 0, r.err
    assert not [b for b in BAR if b in r.err], r.err
    assert json.loads(r.out)
    assert loader.tqdm is before  # put back: only lmops's loads are quieted


def test_a_load_stopped_as_it_starts_puts_the_bar_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C right after the load was counted (as the lock is let go): the count is taken
    back and transformers' tqdm restored, not left off for every later load in the process."""
    import threading

    import transformers.modeling_gguf_pytorch_utils as loader

    from lmops.deploy import _gguf_dtype

    class StoppedLock:
        """A lock whose first release is followed by a Ctrl-C."""

        def __init__(self) -> None:
            self.lock, self.stopped = threading.Lock(), False

        def __enter__(self) -> None:
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()
            if not self.stopped:
                self.stopped = True
                raise KeyboardInterrupt

    original = loader.tqdm
    monkeypatch.setattr(_gguf_dtype, "_bar_lock", StoppedLock())
    with pytest.raises(KeyboardInterrupt), _gguf_dtype.quiet_gguf_load():
        pass
    assert loader.tqdm is original
    assert _gguf_dtype._bar_quieted["loads"] == 0
