"""Model backends for evaluation: one protocol, a local and an endpoint implementation (the
endpoint's, ``eval.endpoint.OpenAIEvalModel``, and the scripted fake,
``eval.fake.FakeEvalModel``, are exported here too).

``loglikelihood(requests)`` returns, per ``(context, continuation)``, the summed log
probability of the continuation and whether it is the greedy continuation; it encodes
exactly as lm-evaluation-harness 0.4's HF backend does (trailing whitespace of the context
moves to the continuation; the context and the whole string are tokenized with the
tokenizer's own special tokens unless the text already starts with the prefix token; an
empty context is replaced by the prefix token: BOS, else end-of-text), so both tools score
the same tokens and pick the same choices.

``apply_chat_template(messages, add_generation_prompt)`` renders a prompt's turns for
``--apply-chat-template`` as lm-eval's HF backend does (the tokenizer's template; an opened
assistant turn is continued; a template that refuses the system role gets the turns
without it). An endpoint keeps the turns (``ChatPrompt``) and sends them as chat messages.

Speed (results equal lm-eval's up to float32 rounding, about 1e-6 per token):

- Each distinct context runs through the model once (batches of contexts, longest first,
  right-padded), keeping its KV cache when a continuation needs it; only the logits at its last position (which
  predict every continuation's first token) go through the output layer. A question
  whose choices are single tokens (" A".." D") is then done.
- A prefix that every context of the call starts with (a task's description and
  few-shot examples: ``evaluate`` sends one task per call) runs once; each batch of
  contexts continues from a copy of its cache.
- Multi-token continuations run in a second pass on top of a copy of their context's
  cached keys and values, so the context is not recomputed once per choice; only the
  continuation positions are projected to the vocabulary.
- Log-probabilities are ``logit[target] - logsumexp(logits)`` at those positions: the
  full ``log_softmax`` over (batch, length, vocabulary) is never materialized.

``batch_size`` is the number of sequences per forward pass (contexts in the first pass,
continuations in the second); ``"auto"`` is at most 32 on a CPU, and on a GPU halves from 64
until a batch of zeros of the call's longest context fits (once per length). A batch that
still runs out of memory is tried again in halves, and the smaller size kept for the rest of
the call and, in later calls, for contexts as long or longer (``eval._batching``; shorter ones
are not held back); ``batches_run`` logs the sizes that ran, which the report records.
Generation's batch is the sequences decoding together on the engine (``batch_size``, 8 with
``"auto"``): from the first forward pass that runs out of memory the engine decodes half as
many together (those still waiting start at that size at once), the sequences that ran out
are generated again, the others' replies kept, and the smaller size is kept for later calls;
a size at which a generation ran out is not recorded as one that ran. The engine's error for
such a pass goes to the debug log: eval's warning says what was done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lmops.core.errors import UserError
from lmops.eval._batching import (
    Batches,
    ItemFailed,
    _free_cached_memory,
    is_out_of_memory,
    says_out_of_memory,
)
from lmops.eval.endpoint import ChatPrompt, EndpointDown, OpenAIEvalModel
from lmops.eval.fake import FakeEvalModel
from lmops.models.compat import cache_arg, output_cache

__all__ = [
    "ChatPrompt",
    "EndpointDown",
    "EvalModel",
    "FakeEvalModel",
    "HFEvalModel",
    "OpenAIEvalModel",
]

log = logging.getLogger("lmops.eval")

# A prefix shared by every context of a call is run once when it has at least this many
# tokens (below that, copying its cache costs about what it saves).
_MIN_SHARED_PREFIX = 8
# Sequences decoding together when generating with batch_size "auto": decoding is one
# token per sequence per step, so memory is not the limit; lm-eval's batch size 8.
_AUTO_GEN_BATCH = 8


@dataclass
class _OutOfMemory:
    """A generation the engine ended because memory ran out (its one-line error)."""

    error: str


@dataclass
class _OutOfMemoryAt:
    """A forward pass of the engine that ran out of memory: the sequences decoding together
    before and after it was halved, the first sequence it ended, the error in one line."""

    before: int
    after: int
    request_id: str
    error: str


class EvalModel(Protocol):
    """Scores and generations. A model that can render chat prompts also has
    ``apply_chat_template(messages, add_generation_prompt) -> str`` (all three here do),
    and ``has_chat_template``: whether that template is the model's own (its tokenizer's,
    or its server's), which is when ``prompt_style(apply_chat_template=None)`` uses it."""

    name: str

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]: ...
    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]: ...
    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]: ...


