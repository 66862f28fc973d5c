"""The prompt shapes of OpenAI's completions and embeddings that the gateway does not serve
(several prompts in one request, token ids) are refused in one line that says what it
does serve, through uvicorn on 127.0.0.1 and the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lmops.serve.fake import serve_app

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


@pytest.fixture
def c(store: Any) -> Iterator[Any]:
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import gateway_app

    _, secret = store.keys.create("t")
    app = gateway_app([DeploymentSpec(name="fake", fake={"tokens": 3})], store)
    with serve_app(app, "gateway") as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)


@pytest.mark.parametrize(
    ("prompt", "shape"),
    [(["a", "b"], "2 prompts"), ([1, 2, 3], "a prompt of token ids"),
     ([[1, 2], [3]], "2 prompt(s) of token ids")],
)  # fmt: skip
def test_unserved_completion_prompts_are_one_clear_400(c: Any, prompt: Any, shape: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="fake", prompt=prompt, max_tokens=2)
    assert e.value.body["param"] == "prompt" and e.value.body["message"] == (
        "prompt: this gateway takes one text prompt per request (a string, or a list of one "
        f"string), not {shape}; send each prompt as a request of its own"
    )


def test_one_prompt_in_a_list_and_text_inputs_are_served(c: Any) -> None:
    assert c.completions.create(model="fake", prompt=["a"], max_tokens=2).choices[0].text
    assert len(c.embeddings.create(model="fake", input=["a", "b"]).data) == 2
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="fake", input=[[1, 2, 3]])
    assert e.value.body["message"] == (
        "input: this gateway embeds text (a string or a list of strings), not 1 prompt(s) "
        "of token ids"
    )
