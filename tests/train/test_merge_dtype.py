"""``lmops train merge --dtype``: a merged model is stored in the base's dtype (a float16 base
stays float16) unless ``--dtype`` asks for another; either way the version's metadata says
which and why, and the merge run's config records what was asked. A merge that leaves
float16's range is refused before anything is registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmops.store import Store
from tests.train.tiny import make_model, make_tokenizer


def _dtypes(folder: Path) -> set[str]:
    from safetensors.torch import load_file

    return {
        str(t.dtype).removeprefix("torch.")
        for f in folder.glob("*.safetensors")
        for t in load_file(str(f)).values()
    }


def _adapter(
    store: Store, tmp_path: Path, base_ref: str, name: str, *, std: float = 0.5, nan: bool = False
) -> None:
    """A LoRA adapter of ``base_ref`` with non-zero weights (so merging changes the base; a
    NaN in one with ``nan``), laid out as training writes one: adapter files, tokenizer,
    lmops_base.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = store.assets.path(base_ref)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft = get_peft_model(model, lora)
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=std)
            if nan:
                p.data[0, 0] = float("nan")
    out = tmp_path / name
    peft.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    (out / "lmops_base.json").write_text(json.dumps({"base_ref": base_ref, "base_path": None}))
    store.assets.register("adapter", name, out)


@pytest.fixture
def half(store: Store, tmp_path: Path) -> Store:
    """A float16 base model ``tiny16`` and an adapter ``ad`` of it."""
    from transformers import AutoModelForCausalLM

    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float16)
    model.save_pretrained(str(folder))
    assert _dtypes(folder) == {"float16"}
    store.assets.register("model", "tiny16", folder)
    _adapter(store, tmp_path, "tiny16:1", "ad")
    return store


@pytest.mark.parametrize(
    ("asked", "stored", "why"),
    [
        (None, "float16", "auto (the base's)"),
        ("float32", "float32", "--dtype"),
        ("bfloat16", "bfloat16", "--dtype"),
    ],
)
def test_merge_keeps_the_base_dtype_or_the_one_asked(
    half: Store, cli: Any, asked: str | None, stored: str, why: str
) -> None:
    out = f"m-{asked or 'auto'}"
    r = cli("train", "merge", "ad", "--output", out, "--json",
            *(["--dtype", asked] if asked else []))  # fmt: skip
    assert r.code == 0, r.err
    v = half.assets.resolve(out)
    assert _dtypes(Path(half.assets.path(v.ref))) == {stored}
    assert (v.metadata["dtype"], v.metadata["dtype_from"]) == (stored, why)
    assert json.loads(r.out)["metadata"]["dtype"] == stored
    run = half.runs.get(v.run_id)
    assert run.config["dtype"] == (asked or "auto")
    edges = {(e.parent, e.role) for e in half.assets.lineage(v.ref, depth=1).upstream}
    assert edges == {("ad:1", "adapter"), ("tiny16:1", "base_model")}


def test_a_float16_merge_matches_the_float32_one(half: Store, cli: Any) -> None:
    """The adapter changed the weights, and float16 holds the float32 merge to its precision."""
    from safetensors.torch import load_file

    for d in ("float16", "float32"):
        assert cli("train", "merge", "ad", "--output", f"m{d}", "--dtype", d).code == 0

    def weights(name: str) -> dict[str, Any]:
        folder = Path(half.assets.path(half.assets.resolve(name).ref))
        return load_file(str(next(folder.glob("*.safetensors"))))

    base, f16, f32 = weights("tiny16"), weights("mfloat16"), weights("mfloat32")
    q = next(k for k in f32 if "q_proj" in k)
    assert not torch.allclose(base[q].float(), f32[q], atol=1e-2)  # the adapter is merged in
    for k in f32:
        assert torch.allclose(f16[k].float(), f32[k], rtol=2e-3, atol=2e-3), k


