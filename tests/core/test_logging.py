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
