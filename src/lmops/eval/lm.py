"""Model backends for evaluation: one protocol, two implementations.

``loglikelihood(requests)`` returns, per ``(context, continuation)``, the summed log
probability of the continuation and whether it is the greedy continuation; it encodes
exactly as lm-evaluation-harness's HF backend does (trailing spaces of the context move
to the continuation; the context and the whole string are tokenized without special
tokens; an empty context is replaced by the end-of-text token), so both tools score the
same tokens and pick the same choices.

Speed: requests are sorted by length (longest first, so a batch that fits is followed by
smaller ones) and padded per batch; requests that share the same input tokens (the
choices of one question whose continuations are a single token, e.g. " A"/" B") share
one forward pass. ``batch_size="auto"`` halves from 64 until a batch fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lmops.core.errors import UserError

__all__ = ["EvalModel", "FakeEvalModel", "HFEvalModel", "OpenAIEvalModel"]


class EvalModel(Protocol):
    name: str

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]: ...
    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]: ...
    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]: ...


@dataclass
class _Encoded:
    index: int
    context: list[int]
    continuation: list[int]


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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmops.train.models import quiet_transformers, select_device

        quiet_transformers()
        self.device = select_device(device)
        self.name = name or str(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch.bfloat16 if self.device == "cuda" else torch.float32
            )
            self.model = model.to(self.device)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model {path}: {e}") from None
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eot = self.tokenizer.eos_token_id
        cfg = self.model.config
        self.max_length = max_length or getattr(cfg, "max_position_embeddings", None) or 2048
        self.batch_size = batch_size
        self.truncated = 0  # requests cut to fit max_length (reported, never silent)

    # -- encoding as lm-evaluation-harness does ------------------------------------------------------
    def _tok(self, s: str) -> list[int]:
        return list(self.tokenizer(s, add_special_tokens=False)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if context == "":
            return [self.eot], self._tok(continuation)
        whole = self._tok(context + continuation)
        ctx = self._tok(context)
        return ctx, whole[len(ctx) :]

    # -- scoring -------------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        encoded = [_Encoded(i, *self.encode_pair(c, x)) for i, (c, x) in enumerate(requests)]
        return self._score(encoded)

    def _score(self, encoded: list[_Encoded]) -> list[tuple[float, bool]]:
        import torch
        import torch.nn.functional as F

        results: list[tuple[float, bool] | None] = [None] * len(encoded)
        # One forward pass per distinct input (context + continuation minus its last token).
        groups: dict[tuple[int, ...], list[_Encoded]] = {}
        for e in encoded:
            full = (e.context + e.continuation)[-(self.max_length + 1) :]
            if len(e.context) + len(e.continuation) > self.max_length + 1:
                self.truncated += 1
            key = (
                tuple(full[:-1])
                if len(e.continuation) > 1
                else tuple(e.context[-self.max_length :])
            )
            groups.setdefault(key, []).append(e)
        keys = sorted(groups, key=lambda k: -len(k))
        bs = self._batch_size(len(keys[0]) if keys else 1)
        for start in range(0, len(keys), bs):
            chunk = keys[start : start + bs]
            longest = max(len(k) for k in chunk)
            inp = torch.full((len(chunk), longest), self.tokenizer.pad_token_id, dtype=torch.long)
            att = torch.zeros((len(chunk), longest), dtype=torch.long)
            for i, k in enumerate(chunk):
                inp[i, : len(k)] = torch.tensor(k)
                att[i, : len(k)] = 1
            with torch.no_grad():
                logits = self.model(
                    input_ids=inp.to(self.device),
                    attention_mask=att.to(self.device),
                    use_cache=False,
                ).logits
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for i, k in enumerate(chunk):
                for e in groups[k]:
                    cont = e.continuation
                    n = len(cont)
                    # Logits at position p predict token p+1, so the continuation's n tokens
                    # are predicted by the last n input positions (for one token, the input
                    # is the context itself and its last position predicts it).
                    end = len(k)
                    lp = logprobs[i, end - n : end]
                    target = torch.tensor(cont[-n:], device=lp.device)
                    picked = lp.gather(1, target[:, None]).squeeze(1)
                    greedy = bool((lp.argmax(-1) == target).all())
                    results[e.index] = (float(picked.sum()), greedy)
        return [r if r is not None else (float("-inf"), False) for r in results]

    def _batch_size(self, longest: int) -> int:
        if isinstance(self.batch_size, int):
            return self.batch_size
        if self.device == "cpu":
            # CPU: memory is not the limit, cache locality is; moderate batches are fastest.
            return max(1, min(32, 4096 // max(1, longest)))
        import torch

        bs = 64
        while bs > 1:
            try:
                with torch.no_grad():
                    x = torch.zeros((bs, longest), dtype=torch.long, device=self.device)
                    self.model(input_ids=x, use_cache=False)
                return bs
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                bs //= 2
        return 1

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """Total log-likelihood of each text and its token count, in windows of max_length
        (each window conditions on the previous tokens, as lm-eval's rolling windows)."""
        out = []
        for text in texts:
            tokens = self._tok(text)
            total, n = 0.0, 0
            pos = 0
            while pos < len(tokens):
                window = tokens[pos : pos + self.max_length]
                ctx = [self.eot] if pos == 0 else tokens[max(0, pos - 1) : pos]
                enc = _Encoded(0, ctx, window)
                ll, _ = self._score([enc])[0]
                total += ll
                n += len(window)
                pos += self.max_length
            out.append((total, n))
        return out

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        import torch

        outs = []
        for context, kw in requests:
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self._tok(context)[-(self.max_length - int(kw.get("max_gen_toks", 256))) :] or [
                self.eot
            ]
            inp = torch.tensor([ids], device=self.device)
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=inp,
                    attention_mask=torch.ones_like(inp),
                    max_new_tokens=int(kw.get("max_gen_toks", 256)),
                    do_sample=bool(kw.get("do_sample", False)),
                    temperature=float(kw.get("temperature", 0.0)) or None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.eot,
                )
            text = str(self.tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True))
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outs.append(text)
        return outs


class OpenAIEvalModel:
    """Any OpenAI-compatible endpoint: generation via chat or completions; log-likelihood
    via ``/v1/completions`` with ``echo`` and prompt ``logprobs`` where the server returns
    them (vLLM does; most hosted APIs do not)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        chat: bool = True,
        timeout: float = 60.0,
        retries: int = 3,
    ) -> None:
        import httpx

        self.name = model
        self.model = model
        self.chat = chat
        self.retries = retries
        self.failed = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self.client.post(path, json=body)
                if r.status_code < 500 and r.status_code != 429:
                    r.raise_for_status()
                    return dict(r.json())
            except httpx.HTTPStatusError as e:
                raise UserError(
                    f"endpoint refused the request: {e.response.status_code} {e.response.text[:200]}"
                ) from None
            except httpx.HTTPError:
                pass
            if attempt < self.retries:
                import time

                time.sleep(min(8.0, 0.5 * 2**attempt))
        self.failed += 1
        return None

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        outs = []
        for context, kw in requests:
            until = kw.get("until") or None
            body: dict[str, Any] = {
                "model": self.model,
                "max_tokens": int(kw.get("max_gen_toks", 256)),
                "temperature": float(kw.get("temperature", 0.0)),
            }
            if until:
                body["stop"] = ([until] if isinstance(until, str) else list(until))[:4]
            if self.chat:
                body["messages"] = [{"role": "user", "content": context}]
                res = self._post("/chat/completions", body)
                outs.append(res["choices"][0]["message"]["content"] or "" if res else "")
            else:
                body["prompt"] = context
                res = self._post("/completions", body)
                outs.append(res["choices"][0]["text"] if res else "")
        return outs

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        out = []
        for context, continuation in requests:
            res = self._post(
                "/completions",
                {
                    "model": self.model,
                    "prompt": context + continuation,
                    "max_tokens": 0,
                    "echo": True,
                    "logprobs": 1,
                    "temperature": 0,
                },
            )
            if res is None:
                out.append((float("-inf"), False))
                continue
            lp = res["choices"][0].get("logprobs") or {}
            offsets, tokens = lp.get("text_offset"), lp.get("token_logprobs")
            if not offsets or tokens is None:
                raise UserError(
                    f"endpoint {self.client.base_url} returns no prompt logprobs; use a generation task"
                )
            start = len(context)
            total = sum(
                t
                for o, t in zip(offsets, tokens, strict=True)
                if o >= start and t is not None and not math.isnan(t)
            )
            top = lp.get("top_logprobs") or []
            greedy = all(
                (max(d, key=d.get) == tok)
                for o, tok, d in zip(offsets, lp.get("tokens", []), top, strict=False)
                if o >= start and d
            )
            out.append((float(total), greedy))
        return out

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [
            (ll, max(1, len(t.split())))
            for (ll, _), t in zip(self.loglikelihood([("", t) for t in texts]), texts, strict=True)
        ]


class FakeEvalModel:
    """A scripted backend for tests and dry runs: ``respond(context) -> text`` answers
    generation requests and ``score(context, continuation) -> float`` log-likelihoods."""

    def __init__(self, respond: Any = None, score: Any = None, name: str = "fake") -> None:
        self.name = name
        self.respond = respond or (lambda ctx: "")
        self.score = score or (lambda ctx, cont: -float(len(cont)))

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        outs = []
        for ctx, kw in requests:
            text = str(self.respond(ctx))
            until = kw.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outs.append(text)
        return outs

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return [(float(self.score(c, x)), False) for c, x in requests]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [(float(self.score("", t)), max(1, len(t.split()))) for t in texts]
