"""Deployments: a name clients call (``model`` in the OpenAI request) bound to a backend.

    lmops serve --model chat=chat@production --model base=/models/qwen
    lmops serve --deployments deployments.yaml

```yaml
deployments:
  - name: chat
    model: chat@production          # asset ref or local HF folder -> the built-in engine
    max_running: 8
    max_queue: 64
    limits: {rpm: 600, tpm: 200000}
    guardrails: {pii_input: mask, moderation_output: block}
    log_bodies: false
    responses_store: true           # /v1/responses keeps responses 30 days (stored_responses)
    prompt: support@production      # a registered prompt wraps each request (lmops.prompts)
  - name: chat-ab                   # weighted A/B split between two versions
    split: [{model: chat:3, weight: 0.9}, {model: chat:4, weight: 0.1}]
  - name: big
    upstream: http://127.0.0.1:8001/v1   # any OpenAI-compatible server (vLLM, llama.cpp...)
    upstream_model: Qwen2.5-7B-Instruct
  - name: big-replicas              # several servers of one model: least busy, failed ones rest
    upstream: [http://gpu0:8000/v1, http://gpu1:8000/v1]
    upstream_model: Qwen2.5-7B-Instruct
  - name: fast                      # lmops launches and supervises a vLLM server for it
    model: chat@production
    engine: vllm
    vllm: {gpu_memory_utilization: 0.85, max_model_len: 8192, args: [--enable-prefix-caching]}
```
An alias ref (``chat@production``) is re-resolved periodically; when the alias moves, the
deployment reloads the new version without a restart. (Not for ``engine: vllm``: its
server is launched once, by ``lmops.deploy.launcher.launch_all``, with the version the ref
named at start.)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmops.core.errors import NotFoundError, UserError, name_hint
from lmops.core.modelfiles import refuse_reward_model
from lmops.core.yamlcfg import FieldError, error_loc, error_message, format_loc, load_config
from lmops.models.types import Delta, Done, GenRequest

B = TypeVar("B", bound=BaseModel)

if TYPE_CHECKING:
    from lmops.security import GuardrailConfig
    from lmops.serve.backends import Backend

__all__ = [
    "Deployment",
    "DeploymentSpec",
    "FakeOptions",
    "Registry",
    "SamplingDefaults",
    "VllmOptions",
    "load_deployments",
    "parse_model_args",
]


class SplitTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    weight: float = Field(gt=0)


# vLLM flags lmops sets itself: from the spec (model, name) or from the launch (host, port).
_VLLM_OWNED = ("--model", "--served-model-name", "--host", "--port", "--api-key")
# vLLM flags that have a typed field here; giving them in ``args`` too would be ambiguous.
_VLLM_TYPED = {
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--max-model-len": "max_model_len",
    "--tensor-parallel-size": "tensor_parallel_size",
}


class VllmOptions(BaseModel):
    """How lmops launches the vLLM server of an ``engine: vllm`` deployment.

    The launch line is ``command`` (default: this Python running
    ``-m vllm.entrypoints.openai.api_server --model {model} --served-model-name {name}
    --host 127.0.0.1 --port {port}``), then a flag for each typed field that is set, then
    ``args``. ``{model}`` (the local model folder), ``{port}``, ``{name}`` (the served model
    name) and ``{python}`` (this interpreter) are replaced in ``command``.
    """

    model_config = ConfigDict(extra="forbid")
    args: list[str] = Field(default_factory=list)
    port: int | None = Field(None, ge=1, le=65535)  # None: a free port on 127.0.0.1
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    startup_timeout_s: float = Field(600.0, gt=0)
    # restarts in a row (without the server staying up ``stable_s`` in between) before
    # lmops gives up on the deployment; 0 never restarts it
    max_restarts: int = Field(5, ge=0)
    stable_s: float = Field(60.0, gt=0)
    stop_grace_s: float = Field(15.0, gt=0)  # SIGTERM, then SIGKILL after this long
    # a running server is probed on /health this often; this many failures in a row = hung
    health_interval_s: float = Field(10.0, gt=0)
    health_failures: int = Field(3, ge=1)
    env: dict[str, str] = Field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES
    command: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _args_not_owned(self) -> VllmOptions:
        for arg in self.args:
            flag = arg.split("=", 1)[0]
            if flag in _VLLM_OWNED:
                raise ValueError(f"{flag} is set by lmops; remove it from vllm.args")
            if flag in _VLLM_TYPED:
                raise ValueError(f"give {flag} as vllm.{_VLLM_TYPED[flag]}, not in vllm.args")
        return self


class SamplingDefaults(BaseModel):
    """What a request that sets no sampling field gets (each may be left out)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)


