"""Batch inference: a dataset through a deployment, offline, resumable.

    lmops serve batch --model chat=chat@production --input prompts --output answers

The deployment is built in this process (the built-in engine, an A/B split, or an upstream
server), without the HTTP gateway or its keys and limits (the caller has the store already),
but with the deployment's guardrails, as the gateway applies them (the default preset where
the deployment names none; ``guardrails: {preset: off}`` for none): PII is masked before a
prompt reaches the model and in its answer, and a prompt or answer the moderation blocks is
not answered or not kept. Every input row becomes prompt messages (:func:`prompt_of`, in
:mod:`lmops.serve.batch_input` with the formats it reads), wrapped by the deployment's bound
prompt as the gateway wraps them (``prompt:``; its variables from ``--var NAME=VALUE`` and a
row's ``variables``; a missing one stops the batch in one line before the model loads).

Validation is :mod:`lmops.core.formats`' own: a row is completed with a stand-in answer and
must then be a valid training row, so an error names the row and field as ``lmops data
validate`` would. Every row is checked before any model is loaded.

Output: a ``dataset`` asset whose ``data.jsonl`` holds, in input order, SFT chat rows
(``messages`` = prompt + the assistant answer, which ``lmops train`` accepts as they are) with
``metadata`` (input line, model version, the bound prompt's version ``prompt_ref``,
finish_reason, prompt/completion tokens, latency_ms) and the input row's ``id`` when it has one; the prompt is written as the model
got it (masked). Rows that failed, got an empty answer or were refused by the guardrails
are in ``_failed.jsonl`` (training skips files starting with ``_``). Lineage: the
input dataset version (role ``input``) and each model version behind the deployment (role
``model``), the bound prompt's version (role ``prompt``), a local input file/folder or model folder as an external reference
(``store.assets.external``); the job is a ``batch`` run with metrics rows, tokens, errors
and rows/s.

Resume: each answer is appended, as it completes, to ``$LMOPS_HOME/batch/<fingerprint>/
results.jsonl``, where the fingerprint covers the input content, the model versions (or the
upstream URL and model), the generation parameters (max_tokens, temperature, top_p, stop, the
penalties, seed) and the
guardrails' settings (they change the answers) — not the concurrency nor the output name.
Rerunning a killed or failed batch with the same arguments skips the finished rows, retries
failed ones and continues the same run record; with greedy decoding (the default) or a fixed
seed (each row samples with ``seed + row index``) the final dataset is the one an
uninterrupted run makes. The folder is removed once
the dataset is registered.

Failures: a row whose request fails (upstream error, engine error, prompt longer than the
context) is recorded with its error and counted; if any row failed, the job stops with
:class:`BatchFailed` (exit 1) after all other rows are done, keeping them for the rerun,
unless ``allow_errors`` registers the rows that succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import ConflictError, LmopsError, NotFoundError, UserError
from lmops.models.types import LogitsOptions
from lmops.serve.batch_input import Item, Message, bind_prompt, prompt_of, read_items
from lmops.serve.deployments import Deployment, DeploymentSpec

__all__ = [
    "Answer",
    "Backend",
    "BatchFailed",
    "BatchResult",
    "BatchSpec",
    "Item",
    "RowFailed",
    "backend_for",
    "pick_deployment",
    "prompt_of",
    "read_items",
    "run_batch",
]

# Bumped when prompt conversion or the work-file layout changes, so old work is not reused.
_WORK_FORMAT = 3  # 2: the guardrails joined the fingerprint; 3: the bound prompt did
_METRICS_EVERY_S = 5.0


class BatchSpec(BaseModel):
    """One batch job; the CLI's options, loadable from YAML like every job config."""

    model_config = ConfigDict(extra="forbid")
    deployment: str | None = None  # None: the only deployment given
    input: str  # dataset asset ref, or a local .jsonl/.json/.parquet file or folder of them
    output: str  # dataset asset name to register
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)  # None: the deployment's (else 1)
    stop: list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int = 0
    concurrency: int | None = Field(None, ge=1)  # None: the deployment's max_running
    allow_errors: bool = False
    # values of the bound prompt's variables for every row (``--var NAME=VALUE``); a row's
    # own ``variables`` win. The sampling fields left unset take the prompt's config, as
    # the gateway fills a request's (lmops.prompts.binding.apply_prompt).
    variables: dict[str, str] = Field(default_factory=dict)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def params(self) -> dict[str, Any]:
        """The generation parameters that change the answers (the seed aside): what the
        work folder's fingerprint and the dataset's metadata name."""
        out: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        for k in ("top_p", "stop", "presence_penalty", "frequency_penalty"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


# what a bound prompt's config sets when the batch does not (the gateway fills the same
# fields of a request that leaves them out)
PROMPT_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


class BatchFailed(LmopsError):
    """Some rows failed; the finished ones are kept and a rerun retries the rest (exit 1)."""


class RowFailed(Exception):
    """A request for one row failed; recorded with the row, the batch goes on."""


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str  # the version that answered (asset ref, folder, or upstream model)
    latency_ms: float = 0.0
    # set by the guardrails: the prompt as the model got it (PII masked), and "input" or
    # "output" where they refused the row (with the refusal in ``refusal``)
    prompt: list[Message] | None = None
    filtered: str | None = None
    refusal: str | None = None


class Backend(Protocol):
    """Answers one prompt; raises :class:`RowFailed` for a failure of that row."""

    async def complete(self, item: Item, spec: BatchSpec) -> Answer: ...

    async def aclose(self) -> None:
        """Release what the backend holds in the running event loop (connections)."""


@dataclass
class BatchResult:
    output: str | None  # the registered version ref (None if nothing was registered)
    run_id: str
    rows: int  # input rows
    succeeded: int
    failed: int
    empty: int  # answered with empty text: kept out of data.jsonl
    filtered: int  # refused by the deployment's guardrails (in or out): kept out as well
    written: int  # rows in the registered data.jsonl
    resumed: int  # rows finished by an earlier, interrupted invocation
    generated: int  # rows answered by this invocation
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    rows_per_s: float  # generated / seconds of this invocation
    work_dir: str
    errors: list[str] = field(default_factory=list)  # the first few, "file:line: message"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- deployment -----------------------------------------------------------------------------------
def pick_deployment(specs: list[DeploymentSpec], name: str | None) -> DeploymentSpec:
    """The spec called ``name``, or the only one when ``name`` is None."""
    if not specs:
        raise UserError("no deployment: give --model NAME=REF or --deployments FILE.yaml")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"deployment {dup[0]!r} is defined twice")
    if name is None:
        if len(specs) > 1:
            raise UserError(f"several deployments ({', '.join(names)}); pick one with --deployment")
        return specs[0]
    for s in specs:
        if s.name == name:
            return s
    raise NotFoundError(f"deployment {name!r} is not defined; defined: {', '.join(names)}")


