"""The engine's prefill: a group of prompts (``sequences.prefill_groups``) through the
model, its result one :class:`Prefilled` whichever way it ran.

- **plain**: the prompts left-padded to the longest, one forward pass.
- **after the cached prefix** (``Engine.cache_prefix``: the few-shot examples every prompt
  of an evaluation call starts with): only each prompt's rest runs, on the prefix's keys
  and values computed at its first use.
- **shared prefixes**: prompts of the group that start with the same tokens (the choices
  of a multiple-choice question: one context, a continuation each; the ``n`` choices of
  one request) run those tokens once. A first pass runs the *stems*: each distinct shared
  prefix once, and each prompt that shares none whole; a second pass runs the rest of
  each prompt that shares one, on a copy of its prefix's keys and values. Two passes
  whatever the number of prefixes (two questions of four choices each: two stems, then
  eight rests)::

      stems   (S rows, width P):      [pad | prefix or whole prompt]
      rests   (B rows, width P + R):  [pad | prefix | pad | rest]       (the prefix's row)

  The attention mask is False on every pad, the position ids count each prompt's own
  tokens (a rest goes on at its prefix's length), so each row computes what its prompt
  alone would, up to float rounding. Scored prompts (echo) get the logits of every
  position: a prompt's are its prefix's (from the stems pass, computed once for all the
  prompts that share it) followed by its rest's. The rows of prompts that go on to
  generate join the batch cache with padding in the middle, which the mask hides as it
  hides the left padding.

A failed pass raises; the engine then prefills the group's prompts one by one (plainly),
so that only the one at fault fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmops.models.compat import output_cache

__all__ = ["Prefilled", "Prefiller"]

Layers = list[tuple[Any, Any]]  # per layer: keys, values (rows, kv_heads, T, head_dim)


@dataclass
class Prefilled:
    """A group's prompts after their prefill, row i the group's prompt i.

    ``mask``: (rows, T) bool, True where a row's cache holds a real token; ``logits``:
    (rows, vocab), each prompt's last position's; ``prompt_logits(i)``: prompt i's
    (len_i, vocab) logits, position j's predicting token j + 1 (scored groups only);
    ``layers()``: the (rows, kv_heads, T, head_dim) keys and values per layer, assembled
    only when rows join the batch (scoring alone never needs them)."""

    mask: Any
    logits: Any
    prompt_logits: Callable[[int], Any]
    layers: Callable[[], Layers]


class Prefiller:
    """Forward passes over prompts for a model: ``pad_id`` fills padding, ``cache_arg``
    is the keyword the model takes its KV cache by, ``last_logits`` the keyword that keeps
    only the last position's logits (empty where the model has none).

    ``whole_cache``: hand the model an empty plain ``DynamicCache`` so that every layer
    keeps the keys and values of every column. A model with sliding-window layers would
    otherwise make its own cache, whose sliding layers keep only their last
    ``window - 1`` columns and remember the offset themselves: what the engine wants for
    a model mixing local and global layers (it lays its batch cache out the same way),
    not where it keeps every layer plain (every layer sliding, whose batch cache it trims
    itself; GPT-Neo), whose (rows, T) mask of T columns would then describe fewer."""

    def __init__(
        self,
        model: Any,
        device: str,
        pad_id: int,
        cache_arg: str,
        last_logits: dict[str, int],
        whole_cache: bool = False,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.cache_arg = cache_arg
        self.last_logits = last_logits
        self.whole_cache = whole_cache

    def _kwargs(self, scored: bool) -> dict[str, Any]:
        return {"use_cache": True, **({} if scored else self.last_logits)}

    def _fresh_cache(self) -> dict[str, Any]:
        if not self.whole_cache:
            return {}  # the model makes its own (all plain layers: the same thing)
        from transformers import DynamicCache

        return {self.cache_arg: DynamicCache()}

    def _padded(self, prompts: list[list[int]], scored: bool) -> tuple[Any, Any]:
        """One pass over ``prompts`` left-padded to the longest: the output and the
        (rows, T) mask."""
        import torch

        lengths = [len(p) for p in prompts]
        t = max(lengths)
        if len(prompts) == 1:
            mask = torch.ones((1, t), dtype=torch.bool, device=self.device)
            ids = torch.tensor(prompts, device=self.device)
            return self.model(input_ids=ids, **self._fresh_cache(), **self._kwargs(scored)), mask
        ids = torch.tensor([[self.pad_id] * (t - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[False] * (t - n) + [True] * n for n in lengths], device=self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # 0 at each prompt's first token
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **self._fresh_cache(),
            **self._kwargs(scored),
        )
        return out, mask

    def _rests(
        self, rests: list[list[int]], starts: list[int], layers: Layers, mask: Any, scored: bool
    ) -> tuple[Any, Any]:
        """One pass over ``rests`` (left-padded to the longest) on a cache whose row i
        holds the keys and values of the ``starts[i]`` tokens before rest i (``layers``,
        ``mask``: (rows, P)). Returns the output, whose cache is the prefix's then the
        rest's, and the (rows, P + R) mask."""
        import torch
        from transformers import DynamicCache

        t = max(len(r) for r in rests)
        ids = torch.tensor([[self.pad_id] * (t - len(r)) + r for r in rests], device=self.device)
        own = torch.tensor(
            [[False] * (t - len(r)) + [True] * len(r) for r in rests], device=self.device
        )
        start = torch.tensor(starts, device=self.device)[:, None]
        mask = torch.cat([mask, own], 1)
        # the forward appends to the cache by concatenation: `layers` stay as they are
        past = DynamicCache(ddp_cache_data=layers)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=start + (own.cumsum(1) - 1).clamp(min=0),  # each rest goes on
            **{self.cache_arg: past},
            **self._kwargs(scored),
        )
        return out, mask

    def plain(self, prompts: list[list[int]], scored: bool) -> Prefilled:
        out, mask = self._padded(prompts, scored)
        t = mask.shape[1]
        return Prefilled(
            mask,
            out.logits[:, -1],
            lambda i: out.logits[i, t - len(prompts[i]) :],
            lambda: [(layer.keys, layer.values) for layer in output_cache(out).layers],
        )

    def prefix_layers(self, ids: list[int]) -> Layers:
        """The keys and values of ``ids``, (1, kv_heads, n, head_dim) per layer."""
        import torch

        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            use_cache=True,
            **self._fresh_cache(),
            **self.last_logits,
        )
        return [(layer.keys, layer.values) for layer in output_cache(out).layers]

    def after_prefix(self, prompts: list[list[int]], n: int, layers: Layers) -> Prefilled:
        """Unscored ``prompts`` after their ``n``-token prefix whose keys and values are
        ``layers`` (one row): only each prompt's rest runs."""
        import torch

        b = len(prompts)
        expanded = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in layers]
        prefix = torch.ones((b, n), dtype=torch.bool, device=self.device)
        out, mask = self._rests([p[n:] for p in prompts], [n] * b, expanded, prefix, False)
        return Prefilled(
            mask,
            out.logits[:, -1],
            _unscored,
            lambda: [(layer.keys, layer.values) for layer in output_cache(out).layers],
        )

    def shared(self, prompts: list[list[int]], shared: list[int], scored: bool) -> Prefilled:
        """``prompts`` of which those with ``shared[i]`` > 0 share their first
        ``shared[i]`` tokens with others: the stems pass, then the rests pass."""
        import torch
        import torch.nn.functional as F

        stems: list[list[int]] = []
        stem_of: list[int] = []  # each prompt's row in the stems pass
        rows: dict[tuple[int, ...], int] = {}
        for ids, n in zip(prompts, shared, strict=True):
            key = tuple(ids[:n])
            if n and key in rows:
                stem_of.append(rows[key])
                continue
            stem_of.append(len(stems))
            stems.append(ids[:n] if n else ids)
            if n:
                rows[key] = stem_of[-1]
        out1, mask1 = self._padded(stems, scored)
        stem_layers = [(layer.keys, layer.values) for layer in output_cache(out1).layers]
        on = [i for i, n in enumerate(shared) if n]  # the prompts with a rest
        off = [i for i, n in enumerate(shared) if not n]  # those the stems pass ran whole
        pick = torch.tensor([stem_of[i] for i in on], device=self.device)
        out2, mask2 = self._rests(
            [prompts[i][shared[i] :] for i in on],
            [shared[i] for i in on],
            [(k.index_select(0, pick), v.index_select(0, pick)) for k, v in stem_layers],
            mask1.index_select(0, pick),
            scored,
        )
        p, r = mask1.shape[1], mask2.shape[1] - mask1.shape[1]
        alone = torch.tensor([stem_of[i] for i in off], device=self.device, dtype=torch.long)
        # rows in the group's order: the rests pass's rows after the whole prompts'
        order = torch.tensor(
            [k for _, k in sorted(zip(off + on, range(len(prompts)), strict=True))],
            device=self.device,
        )
        mask = torch.cat([F.pad(mask1.index_select(0, alone), (r, 0)), mask2], 0)[order]
        logits = torch.cat([out1.logits[:, -1].index_select(0, alone), out2.logits[:, -1]], 0)
        where = {i: k for k, i in enumerate(on)}

        def prompt_logits(i: int) -> Any:
            if i not in where:  # run whole in the stems pass
                return out1.logits[stem_of[i], p - len(prompts[i]) :]
            n = shared[i]  # its prefix's logits, then its rest's
            rest = out2.logits[where[i], r - (len(prompts[i]) - n) :]
            return torch.cat([out1.logits[stem_of[i], p - n :], rest], 0)

        def whole(stem: Any, rest: Any) -> Any:  # (B, kv_heads, P + R, head_dim)
            return torch.cat([F.pad(stem.index_select(0, alone), (0, 0, r, 0)), rest], 0)[order]

        def layers() -> Layers:
            rested = output_cache(out2).layers
            return [
                (whole(k, layer.keys), whole(v, layer.values))
                for (k, v), layer in zip(stem_layers, rested, strict=True)
            ]

        return Prefilled(mask, logits[order], prompt_logits, layers)


def _unscored(i: int) -> Any:
    raise AssertionError("prompt logits of an unscored group")
