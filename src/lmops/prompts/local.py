"""A local model as a :class:`~lmops.prompts.lm.ChatModel`, with no server: the gateway's
own deployment (engine and backend, as ``lmops serve batch`` uses them) in this process.

    with LocalChat(store, "smol@production") as model:   # a model asset ref or a folder
        optimize(store, start, task, model, settings)

The engine runs on one event loop in a background thread; :meth:`LocalChat.complete` is
called from the optimiser's worker threads and waits for its answer, so the engine
batches the requests in flight exactly as it does behind ``lmops serve``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from types import TracebackType
from typing import Any

from lmops.prompts.lm import EndpointError

__all__ = ["LocalChat"]

Messages = list[dict[str, str]]


class LocalChat:
    """``model`` (an asset ref or a model folder) served in-process under the name ``name``;
    counts its calls like :class:`~lmops.prompts.lm.OpenAIChat`. Close it (or use it as a
    context manager) to stop the engine."""

    def __init__(self, store: Any, model: str, *, name: str = "local", max_running: int = 8):
        from lmops.serve.batch import backend_for
        from lmops.serve.deployments import Deployment, DeploymentSpec

        self.model = model
        self.calls = 0
        self._ids = itertools.count()
        self._dep = Deployment(
            DeploymentSpec(name=name, model=model, max_running=max_running), store
        )
        self._backend = backend_for(self._dep)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def complete(self, messages: Messages, **params: Any) -> str:
        from lmops.serve.batch import BatchSpec, Item, RowFailed

        self.calls += 1
        index = next(self._ids)
        spec = BatchSpec(
            input="-",
            output="-",
            max_tokens=int(params.get("max_tokens") or 256),
            temperature=float(params.get("temperature") or 0.0),
            # the batch backend seeds a row with seed + index: undo it, so a call's seed is
            # the one asked for (the journal replays answers by id, not by seed)
            seed=int(params.get("seed") or 0) - index,
        )
        item = Item(index=index, where=f"{self.model}#{index}", messages=messages)
        future = asyncio.run_coroutine_threadsafe(self._backend.complete(item, spec), self._loop)
        try:
            return future.result().text
        except RowFailed as e:
            raise EndpointError(f"{self.model} (in-process): {e}") from None

    def close(self) -> None:
        if not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._backend.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._dep.close()
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