class _DeploymentBackend:
    """A deployment's backends (:meth:`Deployment.backend`: the engine, an upstream, a
    fake), asked one chat per row as the gateway asks them, without its HTTP layer or
    policy. A split picks its target per row, seeded, so a resumed batch sends each row
    where it went before."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep

    def _backend(self, item: Item, seed: int) -> Any:
        targets = self.dep.targets
        if len(targets) <= 1:
            return self.dep.backend()
        x = random.Random(f"{seed}:{item.index}").random() * sum(w for _, w in targets)
        for t, w in targets:
            x -= w
            if x <= 0:
                return self.dep.backend(target=t)
        return self.dep.backend(target=targets[-1][0])

    async def aclose(self) -> None:
        if self.dep.upstream is not None:  # the engines are closed with the deployment
            await self.dep.upstream.aclose()

    async def complete(self, item: Item, spec: BatchSpec) -> Answer:
        from lmops.models.engine import EngineOverloaded
        from lmops.serve.backends import Job
        from lmops.serve.protocol import OpenAIError
        from lmops.serve.upstream import UpstreamError

        backend = self._backend(item, spec.seed)
        seed = spec.seed + item.index
        top_p = spec.top_p if spec.top_p is not None else backend.sampling.get("top_p", 1.0)
        penalties = {
            k: v
            for k in ("presence_penalty", "frequency_penalty")
            if (v := getattr(spec, k)) is not None
        }
        sampling: dict[str, Any] = {"temperature": spec.temperature, "seed": seed, **penalties}
        if spec.top_p is not None:
            sampling["top_p"] = spec.top_p
        if spec.stop:
            sampling["stop"] = spec.stop
        job = Job(
            kind="chat",
            request_id=f"batch-{item.index}",
            model=self.dep.name,
            body={"messages": item.messages, **sampling},  # what an upstream is sent
            messages=[dict(m) for m in item.messages],
            prompts=None,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=float(top_p),
            seed=seed,
            stop=list(spec.stop or []),
            logits=LogitsOptions(**penalties) if penalties else None,
        )
        text: list[str] = []
        finish = "stop"
        try:
            backend.precheck(job)
            await backend.prepare(job)
            gen = await backend.start(job)
            try:
                async for batch in gen.batches():
                    for ev in batch:
                        if ev.index != 0:
                            continue
                        text.append(ev.text)
                        if ev.finish_reason == "error":
                            raise RowFailed(f"engine error: {ev.error}")
                        if ev.finish_reason is not None:
                            finish = ev.finish_reason
            finally:
                await gen.aclose()
        except OpenAIError as e:  # the prompt is longer than the context, a refusal...
            raise RowFailed(e.message) from None
        except (UpstreamError, EngineOverloaded) as e:
            raise RowFailed(str(e) or type(e).__name__) from None
        model = self.dep.upstream.model if self.dep.upstream is not None else backend.model_ref
        return Answer("".join(text), finish, gen.prompt_tokens, gen.completion_tokens, model)


def backend_for(dep: Deployment) -> Backend:
    return _DeploymentBackend(dep)


class _Guarded:
    """A backend behind the deployment's guardrails, as the gateway applies them to a chat
    request: the input check (PII masked, or the row refused) before the model, the output
    check (PII masked, or the answer refused) after it. The checks run on a worker thread:
    the event loop keeps feeding the other rows."""

    def __init__(self, backend: Backend, guard: Any) -> None:
        self.backend, self.guard = backend, guard

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def complete(self, item: Item, spec: BatchSpec) -> Answer:
        checked = await asyncio.to_thread(self.guard.check_input, [dict(m) for m in item.messages])
        if checked.blocked:
            return Answer("", "content_filter", 0, 0, "", filtered="input", refusal=checked.refusal)
        prompt: list[Message] = checked.messages
        masked = prompt != item.messages
        a = await self.backend.complete(replace(item, messages=prompt) if masked else item, spec)
        out = await asyncio.to_thread(self.guard.check_output, a.text)
        a.prompt = prompt if masked else None
        if out.blocked:
            a.text, a.finish_reason, a.filtered, a.refusal = (
                "",
                "content_filter",
                "output",
                out.text,
            )
        else:
            a.text = out.text
        return a


def _model_versions(dep: Deployment) -> list[tuple[str, float, bool]]:
    """(version, weight, is an asset ref) of each model behind ``dep``."""
    if dep.upstream is not None:
        return [(f"{dep.upstream.base_url}#{dep.upstream.model}", 1.0, False)]
    if dep.spec.fake is not None:
        return [(f"fake:{dep.name}", 1.0, False)]
    # _Target.version is a version ref (a path's too, when a registered version has its
    # bytes), else the path the spec named
    return [(t.version, w, t.local is None or t.version != str(t.local)) for t, w in dep.targets]


# -- the work folder ------------------------------------------------------------------------------
def _fingerprint(
    content_id: str,
    models: list[tuple[str, float, bool]],
    spec: BatchSpec,
    guard: Any,
    prompt_ref: str | None,
) -> str:
    key = {
        "format": _WORK_FORMAT,
        "guardrails": guard.config.model_dump(mode="json"),
        "input": content_id,
        "models": [[v, w] for v, w, _ in models],
        "params": spec.params(),
        "seed": spec.seed,
        "prompt": [prompt_ref, spec.variables],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One invocation per work folder: a second one with the same arguments is refused."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with open(work / "lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise ConflictError(
                f"a batch with the same input, model and parameters is running "
                f"(pid {fh.read().strip() or '?'}); wait for it or stop it"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_results(path: Path) -> dict[int, dict[str, Any]]:
    """The last record of each row; a line cut short by a kill is dropped (and truncated
    away so that later appends start on a fresh line)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
    out: dict[int, dict[str, Any]] = {}
    for line in data[:end].split(b"\n"):
        if line.strip():
            rec = json.loads(line)
            out[int(rec["i"])] = rec
    return out


