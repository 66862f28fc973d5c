"""Grammar-constrained decoding for the built-in engine, with llguidance.

A grammar (llguidance's Lark dialect, where ``%json {...}`` embeds a JSON schema) becomes a
:class:`Constraint`, one per sequence. The engine calls it twice per token::

    constraint.mask(logits_row)          # before sampling: forbidden tokens -> -inf
    constraint.advance(token, text, left)  # after: True when the sequence should end

Cheap inside continuous batching: llguidance computes a row's mask in tens of
microseconds (a 49k vocabulary: p50 20-40 us), and it is applied to that logits row alone
with numpy/torch (unpack the 32-bit words to a bool row, ``masked_fill_``: about 60 us),
where ``llguidance.torch.apply_token_bitmask_inplace`` compiles a kernel on first use
(about 14 s here) and took milliseconds after. Free rows of the batch cost nothing.

The mask is computed on the engine thread, just before sampling. Computing it on a
worker thread during the forward pass was tried: on a busy CPU the hand-offs between the
threads (the GIL, scheduling) cost milliseconds per token, far more than the mask.

A *triggered* constraint (``trigger="<tool_call>"``) lets the model write freely until its
text contains the trigger, then constrains the rest (what follows the trigger) with the
grammar: ``tool_choice: auto`` costs nothing until the model starts a call. If the text
the model wrote past the trigger cannot start the grammar, the sequence stays free (the
gateway's parser then drops what does not parse).

A *reserve* (tokens) ends a sequence early: where the grammar could end and fewer tokens
than the reserve are left before ``max_tokens``, it ends there. Parallel tool calls set it
to the tokens of the shortest further call there could be (a lower bound: one that would
fit is never refused), so a list of complete calls ends instead of running into
``max_tokens`` with a call that cannot be finished (a small model, allowed more calls,
writes the same call again and again).

:func:`grammar_error` checks a grammar without a tokenizer (unknown types, unsupported
regex features, dangling ``$ref``...), for 400s before anything is queued.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from typing import Any

import numpy as np

__all__ = [
    "JSON_OPTIONS",
    "NO_ARGUMENTS",
    "Constraint",
    "Grammars",
    "call_schema",
    "grammar_error",
    "grammars_for",
    "json_rule",
    "tool_grammar_error",
]

# How constrained JSON is laid out: the separators models write after training on
# json.dumps (", " and ": "), no free whitespace (a weak model would otherwise pad forever).
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def json_rule(schema: dict[str, Any]) -> str:
    """A Lark expression matching one JSON value valid under ``schema``."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


