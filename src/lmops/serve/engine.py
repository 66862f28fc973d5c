"""The built-in engine: a Hugging Face causal LM with continuous batching.

One worker thread owns the model. Each iteration it (1) admits queued requests while
fewer than ``max_running`` sequences run — each new sequence's prompt is prefilled on its
own and its KV cache joins the batch — then (2) decodes one token for every running
sequence in a single forward pass. A request that arrives while others decode therefore
joins at the next step, not after the batch drains.

The batch KV cache is left-padded: every layer holds keys/values of shape
(running, kv_heads, T, head_dim) where shorter sequences have padding on the left, masked
out by the attention mask (running, T); position ids are each sequence's own positions.
A finished or cancelled sequence's row is removed at once, freeing its slot.

Text is streamed incrementally: the generated ids are decoded and only the new, complete
suffix is sent (a trailing partial UTF-8 character is held back). Stop strings end a
sequence with ``finish_reason="stop"``; the stop string itself is not sent.

With ``GenRequest.logprobs`` each generated token's delta carries a ``TokenLogprob``: its
log-probability under the model (before temperature and top-p), its exact bytes, and the
``top_logprobs`` most likely tokens at that step.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError
from lmops.serve.types import Delta, Done, GenRequest, TokenLogprob

__all__ = ["Engine", "EngineOverloaded"]


class EngineOverloaded(Exception):
    """The queue is full; the client should retry later (HTTP 503)."""


@dataclass
class _Seq:
    req: GenRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta | Done]
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    text_chars: int = 0  # length of the decoded generated text so far
    cancelled: bool = False
    done: str | None = None  # the finish reason once finished
    generator: Any = None
    enqueued: float = field(default_factory=time.perf_counter)
    # The engine's outbox: events wait there until the worker hands a whole step's events
    # to the event loop at once (Engine._flush). Without one, each event is sent alone.
    outbox: list[tuple[_Seq, Delta | Done]] | None = None

    def emit(self, event: Delta | Done) -> None:
        if self.outbox is None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        else:
            self.outbox.append((self, event))


def _deliver(events: list[tuple[_Seq, Delta | Done]]) -> None:
    for s, ev in events:
        s.queue.put_nowait(ev)


class Engine:
    def __init__(
        self,
        model_path: Path,
        *,
        max_running: int = 8,
        max_queue: int = 64,
        device: str = "auto",
        name: str | None = None,
        max_context: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmops.train.models import CHATML, quiet_transformers, select_device

        quiet_transformers()
        self.device = select_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(model_path), dtype=torch.bfloat16 if self.device == "cuda" else torch.float32
            )
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {model_path}: {e}") from None
        self.model = model.to(self.device).eval()
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = CHATML
        self.name = name or model_path.name
        self.eos_ids = {
            i
            for i in [
                self.tokenizer.eos_token_id,
                self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            ]
            if isinstance(i, int) and i >= 0
        }
        self.max_context = max_context or int(
            getattr(self.model.config, "max_position_embeddings", 2048) or 2048
        )
        self.max_running = max_running
        self.max_queue = max_queue
        self._pending: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self._cache: list[tuple[Any, Any]] | None = None  # per layer (keys, values), left-padded
        self._mask: Any = None  # (running, T)
        self._positions: list[int] = []  # next position id per running row
        self._pieces: dict[int, tuple[str, list[int]]] = {}  # token id -> (text, bytes)
        self._byte_level = _is_byte_level(self.tokenizer)
        self._outbox: list[tuple[_Seq, Delta | Done]] = []  # filled by the worker thread only
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="lmops-engine", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(self, req: GenRequest) -> AsyncIterator[Delta | Done]:
        """Queue ``req`` and yield its deltas, then one ``Done``. Breaking out of the
        iteration (a client disconnect) cancels the sequence and frees its slot."""
        assert req.prompt_ids is not None
        seq = _Seq(req, asyncio.get_running_loop(), asyncio.Queue(), outbox=self._outbox)
        with self._cv:
            # a request waits in `pending` until the worker admits it: there is room while
            # free running slots plus the queue's size exceed what is already waiting
            free_slots = self.max_running - len(self._running)
            if len(self._pending) >= free_slots + self.max_queue:
                raise EngineOverloaded(
                    f"{len(self._running)} running and {len(self._pending)} queued "
                    f"(max_running {self.max_running}, max_queue {self.max_queue})"
                )
            self._pending.append(seq)
            self._cv.notify()
        try:
            while True:
                event = await seq.queue.get()
                yield event
                if isinstance(event, Done):
                    return
        finally:
            seq.cancelled = True  # no-op if it finished; frees the slot if the client left
            with self._cv:
                self._cv.notify()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised last hidden states (one forward per text)."""
        import torch

        out = []
        for t in texts:
            ids = self.encode(t)[: self.max_context] or [self.tokenizer.eos_token_id or 0]
            with torch.inference_mode():
                h = self.model(
                    input_ids=torch.tensor([ids], device=self.device),
                    output_hidden_states=True,
                    use_cache=False,
                ).hidden_states[-1][0]
            v = h.float().mean(0)
            out.append((v / (v.norm() + 1e-12)).tolist())
        return out

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # -- worker ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        while True:
            with self._cv:
                while not self._stop and not self._pending and not self._running:
                    self._cv.wait()
                if self._stop:
                    return
                admit: list[_Seq] = []
                while self._pending and len(self._running) + len(admit) < self.max_running:
                    s = self._pending.popleft()
                    if not s.cancelled:
                        admit.append(s)
            try:
                with torch.inference_mode():
                    for s in admit:
                        self._prefill(s)
                    self._flush()  # first tokens out now, not after the decode step
                    self._drop_finished()
                    if self._running:
                        self._decode_step()
                        self._drop_finished()
            except Exception as e:  # never let one bad step kill the engine
                for s in list(self._running) + admit:
                    s.emit(
                        Done(
                            "error",
                            len(s.req.prompt_ids or []),
                            len(s.generated),
                            f"{type(e).__name__}: {e}",
                        )
                    )
                self._running, self._cache, self._mask, self._positions = [], None, None, []
            self._flush()

    def _flush(self) -> None:
        """Hand the step's events to their event loops, one wake-up per loop: waking a loop
        (a write to its self-pipe) per token costs more than the token's own work."""
        if not self._outbox:
            return
        events = list(self._outbox)
        self._outbox.clear()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Seq, Delta | Done]]] = {}
        for s, ev in events:
            by_loop.setdefault(s.loop, []).append((s, ev))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _sample(self, s: _Seq, logits: Any) -> tuple[int, float, list[tuple[int, float]]]:
        """The next token, its logprob, and the ``top_logprobs`` most likely (id, logprob)
        pairs when the request asked for them (most likely first)."""
        import torch

        logits = logits.float()
        logprobs = torch.log_softmax(logits, -1)
        t = s.req.temperature
        if t <= 1e-5:
            tok = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / t, -1)
            if s.req.top_p < 1.0:
                sorted_p, idx = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, -1) - sorted_p < s.req.top_p
                keep[0] = True  # the most likely token always (top_p can round to 0 here)
                probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
                probs = probs / probs.sum()
            if s.generator is None:
                s.generator = torch.Generator(device="cpu")
                s.generator.manual_seed(
                    s.req.seed if s.req.seed is not None else int(time.time_ns() % 2**31)
                )
            tok = int(torch.multinomial(probs.cpu(), 1, generator=s.generator))
        top: list[tuple[int, float]] = []
        k = min(s.req.top_logprobs, logprobs.shape[-1]) if s.req.logprobs else 0
        if k > 0:
            values, ids = torch.topk(logprobs, k)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        return tok, float(logprobs[tok]), top

    def _prefill(self, s: _Seq) -> None:
        import torch

        ids = s.req.prompt_ids or []
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        cache = out.past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self._join(s, layers, len(ids))
        self._accept(s, *self._sample(s, out.logits[0, -1]))

    def _join(self, s: _Seq, layers: list[tuple[Any, Any]], length: int) -> None:
        """Add a prefilled sequence to the left-padded batch cache."""
        import torch
        import torch.nn.functional as F

        mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        if self._cache is None:
            self._cache, self._mask = layers, mask
        else:
            t_old, t_new = self._mask.shape[1], length
            t = max(t_old, t_new)
            # pad (…, T, D) tensors on the left of the T dimension
            pad_old, pad_new = t - t_old, t - t_new
            self._cache = [
                (
                    torch.cat([F.pad(k0, (0, 0, pad_old, 0)), F.pad(k1, (0, 0, pad_new, 0))], 0),
                    torch.cat([F.pad(v0, (0, 0, pad_old, 0)), F.pad(v1, (0, 0, pad_new, 0))], 0),
                )
                for (k0, v0), (k1, v1) in zip(self._cache, layers, strict=True)
            ]
            self._mask = torch.cat([F.pad(self._mask, (pad_old, 0)), F.pad(mask, (pad_new, 0))], 0)
        self._running.append(s)
        self._positions.append(length)

    def _decode_step(self) -> None:
        import torch
        from transformers import DynamicCache

        assert self._cache is not None
        last = torch.tensor([[s.generated[-1]] for s in self._running], device=self.device)
        positions = torch.tensor([[p] for p in self._positions], device=self.device)
        mask = torch.cat(
            [self._mask, torch.ones((len(self._running), 1), dtype=torch.long, device=self.device)],
            1,
        )
        cache = DynamicCache(ddp_cache_data=self._cache)
        out = self.model(
            input_ids=last,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        self._cache = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._mask = mask
        self._positions = [p + 1 for p in self._positions]
        logits = out.logits[:, -1]
        # Greedy rows that want no logprobs: one log-softmax and max over all of them
        # instead of a few small tensor ops per row (the same token and logprob as _sample).
        greedy = [
            i
            for i, s in enumerate(self._running)
            if s.req.temperature <= 1e-5 and not s.req.logprobs
        ]
        picked: dict[int, tuple[int, float]] = {}
        if greedy:
            rows = logits if len(greedy) == len(self._running) else logits[greedy]
            best, idx = torch.log_softmax(rows.float(), -1).max(-1)
            picked = dict(zip(greedy, zip(idx.tolist(), best.tolist(), strict=True), strict=True))
        for i, s in enumerate(self._running):
            if i in picked:
                self._accept(s, *picked[i])
            else:
                self._accept(s, *self._sample(s, logits[i]))

    def _accept(
        self, s: _Seq, tok: int, logprob: float, top: list[tuple[int, float]] | None = None
    ) -> None:
        """Record a sampled token, stream its text, and decide whether ``s`` is done."""
        prompt_len = len(s.req.prompt_ids or [])
        if s.cancelled:
            return
        if tok in self.eos_ids:
            self._finish(s, "stop")
            return
        s.generated.append(tok)
        text = self._text(s)
        detail = None
        if s.req.logprobs:
            detail = self._token_logprob(tok, logprob, top or [], s.text_chars, len(text))
        s.text_chars = len(text)
        # a multi-byte character is not complete yet: hold its replacement char back
        text_ready = text[:-1] if text.endswith("\ufffd") else text
        for stop in s.req.stop:
            at = text.find(stop)
            if stop and at != -1:
                if at > s.sent_chars or detail is not None:
                    s.emit(Delta(text[s.sent_chars : max(at, s.sent_chars)], tok, logprob, detail))
                s.sent_chars = at
                self._finish(s, "stop")
                return
        # hold back a tail that could be the start of a stop string
        hold = max((len(st) - 1 for st in s.req.stop), default=0)
        ready_upto = max(s.sent_chars, len(text_ready) - hold)
        if ready_upto > s.sent_chars:
            s.emit(Delta(text_ready[s.sent_chars : ready_upto], tok, logprob, detail))
            s.sent_chars = ready_upto
        elif s.req.logprobs:
            s.emit(Delta("", tok, logprob, detail))
        if (
            len(s.generated) >= s.req.max_tokens
            or prompt_len + len(s.generated) >= self.max_context
        ):
            self._finish(s, "length")

    def _token_logprob(
        self, tok: int, logprob: float, top: list[tuple[int, float]], start: int, end: int
    ) -> TokenLogprob:
        text, raw = self._piece(tok)
        alternatives = []
        for i, lp in top:
            t, b = self._piece(i)
            alternatives.append(TokenLogprob(t, lp, b))
        return TokenLogprob(text, logprob, raw, alternatives, start, end)

    def _piece(self, tok: int) -> tuple[str, list[int]]:
        """A token's own text and exact UTF-8 bytes (cached per id)."""
        hit = self._pieces.get(tok)
        if hit is not None:
            return hit
        text = str(self.tokenizer.decode([tok], skip_special_tokens=False))
        raw = text.encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(tok)
        if isinstance(piece, str) and tok not in self.tokenizer.all_special_ids:
            if self._byte_level and all(c in _UNICODE_TO_BYTE for c in piece):
                raw = bytes(_UNICODE_TO_BYTE[c] for c in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                raw = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        hit = (text, list(raw))
        self._pieces[tok] = hit
        return hit

    def _text(self, s: _Seq) -> str:
        return str(self.tokenizer.decode(s.generated, skip_special_tokens=True))

    def _finish(self, s: _Seq, reason: str) -> None:
        text = self._text(s)
        stopped_by_string = any(st and st in text for st in s.req.stop)
        if (reason != "stop" or not stopped_by_string) and len(text) > s.sent_chars:
            s.emit(Delta(text[s.sent_chars :]))
            s.sent_chars = len(text)
        s.done = reason
        s.emit(Done(reason, len(s.req.prompt_ids or []), len(s.generated)))

    def _drop_finished(self) -> None:
        import torch

        keep = [i for i, s in enumerate(self._running) if s.done is None and not s.cancelled]
        if len(keep) == len(self._running):
            return
        for i, s in enumerate(self._running):
            if i not in keep and s.cancelled and s.done is None:
                s.emit(Done("cancelled", len(s.req.prompt_ids or []), len(s.generated)))
        if not keep:
            self._running, self._cache, self._mask, self._positions = [], None, None, []
            return
        idx = torch.tensor(keep, device=self.device)
        assert self._cache is not None
        self._cache = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self._cache]
        self._mask = self._mask.index_select(0, idx)
        # drop leading columns that are padding for every remaining row
        first = int(self._mask.any(0).nonzero()[0])
        if first:
            self._cache = [(k[:, :, first:], v[:, :, first:]) for k, v in self._cache]
            self._mask = self._mask[:, first:]
        self._running = [self._running[i] for i in keep]
        self._positions = [self._positions[i] for i in keep]


def _byte_table() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character map: bytes that print
    (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves, the others for
    ``chr(256 + n)`` in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_UNICODE_TO_BYTE = _byte_table()


def _is_byte_level(tokenizer: Any) -> bool:
    """True for tokenizers whose pieces are byte-level BPE strings (GPT-2, Qwen, Llama 3)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel"