# -- the job --------------------------------------------------------------------------------------
ProgressFn = Callable[[int, int, int], None]  # (rows finished or failed, rows in all, failed)


def run_batch(
    store: Any,
    specs: list[DeploymentSpec],
    spec: BatchSpec,
    *,
    progress: ProgressFn | None = None,
    backend: Callable[[Deployment], Backend] = backend_for,
) -> BatchResult:
    """Run ``spec`` (see the module docstring); ``backend`` is the seam tests wrap."""
    from lmops.store.refs import check_name

    check_name(spec.output)
    dspec = pick_deployment(specs, spec.deployment)
    items, input_ref, content_id = read_items(spec.input, store)
    prompt_ref = None
    if dspec.prompt is not None:
        items, prompt_ref, config = bind_prompt(items, dspec.prompt, store, spec.variables)
        given = spec.model_fields_set  # the prompt's parameters fill what was not given
        unset = {k: config[k] for k in PROMPT_FIELDS if k in config}
        filled = {k: v for k, v in unset.items() if k not in given}
        if filled:  # checked as the options are (a prompt may store "0.7")
            spec = BatchSpec.model_validate({**spec.model_dump(), **filled})
            if "max_tokens" in filled:  # the gateway caps a prompt's budget, as here
                spec = spec.model_copy(
                    update={"max_tokens": min(spec.max_tokens, dspec.max_tokens_cap)}
                )
    elif spec.variables:
        raise UserError(
            f"--var {next(iter(spec.variables))}=...: deployment {dspec.name!r} binds no "
            "prompt (prompt: in the deployments file), so there is nothing to fill"
        )
    if dspec.upstream is None and spec.max_tokens > dspec.max_tokens_cap:
        raise UserError(
            f"--max-tokens {spec.max_tokens} is above the max_tokens_cap of deployment "
            f"{dspec.name!r} ({dspec.max_tokens_cap})"
        )
    concurrency = spec.concurrency or dspec.max_running
    if dspec.upstream is None:
        # the engine batches every in-flight request: let all of them run at once
        dspec = dspec.model_copy(update={"max_running": concurrency})
    from lmops.security import Guardrails

    guard = Guardrails(dspec.guardrail_config())
    dep = Deployment(dspec, store)
    try:
        if "chat" not in dep.serves:
            raise UserError(
                f"deployment {dep.name!r} serves embeddings only (an encoder model); "
                "lmops serve batch answers chats: give a deployment of a causal LM"
            )
        models = _model_versions(dep)
        fp = _fingerprint(content_id, models, spec, guard, prompt_ref)
        work = Path(store.settings.home) / "batch" / fp
        with _locked(work):
            return _run(
                store,
                dep,
                _Guarded(backend(dep), guard),
                items,
                input_ref,
                models,
                spec,
                work,
                concurrency,
                progress,
                prompt_ref,
            )
    finally:
        dep.close()


