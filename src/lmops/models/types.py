"""Plain objects that cross the seam between the HTTP layer and a backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LogitsOptions:
    """What a request asks to change in its sequence's row of logits before the next
    token is picked (models/logits.py), in vLLM's order: ``logit_bias`` (token id ->
    added to its logit), then ``repetition_penalty`` (a seen logit divided by it when
    positive, multiplied when negative; seen: in the prompt or the reply), then
    ``frequency_penalty`` (times the token's count in the reply so far) and
    ``presence_penalty`` (once, if it occurs in the reply), both subtracted."""

    logit_bias: dict[int, float] = field(default_factory=dict)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def active(self) -> bool:
        return bool(
            self.logit_bias
            or self.frequency_penalty
            or self.presence_penalty
            or self.repetition_penalty != 1.0
        )


@dataclass
class GenRequest:
    request_id: str
    prompt_ids: list[int] | None = None  # engine backends: already templated and tokenized
    messages: list[dict[str, Any]] | None = None  # upstream backends: passed through
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives reported per token (with logprobs)
    # the prompt's own token logprobs (``echo`` with ``logprobs``), with this many
    # alternatives per token; ``None``: not asked. With ``max_tokens=0`` only these come.
    prompt_logprobs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # logit_bias and the penalties (None: the model's logits as they are)
    logits: LogitsOptions | None = None
    # a grammar over the generated tokens (models/grammar.Constraint: ``mask(logits_row)``
    # before sampling, ``advance(token, text) -> complete`` after); None: free
    constraint: Any = None
    # at a max_tokens (or context) cut, drop a last character whose bytes are not all out yet
    # (its U+FFFD); off by default, so text equals ``tokenizer.decode`` (what eval compares)
    whole_chars: bool = False
    # with logprobs, a last entry for the end-of-sequence token that stopped it (the
    # legacy completions API's; chat's entries are the content's tokens only)
    eos_logprob: bool = False


@dataclass
class TokenLogprob:
    """One sampled token's log-probability (natural log, under the model's distribution
    after logit_bias, the penalties and a grammar's mask, before temperature and top-p),
    with its ``top_logprobs`` alternatives, most likely first. ``bytes`` are the token's
    own UTF-8 bytes (exact even for part of a multi-byte character, whose ``token`` text
    is then a replacement character). ``text_offset`` and
    ``text_end`` bound the generated text (in characters) up to and including this token,
    so a layer that rewrites text can tell which tokens' text went out verbatim."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TokenLogprob] = field(default_factory=list)
    text_offset: int = 0
    text_end: int = 0

    def to_openai(self) -> dict[str, Any]:
        """The chat ``logprobs.content[]`` entry."""
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": self.bytes,
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": t.bytes}
                for t in self.top_logprobs
            ],
        }


@dataclass
class Delta:
    """New text of one sequence (may be empty when only a token was held back).

    With ``GenRequest.logprobs`` every generated token arrives on exactly one delta, in
    order, as ``logprobs``; a delta's text need not be that token's text (text is held
    back at partial characters and possible stop strings)."""

    text: str
    token_id: int | None = None
    logprob: float | None = None
    logprobs: TokenLogprob | None = None
    # the first event of a request that asked for prompt logprobs (and only that): one
    # entry per prompt token, the first with logprob NaN (nothing precedes it); offsets
    # are within the prompt's text
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class Done:
    finish_reason: str  # stop | length | content_filter | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
