"""``lmops assets import gguf --dtype``: the import keeps the precision the file carries
(F16 -> float16, BF16 -> bfloat16, F32 -> float32, Q8_0/Q4_1 blocks -> float16) where every
import stored float32 before (a 98 MB Q4_1 SmolLM2 became 540 MB); ``--dtype float32`` still
gives float32; the dtype is in the version's metadata; a float16 folder serves on CPU with
the float32 import's tokens; a weight beyond float16's range keeps float32 under ``auto``
and is refused in one line under ``--dtype float16``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.deploy.conftest import greedy_ids
from tests.train.tiny import make_model, make_tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf-dtype")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=5)


def _write(tiny: Path, file: Path, quant: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tiny`` as a GGUF whose matrices are ``quant``: the writer's f16/q8_0/q4_1, or
    (f32, bf16) every matrix in that type through the same writer."""
    from lmops.deploy import gguf as gguf_mod

    if quant in ("f32", "bf16"):
        with monkeypatch.context() as m:
            m.setattr(gguf_mod, "tensor_quant", lambda _name, _quant: quant)
            gguf_mod.write_gguf(tiny, file, "q8_0")
    else:
        gguf_mod.write_gguf(tiny, file, quant)
    return file


def _version(name: str) -> tuple[Any, Path]:
    from lmops.store import Store

    store = Store()
    try:
        v = store.assets.resolve(name)
        return v, Path(store.assets.path(v.ref))
    finally:
        store.close()


def _stored_dtypes(folder: Path) -> set[Any]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as st:
        return {st.get_tensor(k).dtype for k in st.keys()}  # noqa: SIM118


