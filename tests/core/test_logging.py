"""Library log records go to stderr: stdout carries results, and ``--json`` must stay
parseable whatever transformers or torch log on the way (CI once failed on a
deprecation warning printed into an eval report)."""

from __future__ import annotations

import json
import logging

import pytest

from lmops.core.logging import setup_logging
from lmops.models.compat import output_cache


def test_warnings_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    try:
        logging.getLogger("somelibrary.module").warning("something is deprecated")
        print(json.dumps({"ok": True}))
        out, err = capsys.readouterr()
        assert json.loads(out) == {"ok": True}
        assert "something is deprecated" in err
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_the_kernels_offline_note_is_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    """With lmops[gpu], bitsandbytes loads `kernels`, whose hub module warns at import
    (offline) that it skips a publisher trust check: 12 lines on every command's stderr,
    which broke the one-line interrupt message of `lmops train`. Still shown with --debug."""
    hub = logging.getLogger("kernels._internals.hf_hub")
    try:
        setup_logging()
        hub.warning("Skipping publisher trust check for 'kernels-community/x'")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm")
        logging.getLogger("somelibrary").warning("a real warning")
        logging.getLogger("kernels._internals.validate").warning("kernel signature invalid")
        err = capsys.readouterr().err
        assert "publisher trust" not in err and "Failed to load" not in err
        assert "a real warning" in err and "signature invalid" in err
        setup_logging(debug=True)
        hub.warning("Skipping publisher trust check for 'kernels-community/x'")
        assert "publisher trust" in capsys.readouterr().err
    finally:
        for name in ("kernels._internals.hf_hub", "bitsandbytes.backends.cpu.ops"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_first_line_of_an_exception() -> None:
    from lmops.core.errors import first_line

    assert first_line(RuntimeError()) == "RuntimeError"  # no message: no IndexError
    assert first_line(ValueError("\n  bad thing\nmore")) == "bad thing"
    assert first_line(RuntimeError("\x1b[96mstep 3/3\x1b[0m failed")) == "step 3/3 failed"


def test_output_cache_reads_the_current_name(caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    out = LlamaForCausalLM(cfg)(torch.tensor([[1, 2, 3]]), use_cache=True)
    with caplog.at_level(logging.WARNING):
        cache = output_cache(out)
    assert cache is not None and cache.get_seq_length() == 3
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
