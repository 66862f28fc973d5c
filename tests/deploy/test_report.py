"""The deploy report (issue #15 item 7): one row per variant (a model folder, its int8
folder, its GGUF) with size, bits per weight, perplexity on a reference text and engine
tokens/s; the perplexity is the one computed independently here; a table, a plot and a
``deploy_report`` asset with lineage to every variant. The /api/deploy routes run the same
jobs for admin keys on a real ``lmops serve``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.api.conftest import Server, server  # noqa: F401 (the fixture: a real lmops serve)
from tests.train.tiny import SENTENCES, make_model, make_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=9)


def test_report_over_three_variants(cli: Any, tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.store import Store

    text = tmp_path / "ref.txt"
    text.write_text(" ".join(SENTENCES[:10]))
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    assert cli("deploy", "quantize", "tiny", "--method", "int8", "-o", "t8").code == 0
    assert cli("deploy", "export", "tiny", "--quant", "q8_0", "-o", "tg").code == 0
    r = cli(
        "deploy", "report", "tiny", "t8", "tg", "--text", str(text), "--max-tokens", "64",
        "--gen-tokens", "8", "-o", "rep", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    out = json.loads(r.out)
    rows = {row["model"]: row for row in out["rows"]}
    assert rows["tiny"]["format"] == "hf" and rows["tiny"]["bits_per_weight"] == 32.0
    assert rows["t8"]["format"] == "lmops-quant" and 8.0 <= rows["t8"]["bits_per_weight"] < 8.5
    assert rows["tg"]["format"] == "gguf" and rows["tg"]["bits_per_weight"] == pytest.approx(8.5)
    assert rows["tg"]["tokens_per_s"] is None  # llama.cpp runs GGUF, not the engine
    assert rows["tiny"]["tokens_per_s"] > 0 and rows["t8"]["tokens_per_s"] > 0
    assert rows["t8"]["size"] < 0.5 * rows["tiny"]["size"]

    # the first row's perplexity, computed here without lmops
    tok = AutoTokenizer.from_pretrained(str(tiny))
    model = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    ids = tok(text.read_text(), add_special_tokens=False)["input_ids"]
    ids.append(tok.eos_token_id)
    x = torch.tensor([ids[:64]])
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss.item()
    assert rows["tiny"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    for name in ("t8", "tg"):  # near the source: 8-bit variants of the same weights
        assert abs(rows[name]["ppl_delta_pct"]) < 5.0

    store = Store()
    try:
        v = store.assets.resolve("rep")
        assert v.kind == "deploy_report"
        parents = {(e.parent, e.role) for e in store.assets.lineage(v.ref).upstream}
        assert {("tiny:1", "variant"), ("t8:1", "variant"), ("tg:1", "variant")} <= parents
        folder = Path(store.assets.path(v.ref))
    finally:
        store.close()
    assert (folder / "report.png").stat().st_size > 1000
    assert "| t8 | lmops-quant | int8 |" in (folder / "report.md").read_text()
    r = cli("deploy", "report", "tiny", "--text", str(text), "--max-tokens", "64")
    assert r.code == 0 and "perplexity" in r.out  # the human table


def test_api_exports_and_quantizes_with_an_admin_key(server: Server, tiny: Path) -> None:  # noqa: F811
    store: Any = server.store
    store.assets.register("model", "tiny", tiny)
    _, reader = store.keys.create("deploy-user", role="user")
    body = {"model": "tiny", "output": "tiny-q8", "quant": "q8_0"}
    with server.client(reader) as c:
        assert c.post("/api/deploy/export", json=body).status_code == 403
    with server.client(server.admin_key) as c:
        r = c.post("/api/deploy/export", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["ref"] == "tiny-q8:1" and r.json()["bits_per_weight"] == 8.5
        r = c.post("/api/deploy/export", json={**body, "quant": "q3_k"})
        assert r.status_code == 400 and "f16, q8_0, q4_0, q4_1" in r.json()["error"]["message"]
        q = {"model": "tiny", "output": "tiny-int8", "config": {"method": "int8"}}
        r = c.post("/api/deploy/quantize", json=q, timeout=120)
        assert r.status_code == 200, r.text
    assert store.assets.resolve("tiny-int8").metadata["quantization"] == "int8"
