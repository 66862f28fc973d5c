"""Logits processors of the OpenAI sampling fields, one state per sequence: ``logit_bias``,
``repetition_penalty`` (vLLM's extra), ``frequency_penalty`` and ``presence_penalty``
(:class:`~lmops.models.types.LogitsOptions` says what each does and their order, which is
vLLM's).

They change a sequence's row of logits in place before its grammar mask and the pick
(``Engine._accept_all``), so greedy rows take the argmax of the changed row, sampled rows
draw from it with their own seeded stream (a seed still gives the same text), and reported
logprobs are those of the changed row, as they already are of a masked one. A row whose
request asks for nothing is not touched.

The reply's token counts are kept per sequence on the logits' device, (vocab,) floats,
and brought up to date with only the tokens accepted since the last step, so a step
costs the same at the 2000th token as at the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmops.models.sequences import Seq
from lmops.models.types import LogitsOptions

__all__ = ["LogitsState", "adjust_rows"]


class LogitsState:
    """One sequence's processors: its bias as (ids, values) tensors, the tokens of its
    prompt (for ``repetition_penalty``) and the counts of its reply's tokens."""

    def __init__(self, options: LogitsOptions, prompt: Sequence[int], row: Any) -> None:
        import torch

        self.options = options
        vocab, device = row.shape[-1], row.device
        bias = {t: b for t, b in options.logit_bias.items() if 0 <= t < vocab}
        self.bias_ids = torch.tensor(list(bias), dtype=torch.long, device=device)
        self.bias_values = torch.tensor(list(bias.values()), dtype=torch.float32, device=device)
        penalised = (
            options.frequency_penalty or options.presence_penalty or options.repetition_penalty != 1
        )
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=device) if penalised else None
        self.counted = 0  # tokens of the reply already in ``counts``
        self.in_prompt = None
        if options.repetition_penalty != 1.0:
            ids = torch.tensor([t for t in prompt if 0 <= t < vocab], dtype=torch.long)
            self.in_prompt = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.in_prompt[ids.to(device)] = True

    def apply(self, row: Any, generated: Sequence[int]) -> None:
        """Change ``row`` (vocab,) in place, the reply so far being ``generated``."""
        import torch

        opts = self.options
        if self.bias_ids.numel():
            row.index_add_(0, self.bias_ids, self.bias_values.to(row.dtype))
        counts = self.counts
        if counts is None:
            return
        if len(generated) > self.counted:
            new = torch.tensor(generated[self.counted :], dtype=torch.long, device=row.device)
            counts.index_add_(0, new, torch.ones(len(new), device=row.device))
            self.counted = len(generated)
        seen = counts > 0
        if opts.repetition_penalty != 1.0:
            p = opts.repetition_penalty
            assert self.in_prompt is not None
            hit = seen | self.in_prompt
            row.copy_(torch.where(hit, torch.where(row > 0, row / p, row * p), row))
        if opts.frequency_penalty:
            row.sub_((opts.frequency_penalty * counts).to(row.dtype))
        if opts.presence_penalty:
            row.sub_((opts.presence_penalty * seen).to(row.dtype))


def adjust_rows(seqs: Sequence[Seq], logits: Any) -> None:
    """Apply each sequence's processors to its row of ``logits`` (len(seqs), vocab)."""
    for i, s in enumerate(seqs):
        options = s.req.logits
        if options is None:
            continue
        if s.logits_state is None:
            s.logits_state = LogitsState(options, s.req.prompt_ids or [], logits[i])
        s.logits_state.apply(logits[i], s.generated)