def _run(
    store: Any,
    dep: Deployment,
    be: Backend,
    items: list[Item],
    input_ref: str | None,
    models: list[tuple[str, float, bool]],
    spec: BatchSpec,
    work: Path,
    concurrency: int,
    progress: ProgressFn | None,
    prompt_ref: str | None = None,
) -> BatchResult:
    from lmops.store import RunStatus

    results_path = work / "results.jsonl"
    done = _load_results(results_path)
    resumed = sum(1 for r in done.values() if r["ok"])
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    config = {
        **spec.model_dump(mode="json"),
        "deployment": dep.name,
        "concurrency": concurrency,
        "models": [v for v, _, _ in models],
        "prompt_ref": prompt_ref,
        "work_dir": str(work),
    }
    run = None
    if state.get("run_id"):
        with contextlib.suppress(NotFoundError):
            run = store.runs.reopen(state["run_id"])
    if run is None:
        run = store.runs.start("batch", name=spec.output, config=config)
        state = {"run_id": run.id, "input": spec.input, "config": config}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_path)
    try:
        # the local input and model folders, recorded by content (lineage of the answers)
        local = [] if input_ref else [(Path(spec.input).expanduser(), "input")]
        if dep.upstream is None:
            local += [
                (t.local, "model")
                for t, _ in dep.targets
                if t.local is not None and t.version == str(t.local)
            ]
        local_refs = store.assets.record_inputs(local, run_id=run.id)
        result = _generate(
            store, run.id, be, items, done, spec, results_path, concurrency, progress
        )
        result.resumed = resumed
        result.work_dir = str(work)
        if result.failed and not spec.allow_errors:
            raise BatchFailed(
                f"{result.failed} of {result.rows} rows failed (first: {result.errors[0]}); "
                f"the {result.succeeded} finished rows are kept in {work}: rerun the same "
                "command to retry the failed rows, or add --allow-errors to register the rest"
            )
        result.output = _register(
            store, run.id, items, done, input_ref, models, spec, result, local_refs, prompt_ref
        )
    except KeyboardInterrupt:
        store.runs.finish(run.id, RunStatus.CANCELLED, "interrupted")
        raise
    except BaseException as e:
        store.runs.finish(run.id, RunStatus.FAILED, f"{type(e).__name__}: {e}")
        raise
    store.runs.finish(run.id, RunStatus.SUCCEEDED)
    shutil.rmtree(work, ignore_errors=True)  # the results now live in the store
    return result