def _file_weights(file: Path) -> dict[str, Any]:
    """What transformers dequantizes from ``file``, in float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=torch.float32
    )
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("quant", "tensor_type", "stored"),
    [
        ("f16", "F16", "float16"),
        ("bf16", "BF16", "bfloat16"),
        ("f32", "F32", "float32"),
        ("q8_0", "Q8_0", "float16"),
        ("q4_1", "Q4_1", "float16"),  # token_embd stays Q8_0 in a 4-bit file
    ],
)
def test_auto_keeps_the_precision_the_file_carries(
    cli: Any,
    tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quant: str,
    tensor_type: str,
    stored: str,
) -> None:
    import gguf

    file = _write(tiny, tmp_path / f"t.{quant}.gguf", quant, monkeypatch)
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(file)).tensors if len(t.shape) > 1}
    assert tensor_type in types
    r = cli("assets", "import", "gguf", str(file), "--name", "imp")
    assert r.code == 0, r.err
    assert f" {stored}, gguf sha256 " in " ".join(r.out.split())  # the line says which
    v, folder = _version("imp")
    assert v.metadata["dtype"] == stored
    assert v.metadata["dtype_from"] == f"auto (matrices {'/'.join(sorted(types))})"
    assert _stored_dtypes(folder) == {DTYPES[stored]}  # the norms too: one dtype per folder
    assert json.loads((folder / "config.json").read_text())["dtype"] == stored
    want = _file_weights(file)
    for k, t in _stored_weights(folder).items():
        if quant in ("f16", "bf16", "f32"):  # exact: the file's own values
            assert torch.equal(t.float(), want[k]), k
        else:  # a block weight rounded to float16: within half its last bit
            torch.testing.assert_close(t.float(), want[k], rtol=2**-11, atol=2**-24)
            assert torch.equal(t, want[k].to(torch.float16)), k


def _stored_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_dtype_float32_is_kept_on_request_and_recorded(
    cli: Any, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = _write(tiny, tmp_path / "t.q8_0.gguf", "q8_0", monkeypatch)
    r = cli("assets", "import", "gguf", str(file), "--name", "wide", "--dtype", "float32")
    assert r.code == 0, r.err
    v, folder = _version("wide")
    assert (v.metadata["dtype"], v.metadata["dtype_from"]) == ("float32", "--dtype")
    assert _stored_dtypes(folder) == {torch.float32}
    want = _file_weights(file)
    for k, t in _stored_weights(folder).items():
        assert torch.equal(t, want[k]), k  # the dequantized values, unrounded
    r = cli("assets", "import", "gguf", str(file), "--name", "x", "--dtype", "float8")
    assert r.code == 2 and r.err.count("\n") == 1
    assert "--dtype 'float8': one of auto, float32, float16, bfloat16" in r.err


def test_the_api_takes_the_same_dtype(store: Any, tiny: Path, tmp_path: Path) -> None:
    """``POST /api/deploy/import-gguf`` is the same function: ``dtype`` is passed on, and a
    dtype it does not know is refused by the request model."""
    from pydantic import ValidationError

    from lmops.api.deploy import ImportGgufRequest
    from lmops.api.deploy import import_gguf as route
    from lmops.deploy.gguf import write_gguf

    file = tmp_path / "t.q8_0.gguf"
    write_gguf(tiny, file, "q8_0")
    for name, dtype in (("by-api", "auto"), ("by-api-32", "float32")):
        v = route(ImportGgufRequest(file=str(file), name=name, dtype=dtype), store)
        assert v.metadata["dtype"] == {"auto": "float16", "float32": "float32"}[dtype]
    with pytest.raises(ValidationError):
        ImportGgufRequest(file=str(file), name="x", dtype="float8")  # type: ignore[arg-type]


def test_a_float16_import_serves_on_cpu_with_the_float32_imports_tokens(
    cli: Any, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An F16 file: both folders hold the same values, and the engine upcasts the float16
    one to float32 as it loads it on CPU, so the tokens are the same."""
    from lmops.models.engine import Engine

    file = _write(tiny, tmp_path / "t.f16.gguf", "f16", monkeypatch)
    for name, dtype in (("half", "auto"), ("full", "float32")):
        r = cli("assets", "import", "gguf", str(file), "--name", name, "--dtype", dtype)
        assert r.code == 0, r.err
    (_, half), (_, full) = _version("half"), _version("full")
    assert _stored_dtypes(half) == {torch.float16}
    e_half, e_full = Engine(half, device="cpu"), Engine(full, device="cpu")
    assert {p.dtype for p in e_half.model.parameters()} == {torch.float32}
    prompts = [[5, 17, 42, 7], [3, 9, 11], [60, 2, 33, 8, 19]]
    assert [greedy_ids(e_half, p) for p in prompts] == [greedy_ids(e_full, p) for p in prompts]
    x = torch.tensor([prompts[0]])
    with torch.no_grad():
        assert torch.equal(e_half.model(x).logits, e_full.model(x).logits)


def test_weights_beyond_float16s_range(
    cli: Any, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Q8_0 block scale is fp16, but scale x 127 is not: 1e5 dequantizes beyond 65504.
    ``auto`` then stores float32; ``--dtype float16`` is refused and registers nothing."""
    import shutil

    from transformers import AutoModelForCausalLM

    big = tmp_path / "big"
    shutil.copytree(tiny, big)
    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = 1e5
    model.save_pretrained(str(big))
    file = _write(big, tmp_path / "big.q8_0.gguf", "q8_0", monkeypatch)
    r = cli("assets", "import", "gguf", str(file), "--name", "big")
    assert r.code == 0, r.err
    v, folder = _version("big")
    assert v.metadata["dtype"] == "float32"
    assert v.metadata["dtype_from"] == "auto (matrices Q8_0, beyond float16's range)"
    weights = _stored_weights(folder)
    assert float(weights["model.layers.0.mlp.down_proj.weight"].abs().max()) > 65504
    r = cli("assets", "import", "gguf", str(file), "--name", "big16", "--dtype", "float16")
    # one line (after transformers' own de-quantizing bar)
    line = r.err.rstrip("\n").split("\n")[-1]
    assert r.code == 2 and line.startswith(f"error: {file}: model.layers.0.mlp.down_proj"), r.err
    assert line.endswith(
        "has weights float16 cannot hold (beyond +-65504); import with --dtype bfloat16 or float32"
    )
    from lmops.store import Store

    store = Store()
    try:
        assert not store.assets.exists("big16")
    finally:
        store.close()
