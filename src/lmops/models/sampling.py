"""Picking each running sequence's next token from its row of logits, for the whole batch
at once: greedy rows by argmax, sampled rows by temperature and top-p from the sequence's
own seeded stream, and the top logprobs a request asked for."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any

from lmops.models.sequences import Seq

__all__ = ["pick_tokens"]


def pick_tokens(seqs: Sequence[Seq], logits: Any) -> list[tuple[int, float, list[Any]]]:
    """Each sequence's next token from its row of ``logits`` (len(seqs), vocab): the
    token, its logprob, and the ``top_logprobs`` most likely (id, logprob) pairs when
    the request asked for them (most likely first). Logprobs are under the model's
    distribution as ``logits`` hold it (after logit_bias, the penalties and a grammar's
    mask: models/logits.py), before temperature and top-p.

    A few tensor operations for the whole batch, not per row: greedy rows take the
    argmax; sampled rows scale by their temperature, keep their top-p nucleus (the most
    likely tokens until the probability before them reaches ``top_p``; the most likely
    always), and invert the cumulative distribution at a uniform draw from the
    sequence's own seeded stream, so a seed gives the same text whatever else runs."""
    import torch

    logprobs = torch.log_softmax(logits.float(), -1)
    best_lp, best = logprobs.max(-1)
    toks, lps = best.tolist(), best_lp.tolist()
    rows = [i for i, s in enumerate(seqs) if not s.req.temperature <= 1e-5]  # NaN samples
    for i in rows:  # before any draw, so that a failed batch leaves the streams as they were
        req = seqs[i].req
        if not (math.isfinite(req.temperature) and 0.0 < req.top_p <= 1.0):
            raise ValueError(f"cannot sample at temperature {req.temperature}, top_p {req.top_p}")
    if rows:
        draws = []
        for i in rows:
            s = seqs[i]
            if s.rng is None:
                s.rng = random.Random(s.req.seed if s.req.seed is not None else time.time_ns())
            draws.append(s.rng.random())
        every = len(rows) == len(seqs)
        idx = torch.tensor(rows, device=logits.device)
        temps = torch.tensor([seqs[i].req.temperature for i in rows], device=logits.device)
        sub = logits if every else logits.index_select(0, idx)
        probs = torch.softmax(sub.float() / temps[:, None], -1)
        top_p = [seqs[i].req.top_p for i in rows]
        order = None
        if min(top_p) < 1.0:  # sample among the sorted probabilities, the nucleus kept
            probs, order = torch.sort(probs, -1, descending=True)
            cut = torch.tensor(top_p, device=logits.device)[:, None]
            keep = (torch.cumsum(probs, -1) - probs < cut) | (cut >= 1.0)
            keep[:, 0] = True  # top_p can round to 0 here
            probs = probs * keep
        cdf = torch.cumsum(probs.double(), -1)
        # u in [0, 1), shrunk so that u * total stays below the total after rounding
        u = torch.tensor(draws, dtype=torch.float64, device=logits.device) * (1 - 1e-9)
        picked = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True)
        picked = picked.clamp_(max=probs.shape[-1] - 1)
        if order is not None:
            picked = order.gather(1, picked)
        picked_lp = (logprobs if every else logprobs.index_select(0, idx)).gather(1, picked)
        for i, tok, lp in zip(rows, picked[:, 0].tolist(), picked_lp[:, 0].tolist(), strict=True):
            toks[i], lps[i] = tok, lp
    tops: list[list[Any]] = [[] for _ in seqs]
    want = [i for i, s in enumerate(seqs) if s.req.logprobs and s.req.top_logprobs > 0]
    if want:
        k = min(max(seqs[i].req.top_logprobs for i in want), logprobs.shape[-1])
        sel = torch.tensor(want, device=logits.device)
        values, ids = torch.topk(logprobs.index_select(0, sel), k)
        for i, vs, ts in zip(want, values.tolist(), ids.tolist(), strict=True):
            n = seqs[i].req.top_logprobs
            tops[i] = list(zip(ts[:n], vs[:n], strict=True))
    return list(zip(toks, lps, tops, strict=True))
