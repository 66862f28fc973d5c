"""An encoder-only model behind the gateway, with the official openai client: its vectors
are the model's (special tokens read, pooled as its sentence-transformers config says, the
tokens it read counted), generation on it is a 400 naming the deployment (said at start-up
too), and a model failing while generating logs its traceback on the server only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.serve.deployments import DeploymentSpec, preflight
from tests.models.test_encoder import hidden, ids_of, unit
from tests.models.tiny_bert import make_tiny_bert
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


@pytest.fixture
def gateway(tmp_path: Path, store: Any) -> Iterator[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from lmops.serve.server import gateway_app

    bert = make_tiny_bert(tmp_path / "bert", max_seq_length=None)
    llama = make_model(tmp_path / "llama", make_tokenizer(tmp_path / "tok"))
    specs = [
        DeploymentSpec(name="emb", model=str(bert), guardrails={"preset": "off"}),
        DeploymentSpec(name="chat", model=str(llama), guardrails={"preset": "off"}),
    ]
    _, secret = store.keys.create("t")
    app = gateway_app(specs, store)
    with TestClient(app) as tc:
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
        )
        yield {"client": client, "app": app, "bert": bert, "specs": specs, "store": store,
               "http": tc}  # fmt: skip


def test_embeddings_are_the_models_vectors(gateway: dict[str, Any]) -> None:
    import torch

    texts = ["the quick brown fox", "hello world how are you"]
    r = gateway["client"].embeddings.create(model="emb", input=texts)
    for text, row in zip(texts, r.data, strict=True):
        want = unit(hidden(gateway["bert"], ids_of(text)).mean(0))  # [CLS] ... [SEP], mean
        assert torch.tensor(row.embedding) == pytest.approx(want, abs=1e-5)
    assert r.usage.prompt_tokens == len(ids_of(texts[0])) + len(ids_of(texts[1]))  # 6 + 7


def test_metrics_scrape_with_an_encoder_deployment(gateway: dict[str, Any]) -> None:
    # an encoder has no queue: its gauges read 0 (the scrape failed on it)
    gateway["client"].embeddings.create(model="emb", input="hello")
    r = gateway["http"].get("/metrics")
    assert r.status_code == 200, r.text
    assert 'lmops_queue_depth{deployment="emb"} 0.0' in r.text
    assert 'lmops_requests_total{deployment="emb",status="200"} 1.0' in r.text


def test_generation_on_an_encoder_is_a_400_naming_the_deployment(
    gateway: dict[str, Any],
) -> None:
    c = gateway["client"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    err = e.value.body
    assert e.value.status_code == 400 and err["code"] == "unsupported_endpoint"
    assert "deployment 'emb' serves embeddings only" in err["message"]
    assert "BertModel" in err["message"] and err["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="serves embeddings only"):
        c.completions.create(model="emb", prompt="hi")
    cards = {m.id: m.model_extra["lmops"] for m in c.models.list().data}
    assert cards["emb"]["endpoints"] == ["embeddings"]
    assert cards["chat"]["endpoints"] == ["chat", "completion", "embeddings"]
    # and said before serving starts
    notes = preflight(gateway["specs"], gateway["store"])
    assert len(notes) == 1 and notes[0].startswith("deployment 'emb' serves embeddings only")
    assert "mean pooling, normalised (sentence-transformers config)" in notes[0]


def test_an_engine_failure_logs_its_traceback_on_the_server_only(
    gateway: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    dep = gateway["app"].state.gateway.registry.deployments["chat"]
    model = dep.targets[0][0].engine.model

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("weights on fire")

    model.forward = broken
    with (
        caplog.at_level(logging.ERROR, logger="lmops.serve"),
        pytest.raises(openai.InternalServerError) as e,
    ):
        gateway["client"].chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert e.value.body["code"] == "engine_error"
    assert "weights on fire" in e.value.body["message"]
    assert "Traceback" not in e.value.body["message"]
    logged = [r for r in caplog.records if r.exc_info and "weights on fire" in str(r.exc_info[1])]
    assert len(logged) == 1 and logged[0].name == "lmops.serve"
    assert "chatcmpl-" in logged[0].getMessage()