def test_an_unknown_dtype_and_a_float16_overflow_are_refused(
    store: Store, cli: Any, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"))
    weights_file = folder / "model.safetensors"
    w = load_file(str(weights_file))
    big = next(k for k in w if "k_proj" in k)  # no LoRA on it: the base's own weight
    w[big][0, 0] = 70000.0  # beyond float16's 65504
    save_file(w, str(weights_file), metadata={"format": "pt"})
    store.assets.register("model", "tiny", folder)
    _adapter(store, tmp_path, "tiny:1", "ad")

    r = cli("train", "merge", "ad", "--dtype", "float8")
    assert r.code != 0
    assert r.err.strip() == "error: --dtype 'float8': pick one of auto, float32, bfloat16, float16"
    r = cli("train", "merge", "ad", "--dtype", "float16")
    assert r.code != 0 and len(r.err.strip().splitlines()) == 1, r.err
    assert "ad:1 in float16 left" in r.err and "--dtype float32 or bfloat16" in r.err, r.err
    assert not store.assets.exists("ad-merged")
    assert cli("train", "merge", "ad").code == 0  # auto: the base's float32
    assert store.assets.resolve("ad-merged").metadata["dtype"] == "float32"


def test_auto_merges_in_float32_when_the_float16_base_cannot_hold_the_merge(
    store: Store, cli: Any, tmp_path: Path
) -> None:
    """A float16 base with weights at float16's edge and an adapter that pushes them past it:
    ``auto`` merges in float32 instead (as ``assets import gguf`` does) and says why; an
    explicit ``--dtype float16`` is refused."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float16)
    model.save_pretrained(str(folder))
    weights_file = folder / "model.safetensors"
    w = load_file(str(weights_file))
    for k in w:
        if "q_proj" in k:  # LoRA adds to it: past 65504 wherever its change is positive
            w[k][:] = 65000.0
    save_file(w, str(weights_file), metadata={"format": "pt"})
    store.assets.register("model", "edge", folder)
    _adapter(store, tmp_path, "edge:1", "ad", std=500.0)

    r = cli("train", "merge", "ad", "--dtype", "float16")
    assert r.code != 0 and len(r.err.strip().splitlines()) == 1, r.err
    assert "ad:1 in float16 left" in r.err and "--dtype float32 or bfloat16" in r.err, r.err
    r = cli("train", "merge", "ad", "--output", "m")
    assert r.code == 0, r.err
    v = store.assets.resolve("m")
    assert _dtypes(Path(store.assets.path(v.ref))) == {"float32"}
    assert v.metadata["dtype"] == "float32"
    assert v.metadata["dtype_from"] == "auto (the base's float16 cannot hold the merge)"
    merged = load_file(str(next(Path(store.assets.path(v.ref)).glob("*.safetensors"))))
    q = next(k for k in merged if "q_proj" in k)
    assert merged[q].max() > 65504 and merged[q].isfinite().all()


def test_nan_in_the_weights_is_not_blamed_on_float16(
    store: Store, cli: Any, tmp_path: Path
) -> None:
    """An adapter with a NaN merged in float32: the line says the weights hold NaN/inf (no
    dtype fixes that), not that float16's range was left."""
    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"))
    store.assets.register("model", "tiny", folder)
    _adapter(store, tmp_path, "tiny:1", "ad", nan=True)
    for asked in ([], ["--dtype", "bfloat16"]):
        r = cli("train", "merge", "ad", *asked)
        assert r.code != 0 and len(r.err.strip().splitlines()) == 1, r.err
        saved = asked[1] if asked else "float32"
        assert f"merging ad:1 in {saved}: " in r.err and "holds NaN or inf" in r.err, r.err
        assert "range" not in r.err and "--dtype" not in r.err, r.err
    assert not store.assets.exists("ad-merged")


def test_a_pipeline_merge_step_takes_a_dtype(half: Store, tmp_path: Path) -> None:
    import yaml

    from lmops.core.errors import UserError
    from lmops.pipelines import load_pipeline, run_pipeline

    def pipeline(dtype: str) -> Path:
        path = tmp_path / "pipeline.yaml"
        step = {"type": "merge", "adapter": "ad", "output": "m32", "dtype": dtype}
        path.write_text(yaml.safe_dump({"name": "p", "steps": {"merge": step}}))
        return path

    res = run_pipeline(load_pipeline(pipeline("float32")), half, progress=False)
    assert res.ok, res.failed
    v = half.assets.resolve("m32")
    assert _dtypes(Path(half.assets.path(v.ref))) == {"float32"}
    assert (v.metadata["dtype"], v.metadata["dtype_from"]) == ("float32", "--dtype")
    with pytest.raises(UserError, match="dtype"):
        load_pipeline(pipeline("float8"))
