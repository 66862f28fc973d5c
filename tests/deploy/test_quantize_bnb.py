"""bitsandbytes quantization (issue #15: 4-bit "with bitsandbytes where present"):
``lmops deploy quantize --method bnb-nf4|bnb-int8`` writes the folder transformers reloads,
with Linear4bit/Linear8bitLt layers and logits close to the source; the asset has lineage
and its figures; the engine serves it and eval loads it. Without bitsandbytes (or with a
back end that cannot load) the job and the loader refuse in one line naming the install,
and nothing is registered: those tests run in CI, which does not install bitsandbytes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.tiny import make_model


def _bnb_usable() -> bool:
    try:
        import bitsandbytes
    except Exception:
        return False
    major, minor = (int("".join(c for c in p if c.isdigit()) or 0) for p in
                    bitsandbytes.__version__.split(".")[:2])  # fmt: skip
    return torch.cuda.is_available() or (major, minor) >= (0, 48)


needs_bnb = pytest.mark.skipif(
    not _bnb_usable(),
    reason="needs bitsandbytes >= 0.48 (its CPU back end) or a CUDA GPU: pip install 'lmops[gpu]'",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IDS = [5, 17, 42, 7, 99, 3, 250, 12]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    return make_model(tmp_path_factory.mktemp("bnb") / "m", tok_dir, seed=5)


def _logits(model: Any, ids: list[int]) -> Any:
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=dev)).logits[0].float().cpu()


def _models() -> set[str]:
    from lmops.store import Store

    store = Store()
    try:
        return {a.name for a in store.assets.list("model")}
    finally:
        store.close()


# -- without bitsandbytes (runs everywhere) ---------------------------------------------------------
def test_missing_bitsandbytes_is_one_line_and_registers_nothing(
    cli: Any, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import -> ModuleNotFoundError
    for method in ("bnb-nf4", "bnb-int8"):
        r = cli("deploy", "quantize", "tiny", "--method", method, "-o", "q")
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert "not installed" in r.err and "pip install 'lmops[gpu]'" in r.err
        assert "--method int8|gptq4" in r.err  # the CPU methods that need nothing
    assert _models() == {"tiny"}


def test_bitsandbytes_that_cannot_load_is_one_line(
    cli: Any, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a package whose native back end fails at import, as on a platform it does not build for
    fake = tmp_path / "fake" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise OSError('libbitsandbytes_cpu.so: cannot open')\n")
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    monkeypatch.syspath_prepend(str(fake.parent))
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "quantize", "tiny", "--method", "bnb-nf4", "-o", "q")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "cannot load here" in r.err and "libbitsandbytes_cpu.so" in r.err
    assert "pip install 'lmops[gpu]'" in r.err
    assert _models() == {"tiny"}


def test_loading_a_bnb_folder_without_bitsandbytes_is_one_line(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.core.errors import UserError
    from lmops.models.loading import load_causal_lm

    folder = tmp_path / "q"
    folder.mkdir()
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(UserError) as e:
        load_causal_lm(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder) in msg and "pip install 'lmops[gpu]'" in msg


def _bnb_looking(tiny: Path, folder: Path, **q: Any) -> Path:
    """A copy of ``tiny`` whose config says bitsandbytes made it (no bitsandbytes needed)."""
    import shutil

    shutil.copytree(tiny, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", **q}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_bnb_folder_is_no_source_for_quantize_or_export(
    cli: Any, tiny: Path, tmp_path: Path
) -> None:
    """int8/gptq4 would read its Linear4bit/Linear8bitLt layers as floats (a review found a
    registered model that could not be loaded, and one with meaningless logits), and the
    exports would read packed integers: each is refused in one line, before any work."""
    folder = _bnb_looking(tiny, tmp_path / "nf4", load_in_4bit=True)
    assert cli("assets", "register", "model", "nf4", str(folder)).code == 0
    for args in (["quantize", "nf4", "--method", "int8"],
                 ["export", "nf4", "--format", "gguf"],
                 ["export", "nf4", "--format", "onnx"]):  # fmt: skip
        r = cli("deploy", *args, "-o", "out")
        assert r.code == 2 and r.err.count("\n") == 1, (args, r.err)
        assert "already quantized (bitsandbytes)" in r.err and "source model" in r.err
    assert _models() == {"nf4"}


def test_llm_int8_is_served_in_fp16_not_bf16_on_cuda(tiny: Path, tmp_path: Path) -> None:
    """LLM.int8 casts its inputs to fp16 on every call: bf16 activations above 65504 would
    become inf there, so an 8-bit folder asked for in bf16 on CUDA is served in fp16."""
    from lmops.models.bnb import serving_dtype

    int8 = _bnb_looking(tiny, tmp_path / "i8", load_in_8bit=True)
    nf4 = _bnb_looking(tiny, tmp_path / "n4", load_in_4bit=True)
    assert serving_dtype(int8, torch.bfloat16, "cuda") == torch.float16
    assert serving_dtype(int8, torch.bfloat16, "cuda:1") == torch.float16
    assert serving_dtype(int8, torch.bfloat16, "cpu") == torch.bfloat16
    assert serving_dtype(int8, torch.float32, "cuda") == torch.float32
    assert serving_dtype(nf4, torch.bfloat16, "cuda") == torch.bfloat16


def test_bnb_methods_take_no_calibration(cli: Any, tiny: Path, tmp_path: Path) -> None:
    data = tmp_path / "c.txt"
    data.write_text("some text\n")
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "quantize", "tiny", "--method", "bnb-nf4", "--calibration", str(data),
            "-o", "q")  # fmt: skip
    assert r.code == 2 and "--calibration" in r.err and r.err.count("\n") == 1
    # nor the int8/gptq4 settings, which bitsandbytes would silently drop
    r = cli("deploy", "quantize", "tiny", "--method", "bnb-int8", "--group-size", "64",
            "--head-bits", "8", "-o", "q")  # fmt: skip
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "--group-size" in r.err and "--head-bits" in r.err
    assert _models() == {"tiny"}


# -- with bitsandbytes ------------------------------------------------------------------------------
@needs_bnb
@pytest.mark.parametrize(
    ("method", "layer", "bits", "tol"),
    [("bnb-nf4", "Linear4bit", (4.0, 6.5), 0.2), ("bnb-int8", "Linear8bitLt", (8.0, 9.0), 0.03)],
)
def test_quantize_reloads_in_transformers_close_to_the_source(
    cli: Any, tiny: Path, method: str, layer: str, bits: tuple[float, float], tol: float
) -> None:
    from transformers import AutoModelForCausalLM

    from lmops.models.loading import load_causal_lm
    from lmops.store import Store

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "quantize", "tiny", "--method", method, "-o", "q", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    # tiny layers (64 wide): the per-layer code book and absmax weigh more than at scale
    assert bits[0] <= out["quantized_bits_per_weight"] < bits[1]
    assert out["bits_per_weight"] > out["quantized_bits_per_weight"]  # bf16 embeddings/head
    assert out["layers"] == 14  # 2 layers x (q, k, v, o, gate, up, down); lm_head is left
    store = Store()
    try:
        v = store.assets.resolve("q")
        assert v.kind == "model"
        meta = v.metadata
        assert meta["quantization"] == method and meta["format"] == "bitsandbytes"
        assert meta["device"] == DEVICE and meta["bitsandbytes"]
        assert meta["bits_per_weight"] == round(out["bits_per_weight"], 4)
        assert {(e.parent, e.role) for e in store.assets.lineage(v.ref).upstream} == {
            ("tiny:1", "source")
        }
        folder = Path(store.assets.path(v.ref))
    finally:
        store.close()
    qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "bitsandbytes"
    assert (folder / "tokenizer.json").is_file()

    # the way transformers reloads it, with no help from lmops
    plain = AutoModelForCausalLM.from_pretrained(str(folder), device_map={"": DEVICE})
    kinds = {type(m).__name__ for m in plain.model.layers.modules()}
    assert layer in kinds and "Linear" not in kinds  # every decoder Linear is quantized
    qw = plain.model.layers[0].self_attn.q_proj.weight
    assert qw.dtype in (torch.uint8, torch.int8)
    src = load_causal_lm(tiny)
    a, b = _logits(src, IDS), _logits(plain, IDS)
    assert 0 < (a - b).abs().max().item() < tol * a.abs().max().item()

    # lmops' loader: same layers, the rest in fp32 on CPU (not the stored bf16)
    ours = load_causal_lm(folder, dtype=torch.float32, device=DEVICE)
    assert ours.model.embed_tokens.weight.dtype == torch.float32
    c = _logits(ours, IDS)
    assert (a - c).abs().max().item() < tol * a.abs().max().item()
    assert (a.argmax(-1) == c.argmax(-1)).float().mean().item() >= 0.75


@needs_bnb
def test_bnb_folder_serves_in_the_engine_and_loads_in_eval(cli: Any, tiny: Path) -> None:
    import bitsandbytes as bnb

    from lmops.eval.lm import HFEvalModel
    from lmops.models.engine import Engine
    from lmops.models.types import Done, GenRequest
    from lmops.store import Store

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    assert cli("deploy", "quantize", "tiny", "--method", "bnb-nf4", "-o", "q4").code == 0
    store = Store()
    try:
        folder = Path(store.assets.path("q4"))
    finally:
        store.close()
    engine = Engine(folder, device=DEVICE)
    try:
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())

        async def gen() -> Done:
            req = GenRequest("t", prompt_ids=IDS, max_tokens=6, temperature=0.0)
            done = None
            async for ev in engine.generate(req):
                if isinstance(ev, Done):
                    done = ev
            assert done is not None
            return done

        done = asyncio.run(gen())
        assert done.error is None and done.completion_tokens >= 1
    finally:
        engine.close()
    ev = HFEvalModel(folder, device=DEVICE)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in ev.model.modules())
    # and a quantized folder is not a source for another round
    r = cli("deploy", "quantize", str(folder), "--method", "bnb-int8", "-o", "again")
    assert r.code == 2 and "already quantized" in r.err and r.err.count("\n") == 1


@needs_bnb
def test_deploy_report_reads_a_bnb_folder_as_bnb(cli: Any, tiny: Path) -> None:
    """The report names the format and method, and counts bits per weight as the quantize
    job did (not the packed uint8 rows of its safetensors, as for a plain folder)."""
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "quantize", "tiny", "--method", "bnb-nf4", "-o", "q4", "--json")
    assert r.code == 0, r.err
    made = json.loads(r.out)["bits_per_weight"]
    r = cli("deploy", "report", "q4", "--max-tokens", "64", "--gen-tokens", "2", "--json")
    assert r.code == 0, r.err
    (row,) = json.loads(r.out)["rows"]
    assert (row["format"], row["method"]) == ("bnb", "bnb-nf4")
    assert row["bits_per_weight"] == pytest.approx(made, rel=1e-6)
    assert row["perplexity"] > 1


def test_pipeline_quantize_step_takes_the_bnb_methods(tmp_path: Path) -> None:
    """A pipeline's quantize step offers what the CLI offers: bnb-nf4 / bnb-int8 pass the
    spec check, an unknown method is refused when the file is loaded, naming the step."""
    import yaml

    from lmops.core.errors import UserError
    from lmops.pipelines import load_pipeline

    def spec(method: str) -> Path:
        steps = {"q": {"type": "quantize", "model": "tiny", "output": "q", "method": method}}
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump({"name": "deploy", "steps": steps}, sort_keys=False))
        return path

    for method in ("bnb-nf4", "bnb-int8"):
        load_pipeline(spec(method))
    with pytest.raises(UserError, match="method"):
        load_pipeline(spec("bnb-fp4"))