# the arguments of a function without ``parameters``: none, as OpenAI reads it
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """The schema of one call's JSON (``{"name", "arguments"}``) of an OpenAI tool object.
    The parameters' definitions move to its root, where their ``#/$defs/...`` references
    point (pydantic writes nested models that way)."""
    fn = tool["function"]
    params = dict(fn.get("parameters") or NO_ARGUMENTS)
    defs = {k: params.pop(k) for k in ("$defs", "definitions") if k in params}
    return {
        **defs,
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_grammar_error(tool: dict[str, Any]) -> str | None:
    """Why the engine cannot constrain calls of ``tool`` (an OpenAI tool object) to its
    schema (llguidance refuses it: ``not``, ``if``/``then``/``else``, ``dependentRequired``,
    a ``oneOf`` whose branches can overlap...), in one line; None when it can. What the
    gateway's ``compile_plan`` answers a 400 for, and ``lmops data validate`` warns of."""
    return grammar_error(f"start: {json_rule(call_schema(tool))}")


def grammar_error(grammar: str) -> str | None:
    """Why llguidance cannot compile ``grammar`` (``None`` when it can), in one line."""
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    return one_line(messages[0] if messages else "invalid grammar") if is_error else None


def one_line(error: str) -> str:
    """llguidance's error without what is ours, not the client's: its position in the
    grammar lmops wrote (``at 1(8):``), the quoted grammar line with our ``x-guidance``
    options and the caret under it."""
    first = error.strip().splitlines()[0] if error.strip() else "invalid grammar"
    first = re.sub(r"^at \d+\(\d+\):\s*", "", first)
    return first.replace("failed to compile JSON schema: ", "")


class Grammars:
    """Compiles grammars against one tokenizer. ``vocab_size`` is the width of the model's
    logits (it may exceed the tokenizer's; those extra ids are never allowed); ``eos_ids``
    end a sequence once its grammar is complete."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> None:
        import llguidance.hf

        # building the tokenizer trie costs up to a second on a large vocabulary: once
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=list(eos_ids) or None
        )
        self.vocab_size = vocab_size

    def constraint(
        self, grammar: str, *, trigger: str | None = None, reserve: int = 0
    ) -> Constraint:
        """A fresh per-sequence constraint (``trigger``, ``reserve``: see the module
        docstring)."""
        return Constraint(self, grammar, trigger, reserve)

    def matcher(self, grammar: str) -> Any:
        from llguidance import LLMatcher

        m = LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(one_line(m.get_error()))
        return m


_CACHE: weakref.WeakKeyDictionary[Any, Grammars] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def grammars_for(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Grammars:
    """The :class:`Grammars` of ``tokenizer`` (built once per tokenizer object)."""
    with _CACHE_LOCK:
        g = _CACHE.get(tokenizer)
        if g is None or g.vocab_size != vocab_size:
            g = _CACHE[tokenizer] = Grammars(tokenizer, vocab_size, eos_ids)
        return g


class Constraint:
    """One sequence's grammar state (see the module docstring), used by one thread (the
    engine's worker)."""

    def __init__(
        self, grammars: Grammars, grammar: str, trigger: str | None, reserve: int = 0
    ) -> None:
        self._grammars = grammars
        self._grammar = grammar
        self._trigger = trigger
        self._reserve = reserve
        self._searched = 0  # characters of the text already searched for the trigger
        self._matcher: Any = None
        self._words = np.zeros((grammars.vocab_size + 31) // 32, dtype=np.int32)
        self.active = False  # masks apply (always, or since the trigger)
        self.failed = False  # gave up: the model's text could not follow the grammar
        self.tokens = 0  # tokens generated under the grammar
        if trigger is None:
            self._start([])

    def _start(self, forced: list[int]) -> None:
        m = self._grammars.matcher(self._grammar)
        if forced and not m.consume_tokens(forced):
            self.failed = True
            return
        self._matcher, self.active = m, True

    def mask(self, logits: Any) -> None:
        """Set the logits of every token the grammar forbids now to -inf (``logits``: one
        row, (vocab,), a torch tensor, changed in place)."""
        if not self.active:
            return
        import torch

        words = self._words
        self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.size * words.itemsize)

        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little")
        n = logits.shape[-1]
        if not allowed[:n].any():  # a matcher in error: never hand the sampler nothing
            self.active, self.failed = False, True
            return
        row = torch.from_numpy(allowed[:n].view(np.bool_))
        if logits.device.type != "cpu":
            row = row.to(logits.device, non_blocking=True)
        logits.masked_fill_(~row, float("-inf"))

    def advance(self, token: int, text: str, left: int | None = None) -> bool:
        """Record the sampled ``token`` (``text``: the sequence's whole generated text so
        far; ``left``: tokens it may still generate); True when the sequence should end
        now: the grammar is complete, or it could end here and ``left`` is under the
        reserve."""
        if self.failed:
            return False
        if not self.active:
            return self._watch(text)
        self.tokens += 1
        m = self._matcher
        if not m.consume_token(token):
            self.active, self.failed = False, True
            return False
        if m.is_stopped():
            return True
        return left is not None and left < self._reserve and bool(m.is_accepting())

    def _watch(self, text: str) -> bool:
        assert self._trigger is not None
        start = max(0, self._searched - len(self._trigger) + 1)
        at = text.find(self._trigger, start)
        self._searched = len(text)
        if at == -1:
            return False
        # the model's text past the trigger (a token can reach beyond it) must start the
        # grammar: it is fed to the matcher as tokens
        rest = text[at + len(self._trigger) :]
        forced = self._grammars.tokenizer.tokenize_str(rest) if rest else []
        try:
            self._start(forced)
        except ValueError:
            self.failed = True
        return False