def _generate(
    store: Any,
    run_id: str,
    be: Backend,
    items: list[Item],
    done: dict[int, dict[str, Any]],
    spec: BatchSpec,
    results_path: Path,
    concurrency: int,
    progress: ProgressFn | None,
) -> BatchResult:
    """Answer every row not finished yet; ``done`` is updated with each new record."""
    todo = [it for it in items if not (it.index in done and done[it.index]["ok"])]
    started = time.perf_counter()
    generated = failed_now = 0  # by this invocation (earlier failures are being retried)
    finished = len(items) - len(todo)  # rows with an answer, kept up to date
    last_log = started

    def log() -> None:
        elapsed = time.perf_counter() - started
        store.runs.log_metrics(
            run_id,
            {
                "rows": finished,
                "errors": sum(1 for r in done.values() if not r["ok"]),
                "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in done.values()),
                "completion_tokens": sum(r.get("completion_tokens", 0) for r in done.values()),
                "rows_per_s": generated / elapsed if elapsed > 0 else 0.0,
            },
            finished,
        )

    async def main() -> None:
        queue: asyncio.Queue[Item] = asyncio.Queue()
        for it in todo:
            queue.put_nowait(it)
        with open(results_path, "a", encoding="utf-8") as out:

            async def worker() -> None:
                nonlocal generated, failed_now, finished, last_log
                while True:
                    try:
                        it = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    t0 = time.perf_counter()
                    rec: dict[str, Any]
                    try:
                        a = await be.complete(it, spec)
                        a.latency_ms = round((time.perf_counter() - t0) * 1000, 1)
                        rec = {"i": it.index, "ok": True, **asdict(a)}
                        generated += 1
                        finished += 1
                    except Exception as e:  # a failure of this row, whatever it is
                        msg = str(e) if isinstance(e, RowFailed) else f"{type(e).__name__}: {e}"
                        rec = {"i": it.index, "ok": False, "error": msg}
                        failed_now += 1
                    # one write per line, flushed: a kill loses at most the line being written
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    out.flush()
                    done[it.index] = rec
                    if progress is not None:
                        progress(finished + failed_now, len(items), failed_now)
                    if time.perf_counter() - last_log >= _METRICS_EVERY_S:
                        last_log = time.perf_counter()
                        log()

            try:
                await asyncio.gather(*(worker() for _ in range(min(concurrency, len(todo)) or 1)))
            finally:
                await be.aclose()  # its connections belong to this loop

    if progress is not None:
        progress(finished, len(items), 0)
    if todo:
        asyncio.run(main())
    seconds = time.perf_counter() - started
    log()
    answers = [r for r in done.values() if r["ok"]]
    filtered = sum(1 for r in answers if r.get("filtered"))
    by_index = {it.index: it for it in items}
    errors = [f"{by_index[i].where}: {done[i]['error']}" for i in sorted(done) if not done[i]["ok"]]
    return BatchResult(
        output=None,
        run_id=run_id,
        rows=len(items),
        succeeded=len(answers) - filtered,
        failed=len(done) - len(answers),
        empty=sum(1 for r in answers if not r["text"].strip() and not r.get("filtered")),
        filtered=filtered,
        written=0,
        resumed=0,
        generated=generated,
        prompt_tokens=sum(int(r["prompt_tokens"]) for r in answers),
        completion_tokens=sum(int(r["completion_tokens"]) for r in answers),
        seconds=round(seconds, 3),
        rows_per_s=round(generated / seconds, 3) if seconds > 0 else 0.0,
        work_dir="",
        errors=errors[:10],
    )