class FakeOptions(BaseModel):
    """A deployment without a model (see :class:`~lmops.serve.fake_backend.FakeBackend`)."""

    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(16, ge=1, le=100_000)  # reply length: tok0 tok1 ...
    reply: str | None = None  # the words of every reply instead
    ttft_s: float = Field(0.0, ge=0)
    itl_s: float = Field(0.0, ge=0)
    dims: int = Field(64, ge=1, le=4096)  # embedding size
    # reply with what the model was given ("role: text" per message, " | " between them)
    echo: bool = False
    context: int | None = Field(None, ge=1)  # a chat prompt's words it reads at most


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    model: str | None = None
    # which engine serves ``model``: lmops' own, or a vLLM server lmops launches
    engine: Literal["builtin", "vllm"] = "builtin"
    vllm: VllmOptions | None = None
    split: list[SplitTarget] | None = None
    # one OpenAI-compatible server's base URL, or a list of replicas serving the same
    # model (least busy first; one that fails sits out upstream_cooldown_s: serve/replicas)
    upstream: str | list[str] | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    fake: FakeOptions | None = None  # no model: deterministic replies (tests, wiring)
    max_running: int = Field(8, ge=1)
    max_queue: int = Field(64, ge=0)
    max_tokens_cap: int = Field(4096, ge=1)
    # the completion budget of a request that names none (None: the model's
    # generation_config max_new_tokens, else 256, for the built-in engine; 1024 for an
    # upstream); always charged at admission and sent to an upstream
    default_max_tokens: int | None = Field(None, ge=1)
    # sampling defaults for requests that set none, over the model's generation config
    sampling: SamplingDefaults | None = None
    # auto: the built-in engine takes temperature/top_p/max_new_tokens defaults from the
    # model's generation_config.json, as vLLM's --generation-config auto; ignore: it does not
    generation_config: Literal["auto", "ignore"] = "auto"
    # message text holding the model's control tokens (<|im_start|>...): encoded as plain
    # text so it cannot forge a turn (escape), or refused with a 400 (refuse)
    control_tokens: Literal["escape", "refuse"] = "escape"
    device: str = "auto"
    # a sealed package as ``model`` (lmops deploy package): its key-encryption key file
    # (else $LMOPS_KEK) and, optionally, the signer's public key it must carry
    key_file: str | None = None
    public_key: str | None = None
    limits: dict[str, int | None] = Field(default_factory=dict)
    guardrails: dict[str, Any] | None = None
    log_bodies: bool = False
    # /v1/responses keeps responses for previous_response_id, retrieve and delete unless a
    # request says store: false, as the model saw and said them (after this deployment's PII
    # guardrails) or, with responses_mask: all, with every PII type masked; lmops gc
    # deletes them this long after a conversation's last turn (serve.stored_responses)
    responses_store: bool = True
    responses_mask: Literal["guardrails", "all"] = "guardrails"
    responses_ttl_days: float = Field(30.0, gt=0, le=36500)
    # /v1/embeddings on the built-in engine (refused elsewhere: it would do nothing): an
    # input longer than the model reads is a 400 naming it, as OpenAI's (false), or is cut
    # to fit, as vLLM's truncate_prompt_tokens
    embeddings_truncate: bool = False
    # a registered prompt that wraps every request (``support@production``); a chat
    # request may pick another with {"prompt": ref}: see lmops.prompts.binding
    prompt: str | None = None
    # when a try fails before the first byte of its reply (the upstream refused the
    # connection, timed out, answered 429/500/502/503/504; the engine's queue was full):
    # try this deployment again up to ``retries`` more times, waiting ``retry_backoff_s``
    # doubled each time, or the upstream's Retry-After, each wait at most
    # ``retry_max_wait_s`` (a longer Retry-After skips the tries left); then each of
    # ``fallbacks`` in order, with its own retries and fallbacks (lmops.serve.fallbacks)
    retries: int = Field(0, ge=0, le=10)
    retry_backoff_s: float = Field(0.25, ge=0, le=60)
    retry_max_wait_s: float = Field(10.0, ge=0, le=600)
    fallbacks: list[str] = Field(default_factory=list)
    # an upstream's wait for a connection and for each piece of data (a reply that has
    # not begun after this long is a timeout, which a retry or a fallback takes over)
    upstream_timeout_s: float = Field(600.0, gt=0)
    # seconds a replica of an ``upstream`` list is left out after it failed
    upstream_cooldown_s: float = Field(10.0, ge=0, le=3600)

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, v: str | list[str] | None) -> str | list[str] | None:
        urls = [v] if isinstance(v, str) else v or []
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; give one base URL or several replicas' URLs")
        for i, url in enumerate(urls):
            where = f"[{i}] " if isinstance(v, list) else ""
            if not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"{where}{url!r} is not an http(s) URL; give the server's base URL, "
                    "such as http://127.0.0.1:8000/v1"
                )
        if isinstance(v, list) and len(set(v)) < len(v):
            twice = next(u for u in v if v.count(u) > 1)
            raise ValueError(f"{twice!r} is listed twice; list each replica once")
        return v

    def upstream_urls(self) -> list[str]:
        """The upstream's base URLs: one, or each replica's."""
        return [self.upstream] if isinstance(self.upstream, str) else list(self.upstream or [])

    @field_validator("guardrails")
    @classmethod
    def _check_guardrails(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        guardrail_config(v)  # checked when the file is read, not when serving starts
        return v

    @field_validator("limits")
    @classmethod
    def _check_limits(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        from lmops.serve.limits import Limits

        _checked(Limits, v)
        return v

    def guardrail_config(self) -> GuardrailConfig:
        """The guardrails of this deployment (the default preset where it names none)."""
        return guardrail_config(self.guardrails)

    @model_validator(mode="after")
    def _one_source(self) -> DeploymentSpec:
        if sum(x is not None for x in (self.model, self.split, self.upstream, self.fake)) != 1:
            raise ValueError("give exactly one of model, split, upstream or fake")
        if self.engine == "vllm" and self.model is None:
            raise ValueError("engine: vllm serves a model; give model (an asset ref or folder)")
        if self.vllm is not None and self.engine != "vllm":
            raise ValueError("vllm options given but engine is not vllm; add engine: vllm")
        builtin = self.engine == "builtin" and (self.model or self.split) is not None
        if self.embeddings_truncate and not builtin:
            raise FieldError(
                ("embeddings_truncate",),
                "has no effect here: only the built-in engine cuts embedding inputs (an "
                "upstream, a vLLM server or a fake decides for itself); remove it",
            )
        return self


def _first_error(e: ValidationError) -> ValueError:
    """A config's first error as a ``ValueError`` naming the field inside it (the file's
    error then reads ``deployments[0].guardrails: pii_input: Input should be ...``)."""
    err = e.errors()[0]
    return ValueError(f"{format_loc(error_loc(err))}: {error_message(err)}")


def _checked(model: type[B], values: dict[str, Any]) -> B:
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise _first_error(e) from None


def guardrail_config(cfg: dict[str, Any] | None) -> GuardrailConfig:
    """A deployment's ``guardrails:`` as a config: ``None`` is the default preset, ``preset``
    names another, the other keys set fields over it."""
    from lmops.security import GuardrailConfig

    rest = {k: v for k, v in (cfg or {}).items() if k != "preset"}
    try:
        return GuardrailConfig.from_name((cfg or {}).get("preset", "default"), **rest)
    except UserError as e:  # an unknown preset
        raise ValueError(str(e)) from None
    except ValidationError as e:
        raise _first_error(e) from None


class DeploymentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deployments: list[DeploymentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _fallbacks_resolve(self) -> DeploymentsFile:
        problem = fallback_problem(self.deployments)
        if problem is not None:  # named at its item, so the error gives its line
            (i, j), message = problem
            raise FieldError(("deployments", i, "fallbacks", j), message)
        return self


def fallback_problem(specs: list[DeploymentSpec]) -> tuple[tuple[int, int], str] | None:
    """The first fallback that cannot be followed, as ((deployment index, fallback index),
    message): a name no deployment has (with a did-you-mean), a deployment's own name, one
    named twice in a list, or one that closes a cycle (``a -> b -> a``: fallbacks are
    followed on, so a cycle would never end). None when every chain ends."""
    names = [s.name for s in specs]
    index = {s.name: i for i, s in enumerate(specs)}
    for i, spec in enumerate(specs):
        for j, name in enumerate(spec.fallbacks):
            if name == spec.name:
                return (i, j), f"deployment {name!r} falls back to itself; name another one"
            if name not in index:
                hint = name_hint(name, [n for n in names if n != spec.name], "deployments")
                return (i, j), f"unknown deployment {name!r}" + (f"; {hint}" if hint else "")
            if name in spec.fallbacks[:j]:
                return (i, j), f"{name!r} is named twice in fallbacks"
    # depth-first from each deployment; an edge back onto the path closes a cycle
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> tuple[tuple[int, int], str] | None:
        spec = specs[index[name]]
        for j, nxt in enumerate(spec.fallbacks):
            if nxt in path:
                cycle = [*path[path.index(nxt) :], name, nxt]
                return (index[name], j), (
                    f"fallbacks form a cycle: {' -> '.join(cycle)}; remove one of them"
                )
            if nxt not in done:
                found = visit(nxt, [*path, name])
                if found is not None:
                    return found
        done.add(name)
        return None

    for name in names:
        if name not in done:
            found = visit(name, [])
            if found is not None:
                return found
    return None


def parse_model_args(items: list[str]) -> list[DeploymentSpec]:
    """``NAME=REF`` pairs from ``--model``."""
    out = []
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            raise UserError(f"--model {item!r}: expected NAME=REF (an asset ref or a model folder)")
        out.append(DeploymentSpec(name=name, model=ref))
    return out


def load_deployments(path: Path) -> list[DeploymentSpec]:
    """The deployments of a file; one-line errors with the file and line (a YAML syntax
    error, an unknown field, a bad guardrail or limit value)."""
    return load_config(path, DeploymentsFile).deployments


# what a deployment may be asked for (the handlers' kinds)
ENDPOINTS: tuple[str, ...] = ("chat", "completion", "embeddings")
_ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


# the kinds of version a file or folder served by its path may be a copy of
_PACKAGE_KINDS = ("package",)
_MODEL_KINDS = ("model", "adapter")


def registered_as(path: Path, store: Any, kinds: Collection[str]) -> str | None:
    """The registered version (ref) holding exactly the bytes of ``path``, a model folder
    or package file a deployment names by its path, or None (no store, no such version).
    Served as that version, an answer's trace follows its lineage. Hashes ``path`` only
    when a version of the same size exists, and then once (the store's hash cache)."""
    if store is None:
        return None
    from lmops.store.external import registered_copy

    found = registered_copy(store, path, kinds)
    return found.ref if found is not None else None


class _Target:
    """One concrete model behind a deployment: the engine and the version it serves.

    ``version`` is the version ref that answers, for the request log and traces: the
    ref's, or for a file or folder named by its path (``local``) a registered version with
    the same bytes (:func:`registered_as`), else the path itself."""

    local: Path | None = None  # the file or folder the spec named by its path

    def __init__(self, ref: str, store: Any, spec: DeploymentSpec) -> None:
        from lmops.models.encoder import Encoder, model_kind, read_pooling
        from lmops.models.engine import Engine
        from lmops.models.loading import resolve_local
        from lmops.models.sealed import package_path

        package, version = package_path(ref, store)
        if package is not None:  # decrypted into memory: no plaintext weights on disk
            if version is None:
                self.local = package
                version = registered_as(package, store, _PACKAGE_KINDS)
            self._load_package(ref, package, version, spec)
            return
        path, version = resolve_local(ref, store, kind="model")
        refuse_reward_model(path, "served", what=version or ref)
        if version is None:
            self.local = path
            version = registered_as(path, store, _MODEL_KINDS)
        if (path / "adapter_config.json").exists():
            from lmops.models.loading import merged_view

            path = merged_view(path, store)
        self.ref = ref
        # a path: the folder named, not the merged view of an adapter (a temp folder)
        self.version = version or str(self.local or path)
        self.pooling = read_pooling(path)  # how /v1/embeddings pools (models/encoder.py)
        kind, self.architecture = model_kind(path)
        self.engine: Any
        if kind == "encoder":  # no language-model head: embeddings only
            self.engine = Encoder(path, device=spec.device, name=spec.name)
            self.serves: tuple[str, ...] = ("embeddings",)
            return
        self.serves = ENDPOINTS
        self.engine = Engine(
            path,
            max_running=spec.max_running,
            max_queue=spec.max_queue,
            device=spec.device,
            name=spec.name,
        )

    def embed(self, texts: list[str], *, truncate: bool = False) -> tuple[list[list[float]], int]:
        """The vectors of ``texts`` and the tokens the model read, pooled as the model's
        folder says (:mod:`lmops.models.encoder`: a text longer than the model reads is
        ``InputTooLong``, or cut with ``truncate``); blocking: run it off the event loop."""
        from lmops.models.encoder import embed_texts

        e = self.engine
        if "chat" not in self.serves:
            out: tuple[list[list[float]], int] = e.embed(texts, truncate=truncate)
            return out
        return embed_texts(
            e.model,
            e.tokenizer,
            texts,
            self.pooling,
            device=e.device,
            limit=e.max_context,
            truncate=truncate,
        )

    def _load_package(
        self, ref: str, package: Path, version: str | None, spec: DeploymentSpec
    ) -> None:
        from transformers import AutoTokenizer

        from lmops.models.encoder import Encoder, model_kind, read_pooling
        from lmops.models.engine import Engine
        from lmops.models.loading import select_device
        from lmops.models.sealed import load_from_state_dict, unsealed_model

        device = select_device(spec.device)
        keys = {"key_file": spec.key_file, "public_key": spec.public_key}
        # the engine reads config, tokenizer and generation config while the private
        # folder exists; it is removed when the block ends
        with unsealed_model(package, **keys) as (folder, state):
            model = load_from_state_dict(folder, state, device=device)
            loaded = (model, AutoTokenizer.from_pretrained(str(folder)))
            kind, self.architecture = model_kind(folder)
            self.pooling = read_pooling(folder)
            if kind == "encoder":  # embeddings only, as from a folder
                self.engine = Encoder(folder, device=device, name=spec.name, loaded=loaded)
                self.serves = ("embeddings",)
            else:
                self.engine = Engine(
                    folder,
                    max_running=spec.max_running,
                    max_queue=spec.max_queue,
                    device=device,
                    name=spec.name,
                    loaded=loaded,
                )
                self.serves = ENDPOINTS
        self.ref = ref
        self.version = version or str(package)


class Deployment:
    """A served name: routes each request to a target (weighted for A/B) or upstream."""

    def __init__(self, spec: DeploymentSpec, store: Any) -> None:
        self.spec = spec
        self.store = store
        self.targets: list[tuple[_Target, float]] = []
        self.upstream: Any = None
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        if spec.prompt is not None and store is not None:
            from lmops.prompts.registry import get as get_prompt

            get_prompt(spec.prompt, store=store)  # a bound prompt that cannot load fails now
        if spec.upstream:
            from lmops.serve.replicas import Replicas
            from lmops.serve.upstream import Upstream

            ups = [
                Upstream(
                    url,
                    spec.upstream_model or spec.name,
                    api_key=spec.upstream_api_key,
                    timeout=spec.upstream_timeout_s,
                )
                for url in spec.upstream_urls()
            ]
            self.upstream = (
                ups[0] if isinstance(spec.upstream, str)
                else Replicas(ups, cooldown_s=spec.upstream_cooldown_s)
            )  # fmt: skip
        elif spec.fake is not None:
            pass  # answered by FakeBackend, nothing to load
        elif spec.engine == "vllm":
            # launch_all rewrites these into upstream specs before the workers start
            raise UserError(
                f"deployment {spec.name!r}: engine: vllm was not launched; serve it with "
                "lmops serve (lmops.deploy.launcher.launch_all)"
            )
        elif spec.split:
            self.targets = [(_Target(t.model, store, spec), t.weight) for t in spec.split]
        else:
            assert spec.model is not None
            self.targets = [(_Target(spec.model, store, spec), 1.0)]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def serves(self) -> tuple[str, ...]:
        """What this deployment answers (``chat``, ``completion``, ``embeddings``): an
        encoder-only model embeds and nothing else; an upstream or a fake is asked all."""
        return tuple(k for k in ENDPOINTS if all(k in t.serves for t, _ in self.targets))

    def refuse_unless(self, kind: str) -> None:
        """An OpenAI-shaped 400 naming the deployment when it does not serve ``kind``,
        before any work (rather than a model failing halfway)."""
        if kind in self.serves:
            return
        from lmops.serve.protocol import OpenAIError

        t = next(t for t, _ in self.targets if kind not in t.serves)
        raise OpenAIError(
            400,
            f"deployment {self.name!r} serves embeddings only: its model {t.version} is an "
            f"encoder ({t.architecture}) without a language-model head, so it cannot generate; "
            f"call /v1/embeddings with it, or {_ROUTES.get(kind, kind)} with a deployment of a "
            "causal LM",
            param="model",
            code="unsupported_endpoint",
        )

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` says of this deployment beyond OpenAI's fields: the model
        versions that answer (for an eval report's lineage), whether a model is served
        with the ChatML fallback because it has no chat template, and the prompt it binds
        (``prompt``, as the deployments YAML names it; absent when none), which a client
        that sends its own rendered prompts (``prompts optimize``) must not be wrapped in."""
        bound = {"prompt": self.spec.prompt} if self.spec.prompt is not None else {}
        if self.upstream is not None:
            shown = {"upstream": self.upstream.shown_url, "model": self.upstream.model}
            if isinstance(self.spec.upstream, list):
                shown["replicas"] = self.upstream.state()
            return {**shown, **bound}
        if self.spec.fake is not None:
            return {"fake": True, "versions": [f"fake:{self.name}"], **bound}
        return {
            "versions": [str(t.version) for t, _ in self.targets],
            "chat_template_fallback": any(t.engine.chat_template_fallback for t, _ in self.targets),
            "endpoints": list(self.serves),
            **bound,
        }

    def backend(self, target: _Target | None = None) -> Backend:
        """What answers the next request: the upstream, a fake, or a target's engine
        (``target``, else picked by weight for an A/B split), with this deployment's request
        defaults."""
        from lmops.serve.backends import EngineBackend
        from lmops.serve.fake_backend import FakeBackend
        from lmops.serve.upstream_backend import UpstreamBackend

        spec = self.spec
        if spec.fake is not None:
            return FakeBackend(spec.fake, spec.name)
        sampling = spec.sampling.model_dump(exclude_none=True) if spec.sampling else {}
        if self.upstream is not None:
            return UpstreamBackend(
                self.upstream,
                # what the request log, the access log and traces name: never the
                # credentials a URL may carry (user keys read their own traces)
                self.upstream.shown_url,
                sampling=sampling,
                default_max_tokens=min(spec.default_max_tokens or 1024, spec.max_tokens_cap),
                name=spec.name,
            )
        target = target or self.pick()
        model = dict(target.engine.generation_defaults) if spec.generation_config == "auto" else {}
        budget = spec.default_max_tokens or int(model.pop("max_tokens", 256))
        model.pop("max_tokens", None)
        return EngineBackend(
            target,
            sampling={**model, **sampling},
            default_max_tokens=min(budget, spec.max_tokens_cap),
            embeddings_truncate=spec.embeddings_truncate,
        )

    def pick(self) -> _Target:
        self._maybe_reload()
        if len(self.targets) == 1:
            return self.targets[0][0]
        total = sum(w for _, w in self.targets)
        x = random.random() * total
        for t, w in self.targets:
            x -= w
            if x <= 0:
                return t
        return self.targets[-1][0]

    def _maybe_reload(self, every_s: float = 5.0) -> None:
        """If an alias target now points at another version, load it (alias moves)."""
        if self.store is None or time.monotonic() - self._checked < every_s:
            return
        self._checked = time.monotonic()
        for i, (t, w) in enumerate(list(self.targets)):
            if "@" not in t.ref:
                continue
            try:
                now = self.store.assets.resolve(t.ref).ref
            except NotFoundError:
                continue
            if now != t.version:
                with self._lock:
                    fresh = _Target(t.ref, self.store, self.spec)
                    self.targets[i] = (fresh, w)
                t.engine.close()

    def close(self) -> None:
        for t, _ in self.targets:
            t.engine.close()

    async def aclose(self) -> None:
        """Close the upstream's connections of the running loop, then the engines."""
        if self.upstream is not None:
            await self.upstream.aclose()
        self.close()


def _named(name: str, e: UserError) -> UserError:
    """``e`` with the deployment it happened in, unless it names it already."""
    said = str(e)
    return e if f"deployment {name!r}" in said else UserError(f"deployment {name!r}: {said}")


def preflight(
    specs: list[DeploymentSpec], store: Any, *, own_keys: Collection[str] | None = None
) -> list[str]:
    """Resolve what each deployment names (model refs and folders, packages, a bound
    prompt) without loading any weights, so that a misspelt ref, a folder without a
    tokenizer, or a package whose signer is not trusted or whose key is wrong fails before
    ``lmops serve`` says it is serving, naming the deployment. A package costs its header
    and one unwrapped key (``models.sealed.open_trusted``), not a pass over its weights.

    ``key_file`` / ``public_key`` on a deployment that serves no package are refused: they
    would pin nothing, and the user would believe the signer is checked. ``own_keys`` names
    the deployments whose key fields were given for them (None: all); ``lmops serve
    --key-file/--pubkey`` apply to whichever deployments are packages, so not to the rest.

    Returns notes for the start-up output: the registered version a model folder or
    package named by its path is (the same bytes: see :func:`registered_as`), what a
    deployment of an encoder-only model serves (embeddings only) and how a model's
    embeddings are pooled where its folder says so (a sentence-transformers config)."""
    from lmops.models.loading import resolve_local
    from lmops.models.sealed import open_trusted, package_path

    notes: list[str] = []
    for spec in specs:
        try:
            if spec.prompt is not None and store is not None:
                from lmops.prompts.registry import get as get_prompt

                get_prompt(spec.prompt, store=store)
            if spec.upstream or spec.fake is not None or spec.engine == "vllm":
                continue  # nothing local, or the launcher checks it
            plain: list[str] = []
            for ref in [t.model for t in spec.split] if spec.split else [spec.model]:
                if ref is None:
                    continue
                package, version = package_path(ref, store)
                if package is None:
                    path, version = resolve_local(ref, store, kind="model")
                    refuse_reward_model(path, "served", what=version or ref)
                    plain.append(ref)
                    if version is None:
                        notes += _same_bytes(spec.name, ref, path, store, _MODEL_KINDS)
                    notes += _serving_notes(spec.name, version or ref, path)
                else:
                    open_trusted(package, key_file=spec.key_file, public_key=spec.public_key)
                    if version is None:
                        notes += _same_bytes(spec.name, ref, package, store, _PACKAGE_KINDS)
            given = [f for f in ("key_file", "public_key") if getattr(spec, f)]
            all_plain = bool(plain) and len(plain) == len(spec.split or [spec])
            if all_plain and given and (own_keys is None or spec.name in own_keys):
                raise UserError(
                    f"{' and '.join(given)} apply to a package only, and {plain[0]} is a "
                    f"model, not a package: nothing would be checked; remove "
                    f"{' and '.join(given)}, or serve its package (lmops deploy package)"
                )
        except UserError as e:
            raise _named(spec.name, e) from None
    return notes


def _same_bytes(name: str, ref: str, path: Path, store: Any, kinds: Collection[str]) -> list[str]:
    """The start-up note naming the registered version a path deployment serves, if any."""
    found = registered_as(path, store, kinds)
    if found is None:
        return []
    return [
        f"deployment {name!r} serves {ref} as {found}, the registered version with the same "
        "bytes: its answers are traced to that version's lineage"
    ]


def _serving_notes(name: str, what: str, path: Path) -> list[str]:
    from lmops.models.encoder import model_kind, read_pooling

    kind, arch = model_kind(path)
    pooling = read_pooling(path)  # a sentence-transformers module lmops cannot run fails now
    if kind == "encoder":
        return [
            f"deployment {name!r} serves embeddings only: {what} is an encoder ({arch}); "
            f"chat and completions are refused with a 400; {pooling.describe()}"
        ]
    if pooling.source != "default":
        return [f"deployment {name!r}: embeddings use {pooling.describe()}"]
    return []


class Registry:
    def __init__(self, specs: list[DeploymentSpec], store: Any) -> None:
        names = [s.name for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UserError(f"deployment {sorted(dup)[0]!r} is defined twice")
        problem = fallback_problem(specs)
        if problem is not None:  # specs built in code (a file's are checked as it loads)
            (i, j), message = problem
            raise UserError(f"deployments[{i}].fallbacks[{j}]: {message}")
        self.deployments: dict[str, Deployment] = {}
        for spec in specs:
            try:
                self.deployments[spec.name] = Deployment(spec, store)
            except UserError as e:
                self.close()  # the engines loaded so far
                raise _named(spec.name, e) from None

    def get(self, name: str) -> Deployment:
        try:
            return self.deployments[name]
        except KeyError:
            raise NotFoundError(f"The model '{name}' does not exist") from None

    def close(self) -> None:
        for d in self.deployments.values():
            d.close()

    async def aclose(self) -> None:
        for d in self.deployments.values():
            await d.aclose()


async def stream_target(target: _Target, req: GenRequest) -> AsyncIterator[Delta | Done]:
    async for ev in target.engine.generate(req):
        yield ev
