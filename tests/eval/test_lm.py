"""HFEvalModel's fast scoring paths (shared prefix run once, continuations on a copied KV
cache, logits only where needed) give the log-likelihoods and greedy flags of the plain
computation: one full forward per request and a log-softmax over every position."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.eval import lm as lm_module
from lmops.eval.lm import HFEvalModel
from tests.train.tiny import make_model, make_tokenizer

DESCRIPTION = "The following are questions about the weather and the quick brown fox.\n\n"
QUESTIONS = ["今天天气", "The quick brown fox", "2 + 2 =", "Machine learning needs", "Hello"]
CHOICES = [" A", " very good", " 很好，我们去公园散步吧。", " jumps over the lazy dog.", " 4"]


def requests(description: str) -> list[tuple[str, str]]:
    return [(f"{description}{q}\nAnswer:", c) for q in QUESTIONS for c in CHOICES]


def reference(lm: HFEvalModel, reqs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    import torch

    out = []
    for context, continuation in reqs:
        ctx, cont = lm.encode_pair(context, continuation)
        # as lm-eval: the last max_length + 1 tokens, the last one not fed
        whole = (ctx + cont)[-(lm.max_length + 1) :]
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([whole[:-1]])).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)[-len(cont) :]  # (n, V)
        target = torch.tensor(cont)
        out.append(
            (
                float(logprobs.gather(1, target[:, None]).sum()),
                bool((logprobs.argmax(-1) == target).all()),
            )
        )
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lm")
    return make_model(tmp / "model", make_tokenizer(tmp / "tok"), seed=5)


@pytest.mark.parametrize("description", [DESCRIPTION, ""], ids=["shared-prefix", "no-prefix"])
@pytest.mark.parametrize("reusable_cache", [True, False])
@pytest.mark.parametrize("keeps_logits", [True, False])
def test_fast_paths_match_plain_scoring(
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    description: str,
    reusable_cache: bool,
    keeps_logits: bool,
) -> None:
    lm = HFEvalModel(model_dir, device="cpu", batch_size=2)
    lm._keeps_logits = keeps_logits  # False: the model returns every position's logits
    if not reusable_cache:  # e.g. a sliding-window cache: contexts are fed again
        monkeypatch.setattr(lm_module, "_plain_dynamic_cache", lambda cache: False)
    reqs = requests(description)
    ours, expected = lm.loglikelihood(reqs), reference(lm, reqs)
    for (a, ga), (b, gb) in zip(ours, expected, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb


def test_shared_prefix_is_found_and_used(model_dir: Path) -> None:
    lm = HFEvalModel(model_dir, device="cpu", batch_size=2)
    contexts = [tuple(lm.encode_pair(c, x)[0]) for c, x in requests(DESCRIPTION)]
    shared = lm._shared_prefix(sorted(set(contexts), key=len, reverse=True))
    assert shared is not None
    n, _cache = shared
    assert n >= len(lm._tok(DESCRIPTION.rstrip())) - 1
    assert lm._shared_prefix(sorted({tuple(lm._tok(q)) for q in QUESTIONS})) is None


def test_truncated_requests_match_lm_eval_windows(model_dir: Path) -> None:
    lm = HFEvalModel(model_dir, device="cpu", batch_size=3, max_length=40)
    reqs = requests(DESCRIPTION)[:10]
    ours, expected = lm.loglikelihood(reqs), reference(lm, reqs)
    assert lm.truncated > 0
    for (a, ga), (b, gb) in zip(ours, expected, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb
