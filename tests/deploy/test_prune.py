"""Pruning (issue #15 item 5): Wanda zeroes exactly the weights an independent computation
of |W| * ||X|| picks; magnitude the smallest |W| per row; dropping layers by block
influence removes the layers that do nothing (logits unchanged); head pruning removes the
KV groups that contribute nothing (logits unchanged) and the result reloads; width pruning
removes the MLP neurons that never fire first (logits unchanged, the config reloads, layers
can go too) and its refit takes over a redundant neuron's output; lineage to the model and
the calibration data; bad input is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lmops.deploy.prune import PruneSpec, prune
from tests.deploy.conftest import greedy_ids
from tests.train.tiny import SENTENCES


def llama(folder: Path, tok_dir: Path, layers: int = 4, seed: int = 0) -> Any:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # weights large enough that layers matter (default init is tiny)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model, tok


def save(model: Any, tok: Any, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def logits(folder_or_model: Any, ids: Any) -> Any:
    from transformers import AutoModelForCausalLM

    m = folder_or_model
    if isinstance(m, Path):
        m = AutoModelForCausalLM.from_pretrained(str(m), dtype=torch.float32)
    with torch.no_grad():
        return m.eval()(input_ids=ids).logits


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(SENTENCES))
    return path


def test_wanda_zeroes_what_the_formula_picks(
    store: Any, tok_dir: Path, tmp_path: Path, calib: Path
) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=2)
    src = save(model, tok, tmp_path / "m")
    store.assets.register("model", "base", src)
    r = prune(
        PruneSpec(model="base", output="base-wanda", method="wanda", sparsity=0.5,
                  calibration=str(calib), samples=4, seq_len=32),
        store=store,
    )  # fmt: skip
    assert 0.49 < r.sparsity <= 0.5 and r.params_after == r.params_before
    out = store.assets.path(r.ref)
    from transformers import AutoModelForCausalLM

    pruned = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    # the reference: the inputs of layer 0's q_proj are the normed embeddings of the same
    # calibration tokens (packed as the job packs them)
    ids: list[int] = []
    for text in [calib.read_text()]:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    blocks = torch.tensor(ids[: 4 * 32]).view(4, 32)
    with torch.no_grad():
        x = model.model.layers[0].input_layernorm(model.model.embed_tokens(blocks))
    norm = x.reshape(-1, 64).norm(dim=0)
    w = model.model.layers[0].self_attn.q_proj.weight.detach()
    want_zero = torch.zeros_like(w, dtype=torch.bool)
    idx = torch.topk(w.abs() * norm[None, :], 32, dim=1, largest=False).indices
    want_zero.scatter_(1, idx, True)
    got = pruned.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.equal(got == 0, want_zero)
    assert torch.equal(got[~want_zero], w[~want_zero])
    # magnitude picks differ from Wanda's somewhere (the activations matter)
    mag = torch.zeros_like(want_zero)
    mag.scatter_(1, torch.topk(w.abs(), 32, dim=1, largest=False).indices, True)
    assert not torch.equal(mag, want_zero)
    parents = {(e.parent, e.role) for e in store.assets.lineage(r.ref).upstream}
    assert ("base:1", "base_model") in parents
    assert any(role == "calibration" for _, role in parents), parents


def test_magnitude_rows(store: Any, tok_dir: Path, tmp_path: Path) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=2)
    src = save(model, tok, tmp_path / "m")
    r = prune(
        PruneSpec(model=str(src), output="mag", method="magnitude", sparsity=0.25), store=store
    )
    from transformers import AutoModelForCausalLM

    pruned = AutoModelForCausalLM.from_pretrained(str(store.assets.path(r.ref)))
    for i in range(2):
        w = model.model.layers[i].mlp.down_proj.weight.detach()
        got = pruned.model.layers[i].mlp.down_proj.weight.detach()
        k = w.shape[1] // 4
        assert torch.equal((got == 0).sum(1), torch.full((w.shape[0],), k))
        # every zeroed weight is no larger than every kept one in its row
        kept_min = torch.where(got == 0, torch.inf, w.abs()).min(1).values
        dropped_max = torch.where(got == 0, w.abs(), -torch.inf).max(1).values
        assert bool((dropped_max <= kept_min).all())
    # the embeddings and LM head are not pruned
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_drop_layers_that_do_nothing(
    store: Any, tok_dir: Path, tmp_path: Path, calib: Path
) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=4)
    with torch.no_grad():  # layers 1 and 2 add nothing to the residual stream
        for i in (1, 2):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    src = save(model, tok, tmp_path / "m")
    r = prune(
        PruneSpec(model=str(src), output="short", method="layers", drop=2,
                  calibration=str(calib), samples=4, seq_len=32),
        store=store,
    )  # fmt: skip
    assert r.dropped == [1, 2]
    out = store.assets.path(r.ref)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    ids = torch.tensor([[5, 17, 42, 9, 11, 3]])
    torch.testing.assert_close(logits(out, ids), logits(src, ids), atol=1e-5, rtol=1e-5)
    # evenly spaced without calibration: the first and the last stay
    r = prune(PruneSpec(model=str(src), output="even", method="layers", drop=2), store=store)
    assert r.dropped == [1, 2] and r.params_after < r.params_before


def test_prune_heads_that_do_nothing(
    store: Any, tok_dir: Path, tmp_path: Path, calib: Path
) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=2)
    with torch.no_grad():  # KV group 0 (query heads 0, 1) writes nothing in either layer
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, : 2 * 16] = 0
    src = save(model, tok, tmp_path / "m")
    r = prune(
        PruneSpec(model=str(src), output="narrow", method="heads", keep_kv_heads=1,
                  calibration=str(calib), samples=4, seq_len=32),
        store=store,
    )  # fmt: skip
    out = store.assets.path(r.ref)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (2, 1, 16)
    ids = torch.tensor([[5, 17, 42, 9, 11, 3, 8, 8]])
    torch.testing.assert_close(logits(out, ids), logits(src, ids), atol=1e-5, rtol=1e-5)
    # 4 * 64 * 16 * 2 (q, o) + 2 * 64 * 16 (k, v) per layer gone
    assert r.params_before - r.params_after == 2 * (2 * 2 * 64 * 16 + 2 * 64 * 16)


def test_bad_input_one_line(cli: Any, tok_dir: Path, tmp_path: Path) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=2)
    src = save(model, tok, tmp_path / "m")
    r = cli("deploy", "prune", str(src), "--method", "wanda", "--sparsity", "0.5", "-o", "x")
    assert r.code == 2 and "needs --calibration" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("deploy", "prune", str(src), "--method", "layers", "--drop", "2", "-o", "x")
    assert r.code == 2 and "keep at least one" in r.err
    r = cli("deploy", "prune", str(src), "--method", "heads", "--keep-kv-heads", "2", "-o", "x")
    assert r.code == 2 and "between 1 and 1" in r.err
    r = cli("deploy", "prune", str(src), "--method", "channels", "--calibration", "x", "-o", "x")
    assert r.code == 2 and "needs --keep-ratio" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("deploy", "prune", str(src), "--method", "channels", "--keep-ratio", "0.5", "-o", "x")
    assert r.code == 2 and "needs --calibration" in r.err
    names = [a["name"] for a in json.loads(cli("assets", "list", "--json").out)]
    assert "x" not in names  # nothing registered (only the local input, by reference)


def _engine_greedy(folder: Path, ids: list[int], n: int = 4) -> list[int]:
    from lmops.models.engine import Engine

    engine = Engine(folder, device="cpu")
    try:
        return greedy_ids(engine, ids, n)
    finally:
        engine.close()


def test_channels_keep_the_active_neurons(
    store: Any, cli: Any, tok_dir: Path, tmp_path: Path, calib: Path
) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=2)
    with torch.no_grad():  # neurons 3 and 50 never fire on any input, in both layers
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[[3, 50]] = 0
    src = save(model, tok, tmp_path / "m")
    r = prune(
        PruneSpec(model=str(src), output="thin", method="channels", keep_ratio=126 / 128,
                  calibration=str(calib), samples=4, seq_len=32),
        store=store,
    )  # fmt: skip
    assert r.intermediate_size == 126
    # gate and up rows and down columns of 2 neurons in 2 layers
    assert r.params_before - r.params_after == 2 * 2 * 3 * 64
    out = store.assets.path(r.ref)
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 126
    from transformers import AutoModelForCausalLM

    pruned = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    for before, after in zip(model.model.layers, pruned.model.layers, strict=True):
        kept = [i for i in range(128) if i not in (3, 50)]
        assert after.mlp.gate_proj.weight.shape == (126, 64)
        assert after.mlp.down_proj.weight.shape == (64, 126)
        assert torch.equal(after.mlp.gate_proj.weight, before.mlp.gate_proj.weight[kept])
        assert torch.equal(after.mlp.up_proj.weight, before.mlp.up_proj.weight[kept])
    ids = torch.tensor([[5, 17, 42, 9, 11, 3, 8, 8]])
    torch.testing.assert_close(logits(out, ids), logits(src, ids), atol=1e-5, rtol=1e-5)
    parents = {e.role for e in store.assets.lineage(r.ref).upstream}
    assert {"base_model", "calibration"} <= parents
    # the built-in engine serves the narrower model: the unpruned model's greedy tokens
    want = _engine_greedy(src, [5, 17, 42, 9])
    assert len(want) >= 2 and _engine_greedy(out, [5, 17, 42, 9]) == want
    # the CLI, with layers dropped first (depth + width): 4 layers -> 3, 128 neurons -> 64
    deep, tok = llama(tmp_path / "d", tok_dir, layers=4)
    src = save(deep, tok, tmp_path / "d")
    res = cli("deploy", "prune", str(src), "--method", "channels", "--keep-ratio", "0.5",
              "--drop", "1", "--calibration", str(calib), "--samples", "4", "--seq-len", "32",
              "-o", "mix", "--json")  # fmt: skip
    assert res.code == 0, res.err
    got = json.loads(res.out)
    assert got["intermediate_size"] == 64 and len(got["dropped"]) == 1
    assert got["params_before"] - got["params_after"] == (64 * 128 * 3 + 2 * 64 * 64 + 2 * 64 * 32
                                                          + 2 * 64) + 3 * 64 * 64 * 3  # fmt: skip
    out = store.assets.path(got["ref"])
    mix = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert (len(mix.model.layers), mix.config.intermediate_size) == (3, 64)
    assert torch.isfinite(logits(out, ids)).all()


def test_channels_refit_takes_over_the_removed_neuron(
    store: Any, tok_dir: Path, tmp_path: Path, calib: Path
) -> None:
    model, tok = llama(tmp_path / "m", tok_dir, layers=2)
    with torch.no_grad():  # neuron 0 fires as 1 % of neuron 1: the weakest, and redundant
        for layer in model.model.layers:
            mlp = layer.mlp
            mlp.gate_proj.weight[0] = mlp.gate_proj.weight[1]
            mlp.up_proj.weight[0] = 0.01 * mlp.up_proj.weight[1]
            mlp.down_proj.weight[:, 0] = 50 * mlp.down_proj.weight[:, 0]  # but it matters
    src = save(model, tok, tmp_path / "m")
    ids = torch.tensor([[5, 17, 42, 9, 11, 3, 8, 8]])
    ref = logits(src, ids)
    errors = {}
    for refit in (False, True):
        r = prune(
            PruneSpec(model=str(src), output=f"refit-{refit}", method="channels",
                      keep_ratio=127 / 128, reconstruct=refit, calibration=str(calib),
                      samples=24, seq_len=32),
            store=store,
        )  # fmt: skip
        out = store.assets.path(r.ref)
        # neuron 0 went: the kept gate rows are neurons 1..127
        pruned = logits(out, ids)
        errors[refit] = float((pruned - ref).abs().max())
    assert errors[False] > 1e-2, errors
    assert errors[True] < 0.1 * errors[False], errors