def _register(
    store: Any,
    run_id: str,
    items: list[Item],
    done: dict[int, dict[str, Any]],
    input_ref: str | None,
    models: list[tuple[str, float, bool]],
    spec: BatchSpec,
    result: BatchResult,
    local_refs: list[tuple[str, str]],
    prompt_ref: str | None = None,
) -> str:
    """Write data.jsonl (+ _failed.jsonl) in input order and register them as a dataset,
    with lineage to the input and the models (``local_refs``: the local ones)."""
    kept = 0
    with tempfile.TemporaryDirectory(prefix="lmops-batch-") as tmp:
        folder = Path(tmp) / spec.output
        folder.mkdir()
        with (
            open(folder / "data.jsonl", "w", encoding="utf-8") as data,
            open(folder / "_failed.jsonl", "w", encoding="utf-8") as failed,
        ):
            for it in items:
                rec = done.get(it.index)
                if rec is None:  # unreachable: every row is answered or failed
                    raise RuntimeError(f"{it.where}: no result")
                row: dict[str, Any] = {} if it.id is None else {"id": it.id}
                prompt = rec.get("prompt") or it.messages  # as the model got it (masked)
                if rec["ok"] and not rec.get("filtered") and rec["text"].strip():
                    row["messages"] = [*prompt, {"role": "assistant", "content": rec["text"]}]
                    row["metadata"] = {
                        "source": it.where,
                        "model": rec["model"],
                        **({"prompt_ref": prompt_ref} if prompt_ref else {}),
                        "finish_reason": rec["finish_reason"],
                        "prompt_tokens": rec["prompt_tokens"],
                        "completion_tokens": rec["completion_tokens"],
                        "latency_ms": rec["latency_ms"],
                    }
                    data.write(json.dumps(row, ensure_ascii=False) + "\n")
                    kept += 1
                else:
                    error = rec.get("error") or "the model answered with empty text"
                    if rec.get("filtered"):
                        error = f"refused by the guardrails ({rec['filtered']}): {rec['refusal']}"
                    row.update({"source": it.where, "messages": prompt, "error": error})
                    failed.write(json.dumps(row, ensure_ascii=False) + "\n")
        result.written = kept
        if kept == 0:
            raise BatchFailed(
                f"no row got an answer ({result.failed} failed, {result.empty} empty, "
                f"{result.filtered} refused by the guardrails); nothing was registered"
            )
        if not result.failed and not result.empty and not result.filtered:
            (folder / "_failed.jsonl").unlink()
        inputs: list[tuple[str, str]] = [(input_ref, "input")] if input_ref else []
        inputs += [(v, "model") for v, _, is_ref in models if is_ref]
        inputs += [(prompt_ref, "prompt")] if prompt_ref else []
        inputs += local_refs
        v = store.assets.register(
            "dataset",
            spec.output,
            folder,
            metadata={
                "format": "sft_chat",
                "rows": kept,
                "failed": result.failed,
                "empty": result.empty,
                "filtered": result.filtered,
                "input": input_ref or spec.input,
                "models": [m for m, _, _ in models],
                **({"prompt_ref": prompt_ref, "variables": spec.variables} if prompt_ref else {}),
                "params": {**spec.params(), "seed": spec.seed},
            },
            inputs=inputs,
            run_id=run_id,
            description=f"batch answers of {input_ref or spec.input}",
        )
    return str(v.ref)
