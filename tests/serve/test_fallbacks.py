"""Retries and fallbacks of the gateway (``retries:``, ``fallbacks:`` on a deployment):
the file's checks at load time, and, through ``lmops serve`` (a real uvicorn on
127.0.0.1) and the official ``openai`` client, upstreams played by the in-package fake
server failing on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.serve.deployments import DeploymentSpec, Registry, load_deployments


def _load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "deps.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_deployments(path)
    return str(e.value).replace(str(path), "deps.yaml")


def test_an_unknown_fallback_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    said = _load(
        tmp_path,
        "deployments:\n"
        "  - name: chat\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks: [bakup]\n"
        "  - name: backup\n"
        "    fake: {tokens: 3}\n",
    )
    assert said == (
        "deps.yaml:4: deployments[0].fallbacks[0]: unknown deployment 'bakup'; "
        "did you mean 'backup'?"
    )


def test_a_fallback_cycle_or_itself_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    said = _load(
        tmp_path,
        "deployments:\n"
        "  - name: chat\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks: [backup]\n"
        "  - name: backup\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks:\n"
        "      - third\n"
        "  - name: third\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks: [chat]\n",
    )
    assert said == (
        "deps.yaml:11: deployments[2].fallbacks[0]: fallbacks form a cycle: "
        "chat -> backup -> third -> chat; remove one of them"
    )
    said = _load(
        tmp_path,
        "deployments:\n  - name: chat\n    fake: {tokens: 3}\n    fallbacks: [chat]\n",
    )
    assert said == (
        "deps.yaml:4: deployments[0].fallbacks[0]: deployment 'chat' falls back to itself; "
        "name another one"
    )
    said = _load(
        tmp_path,
        "deployments:\n  - name: chat\n    fake: {tokens: 3}\n    retries: -1\n",
    )
    assert said == "deps.yaml:4: deployments[0].retries: Input should be greater than or equal to 0"


def test_specs_built_in_code_are_checked_too() -> None:
    specs = [
        DeploymentSpec(name="a", fake={"tokens": 2}, fallbacks=["b"]),
        DeploymentSpec(name="b", fake={"tokens": 2}, fallbacks=["a"]),
    ]
    with pytest.raises(UserError, match=r"fallbacks form a cycle: a -> b -> a"):
        Registry(specs, None)
