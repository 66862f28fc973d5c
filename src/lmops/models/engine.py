"""The built-in engine: a Hugging Face causal LM with continuous batching.

One worker thread owns the model. Each iteration it (1) admits queued requests while
fewer than ``max_running`` sequences run — the prompts admitted together are prefilled
in one forward pass (left-padded, in groups of similar length) and their KV caches join
the batch — then (2) decodes one token for every running sequence in a single forward
pass. A request that arrives while others decode therefore joins at the next step, not
after the batch drains.

Prompts admitted together that start with the same tokens share them (``models/prefill.py``,
``models/sequences.py``): the choices of a multiple-choice question scored through
``/v1/completions`` (``echo``, ``max_tokens: 0``, one prompt per choice: lm-eval's
``local-completions``, ``lmops eval --endpoint``), a request's ``n`` choices, prompts behind
one long system prompt. Each distinct prefix runs once, in a first pass with the prompts
that share none; each prompt's rest runs in a second pass on a copy of its prefix's keys
and values — two passes whatever the number of prefixes, taken where they save at least
``SHARE_MIN_SAVED`` tokens. A scored prompt's logprobs are its prefix's, computed once,
then its rest's: what a pass over the whole prompt gives, up to float rounding. (vLLM's
automatic prefix caching keeps prefixes across requests too; here a prefix lives for the
one prefill, plus the one ``cache_prefix`` keeps for an evaluation call's few-shot prefix.)

The batch KV cache is left-padded: every layer holds keys/values of shape
(running, kv_heads, T, head_dim) where shorter sequences have padding on the left, masked
out by the attention mask (running, T); position ids are each sequence's own positions.
The cache object lives across steps (the forward pass appends to it), and the decode step
hands the model its 4D mask where that is what the model would build itself. A finished
or cancelled sequence's row is removed at once, freeing its slot.

Sliding-window models (Mistral; Qwen2 with ``use_sliding_window``; Gemma 2/3, whose local and
global layers alternate; ``models/attention.py``): transformers' masks count a window in cache
columns, which is each row's own tokens as long as a row's tokens are contiguous, as left
padding, joins (both sides padded on the left) and decode steps keep them. So these models
batch as they run alone (``tests/models/test_window.py``), with no row holding a hole (prefix
sharing and the cached few-shot prefix are off for them). Where every layer slides over one
window, the batch cache keeps only its last ``window - 1`` columns (``_trim_window``; the
prefill hands the model a plain cache, every column in every layer). Where local and global
layers mix (Gemma 2/3), the local layers alone keep their last ``window - 1`` columns, laid out
as transformers' own cache lays them (``_fit_local``), from which the model builds each kind of
layer's mask; memory and step cost then grow only in the global layers. GPT-Neo, whose layers
window themselves from one mask for all, keeps every column, and so does a model that is not
transformers' own masking its local layers from their cache layers and fails a one-time check
that it decodes from the trimmed cache as from a whole one, or has a window too large for that
check to be cheap (``models/attention.py``, ``untrimmable``).

Next tokens are picked for the whole batch at once (greedy rows by argmax, sampled rows by
temperature and top-p, each from its own seeded random stream).

Text is streamed incrementally: each step decodes only a short window of the latest ids
(the prefix/read-offset technique of TGI and vLLM) and sends the new, complete suffix (a
trailing partial UTF-8 character is held back), so a token costs the same at the 2000th
position as at the first. Stop strings end a sequence with ``finish_reason="stop"`` at the
earliest place any of them occurs; the stop string itself is not sent.

A failure while sampling or decoding one sequence ends only that sequence (``Done`` with
``finish_reason="error"``); a failed forward pass ends every sequence in the batch.

With ``GenRequest.logprobs`` each generated token's delta carries a ``TokenLogprob``: its
log-probability under the model (after logit_bias, the penalties and a grammar's mask,
before temperature and top-p), its exact bytes, and the ``top_logprobs`` most likely tokens
at that step.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError
from lmops.models.attention import (
    common_window,
    fit_local,
    full_attention,
    local_cache,
    local_windows,
    takes_4d_mask,
    untrimmable,
)
from lmops.models.chat import ControlTokenError, Literals, caller_strings
from lmops.models.compat import cache_arg, output_cache
from lmops.models.logits import adjust_rows
from lmops.models.prefill import Prefiller
from lmops.models.sampling import pick_tokens
from lmops.models.sequences import SHARE_MIN_SAVED, Events, Seq, deliver, prefill_groups
from lmops.models.tokens import (
    Pieces,
    control_pattern,
    earliest_stop,
    generation_defaults,
    longest_token_chars,
    text_decoder,
    text_of,
)
from lmops.models.types import Delta, Done, GenRequest

__all__ = ["ControlTokenError", "Engine", "EngineOverloaded", "generation_defaults"]


class EngineOverloaded(Exception):
    """The queue is full; the client should retry later (HTTP 503)."""


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
        loaded: tuple[Any, Any] | None = None,
        share_prefixes: bool = True,
    ) -> None:
        """``loaded``: a ``(model, tokenizer)`` pair the caller already loaded on ``device``
        and keeps using (evaluation scores log-likelihoods with the same model), instead
        of loading ``model_path`` again; the engine may set the tokenizer's chat template,
        so pass a copy of one whose template matters. ``share_prefixes=False`` runs every
        prompt of a prefill group whole, shared prefix or not (to measure what sharing
        saves: ``benchmarks/prefix_share_bench.py``)."""
        import torch
        from transformers import AutoTokenizer

        from lmops.models.loading import CHATML, load_causal_lm, quiet_transformers, select_device

        quiet_transformers()
        self.device = select_device(device)
        if loaded is not None:
            model, self.tokenizer = loaded
        else:
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
                # load_causal_lm also reads the quantized folders of lmops deploy quantize
                model = load_causal_lm(
                    model_path,
                    dtype=torch.bfloat16 if self.device == "cuda" else torch.float32,
                    device=self.device,
                )
            except (OSError, ValueError) as e:
                raise UserError(f"cannot load model {model_path}: {e}") from None
        self.model = model.to(self.device).eval()
        # a model without a chat template is served with ChatML, said at start-up, in
        # /v1/models and in each request's access-log line (it may not be what it learned)
        self.chat_template_fallback = not getattr(self.tokenizer, "chat_template", None)
        if self.chat_template_fallback:
            self.tokenizer.chat_template = CHATML
            logging.getLogger("lmops.serve").warning(
                "model %s has no chat template; chat requests use ChatML "
                "(<|im_start|>role ...), which it may not have been trained on",
                model_path,
            )
        self.generation_defaults = generation_defaults(model_path)
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
        # called on the worker thread once per exception that ends sequences (with the first
        # one's request id), before it admits more: True where the caller cures that failure
        # itself (eval lowers max_running when memory ran out and generates those again),
        # which is logged at debug then
        self.on_failure: Callable[[Exception, str], bool] | None = None
        self._pending: collections.deque[Seq] = collections.deque()
        self._running: list[Seq] = []
        # The batch KV cache: one DynamicCache kept across steps (the forward pass appends
        # each step's keys/values to it); _join and _drop_finished edit its layers' tensors.
        self._cache: Any = None
        self._mask: Any = None  # (running, T) bool, True where a row has a real token
        self._positions: Any = None  # (running, 1) long: the next position id per row
        # cache_prefix's (token ids, their per-layer keys/values once computed), replaced
        # whole so the worker never sees the ids of one prefix with the cache of another
        self._prefix: tuple[tuple[int, ...], list[tuple[Any, Any]] | None] | None = None
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad = pad if isinstance(pad, int) and pad >= 0 else 0
        self._cache_arg = cache_arg(self.model)
        self._mask_4d = takes_4d_mask(self.model) and self._same_with_4d_mask()
        # logits for the last position only (the prefill's logits would otherwise be
        # (prompt, vocab) floats per sequence), where the model's forward takes it
        self._last_logits = (
            {"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters
            else {}
        )
        full = full_attention(self.model)
        # local layers (their window) mixed with global ones (None): the batch cache is
        # laid out as the model's own (_fit_local), which the prefill lets it make, where
        # the model masks it as it masks every column (transformers' own, or checked once
        # where the window is small); else it keeps them all
        self._local = local_windows(self.model)
        if self._local and (why := untrimmable(self.model, self._local, self._cache_arg, pad)):
            logging.getLogger("lmops.serve").warning(
                "%s: %s; they keep every column", type(self.model).__name__, why
            )
            self._local = None
        self._prefiller = Prefiller(
            self.model,
            self.device,
            self._pad_id,
            self._cache_arg,
            self._last_logits,
            whole_cache=not full and self._local is None,
        )
        # where every layer slides over the same window, the columns before a row's last
        # window - 1 are never read again: the batch cache keeps only those (_trim_window)
        self._window = common_window(self.model)
        # prompts admitted together that share a prefix run it once when that saves this
        # many tokens (models/sequences.py); None: never. Not with sliding-window layers:
        # a shared prefix's row has padding between the prefix and the rest, and a window
        # counts cache columns, padding included
        # (and not where the model reads cache columns for positions, as MPT's ALiBi does:
        # checked once, _holes_harmless); the cached few-shot prefix makes the same holes
        self._holes_ok = full and self._holes_harmless()
        self.share_min_saved: int | None = (
            SHARE_MIN_SAVED if share_prefixes and self._holes_ok else None
        )
        self._pieces = Pieces(self.tokenizer)  # token id -> text, bytes; logprob entries
        self._control = control_pattern(self.tokenizer)
        # a byte-level vocabulary spells some characters with several symbols: its entries
        # are never shorter in symbols than in the characters they decode to
        self.max_token_chars = longest_token_chars(self.tokenizer)
        self._decode = text_decoder(self.tokenizer)
        self._outbox: list[tuple[Seq, Delta | Done]] = []  # filled by the worker thread only
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

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        control_tokens: str = "escape",
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The prompt ids of a chat: the model's template around the messages' text.

        Text inside a message, a tool call or a tool's definition is never read as the
        tokenizer's special tokens: a user who writes ``<|im_end|>\n<|im_start|>system``
        gets those characters as ordinary text, not a forged turn. ``control_tokens=
        "refuse"`` raises :class:`ControlTokenError` instead. Chats without any
        special-token string (nearly all) are encoded in one call; otherwise each string
        holding one is spliced into the rendered template at its place (JSON-escaped where
        the template writes JSON) and encoded with ``split_special_tokens=True``
        (:class:`lmops.models.chat.Literals`, which training encodes with too).
        """
        literals = Literals(self.tokenizer, self._control)
        if control_tokens == "refuse":
            forged = next(
                (p for p, t in caller_strings(messages, tools) if literals.holds(t)), None
            )
            if forged is not None:
                raise ControlTokenError(forged)
        marked = literals.template(messages, tools, add_generation_prompt=add_generation_prompt)
        return literals.encode(marked).ids

    def _has_control(self, content: Any) -> bool:
        text = text_of(content)
        return bool(text) and self._control is not None and self._control.search(text) is not None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def surely_too_long(self, chars: int) -> bool:
        """Whether a text of ``chars`` characters is longer than the context whatever its
        tokens: no token is longer than the longest piece of the vocabulary. Checked before
        tokenizing, so a huge prompt costs nothing."""
        return chars > self.max_context * self.max_token_chars

    async def generate(self, req: GenRequest) -> AsyncIterator[Delta | Done]:
        """Queue ``req`` and yield its deltas, then one ``Done``. Breaking out of the
        iteration (a client disconnect) cancels the sequence and frees its slot."""
        async for batch in self.generate_batches(req):
            for event in batch:
                yield event

    async def generate_batches(self, req: GenRequest) -> AsyncIterator[list[Delta | Done]]:
        """As :meth:`generate`, but each wake-up yields every event that has arrived: one
        per step while the consumer keeps up, several when it fell behind, so a server can
        answer them with one write instead of one per token (the ``Done`` is always the
        last event of the last batch)."""
        events = self.submit(req)
        try:
            async for batch in events:
                yield batch
        finally:
            await events.aclose()

    def submit(self, req: GenRequest) -> Events:
        """Queue ``req`` now and return its event batches (as :meth:`generate_batches`).

        The queue is checked here, before anything is iterated: a full engine raises
        :class:`EngineOverloaded` while the caller can still answer with a status (a 503)
        instead of a stream that breaks off. Call it on the event loop that will iterate."""
        return self.submit_all([req])[0]

    def submit_all(self, reqs: list[GenRequest]) -> list[Events]:
        """:meth:`submit` for several sequences (the ``n`` choices of one request): all of
        them are queued, or none is."""
        loop = asyncio.get_running_loop()
        seqs = []
        for req in reqs:
            assert req.prompt_ids is not None
            seqs.append(Seq(req, loop, asyncio.Queue(), outbox=self._outbox))
        with self._cv:
            # a request waits in `pending` until the worker admits it: there is room while
            # free running slots plus the queue's size exceed what is already waiting
            free_slots = self.max_running - len(self._running)
            if len(self._pending) + len(seqs) > free_slots + self.max_queue:
                raise EngineOverloaded(
                    f"{len(self._running)} running and {len(self._pending)} queued "
                    f"(max_running {self.max_running}, max_queue {self.max_queue})"
                )
            self._pending.extend(seqs)
            self._cv.notify()
        return [Events(self._cancel, seq) for seq in seqs]

    def cache_prefix(self, ids: list[int]) -> None:
        """Keep the keys and values of the tokens ``ids``: prompts that start with them and
        go on are prefilled from there instead of from their first token (the few-shot
        examples every prompt of an evaluation task starts with). One prefix at a time,
        computed at its first use; an empty list forgets it."""
        if self._prefix is None or self._prefix[0] != tuple(ids):
            self._prefix = (tuple(ids), None) if ids else None

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _same_with_4d_mask(self) -> bool:
        """Whether a decode step given the 4D mask computes what the model computes from
        the 2D one: checked once, on a left-padded batch of two, in case a model reads the
        2D mask for more than its attention mask (ALiBi biases, say)."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
        ids = torch.tensor([[self._pad_id, 1, 2], [3, 4, 5]], device=self.device) % vocab
        mask = torch.tensor([[False, True, True], [True, True, True]], device=self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        step = {"input_ids": ids[:, -1:], "position_ids": positions[:, -1:] + 1, "use_cache": True}
        step_mask = F.pad(mask, (0, 1), value=True)
        try:
            with torch.inference_mode():
                out = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
                )
                layers = [(layer.keys, layer.values) for layer in output_cache(out).layers]
                logits = [
                    self.model(
                        attention_mask=m,
                        **{self._cache_arg: DynamicCache(ddp_cache_data=layers)},
                        **step,
                    ).logits.float()
                    for m in (step_mask, step_mask[:, None, None, :])
                ]
        except Exception:  # a model that does not take one
            return False
        return bool(torch.allclose(logits[0], logits[1], rtol=1e-3, atol=1e-4))

    def _holes_harmless(self) -> bool:
        """Whether padding in the middle of a row (masked, with positions going on past it:
        what a shared prefix and its rest leave) gives the model's output without it:
        checked once, on a short row with a hole of four. A model whose position bias
        reads cache columns (MPT's ALiBi) or that takes no position ids fails it."""
        import torch

        vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
        real = [3, 5, 7, 11, 13, 17]
        ids = torch.tensor([real], device=self.device) % vocab
        holed = torch.tensor([real[:3] + [self._pad_id] * 4 + real[3:]], device=self.device)
        mask = torch.tensor([[True] * 3 + [False] * 4 + [True] * 3], device=self.device)
        positions = torch.tensor([[0, 1, 2, 2, 2, 2, 2, 3, 4, 5]], device=self.device)
        try:
            with torch.inference_mode():
                a = self.model(input_ids=ids, position_ids=positions[:, [0, 1, 2, 7, 8, 9]],
                               use_cache=False).logits[0, -1].float()  # fmt: skip
                b = self.model(input_ids=holed % vocab, attention_mask=mask,
                               position_ids=positions, use_cache=False).logits[0, -1].float()  # fmt: skip
        except Exception:  # a model that takes no position ids or no such mask
            return False
        a, b = a.log_softmax(-1), b.log_softmax(-1)
        exact = next(self.model.parameters()).dtype == torch.float32
        tol = 1e-3 if exact else 2e-2
        return bool(torch.allclose(a, b, rtol=tol, atol=tol))

    def _cancel(self, seq: Seq) -> None:
        seq.cancelled = True  # no-op if it finished; frees the slot if the client left
        with self._cv:
            self._cv.notify()

    # -- worker ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        while True:
            with self._cv:
                while not self._stop and not self._pending and not self._running:
                    self._cv.wait()
                if self._stop:
                    return
                admit: list[Seq] = []
                while self._pending and len(self._running) + len(admit) < self.max_running:
                    s = self._pending.popleft()
                    if not s.cancelled:
                        admit.append(s)
            try:
                with torch.inference_mode():
                    for group in prefill_groups(admit, self.share_min_saved):
                        self._prefill(group.seqs, group.shared)
                    self._flush()  # first tokens out now, not after the decode step
                    self._drop_finished()
                    if self._running:
                        self._decode_step()
                        self._drop_finished()
            except Exception as e:  # never let one bad step kill the engine
                for s in [*self._running, *admit]:
                    if s.done is None:
                        self._fail(s, e)
                self._running, self._cache, self._mask, self._positions = [], None, None, None
            self._flush()

    _failed: int | None = None  # id() of the exception _fail logged last

    def _fail(self, s: Seq, e: Exception) -> None:
        """End ``s`` with ``finish_reason="error"``; _drop_finished frees its row. The
        traceback goes to the server log, once per exception (a failed forward pass ends
        every sequence of the batch), at debug where ``on_failure`` cures it; the client
        gets one line (``engine_error``)."""
        if self._failed != id(e):
            self._failed = id(e)
            cured = self.on_failure is not None and self.on_failure(e, s.req.request_id)
            logging.getLogger("lmops.serve").log(
                logging.DEBUG if cured else logging.ERROR,
                "the model failed while generating %s", s.req.request_id, exc_info=e,
            )  # fmt: skip
        s.done = "error"
        s.emit(
            Done("error", len(s.req.prompt_ids or []), len(s.generated), f"{type(e).__name__}: {e}")
        )

    def _flush(self) -> None:
        """Hand the step's events to their event loops, one wake-up per loop: waking a loop
        (a write to its self-pipe) per token costs more than the token's own work."""
        if not self._outbox:
            return
        events = list(self._outbox)
        self._outbox.clear()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Seq, Delta | Done]]] = {}
        for s, ev in events:
            by_loop.setdefault(s.loop, []).append((s, ev))
        for loop, items in by_loop.items():
            # a closed loop (its caller is gone) has nobody left to read these
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, items)

    _pick = staticmethod(pick_tokens)  # tests call it on an engine

    def _prefill(self, group: list[Seq], shared: list[int] | None = None) -> None:
        """Prefill the prompts of ``group`` (:mod:`lmops.models.prefill`): after the cached
        prefix where every prompt starts with it, sharing the prefixes ``shared`` says they
        share (the stems pass, then the rests pass), or left-padded in one pass; then join
        them to the batch and accept each one's first token. If a pass fails, the prompts
        are prefilled again one by one, plainly, so that only the one at fault fails."""
        import torch

        prompts = [s.req.prompt_ids or [] for s in group]
        lengths = [len(p) for p in prompts]
        scored = group[0].req.prompt_logprobs is not None  # a group of scored prompts only
        try:
            prefix = None if scored else self._prefix_of(group)
            if prefix is not None:
                run = self._prefiller.after_prefix(prompts, *prefix)
            elif shared and any(shared):
                run = self._prefiller.shared(prompts, shared, scored)
            else:
                run = self._prefiller.plain(prompts, scored)
        except Exception as e:
            if len(group) == 1:
                self._fail(group[0], e)
            else:
                for s in group:
                    self._prefill([s])
            return
        mask, logits = run.mask, run.logits
        going = list(range(len(group)))
        if scored:  # each prompt's own logprobs first; those that generate go on
            going = []
            for i, (s, n) in enumerate(zip(group, lengths, strict=True)):
                try:
                    k = s.req.prompt_logprobs or 0
                    scores = self._pieces.prompt_logprobs(prompts[i], run.prompt_logits(i), k)
                    s.emit(Delta("", prompt_logprobs=scores))
                except Exception as e:
                    self._fail(s, e)
                    continue
                if s.req.max_tokens <= 0:  # only the prompt was asked for
                    s.done = "length"
                    s.emit(Done("length", n, 0))
                else:
                    going.append(i)
            if not going:
                return
        try:  # (a shared group's rows are assembled here: an allocation that may fail)
            layers = run.layers()
        except Exception as e:
            for i in going:
                self._fail(group[i], e)
            return
        if len(going) < len(group):
            keep = torch.tensor(going, device=self.device)
            layers = [(k[keep], v[keep]) for k, v in layers]
            group = [group[i] for i in going]
            mask, logits = mask[keep], logits[keep]
            lengths = [lengths[i] for i in going]
        self._join(group, layers, mask, lengths)
        self._accept_all(group, logits)

    def _prefix_of(self, group: list[Seq]) -> tuple[int, list[tuple[Any, Any]]] | None:
        """(length, per-layer keys/values) of the cached prefix when every prompt of
        ``group`` starts with it and goes on; computed here the first time."""
        prefix = self._prefix
        if prefix is None or not self._holes_ok:
            return None
        ids, layers = prefix
        n = len(ids)
        for s in group:
            prompt = s.req.prompt_ids or []
            if len(prompt) <= n or tuple(prompt[:n]) != ids:
                return None
        if layers is None:
            # (1, kv_heads, n, head_dim) per layer
            layers = self._prefiller.prefix_layers(list(ids))
            if self._prefix is prefix:
                self._prefix = (ids, layers)
        return n, layers

    def _join(
        self, seqs: list[Seq], layers: list[tuple[Any, Any]], mask: Any, lengths: list[int]
    ) -> None:
        """Add prefilled sequences (their left-padded cache ``layers`` and ``mask``, of
        shape (len(seqs), T)) to the left-padded batch cache."""
        import torch
        import torch.nn.functional as F

        position = torch.tensor([[n] for n in lengths], device=self.device)
        length = mask.shape[1]
        windows = self._local or [None] * len(layers)
        if self._cache is None:
            # DynamicLayers (and a mixed model's DynamicSlidingWindowLayers) whose tensors
            # _join and _drop_finished may replace
            self._cache = local_cache(layers, windows)
            self._mask, self._positions = mask, position
        else:
            t_old, t_new = self._mask.shape[1], length
            t = max(t_old, t_new)
            pad_old, pad_new = t - t_old, t - t_new
            for layer, (k1, v1), w in zip(self._cache.layers, layers, windows, strict=True):
                # pad (…, T, D) tensors on the left of the T dimension to the layer's width:
                # t columns, a local layer's last min(t, window - 1)
                width = t if w is None else min(t, w - 1)
                k0, v0 = layer.keys, layer.values
                pad0, pad1 = width - k0.shape[2], width - k1.shape[2]
                layer.keys = torch.cat([F.pad(k0, (0, 0, pad0, 0)), F.pad(k1, (0, 0, pad1, 0))], 0)
                layer.values = torch.cat(
                    [F.pad(v0, (0, 0, pad0, 0)), F.pad(v1, (0, 0, pad1, 0))], 0
                )
            self._mask = torch.cat([F.pad(self._mask, (pad_old, 0)), F.pad(mask, (pad_new, 0))], 0)
            self._positions = torch.cat([self._positions, position], 0)
        self._running.extend(seqs)
        self._trim_window()
        self._fit_local()

    def _fit_local(self) -> None:
        """Lay a mixed model's local layers out as its own cache does for the mask's T
        columns (:func:`lmops.models.attention.fit_local`)."""
        if self._local is not None:
            fit_local(self._cache, self._local, self._mask.shape[1])

    def _trim_window(self) -> None:
        """Keep the batch cache's last ``window - 1`` columns where every layer slides
        over ``window`` tokens: the next step's token (its column T) reads the columns
        after T - window, and every row's tokens are contiguous up to its last column, so
        a column counts the same tokens back in every row. The model sizes its mask from
        the cache, which then holds what a sliding-window cache holds."""
        if self._window is None or self._mask.shape[1] < self._window:
            return
        keep = self._window - 1
        self._mask = self._mask[:, -keep:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[:, :, -keep:], layer.values[:, :, -keep:]

    def _decode_step(self) -> None:
        import torch
        import torch.nn.functional as F

        assert self._cache is not None
        last = torch.tensor([[s.generated[-1]] for s in self._running], device=self.device)
        mask = F.pad(self._mask, (0, 1), value=True)  # (running, T + 1)
        out = self.model(
            input_ids=last,
            # (running, 1, 1, T + 1): the mask sdpa gets, which the model would otherwise
            # rebuild from the 2D one every step
            attention_mask=mask[:, None, None, :] if self._mask_4d else mask,
            position_ids=self._positions,
            **{self._cache_arg: self._cache},
            use_cache=True,
        )
        self._mask = mask
        self._positions = self._positions + 1
        self._trim_window()
        self._accept_all(self._running, out.logits[:, -1])

    def _accept_all(self, seqs: list[Seq], logits: Any) -> None:
        """Pick and accept the next token of each of ``seqs`` from its row of ``logits``. A
        sequence whose request cannot be sampled, or whose token fails to be accepted,
        fails alone (the others' rows are picked again without it)."""
        adjust_rows(seqs, logits)  # logit_bias and penalties (models/logits.py), then
        for i, s in enumerate(seqs):  # grammar masks (models/grammar.py), row by row
            if s.req.constraint is not None:
                s.req.constraint.mask(logits[i])
        try:
            picks = self._pick(seqs, logits)
        except Exception as e:
            if len(seqs) == 1:
                self._fail(seqs[0], e)
                return
            picks = []
            for i, s in enumerate(seqs):  # find the one at fault
                try:
                    picks.append(self._pick([s], logits[i : i + 1])[0])
                except Exception as err:
                    self._fail(s, err)
                    picks.append((-1, 0.0, []))
        for s, (tok, logprob, top) in zip(seqs, picks, strict=True):
            if s.done is not None:
                continue
            try:
                self._accept(s, tok, logprob, top)
            except Exception as e:  # this sequence's failure, not the batch's
                self._fail(s, e)

    def _accept(
        self, s: Seq, tok: int, logprob: float, top: list[tuple[int, float]] | None = None
    ) -> None:
        """Record a sampled token, stream its text, and decide whether ``s`` is done."""
        prompt_len = len(s.req.prompt_ids or [])
        if s.cancelled:
            return
        if tok in self.eos_ids:
            s.eos = True  # a generated token like any other: counted in completion_tokens
            tail = None
            if s.req.logprobs and s.req.eos_logprob:
                # its entry, after all the text and adding none (vLLM's completions send
                # it too: echo scoring reads one entry per generated token)
                end = s.text_chars
                tail = Delta(
                    "", tok, logprob, self._pieces.entry(tok, logprob, top or [], end, end)
                )
            self._finish(s, "stop", tail)
            return
        s.generated.append(tok)
        stops = s.req.stop
        # longest text a stop string can span before it is complete
        hold = max((len(st) - 1 for st in stops), default=0) if stops else 0
        # an occurrence that starts before here lies in text an earlier step already searched
        search_from = max(0, len(s.stable) - hold)
        text, extended = self._detokenize(s)
        detail = None
        if s.req.logprobs:
            detail = self._pieces.entry(tok, logprob, top or [], s.text_chars, len(text))
        s.text_chars = len(text)
        # a multi-byte character is not complete yet: hold its replacement chars back (byte
        # fallback decodes each of its bytes so far to one)
        text_ready = text.rstrip("\ufffd")
        left = s.req.max_tokens - len(s.generated)
        complete = s.req.constraint is not None and s.req.constraint.advance(tok, text, left)
        if stops:
            at = earliest_stop(text, stops, search_from if extended else 0)
            if at != -1:
                if at > s.sent_chars or detail is not None:
                    s.emit(Delta(text[s.sent_chars : max(at, s.sent_chars)], tok, logprob, detail))
                s.sent_chars = at
                self._finish(s, "stop")
                return
        # hold back a tail that could be the start of a stop string
        ready_upto = max(s.sent_chars, len(text_ready) - hold)
        if ready_upto > s.sent_chars:
            s.emit(Delta(text_ready[s.sent_chars : ready_upto], tok, logprob, detail))
            s.sent_chars = ready_upto
        elif s.req.logprobs:
            s.emit(Delta("", tok, logprob, detail))
        if complete:  # the grammar allows nothing more than the end, or wants it now
            self._finish(s, "stop")
        elif (
            len(s.generated) >= s.req.max_tokens
            or prompt_len + len(s.generated) >= self.max_context
        ):
            self._finish(s, "length")

    def _detokenize(self, s: Seq) -> tuple[str, bool]:
        """The text of all of ``s.generated``, ``tokenizer.decode(generated,
        skip_special_tokens=True)``, decoding only the ids from ``s.prefix`` on; and whether
        it extends ``s.stable`` (False after a whole-sequence decode). Exact for byte-level
        BPE; with byte-fallback pieces, an unfinished run of them that is not UTF-8 yet may
        count fewer U+FFFDs than whole-sequence decoding (which then garbles the run's
        earlier characters too), until the run ends.

        The last token is decoded together with the ones since ``s.prefix`` (context that
        tokenizers such as SentencePiece need for leading spaces); the new text is what that
        window's decoding adds to ``s.window``. Once the text does not end in U+FFFD (the
        decoding of an incomplete UTF-8 sequence) it is whole: it becomes ``s.stable`` and
        the window moves on to start where the old one's read part ended."""
        ids = s.generated
        new = self._decode(ids[s.prefix :])
        extended = new.startswith(s.window)
        # if decoding the window changed text before it, fall back to the whole sequence
        text = s.stable + new[len(s.window) :] if extended else self._decode(ids)
        if not text.endswith("\ufffd"):
            s.stable = text
            s.prefix, s.read = s.read, len(ids)
            s.window = self._decode(ids[s.prefix : s.read])
        return text, extended

    def _text(self, s: Seq) -> str:
        return self._decode(s.generated)

    def _finish(self, s: Seq, reason: str, tail: Delta | None = None) -> None:
        text = self._text(s)
        if reason == "length" and s.req.whole_chars:
            text = text.rstrip("\ufffd")
        stopped_by_string = any(st and st in text for st in s.req.stop)
        if (reason != "stop" or not stopped_by_string) and len(text) > s.sent_chars:
            s.emit(Delta(text[s.sent_chars :]))
            s.sent_chars = len(text)
        if tail is not None:  # the end token's logprob entry
            s.emit(tail)
        s.done = reason
        s.emit(Done(reason, len(s.req.prompt_ids or []), len(s.generated) + s.eos))

    def _drop_finished(self) -> None:
        import torch

        keep = [i for i, s in enumerate(self._running) if s.done is None and not s.cancelled]
        if len(keep) == len(self._running):
            return
        for i, s in enumerate(self._running):
            if i not in keep and s.cancelled and s.done is None:
                s.emit(Done("cancelled", len(s.req.prompt_ids or []), len(s.generated)))
        if not keep:
            self._running, self._cache, self._mask, self._positions = [], None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        assert self._cache is not None
        self._mask = self._mask.index_select(0, idx)
        # drop leading columns that are padding for every remaining row
        first = int(self._mask.any(0).nonzero()[0])
        self._mask = self._mask[:, first:]
        for i, layer in enumerate(self._cache.layers):
            # a local layer's columns are the mask's last ones: _fit_local cuts them
            cols = slice(None) if self._local and self._local[i] else slice(first, None)
            layer.keys = layer.keys.index_select(0, idx)[:, :, cols]
            layer.values = layer.values.index_select(0, idx)[:, :, cols]
        self._running = [self._running[i] for i in keep]
        self._positions = self._positions.index_select(0, idx)
        self._fit_local()
