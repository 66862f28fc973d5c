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

from lmops.deploy.onnx import PIP_HINT, missing_onnx_packages
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


@pytest.fixture(scope="module")
def sharp(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    """The tiny Llama with its matrices redrawn at std 0.3: the default 0.02 gives nearly
    uniform logits, whose perplexity (about the vocabulary size) a wrong window or a
    shifted label would not move."""
    from transformers import AutoModelForCausalLM

    folder = make_model(tmp_path_factory.mktemp("report-sharp") / "m", tok_dir, seed=4)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(folder))
    return folder


@pytest.mark.skipif(
    bool(missing_onnx_packages()),
    reason=f"needs {', '.join(missing_onnx_packages())}: {PIP_HINT}",
)
def test_report_measures_onnx_variants_in_onnxruntime(
    store: Any, sharp: Path, tmp_path: Path
) -> None:
    """ONNX exports get their row: size, bits per weight from the graph, perplexity through
    onnxruntime on the same ids and windows (checked against transformers here) and
    onnxruntime's tokens/s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.deploy.onnx import INT8_RECIPES, export_onnx
    from lmops.deploy.report import ReportConfig, deploy_report

    text = tmp_path / "ref.txt"
    text.write_text(" ".join(SENTENCES[:10]))
    store.assets.register("model", "sharp", sharp)
    for quant in ("fp32", "int8"):
        export_onnx(store, "sharp", output=f"o-{quant}", quant=quant)
    cfg = ReportConfig(text=str(text), max_tokens=96, window=48, gen_tokens=8)
    res = deploy_report(store, ["sharp", "o-fp32", "o-int8"], output="rep", config=cfg)
    rows = {row.model: row.model_dump() for row in res.rows}
    assert set(rows) == {"sharp", "o-fp32", "o-int8"}
    fp32, int8 = rows["o-fp32"], rows["o-int8"]
    assert (fp32["format"], fp32["method"]) == ("onnx", "fp32")
    assert (int8["format"], int8["method"]) == ("onnx", "int8")
    assert fp32["tokens_per_s"] > 0 and int8["tokens_per_s"] > 0
    parents = {(e.parent, e.role) for e in store.assets.lineage(res.ref).upstream}
    assert {("o-fp32:1", "variant"), ("o-int8:1", "variant")} <= parents

    # perplexity over the same two windows of 48 tokens, computed here by transformers
    tok = AutoTokenizer.from_pretrained(str(sharp))
    model = AutoModelForCausalLM.from_pretrained(str(sharp)).eval()
    ids = tok(text.read_text(), add_special_tokens=False)["input_ids"]
    ids.append(tok.eos_token_id)
    nll = count = 0.0
    for i in (0, 48):
        x = torch.tensor([ids[i : i + 48]])
        with torch.no_grad():
            nll += model(input_ids=x, labels=x).loss.item() * (x.shape[1] - 1)
        count += x.shape[1] - 1
    want = math.exp(nll / count)
    assert want > 50  # sharp logits: far from both 1 and uniform (320)...
    assert rows["sharp"]["perplexity"] == pytest.approx(want, rel=1e-4)
    assert fp32["perplexity"] == pytest.approx(want, rel=1e-4)  # ...so this pins the windows
    assert fp32["ppl_delta_pct"] == pytest.approx(0.0, abs=0.01)
    assert abs(int8["ppl_delta_pct"]) < 5.0 and int8["perplexity"] != fp32["perplexity"]

    # bits per weight from the model's own shapes: the tied embedding once, in fp32 (the
    # lookup); every other matrix, and the output projection's int8 copy of the embedding,
    # in 8-bit blocks with one fp32 scale a block; the copy's weights are not counted again
    recipe = INT8_RECIPES["int8"]
    emb = model.get_input_embeddings().weight.numel()
    rest = sum(p.numel() for p in model.parameters() if p.ndim == 2) - emb
    head = emb if recipe.lm_head else 0
    assert fp32["bits_per_weight"] == 32.0
    want_bits = (emb * 32 + (rest + head) * (8 + 32 / recipe.block_size)) / (emb + rest)
    assert int8["bits_per_weight"] == pytest.approx(want_bits, rel=1e-6)
    assert int8["size"] < 0.75 * fp32["size"]
    assert res.path is not None
    assert "| o-int8 | onnx | int8 |" in (res.path / "report.md").read_text()

    # tokens/s decode the engine's prompt ids, also for a model without a chat template
    # (both take the ChatML fallback), so the two rows time the same sequence
    import shutil

    from lmops.deploy import report as report_mod
    from lmops.deploy.onnx import OnnxDecoder
    from lmops.models.engine import Engine

    bare_onnx, bare_hf = tmp_path / "bare-onnx", tmp_path / "bare-hf"
    shutil.copytree(store.assets.path("o-fp32"), bare_onnx)
    shutil.copytree(sharp, bare_hf)
    for folder in (bare_onnx, bare_hf):
        conf = folder / "tokenizer_config.json"
        tc = json.loads(conf.read_text())
        tc.pop("chat_template", None)
        conf.write_text(json.dumps(tc))
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    seen: list[list[int]] = []
    real = OnnxDecoder.generate

    def spy(self: Any, ids: list[int], *a: Any, **kw: Any) -> Any:
        seen.append(list(ids))
        return real(self, ids, *a, **kw)

    OnnxDecoder.generate = spy  # type: ignore[method-assign]
    try:
        report_mod.onnx_tokens_per_s(bare_onnx, 4)
    finally:
        OnnxDecoder.generate = real  # type: ignore[method-assign]
    engine = Engine(bare_hf, device="cpu", max_running=1)
    try:
        assert engine.chat_template_fallback
        want_ids = engine.encode_chat([{"role": "user", "content": report_mod.PROMPT}])
    finally:
        engine.close()
    assert seen == [want_ids]
