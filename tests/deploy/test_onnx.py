"""ONNX export (issue #15 item 2, ``--format onnx``): the exported decoder runs in
onnxruntime (an independent runtime) with the logits of transformers and the same greedy
tokens, its KV cache fed back step by step; int8 (onnxruntime's MatMulNBits) stays close;
a missing exporter or an unsupported ``--quant`` is refused in one line before any work,
and nothing is registered."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmops.deploy.onnx import PIP_HINT, missing_onnx_packages
from tests.api.conftest import Server, server  # noqa: F401 (the fixture: a real lmops serve)
from tests.train.tiny import make_model

PROMPTS = ["The quick brown fox", "Machine learning models", "今天天气很好"]
N_NEW = 24

needs_onnx = pytest.mark.skipif(
    bool(missing_onnx_packages()),
    reason=f"needs {', '.join(missing_onnx_packages())}: {PIP_HINT}",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    """The 2-layer Llama of the deploy tests, its matrices redrawn with std 0.3: at the
    default 0.02 greedy decoding repeats one token, and comparing 24 copies of one token
    would prove little about the cache."""
    from transformers import AutoModelForCausalLM

    folder = make_model(tmp_path_factory.mktemp("onnx") / "m", tok_dir, seed=3)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(folder))
    return folder


def _greedy(model: Any, ids: list[int], n: int = N_NEW) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return list(out[0, len(ids) :].tolist())


def _resolve(ref: str) -> tuple[Any, Path, set[tuple[str, str]]]:
    from lmops.store import Store

    store = Store()
    try:
        v = store.assets.resolve(ref)
        parents = {(e.parent, e.role) for e in store.assets.lineage(v.ref).upstream}
        return v, Path(store.assets.path(v.ref)), parents
    finally:
        store.close()


@needs_onnx
def test_onnx_export_matches_transformers_in_onnxruntime(cli: Any, tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.deploy.onnx import OnnxDecoder

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "export", "tiny", "--format", "onnx", "-o", "t-onnx")
    assert r.code == 0, r.err
    v, folder, parents = _resolve("t-onnx")
    assert v.metadata["format"] == "onnx" and v.metadata["quant"] == "fp32"
    assert v.metadata["kv_cache"] is True
    assert ("tiny:1", "source") in parents
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    # stages that load transformers folders refuse it in one line, not deep in transformers
    r = cli("deploy", "export", "t-onnx", "--format", "gguf", "-o", "again")
    assert r.code != 0 and "is an ONNX export" in r.err and len(r.err.strip().splitlines()) == 1

    src = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))  # the exported tokenizer
    dec = OnnxDecoder(folder, threads=1)
    names = [i.name for i in dec.session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        with torch.no_grad():
            want = src(torch.tensor([ids])).logits[0].numpy()
        diff = float(np.abs(dec.logits(ids) - want).max())
        assert diff < 1e-4 * max(1.0, float(np.abs(want).max())), (p, diff)
        # every token after the first comes through the cache the graph hands back
        tokens = dec.generate(ids, N_NEW)
        assert tokens == _greedy(src, ids), p
        assert len(set(tokens)) > 3  # a real sequence, not one token repeated

    # a left-padded batch: the mask reaches attention (padding rows are not attended)
    rows = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pos = np.maximum(mask.cumsum(1) - 1, 0)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **dec.empty_past(2)}
    got = dec.session.run(["logits"], feeds)[0]
    with torch.no_grad():
        want = src(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        ).logits.numpy()
    keep = mask.astype(bool)
    assert float(np.abs(got[keep] - want[keep]).max()) < 1e-4 * float(np.abs(want).max())


def _int8_blocks(x: torch.Tensor, block: int, weights: bool) -> torch.Tensor:
    """``x`` rounded to int8 in blocks of ``block`` along its last axis as onnxruntime's
    MatMulNBits does: weights (the quantizer, symmetric) on the grid ``-w_max / 128``
    (``w_max`` the block's value of largest magnitude, sign kept, so it lands on -128);
    activations (accuracy_level 4, at run time) on ``max |x| / 127``."""
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    if weights:
        scale = -torch.gather(xb, -1, xb.abs().argmax(-1, keepdim=True)) / 128
        lo = -128
    else:
        scale = xb.abs().amax(-1, keepdim=True) / 127
        lo = -127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.round(xb / scale).clamp(lo, 127) * scale).reshape(x.shape)


def _int8_reference(folder: Path, block: int) -> Any:
    """The transformers model of ``folder`` computing what the int8 graph should: every
    Linear (the tied output projection as its own copy; the embedding lookup stays fp32)
    with int8 weights, its input rounded to int8 a block at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            w = _int8_blocks(mod.weight.detach().clone(), block, weights=True)
            mod.weight = torch.nn.Parameter(w)  # unties lm_head from the embedding
            mod.register_forward_pre_hook(
                lambda _m, args: (_int8_blocks(args[0], block, weights=False), *args[1:])
            )
    return model


@needs_onnx
def test_onnx_int8_computes_int8_weights_and_activations(store: Any, tiny: Path) -> None:
    """The int8 graph is the model with int8 weights and int8 activations (blocks of 64),
    the output projection included: its logits and its greedy tokens through the
    KV cache are those of that model in transformers, to float rounding, while they sit
    well away from fp32's. A changed block, scale grid, accuracy level or a layer left out
    moves them by the int8 step, orders of magnitude past the bound."""
    import onnx
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.deploy.onnx import INT8_RECIPES, OnnxDecoder, export_onnx, onnx_weight_bits

    fp32 = export_onnx(store, str(tiny), output="t-fp32")
    int8 = export_onnx(store, str(tiny), output="t-int8", quant="int8")
    assert int8.quant == "int8" and store.assets.resolve("t-int8").metadata["quant"] == "int8"
    assert int8.size < 0.6 * fp32.size
    graph = onnx.load(str(int8.path / "model.onnx")).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    # 7 projections in each of 2 layers and the output projection, none left in fp32
    assert len(nodes) == 2 * 7 + 1
    recipe = INT8_RECIPES["int8"]
    assert (recipe.block_size, recipe.accuracy_level) == (64, 4)
    for n in nodes:
        attrs = {a.name: a.i for a in n.attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (8, 64, 4)
    assert onnx_weight_bits(int8.path)[0] == "int8"

    src = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    ref = _int8_reference(tiny, 64)
    tok = AutoTokenizer.from_pretrained(str(tiny))
    dec = OnnxDecoder(int8.path, threads=1)
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        with torch.no_grad():
            fp = src(torch.tensor([ids])).logits[0].numpy()
            want = ref(torch.tensor([ids])).logits[0].numpy()
        got = dec.logits(ids)
        scale = max(1.0, float(np.abs(want).max()))
        assert float(np.abs(got - want).max()) < 1e-4 * scale, p
        assert float(np.abs(got - fp).max()) > 1e-2 * scale, p  # int8 is not fp32 here
        tokens = dec.generate(ids, N_NEW)
        assert tokens == _greedy(ref, ids), p
        assert len(set(tokens)) > 3


@needs_onnx
def test_onnx_weights_past_the_protobuf_limit_go_beside_the_graph(
    store: Any, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model over 2 GiB cannot sit in one protobuf: its weights go to model.onnx.data
    (tried here on the tiny model by lowering the threshold), registered with the graph."""
    import lmops.deploy.onnx as onnx_mod
    from lmops.deploy.onnx import OnnxDecoder, export_onnx

    inline = export_onnx(store, str(tiny), output="t-in", quant="int8")
    monkeypatch.setattr(onnx_mod, "_EXTERNAL_DATA_BYTES", 0)
    for quant in ("fp32", "int8"):
        res = export_onnx(store, str(tiny), output=f"t-ext-{quant}", quant=quant)
        assert (res.path / "model.onnx.data").stat().st_size > (
            res.path / "model.onnx"
        ).stat().st_size
        assert res.max_abs_logit_diff < (1e-4 if quant == "fp32" else 1.0)
    ids = [5, 6, 7, 8, 9]
    same = OnnxDecoder(res.path).logits(ids), OnnxDecoder(inline.path).logits(ids)
    assert np.array_equal(*same)  # the same int8 graph, only stored differently


@needs_onnx
def test_a_graph_that_disagrees_with_transformers_is_not_registered(
    cli: Any, tiny_plain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.deploy.onnx as onnx_mod
    from lmops.store import Store

    assert cli("assets", "register", "model", "tiny", str(tiny_plain)).code == 0
    # as if the exporter had mistranslated an op: logits 0.5 away where they reach 1
    monkeypatch.setattr(onnx_mod, "_parity", lambda model, folder, ids: (0.5, 1.0))
    r = cli("deploy", "export", "tiny", "--format", "onnx", "-o", "t-bad")
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert r.code != 0 and len(errors) == 1  # one line (beside the progress lines)
    assert "differ from transformers' by 0.5" in errors[0] and "not registered" in errors[0]
    store = Store()
    try:
        assert "t-bad" not in {a.name for a in store.assets.list()}
    finally:
        store.close()


def test_onnx_export_refused_in_one_line_without_exporter(
    cli: Any, tiny_plain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.store import Store

    assert cli("assets", "register", "model", "tiny", str(tiny_plain)).code == 0
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    r = cli("deploy", "export", "tiny", "--format", "onnx", "-o", "t-onnx")
    assert r.code != 0
    err = r.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "onnxscript" in err and "pip install" in err
    r = cli("deploy", "export", "tiny", "--format", "onnx", "--quant", "q4_0", "-o", "t-onnx")
    assert r.code != 0 and "fp32, int8" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("deploy", "export", "tiny", "--format", "tflite", "-o", "t-onnx")
    assert r.code != 0 and "onnx" in r.err and len(r.err.strip().splitlines()) == 1
    store = Store()
    try:
        assert "t-onnx" not in {a.name for a in store.assets.list()}
    finally:
        store.close()


@pytest.fixture(scope="module")
def tiny_plain(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    return make_model(tmp_path_factory.mktemp("onnx-plain") / "m", tok_dir, seed=3)


@needs_onnx
def test_api_exports_onnx_with_the_cli_checks(server: Server, tiny_plain: Path) -> None:  # noqa: F811
    store: Any = server.store
    store.assets.register("model", "tiny", tiny_plain)
    body = {"model": "tiny", "output": "tiny-onnx", "format": "onnx"}
    with server.client(server.admin_key) as c:
        r = c.post("/api/deploy/export", json=body, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["ref"] == "tiny-onnx:1" and r.json()["quant"] == "fp32"
        r = c.post("/api/deploy/export", json={**body, "quant": "q8_0"})
        assert r.status_code == 400 and "fp32, int8" in r.json()["error"]["message"]
    v = store.assets.resolve("tiny-onnx")
    assert v.metadata["format"] == "onnx" and v.metadata["max_abs_logit_diff"] < 1e-3


def test_pipeline_export_step_takes_format_onnx(
    tiny_plain: Path, tmp_path: Path, store: Any
) -> None:
    import yaml

    from lmops.core.errors import UserError
    from lmops.pipelines import load_pipeline, run_pipeline

    steps: dict[str, Any] = {
        "base": {"type": "register", "kind": "model", "path": str(tiny_plain), "name": "tiny"},
        "onnx": {
            "type": "export",
            "model": "${steps.base.output}",
            "output": "tiny-onnx",
            "format": "onnx",
            "quant": "q8_0",  # a GGUF quant: refused when the pipeline loads
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "deploy", "steps": steps}, sort_keys=False))
    with pytest.raises(UserError, match="onnx does fp32, int8"):
        load_pipeline(path)
    if missing_onnx_packages():
        pytest.skip(f"the export itself needs {PIP_HINT}")
    del steps["onnx"]["quant"]
    path.write_text(yaml.safe_dump({"name": "deploy", "steps": steps}, sort_keys=False))
    result = run_pipeline(load_pipeline(path), store, progress=False)
    assert result.ok, result.failed
    v = store.assets.resolve("tiny-onnx")
    assert v.metadata["format"] == "onnx" and v.metadata["quant"] == "fp32"
    parents = {(e.parent, e.role) for e in store.assets.lineage(v.ref).upstream}
    assert ("tiny:1", "source") in parents