@dataclass
class _Encoded:
    index: int
    context: list[int]
    continuation: list[int]


def _plain_dynamic_cache(cache: Any) -> bool:
    """Whether ``cache`` is a full-attention ``DynamicCache`` whose rows can be copied into a
    new one (sliding-window, linear-attention and other caches are not)."""
    if cache is None:
        return False
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return type(cache) is DynamicCache and all(
        type(layer) is DynamicLayer for layer in cache.layers
    )


def _copy_rows(cache: Any, rows: Any) -> Any:
    """A new ``DynamicCache`` holding ``cache``'s batch rows ``rows`` (R,), in that order:
    (R, heads, length, head_dim) keys and values per layer. A copy, since a forward on
    top of a cache appends to it."""
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


class HFEvalModel:
    """A local Hugging Face causal LM (a folder, or an asset's folder)."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        batch_size: int | str = "auto",
        max_length: int | None = None,
        name: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        from lmops.models.loading import load_causal_lm, quiet_transformers, select_device

        quiet_transformers()
        self.device = select_device(device)
        self.name = name or str(path)
        self.path = path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            # load_causal_lm also reads the quantized folders of lmops deploy quantize
            model: Any = load_causal_lm(
                path,
                dtype=torch.bfloat16 if self.device == "cuda" else torch.float32,
                device=self.device,
            )
            self.model = model.to(self.device)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {path}: {e}") from None
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eot = self.tokenizer.eos_token_id
        # lm-eval's prefix token: an empty context is replaced by it, and a text that starts
        # with its string is tokenized without adding special tokens again
        bos = self.tokenizer.bos_token_id
        self.prefix_id: int = bos if bos is not None else self.eot
        self._prefix_text: str | None = (
            None if self.prefix_id is None else str(self.tokenizer.decode(self.prefix_id))
        )
        # Generation stops at the model's end-of-sequence tokens (its generation config, as
        # transformers' generate does for lm-eval) and also at ChatML's end of turn, as the
        # serving engine does: decoding drops <|im_end|>, so whatever a chat model writes
        # after its turn would otherwise run into its answer.
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        im_end = self.tokenizer.get_vocab().get("<|im_end|>")
        self.stop_ids = [
            i for i in dict.fromkeys([self.eot, *gen_eos, im_end]) if isinstance(i, int)
        ]
        cfg = self.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 2048
        self.batch_size = batch_size
        # the batch sizes each call ran with, in order (a call that split a batch adds each
        # size: eval.run reports a task's); context length -> the largest size that may run
        # for contexts that long or longer, since a batch of them ran out of memory; "auto"
        # on a GPU: context length -> a size that fitted
        self.batches_run: list[int] = []
        self._oom_caps: dict[int, int] = {}
        self._fits: dict[int, int] = {}
        self.truncated = 0  # requests cut to fit max_length (reported, never silent)
        # transformers' CausalLMs take ``logits_to_keep`` (positions, or a bool mask) and
        # project only those hidden states to the vocabulary
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._cache_arg = cache_arg(self.model)
        self._gen_engine: Any = None  # models.engine.Engine, made at the first generation
        self._oom_at: list[_OutOfMemoryAt] = []  # the current generate call's
        # generate() is given this many requests at a time (progress moves per call): the
        # engine keeps its batch full within a call, and refills it only from that call
        self.generate_chunk = 8 * (batch_size if isinstance(batch_size, int) else _AUTO_GEN_BATCH)

    # -- encoding as lm-evaluation-harness does ------------------------------------------------------
    def _tok(self, s: str) -> list[int]:
        return self._tok_many([s])[0]

    def _tok_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids as lm-eval 0.4's ``HFLM.tok_encode``: with the tokenizer's own special
        tokens (a Llama tokenizer's BOS), except for a text that already starts with the
        prefix token (a chat template that writes the BOS itself)."""
        out: list[list[int]] = [[] for _ in texts]
        for plain in (False, True):
            pre = self._prefix_text
            idx = [
                i for i, t in enumerate(texts) if (pre is not None and t.startswith(pre)) == plain
            ]
            if idx:
                kw = {"add_special_tokens": False} if plain else {}
                ids = self.tokenizer([texts[i] for i in idx], **kw)["input_ids"]
                for i, row in zip(idx, ids, strict=True):
                    out[i] = list(row)
        return out

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer has a chat template (an instruct model's, usually)."""
        return bool(self.tokenizer.chat_template)

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> str:
        """The prompt through the tokenizer's chat template, as lm-eval's HF backend renders
        it: ``add_generation_prompt`` opens the assistant turn, else the last (assistant)
        turn is continued; a template that refuses the system role gets the turns without
        it."""
        import jinja2

        if not self.tokenizer.chat_template:
            raise UserError(
                f"{self.name}: the tokenizer has no chat template (tokenizer_config.json "
                "chat_template); add one or drop --apply-chat-template"
            )
        kw: dict[str, Any] = {
            "tokenize": False,
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": not add_generation_prompt,
        }
        try:
            return str(self.tokenizer.apply_chat_template(messages, **kw))
        except jinja2.exceptions.TemplateError:
            plain = [m for m in messages if m["role"] != "system"]
            return str(self.tokenizer.apply_chat_template(plain, **kw))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(
        self, requests: Sequence[tuple[str, str]]
    ) -> list[tuple[list[int], list[int]]]:
        """``(context tokens, continuation tokens)`` per request, as lm-eval encodes them:
        the continuation is what the whole string's tokens hold beyond the context's. One
        tokenizer call for the distinct contexts and one for the whole strings."""
        pairs = []
        for context, continuation in requests:
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces > 0:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            pairs.append((context, continuation))
        distinct = list(dict.fromkeys(c for c, _ in pairs if c))
        context_ids = dict(zip(distinct, self._tok_many(distinct), strict=True))
        wholes = self._tok_many([c + x for c, x in pairs if c])
        empty = [x for c, x in pairs if not c]
        alone = iter(self.tokenizer(empty, add_special_tokens=False)["input_ids"] if empty else [])
        whole_of = iter(wholes)
        out = []
        for context, _ in pairs:
            if context == "":
                # the prefix token as the context, unless the continuation starts with it
                cont = list(next(alone))
                if cont and cont[0] == self.prefix_id:
                    out.append((cont[:1], cont[1:]))
                else:
                    out.append(([self.prefix_id], cont))
            else:
                ctx = context_ids[context]
                out.append((ctx, next(whole_of)[len(ctx) :]))
        return out

    # -- scoring -------------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        encoded = [_Encoded(i, *pair) for i, pair in enumerate(self.encode_pairs(requests))]
        return self._score(encoded)

    def _score(self, encoded: list[_Encoded]) -> list[tuple[float, bool]]:
        import torch

        results: list[tuple[float, bool]] = [(0.0, True)] * len(encoded)  # empty continuations
        by_context: dict[tuple[int, ...], list[_Encoded]] = {}
        for e in encoded:
            n = len(e.continuation)
            if n == 0:
                continue
            if len(e.context) + n > self.max_length + 1:
                # As lm-eval: keep the last max_length + 1 tokens; the context loses its start.
                self.truncated += 1
                cont = e.continuation[-self.max_length :]
                window = (e.context + e.continuation)[-(self.max_length + 1) :]
                e = _Encoded(e.index, window[: len(window) - len(cont)], cont)
            by_context.setdefault(tuple(e.context), []).append(e)
        contexts = sorted(by_context, key=len, reverse=True)
        if not contexts:
            return results
        with torch.inference_mode():
            shared = self._shared_prefix(contexts)

        def answer(chunk: Sequence[tuple[int, ...]]) -> list[list[tuple[int, tuple[float, bool]]]]:
            """Per context of the batch: (request index, (log-likelihood, greedy)) of each of
            its requests."""
            # (row, request) for every request whose context is in this batch
            reqs = [(row, e) for row, c in enumerate(chunk) for e in by_context[c]]
            multi = [(row, e) for row, e in reqs if len(e.continuation) > 1]
            lengths = torch.tensor([len(c) for c in chunk], device=self.device)  # (B,)
            with torch.inference_mode():
                # Pass 1: the contexts; logits only at their last positions: (B, V)
                cache, logits = self._contexts(list(chunk), lengths, shared, keep_cache=bool(multi))
                rows = torch.tensor([row for row, _ in reqs], device=self.device)
                first = torch.tensor([e.continuation[0] for _, e in reqs], device=self.device)
                # log p(first token | context) = logit - logsumexp(logits), per request
                first_lp = logits[rows, first] - torch.logsumexp(logits, -1)[rows]
                first_hit = logits.argmax(-1)[rows] == first
                # Pass 2: the other tokens of multi-token continuations, on the cache
                rest = self._continuations(cache, list(chunk), lengths, multi, batches.size)
            out: list[list[tuple[int, tuple[float, bool]]]] = [[] for _ in chunk]
            for (row, e), lp, hit in zip(reqs, first_lp.tolist(), first_hit.tolist(), strict=True):
                more_lp, more_hit = rest.get(e.index, (0.0, True))
                out[row].append((e.index, (lp + more_lp, bool(hit and more_hit))))
            return out

        # a batch that runs out of memory is split, the smaller size kept for the rest of
        # this call (shorter contexts: the longest come first) and, in later calls, for
        # contexts as long or longer (eval._batching)
        longest = len(contexts[0])
        batches = Batches(min(self._batch_size(longest), self._oom_cap(longest)))
        try:
            for scored in batches.run(contexts, answer, lambda c: by_context[c][0].index):
                for index, value in scored:
                    results[index] = value
        finally:
            for first, size in batches.splits:
                length = len(first)
                self._oom_caps[length] = min(size, self._oom_caps.get(length, size))
        self.batches_run += batches.used
        return results

    def _shared_prefix(self, contexts: list[tuple[int, ...]]) -> tuple[int, Any] | None:
        """The tokens every context starts with (a task's description and few-shot
        examples: one task's requests come in one call) run once: ``(length, cache)``, or
        None when that prefix is short or its cache cannot be copied. Each context keeps
        at least one token of its own, whose logits predict the continuation."""
        if len(contexts) < 2:
            return None
        n = min(len(c) for c in contexts) - 1
        first = contexts[0]
        for c in contexts[1:]:
            n = next((i for i in range(n) if c[i] != first[i]), n)  # first difference
            if n < _MIN_SHARED_PREFIX:
                return None
        last = self._pad([[n - 1]])  # (1, 1): only one position's logits, never used
        out, _ = self._logits(last, input_ids=self._pad([list(first[:n])]), use_cache=True)
        return (n, output_cache(out)) if _plain_dynamic_cache(output_cache(out)) else None

    def _contexts(
        self,
        chunk: list[tuple[int, ...]],
        lengths: Any,
        shared: tuple[int, Any] | None,
        keep_cache: bool,
    ) -> tuple[Any, Any]:
        """Pass 1 over a batch of contexts, right-padded: the KV cache (when
        ``keep_cache``; row i holds context i at positions ``< lengths[i]``) and float32
        logits at each context's last position, (B, V)."""
        import torch

        if shared is None:
            # (B, Lc); causal attention keeps the right padding out of every real
            # position, so no attention mask is needed (and SDPA takes its causal path)
            out, logits = self._logits(
                (lengths - 1)[:, None],
                input_ids=self._pad([list(c) for c in chunk]),
                use_cache=keep_cache,
            )
            return output_cache(out), logits[:, 0]
        # The shared prefix's cache, one row per context: (B, heads, P, head_dim) per
        # layer; the rest of each context goes on top, at positions P.. (B, Lr); the mask
        # (B, P + Lr) hides the padding of the rest.
        n, prefix = shared
        rows = torch.zeros(len(chunk), dtype=torch.long, device=self.device)
        rest = self._pad([list(c[n:]) for c in chunk])
        width = rest.shape[1]
        own = torch.arange(width, device=self.device) < (lengths - n)[:, None]  # (B, Lr)
        out, logits = self._logits(
            (lengths - n - 1)[:, None],
            input_ids=rest,
            attention_mask=torch.cat([own.new_ones(len(chunk), n), own], 1).long(),
            position_ids=n + torch.arange(width, device=self.device).expand(len(chunk), width),
            **{self._cache_arg: _copy_rows(prefix, rows)},
            use_cache=True,
        )
        return output_cache(out), logits[:, 0]

    def _continuations(
        self,
        cache: Any,
        contexts: list[tuple[int, ...]],
        lengths: Any,
        multi: list[tuple[int, _Encoded]],
        bs: int,
    ) -> dict[int, tuple[float, bool]]:
        """Pass 2: the log-probability of tokens 2..n of each multi-token continuation (and
        whether each is the argmax), keyed by request index. A continuation of n tokens
        feeds its first n - 1 tokens on top of its context's cached keys and values;
        without a reusable cache, it feeds the context again in front of them."""
        import torch

        reusable = _plain_dynamic_cache(cache)
        out: dict[int, tuple[float, bool]] = {}
        multi = sorted(multi, key=lambda re: -len(re[1].continuation))  # less padding
        for start in range(0, len(multi), bs):
            part = multi[start : start + bs]
            rows = torch.tensor([row for row, _ in part], device=self.device)  # (R,)
            conts = [e.continuation for _, e in part]
            # inputs (R, Lx): each continuation but its last token; targets: the next tokens
            inputs, targets = self._pad([c[:-1] for c in conts]), self._pad([c[1:] for c in conts])
            n_new = torch.tensor([len(c) - 1 for c in conts], device=self.device)  # (R,)
            width = inputs.shape[1]
            valid = torch.arange(width, device=self.device) < n_new[:, None]  # (R, Lx)
            if reusable:
                # The contexts' cache, one row per continuation: (R, heads, Lc, head_dim) per
                # layer (a copy: the forward appends to it). The mask hides each context's
                # padding (R, Lc + Lx); positions continue each context: (R, Lx).
                past = _copy_rows(cache, rows)
                ctx_width = cache.layers[0].keys.shape[-2]
                ctx_mask = torch.arange(ctx_width, device=self.device) < lengths[rows][:, None]
                _, logits = self._logits(
                    valid,
                    input_ids=inputs,
                    attention_mask=torch.cat([ctx_mask, valid], 1).long(),
                    position_ids=lengths[rows][:, None] + torch.arange(width, device=self.device),
                    **{self._cache_arg: past},
                    use_cache=True,
                )
            else:
                seqs = [list(contexts[row]) + e.continuation[:-1] for row, e in part]
                full = self._pad(seqs)  # (R, Lc + Lx), right-padded
                pos = torch.arange(full.shape[1], device=self.device)
                begin = lengths[rows][:, None]
                keep = (pos >= begin) & (pos < begin + n_new[:, None])  # continuation positions
                _, logits = self._logits(keep, input_ids=full, use_cache=False)
            # logits: (M, V) for the M = valid.sum() real positions, row-major like targets[valid]
            target = targets[valid]  # (M,)
            lp = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, -1)
            hit = logits.argmax(-1) == target
            row_of = torch.arange(len(part), device=self.device)[:, None].expand_as(valid)[valid]
            sums = torch.zeros(len(part), dtype=torch.float64, device=self.device)
            sums.index_add_(0, row_of, lp.double())  # (R,)
            hits = torch.zeros(len(part), dtype=torch.long, device=self.device)
            hits.index_add_(0, row_of, hit.long())
            greedy = hits == n_new
            for (_, e), s, g in zip(part, sums.tolist(), greedy.tolist(), strict=True):
                out[e.index] = (s, bool(g))
        return out

    def _pad(self, seqs: list[list[int]]) -> Any:
        """Right-padded (len(seqs), longest) token ids on the model's device."""
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        rows = [s + [pad] * (width - len(s)) for s in seqs]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _logits(self, keep: Any, **inputs: Any) -> tuple[Any, Any]:
        """Run the model; return its output and float32 logits at the kept positions only:
        ``keep`` (B, k) positions give (B, k, V); a (B, L) bool mask gives (M, V), the kept
        positions in row-major order. Models whose forward takes ``logits_to_keep`` project
        only those positions to the vocabulary; others are sliced afterwards."""
        import torch

        if self._keeps_logits:
            inputs["logits_to_keep"] = keep
        out = self.model(**inputs)
        logits = out.logits
        wanted = (int(keep.sum()),) if keep.dtype == torch.bool else tuple(keep.shape)
        if tuple(logits.shape[:-1]) != wanted:  # the model returned every position
            logits = (
                logits[keep]
                if keep.dtype == torch.bool
                else logits.gather(1, keep[..., None].expand(*keep.shape, logits.shape[-1]))
            )
        return out, logits.float()

    def _oom_cap(self, longest: int) -> int:
        """The largest batch that may run for contexts of ``longest`` tokens: the size a
        batch of contexts as long or shorter was split to after running out of memory (a
        batch of shorter contexts that fitted says nothing of longer ones)."""
        return min(
            (c for length, c in self._oom_caps.items() if length <= longest), default=1 << 30
        )

    def _batch_size(self, longest: int) -> int:
        """Contexts per forward pass for contexts of at most ``longest`` tokens: the given
        size, or with ``"auto"`` one that fits (found once per length: a size that fits
        longer contexts fits shorter ones)."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        if self.device == "cpu":
            # CPU: memory is not the limit, cache locality is; moderate batches are fastest.
            return max(1, min(32, 4096 // max(1, longest)))
        import torch

        known = [bs for length, bs in self._fits.items() if length >= longest]
        if known:
            return max(known)
        bs = min(64, self._oom_cap(longest))  # a size that ran out of memory is not tried again
        while bs > 1:
            try:
                with torch.inference_mode():
                    x = torch.zeros((bs, longest), dtype=torch.long, device=self.device)
                    # with the KV cache, as the contexts' pass keeps it for the continuations
                    keep = {"logits_to_keep": 1} if self._keeps_logits else {}
                    out = self.model(input_ids=x, use_cache=True, **keep)
                    del out
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                bs //= 2
        self._fits[longest] = bs
        return bs

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """Total log-likelihood of each text and its token count, in windows of max_length
        (each window conditions on the previous tokens, as lm-eval's rolling windows)."""
        out = []
        for i, text in enumerate(texts):
            tokens = self._tok(text)
            total, n = 0.0, 0
            pos = 0
            while pos < len(tokens):
                window = tokens[pos : pos + self.max_length]
                ctx = [self.prefix_id] if pos == 0 else tokens[max(0, pos - 1) : pos]
                enc = _Encoded(0, ctx, window)
                try:
                    ll, _ = self._score([enc])[0]
                except ItemFailed as e:  # the window of text i, alone
                    raise ItemFailed(i, e.reason) from None
                total += ll
                n += len(window)
                pos += self.max_length
            out.append((total, n))
        return out

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        """Each request's generation, on the serving engine (``models.engine``): up to
        ``batch_size`` sequences decode together, a finished one's slot is refilled at
        once, and a sequence ends at an end-of-sequence token, at ``max_gen_toks`` or as
        soon as one of its ``until`` strings appears (which is cut off). Greedy unless
        ``do_sample``. The context keeps its last ``max_length - max_gen_toks`` tokens. The
        prompts' shared first tokens (few-shot examples) are prefilled once per call.
        Generations that run out of memory are generated again with half as many sequences
        decoding together (kept for later calls); one that runs out alone raises
        ``ItemFailed``."""
        from lmops.models.types import GenRequest

        reqs = []
        for i, (context, kw) in enumerate(requests):
            until = kw.get("until") or []
            max_new = int(kw.get("max_gen_toks", 256))
            ids = self._tok(context)
            room = max(1, self.max_length - max_new)
            if len(ids) > room:
                self.truncated += 1
            # transformers' generate (lm-eval's HF backend) samples at temperature 1.0
            # when none is given
            temperature = float(kw.get("temperature") or 1.0) if kw.get("do_sample") else 0.0
            reqs.append(
                GenRequest(
                    f"eval-{i}",
                    prompt_ids=ids[-room:] or [self.prefix_id],
                    max_tokens=max_new,
                    temperature=temperature,
                    seed=kw.get("seed"),
                    stop=[s for s in ([until] if isinstance(until, str) else until) if s],
                )
            )
        if not reqs:
            return []
        # At the first forward pass that runs out of memory the engine decodes half as many
        # together (_ran_out_of_memory, on its worker thread, before it admits any more), so
        # the rest of the queue runs at the smaller size at once; the sequences that ran out
        # are generated again, the others' replies kept, and the smaller size stays for
        # later calls (eval._batching). A failed forward pass fails each of its sequences.
        engine = self._engine()
        replies: list[str] = [""] * len(reqs)
        todo = list(range(len(reqs)))
        start = engine.max_running
        self._oom_at = []
        try:
            while todo:
                got = _run_async(self._generate_on_engine([reqs[i] for i in todo]))
                for i, r in zip(todo, got, strict=True):
                    if isinstance(r, str):
                        replies[i] = r
                failed = [i for i, r in zip(todo, got, strict=True) if not isinstance(r, str)]
                if not failed:
                    break
                _free_cached_memory()
                alone = [o for o in self._oom_at if o.before == 1]
                if alone:  # nothing smaller to try
                    raise ItemFailed(
                        int(alone[0].request_id.removeprefix("eval-")),
                        f"out of memory in a batch of 1 ({alone[0].error[:200]}); lower "
                        "max_gen_toks or --max-length, or use a device with more memory",
                    )
                todo = failed
        finally:
            # the sizes in effect, each recorded only where no generation ran out at it
            failed_at = {o.before for o in self._oom_at}
            sizes = dict.fromkeys([start, *(o.after for o in self._oom_at)])
            self.batches_run += [n for n in sizes if n not in failed_at]
        return replies

    def _ran_out_of_memory(self, e: Exception, request_id: str) -> bool:
        """The engine's ``on_failure``: a forward pass that ran out of memory (its first
        sequence ``request_id``) halves the sequences decoding together before anything
        more is admitted (True: eval generates those again, so the engine logs it at debug);
        any other failure is the engine's."""
        engine = self._gen_engine
        if engine is None or not is_out_of_memory(e):
            return False
        before = engine.max_running
        engine.max_running = max(1, (before + 1) // 2)
        error = " ".join(f"{type(e).__name__}: {e}".split())
        self._oom_at.append(_OutOfMemoryAt(before, engine.max_running, request_id, error))
        if before > 1:
            log.warning(
                "generations ran out of memory %d at a time: decoding %d at a time from now "
                "on, and those that ran out are generated again", before, engine.max_running,
            )  # fmt: skip
        return True

    async def _generate_on_engine(self, reqs: list[Any]) -> list[str | _OutOfMemory]:
        from lmops.models.types import Delta

        engine = self._engine()
        # the tokens every prompt starts with (a task's description and few-shot examples)
        # are computed once, not once per prompt
        shared = _common_prefix([r.prompt_ids for r in reqs]) if len(reqs) > 1 else []
        engine.cache_prefix(shared if len(shared) >= _MIN_SHARED_PREFIX else [])

        async def text_of(events: Any) -> str | _OutOfMemory:
            parts = []
            async for batch in events:
                for ev in batch:
                    if isinstance(ev, Delta):
                        parts.append(ev.text)
                    elif ev.finish_reason == "error":
                        if says_out_of_memory(ev.error or ""):
                            return _OutOfMemory(ev.error or "")
                        raise UserError(f"{self.name}: generation failed: {ev.error}")
            return "".join(parts)

        return list(await asyncio.gather(*(text_of(e) for e in engine.submit_all(reqs))))

    def _engine(self) -> Any:
        """The continuous-batching engine over this model (made at the first generation):
        the model and a copy of the tokenizer are shared, not loaded again."""
        if self._gen_engine is None:
            import copy

            from lmops.models.engine import Engine

            bs = self.batch_size if isinstance(self.batch_size, int) else _AUTO_GEN_BATCH
            engine = Engine(
                self.path,
                max_running=bs,
                max_queue=1 << 30,  # every request of a call is queued at once
                device=self.device,
                name=self.name,
                max_context=self.max_length,
                loaded=(self.model, copy.copy(self.tokenizer)),
            )
            # the model's own end-of-sequence tokens (its generation config, as
            # transformers' generate) and ChatML's end of turn
            engine.eos_ids = set(self.stop_ids)
            engine.on_failure = self._ran_out_of_memory
            self._gen_engine = engine
        return self._gen_engine

    def close(self) -> None:
        """Stop the generation engine's worker thread (if one was started)."""
        if self._gen_engine is not None:
            self._gen_engine.close()
            self._gen_engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest run of tokens every sequence starts with, shorter than each of them (so
    that every sequence goes on after it)."""
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return first[: max(0, n)]


def _run_async(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code, also when this thread already runs
    an event loop (a notebook, an async caller): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
