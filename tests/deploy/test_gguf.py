"""GGUF in and out (issue #15 items 1-2): an exported file is read back by transformers' own
GGUF loader (an independent reader) with the same tokenizer, chat template and greedy
tokens; f16 logits match the source (so the rotary row permutation is right); a GGUF is
imported as a model folder with the file's digest in lineage; bad input is one line and
registers nothing."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.tiny import make_model, make_tokenizer

PROMPTS = ["The quick brown fox", "Machine learning models", "今天天气很好"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=3)


@pytest.fixture(scope="module")
def sharp(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its q/k weights x10. The random init's attention is near uniform,
    so even an unpermuted (wrong rotary order) file gives the same logits within 1e-2; here
    it moves them by 0.39-0.62 while a right file stays within 1e-2 in llama.cpp."""
    import shutil

    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharp") / "m"
    shutil.copytree(tiny, out)
    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(10.0)
    model.save_pretrained(str(out))
    return out


def _greedy(model: Any, ids: list[int], n: int = 32) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return list(out[0, len(ids) :].tolist())


def _read_back(file: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=torch.float32
    )
    return model.eval(), AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)


def test_export_reads_back_in_transformers_with_same_tokens(cli: Any, tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.store import Store

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    src = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny))
    sizes = {}
    for quant, bits in (("f16", 16.0), ("q8_0", 8.5), ("q4_0", 4.5), ("q4_1", 5.0)):
        r = cli(
            "deploy", "export", "tiny", "--format", "gguf", "--quant", quant, "-o", f"t-{quant}"
        )
        assert r.code == 0, r.err
        store = Store()
        try:
            v = store.assets.resolve(f"t-{quant}")
            assert v.metadata["format"] == "gguf" and v.metadata["quant"] == quant
            assert v.metadata["bits_per_weight"] == pytest.approx(bits)
            parents = {(e.parent, e.role) for e in store.assets.lineage(v.ref).upstream}
            assert ("tiny:1", "source") in parents
            file = Path(store.assets.path(v.ref))
        finally:
            store.close()
        sizes[quant] = file.stat().st_size
        model, gtok = _read_back(file)
        assert gtok.chat_template == tok.chat_template
        for p in PROMPTS:
            ids = tok(p)["input_ids"]
            assert gtok(p)["input_ids"] == ids  # the tokenizer survives the trip
            if quant in ("f16", "q8_0"):
                assert _greedy(model, ids) == _greedy(src, ids), (quant, p)
        if quant == "f16":  # weights in llama.cpp's rotary order, undone by the reader
            x = torch.tensor([tok(PROMPTS[0])["input_ids"]])
            with torch.no_grad():
                diff = (model(x).logits - src(x).logits).abs().max().item()
            assert diff < 1e-2
    assert sizes["q8_0"] < 0.6 * sizes["f16"] and sizes["q4_0"] < sizes["q8_0"]


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_1"])
def test_round_like_gguf_is_the_files_weights(sharp: Path, tmp_path: Path, quant: str) -> None:
    """What transformers dequantizes from the file is round_like_gguf's model, weight for
    weight, and (attention sharp enough that the rotary order shows) gives its logits: the
    reference the llama.cpp test holds llama.cpp to is the file's content."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.deploy.gguf import round_like_gguf, write_gguf

    file = tmp_path / f"s.{quant}.gguf"
    write_gguf(sharp, file, quant)
    read, _ = _read_back(file)
    same = round_like_gguf(
        AutoModelForCausalLM.from_pretrained(str(sharp), dtype=torch.float32).eval(), quant
    )
    mine = dict(same.named_parameters())
    for name, param in read.named_parameters():
        assert torch.equal(param, mine[name]), (quant, name)
    x = torch.tensor([AutoTokenizer.from_pretrained(str(sharp))(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        assert (read(x).logits - same(x).logits).abs().max().item() < 1e-4


def test_import_gguf_is_a_model_folder_with_the_file_in_lineage(
    cli: Any, tiny: Path, tmp_path: Path
) -> None:
    from lmops.deploy.gguf import write_gguf
    from lmops.models.loading import load_causal_lm, resolve_local
    from lmops.store import Store

    file = tmp_path / "tiny.f16.gguf"
    write_gguf(tiny, file, "f16")
    r = cli("assets", "import", "gguf", str(file), "--name", "imported")
    assert r.code == 0, r.err
    store = Store()
    try:
        v = store.assets.resolve("imported")
        assert v.kind == "model"
        assert v.metadata["gguf_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        edges = store.assets.lineage(v.ref).upstream
        gguf_edges = [e for e in edges if e.role == "gguf"]
        assert len(gguf_edges) == 1
        ext = store.assets.get(gguf_edges[0].parent)
        assert ext.metadata["path"] == str(file.resolve())
        assert v.metadata["gguf_sha256"] in str(ext.digest)
        folder, _ = resolve_local("imported", store, kind="model")  # passes the folder check
    finally:
        store.close()
    model = load_causal_lm(folder)
    src = load_causal_lm(tiny)
    x = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        assert (model(x).logits - src(x).logits).abs().max().item() < 1e-2


def test_bad_input_is_one_line_and_registers_nothing(cli: Any, tiny: Path, tmp_path: Path) -> None:
    import gguf

    from lmops.deploy.gguf import write_gguf
    from lmops.store import Store

    file = tmp_path / "m.gguf"
    write_gguf(tiny, file, "q8_0")
    r = cli("assets", "register", "model", "bare", str(file))
    assert r.code == 2 and "lmops assets import gguf" in r.err and r.err.count("\n") == 1

    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    r = cli("deploy", "export", "tiny", "--quant", "q5_k", "-o", "x")
    assert r.code == 2 and "f16, q8_0, q4_0, q4_1" in r.err and r.err.count("\n") == 1

    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (notok / f).write_bytes((tiny / f).read_bytes())
    r = cli("deploy", "export", str(notok), "--quant", "q8_0", "-o", "x")
    assert r.code == 2 and "has no tokenizer" in r.err and r.err.count("\n") == 1

    short = tmp_path / "short"  # more tokens than embedding rows: llama.cpp would refuse it
    short.mkdir()
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (short / f).write_bytes((tiny / f).read_bytes())
    cfg = json.loads((tiny / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "vocab_size": 300}))
    r = cli("deploy", "export", str(short), "--quant", "q8_0", "-o", "x")
    assert r.code == 2 and "past the model's vocab_size 300" in r.err and r.err.count("\n") == 1

    other = tmp_path / "other"  # an architecture the writer does not do
    other.mkdir()
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(
        str(other)
    )
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (other / f).write_bytes((tiny / f).read_bytes())
    r = cli("deploy", "export", str(other), "--quant", "q8_0", "-o", "x")
    assert r.code == 2 and "model_type 'gpt2'" in r.err and r.err.count("\n") == 1

    alien = tmp_path / "alien.gguf"  # a GGUF of an architecture transformers cannot read
    w = gguf.GGUFWriter(str(alien), "rwkv9")
    w.add_tensor("x.weight", torch.zeros(4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("assets", "import", "gguf", str(alien), "--name", "alien")
    assert r.code == 2 and "'rwkv9' is not supported" in r.err and r.err.count("\n") == 1
    text = tmp_path / "not.gguf"
    text.write_text("hello")
    r = cli("assets", "import", "gguf", str(text), "--name", "alien")
    assert r.code == 2 and "not a GGUF file" in r.err

    store = Store()
    try:
        names = {a.name for a in store.assets.list("model")}
    finally:
        store.close()
    assert names == {"tiny"}


def _argmax_run(model: Any, ids: list[int], n: int = 32) -> tuple[list[int], list[float]]:
    """Plain greedy decoding for ``n`` steps (no end-of-text stop or suppression, as
    llama.cpp's argmax below): the tokens and each step's top-1 minus top-2 logit."""
    toks: list[int] = []
    margins: list[float] = []
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            top = torch.topk(out.logits[0, -1].float(), 2)
            toks.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            out = model(torch.tensor([[toks[-1]]]), cache=out.cache, use_cache=True)
    return toks, margins


# llama.cpp's own rounding: fp16 activations beside F16 weights, 8-bit blocks beside quantized
# ones (ggml's vec_dot types), an fp16 KV cache. Measured on `sharp` (logits of magnitude ~1):
# at most 5.8e-4 (f16) and 1.0e-2 (q8_0, q4_0, q4_1) of logit; the same file without the
# rotary row permutation is off by 0.39-0.62.
LOGIT_TOL = {"f16": 3e-3, "q8_0": 3e-2, "q4_0": 3e-2, "q4_1": 3e-2}


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install llama-cpp-python, or the "
    "lmops[llamacpp] extra; it compiles llama.cpp for ~30 min) - it would check that "
    "llama.cpp reads every export and greedy-generates lmops's tokens",
)
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_1"])
def test_llama_cpp_reads_the_export(sharp: Path, tmp_path: Path, quant: str) -> None:
    """llama.cpp (an independent reader and engine) loads the file, tokenizes the prompts as
    lmops does, computes lmops's logits (lmops using the file's rounded weights) within its
    own activation rounding, and greedy-generates the same 32 tokens. A run may part only at
    a float tie: a step where lmops's top two logits are closer than that rounding (the
    margins are in the failure message)."""
    import llama_cpp
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmops.deploy.gguf import llama_cpp_greedy, round_like_gguf, write_gguf

    tol = LOGIT_TOL[quant]
    tok = AutoTokenizer.from_pretrained(str(sharp))
    src = AutoModelForCausalLM.from_pretrained(str(sharp), dtype=torch.float32).eval()
    same = round_like_gguf(
        AutoModelForCausalLM.from_pretrained(str(sharp), dtype=torch.float32).eval(), quant
    )
    file = tmp_path / f"t.{quant}.gguf"
    write_gguf(sharp, file, quant)
    llm = llama_cpp.Llama(
        model_path=str(file), n_ctx=128, n_threads=1, logits_all=True, verbose=False
    )
    try:
        assert llm.n_vocab() == len(tok)
        for p in PROMPTS:
            ids = tok(p)["input_ids"]
            assert llm.tokenize(p.encode(), add_bos=False, special=False) == ids, p
            want, want_margins = _argmax_run(same, ids)
            seq = ids + want  # the same 32 steps, teacher-forced: one logit row per step
            llm.reset()
            llm.eval(seq)
            rows = slice(len(ids) - 1, len(seq) - 1)
            with torch.no_grad():
                ref = same(torch.tensor([seq])).logits[0, rows].numpy()
            diff = float(np.abs(np.asarray(llm.scores[rows]) - ref).max())
            assert diff < tol, (quant, p, diff)
            got, margins = llama_cpp_greedy(llm, ids, 32)
            first_tie = next((i for i, m in enumerate(want_margins) if m < tol), 32)
            parted = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), 32)
            assert parted >= first_tie, (quant, p, parted, margins, want_margins)
            if quant in ("f16", "q8_0"):
                assert got == _argmax_run(src, ids)[0], (quant, p)
    finally:
        llm.close()


def test_smollm_digit_splitting_survives_export_and_import(
    cli: Any, tiny: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    from lmops.deploy.gguf import write_gguf
    from lmops.store import Store

    digits = tmp_path / "digits"
    shutil.copytree(tiny, digits)
    tj = json.loads((digits / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": True,
            },
        ],
    }
    (digits / "tokenizer.json").write_text(json.dumps(tj))
    file = tmp_path / "d.gguf"
    write_gguf(digits, file, "f16")  # written as llama.cpp's "smollm" pre-tokenizer
    assert cli("assets", "import", "gguf", str(file), "--name", "d").code == 0
    store = Store()
    try:
        folder = Path(store.assets.path("d"))
    finally:
        store.close()
    src = AutoTokenizer.from_pretrained(str(digits))
    got = AutoTokenizer.from_pretrained(str(folder))
    text = "12+34=46. 50+25=75."
    assert got(text)["input_ids"] == src(text)["input_ids"]
    assert len(src(text)["input_ids"]) > len(
        AutoTokenizer.from_pretrained(str(tiny))(text)["input_ids"]
    )
