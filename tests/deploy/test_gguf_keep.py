"""What a GGUF export keeps. A 4-bit export (q4_0, q4_1) writes ``token_embd`` (the output
layer too when tied) and an untied ``output`` at Q8_0, as llama.cpp's llama-quantize keeps
its output layer above 4 bits (on SmolLM2-135M, q4_1 went from +7.0 % perplexity to +0.0 %
and q4_0 from +30.4 % to +21.0 %); transformers reads back exactly ``round_like_gguf``'s
weights. An import -> export round trip keeps the source file's ``general.*`` metadata
(license, organization, base name, fine-tune, size label, ...), which it used to drop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.tiny import make_model, make_tokenizer, tiny_shape


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf-keep")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=4)


def _untied(tok_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(6)
    LlamaForCausalLM(LlamaConfig(**tiny_shape(tok), tie_word_embeddings=False)).save_pretrained(
        str(out)
    )
    tok.save_pretrained(str(out))
    return out


def _types(file: Path) -> dict[str, str]:
    """GGML type of every matrix of ``file``."""
    import gguf

    return {
        t.name: t.tensor_type.name for t in gguf.GGUFReader(str(file)).tensors if len(t.shape) > 1
    }


@pytest.mark.parametrize("quant", ["q4_0", "q4_1"])
@pytest.mark.parametrize("tied", [True, False])
def test_4bit_exports_keep_the_embeddings_and_output_at_q8_0(
    tiny: Path, tok_dir: Path, tmp_path: Path, quant: str, tied: bool
) -> None:
    from transformers import AutoModelForCausalLM

    from lmops.deploy.gguf import round_like_gguf, write_gguf

    src = tiny if tied else _untied(tok_dir, tmp_path / "untied")
    file = tmp_path / f"m.{quant}.gguf"
    bits = write_gguf(src, file, quant)
    types = _types(file)
    kept = {"token_embd.weight"} | (set() if tied else {"output.weight"})
    assert {n for n, t in types.items() if t == "Q8_0"} == kept
    assert {t for n, t in types.items() if n not in kept} == {quant.upper()}
    assert ("output.weight" in types) is not tied  # a tied head is written once
    # bits over all matrices: the q8_0 ones raise it above the 4-bit layers' 4.5 / 5.0
    assert {"q4_0": 4.5, "q4_1": 5.0}[quant] < bits < 8.5

    # transformers dequantizes exactly what round_like_gguf computes with
    read = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=torch.float32
    )
    same = round_like_gguf(AutoModelForCausalLM.from_pretrained(str(src)), quant)
    mine = dict(same.named_parameters())
    for name, param in read.named_parameters():
        assert torch.equal(param, mine[name]), name


def test_f16_and_q8_0_exports_are_one_type(tiny: Path, tmp_path: Path) -> None:
    from lmops.deploy.gguf import write_gguf

    for quant in ("f16", "q8_0"):
        write_gguf(tiny, tmp_path / f"m.{quant}.gguf", quant)
        assert set(_types(tmp_path / f"m.{quant}.gguf").values()) == {quant.upper()}


def test_the_export_says_what_it_kept_at_q8_0(cli: Any, tiny: Path) -> None:
    import json

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "export", "tiny", "--quant", "q4_1", "-o", "t4")
    assert r.code == 0, r.err
    assert "(gguf q4_1, token_embd.weight at q8_0, " in r.out, r.out
    r = cli("deploy", "export", "tiny", "--quant", "q4_0", "-o", "t40", "--json")
    assert json.loads(r.out)["kept_q8_0"] == ["token_embd.weight"]
    r = cli("assets", "show", "t40", "--json")
    assert '"kept_q8_0": [' in r.out
    r = cli("deploy", "export", "tiny", "--quant", "q8_0", "-o", "t8")
    assert "at q8_0" not in r.out


GENERAL = {
    "general.type": "model",
    "general.name": "Tiny 2L Instruct",
    "general.organization": "Example-Org",
    "general.finetune": "instruct",
    "general.basename": "tiny",
    "general.size_label": "170K",
    "general.license": "apache-2.0",
    "general.languages": ["en", "zh"],
    "general.base_model.count": 1,
    "general.base_model.0.name": "Tiny 2L",
}


def _fields(file: Path) -> dict[str, tuple[Any, list[int]]]:
    """Every general.* field of ``file``: (value, GGUF value types)."""
    import gguf

    return {
        k: (f.contents(), [int(t) for t in f.types])
        for k, f in gguf.GGUFReader(str(file)).fields.items()
        if k.startswith("general.")
    }


def test_import_then_export_keeps_the_source_files_general_metadata(
    cli: Any, tiny: Path, tmp_path: Path
) -> None:
    from lmops.deploy.gguf import write_gguf
    from lmops.store import Store

    source = tmp_path / "src.q8_0.gguf"
    write_gguf(tiny, source, "q8_0", general=GENERAL)
    before = _fields(source)
    assert {k: v for k, (v, _) in before.items() if k in GENERAL} == GENERAL
    assert cli("assets", "import", "gguf", str(source), "--name", "imp").code == 0
    r = cli("deploy", "export", "imp", "--quant", "q4_1", "-o", "imp-q4")
    assert r.code == 0, r.err
    store = Store()
    try:
        out = Path(store.assets.path("imp-q4"))
    finally:
        store.close()
    after = _fields(out)
    assert after["general.file_type"][0] != before["general.file_type"][0]  # q4_1's own
    # every other general.* field, with its GGUF types (strings, string arrays, uint32)
    assert {k: v for k, v in after.items() if k != "general.file_type"} == {
        k: v for k, v in before.items() if k != "general.file_type"
    }


def test_an_older_import_takes_the_metadata_from_its_lineage_file(
    store: Any, tiny: Path, tmp_path: Path
) -> None:
    """A model imported before lmops kept ``gguf_general`` in its metadata: the GGUF its
    lineage names is read (while it holds the imported bytes)."""
    import shutil

    from lmops.deploy.gguf import export_gguf, write_gguf

    source = tmp_path / "src.f16.gguf"
    write_gguf(tiny, source, "f16", general=GENERAL)
    folder = tmp_path / "hf"
    shutil.copytree(tiny, folder)
    inputs = store.assets.record_inputs([(source, "gguf")])
    store.assets.register("model", "old", folder, metadata={"imported_from": "gguf"}, inputs=inputs)
    res = export_gguf(store, "old", quant="q8_0", output="old-q8")
    assert _fields(res.path)["general.license"][0] == "apache-2.0"
    # a model made here (not imported) carries no file's license or name
    store.assets.register("model", "mine", folder)
    res = export_gguf(store, "mine", quant="q8_0", output="mine-q8")
    fields = _fields(res.path)
    assert "general.license" not in fields and fields["general.name"][0] == "mine-q8"


def test_a_pipeline_export_step_says_it_too(tiny: Path, tmp_path: Path, store: Any) -> None:
    import yaml

    from lmops.pipelines import load_pipeline, run_pipeline

    steps = {
        "base": {"type": "register", "kind": "model", "path": str(tiny), "name": "tiny"},
        "gguf": {
            "type": "export",
            "model": "${steps.base.output}",
            "output": "g4",
            "quant": "q4_0",
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "deploy", "steps": steps}, sort_keys=False))
    run = run_pipeline(load_pipeline(path), store, progress=False)
    assert run.ok, run.failed
    assert run.steps["gguf"].summary.startswith("g4:1: gguf q4_0, token_embd.weight at q8_0, ")
