"""A local model as a :class:`~lmops.prompts.lm.ChatModel`, with no server: the serving
engine (``lmops.models.engine``, continuous batching, as behind ``lmops serve``) in this
process.

    with LocalChat(store, "smol@production") as model:   # a model asset ref or a folder
        optimize(store, start, task, model, settings)

The engine's requests run on one event loop in a background thread; :meth:`LocalChat.complete`
is called from the optimiser's worker threads and waits for its answer, so the engine batches
the requests in flight. It sits on the model layer, not on the gateway, so the prompt stage
never imports the serve stage (which imports prompts to bind them).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from lmops.prompts.lm import EndpointError

__all__ = ["LocalChat"]

Messages = list[dict[str, str]]


class LocalChat:
    """``model`` (a model or adapter asset ref, or a model folder) on an in-process engine;
    counts its calls like :class:`~lmops.prompts.lm.OpenAIChat`. Close it (or use it as a
    context manager) to stop the engine."""

    def __init__(self, store: Any, model: str, *, name: str = "local", max_running: int = 8):
        from lmops.models.engine import Engine
        from lmops.models.loading import merged_view, resolve_local

        self.model = model
        self.calls = 0
        self._ids = itertools.count()
        path, _ = resolve_local(model, store, kind="model")
        if (Path(path) / "adapter_config.json").exists():
            path = merged_view(Path(path), store)
        self._engine = Engine(Path(path), max_running=max_running, name=name)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def complete(self, messages: Messages, **params: Any) -> str:
        return self._run(self._engine.encode_chat(list(messages)), params)

    def takes_text(self) -> tuple[bool, str]:
        return True, "the in-process engine takes plain text, as lmops serve's /v1/completions"

    def complete_text(self, prompt: str, **params: Any) -> str:
        """The reply to a plain-text ``prompt``, encoded as ``/v1/completions`` encodes it
        (no chat template, no special tokens; an empty one is the end-of-text token)."""
        eos = self._engine.tokenizer.eos_token_id or 0
        return self._run(self._engine.encode(prompt) or [eos], params)

    def _run(self, prompt_ids: list[int], params: dict[str, Any]) -> str:
        from lmops.models.types import GenRequest

        self.calls += 1
        stop = params.get("stop") or []
        req = GenRequest(
            request_id=f"prompts-local-{next(self._ids)}",
            prompt_ids=prompt_ids,
            max_tokens=int(params.get("max_tokens") or 256),
            temperature=float(params.get("temperature") or 0.0),
            seed=int(params.get("seed") or 0),
            stop=[stop] if isinstance(stop, str) else list(stop),
        )
        future = asyncio.run_coroutine_threadsafe(self._generate(req), self._loop)
        return future.result()

    async def _generate(self, req: Any) -> str:
        from lmops.models.types import Delta, Done

        parts: list[str] = []
        async for batch in self._engine.submit(req):
            for ev in batch:
                if isinstance(ev, Delta):
                    parts.append(ev.text)
                elif isinstance(ev, Done) and ev.finish_reason == "error":
                    raise EndpointError(f"{self.model} (in-process): {ev.error or 'failed'}")
        return "".join(parts)

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._engine.close()
        self._loop.close()

    def __enter__(self) -> LocalChat:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
