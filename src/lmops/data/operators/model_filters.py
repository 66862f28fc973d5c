"""Model-based quality filters: perplexity under a reference language model, and a
trained good-vs-bad quality classifier.

Models are loaded on first use and kept once per process (the executor builds the
operators once per shard; worker processes reuse what they loaded), keyed by the file's
path and modification time, so a retrained model is picked up. Nothing is downloaded:
a Hugging Face model must be a local directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, cast

from pydantic import Field

from lmops.core.errors import UserError
from lmops.data.classifier import QualityClassifier
from lmops.data.document import Document
from lmops.data.ngram_lm import NgramLM, is_ngram_file
from lmops.data.ops import Filter, OneOrMany, OpParams, register

__all__ = ["PerplexityFilter", "QualityClassifierFilter", "hf_perplexities"]

AUTO_FENCE = 3.0
"""``max_perplexity="auto"``: how many interquartile ranges above the reference's upper
quartile (in log-perplexity) a document must be to count as an outlier -- Tukey's
"far out" fence."""

_CACHE: dict[tuple[Any, ...], Any] = {}


def _cached(key: tuple[Any, ...], load: Any) -> Any:
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


def _file_key(path: Path) -> tuple[str, int]:
    return str(path.resolve()), path.stat().st_mtime_ns


class _Scorer(Protocol):
    def nll_many(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(negative log-likelihood in nats, predicted tokens) per text."""
        ...


# --- Hugging Face causal LMs -------------------------------------------------------------


class _HFScorer:
    """Token-level negative log-likelihood under a local Hugging Face causal LM.

    Each text is tokenised without special tokens, truncated to ``max_length`` tokens and
    preceded by the tokenizer's BOS token (else its EOS token, as GPT-2 marks a document
    start), so every text token is predicted; a tokenizer with neither leaves the first
    token unscored. A batch is right-padded with an attention mask, so a text's score
    does not depend on the batch it is in.
    """

    def __init__(self, path: Path, device: str, dtype: str, max_length: int) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise UserError(
                f"{path}: scoring with a Hugging Face model needs torch and transformers; "
                "install them (pip install torch transformers) or use an n-gram model"
            ) from None
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            on_gpu = self.device.type == "cuda"
            bf16 = on_gpu and torch.cuda.is_bf16_supported()
            dtype = "bfloat16" if bf16 else "float16" if on_gpu else "float32"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, dtype), local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot load the Hugging Face model ({e})") from None
        self.model = cast(Any, model).to(self.device).eval()
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) else max_length
        tok = self.tokenizer
        self.start: int | None = (
            tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        )

    def nll_many(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        torch = self.torch
        room = self.max_length - (self.start is not None)
        encoded = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=room
        )["input_ids"]
        seqs = [([self.start] if self.start is not None else []) + ids for ids in encoded]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
        live = [i for i, s in enumerate(seqs) if len(s) >= 2]
        if not live:
            return out
        width = max(len(seqs[i]) for i in live)
        ids = torch.zeros((len(live), width), dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        for r, i in enumerate(live):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, vocab)
            for r, i in enumerate(live):
                n = len(seqs[i])
                nll = torch.nn.functional.cross_entropy(
                    logits[r, : n - 1].float(), ids[r, 1:n], reduction="sum"
                )
                out[i] = (float(nll), n - 1)
        return out


def hf_perplexities(
    model_dir: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int = 1024,
) -> list[float]:
    """Per-token perplexity of each text under a local Hugging Face causal LM (``nan``
    for a text with fewer than one predicted token); the model is cached per process."""
    scorer = _hf_scorer(Path(model_dir), device, dtype, max_length)
    return [math.exp(nll / n) if n else math.nan for nll, n in scorer.nll_many(texts)]


def _hf_scorer(path: Path, device: str, dtype: str, max_length: int) -> _HFScorer:
    key = ("hf", *_file_key(path / "config.json"), device, dtype, max_length)
    return cast(_HFScorer, _cached(key, lambda: _HFScorer(path, device, dtype, max_length)))


# --- perplexity filter -------------------------------------------------------------------


@register("perplexity_filter")
class PerplexityFilter(Filter):
    """Drop documents a reference language model finds too surprising, or too predictable.

    ``model`` is either an n-gram model file (``.ngram``, from
    :func:`lmops.data.ngram_lm.train_reference_lm`: character 5-grams on a reference
    corpus such as Wikipedia, as CCNet does with KenLM), or a local Hugging Face causal
    LM directory (one with ``config.json``; scored with torch and transformers on
    ``device``, ``batch_size`` documents at a time, at most ``max_length`` tokens each).

    Scores: ``perplexity`` (per model token: characters or words plus one end-of-line
    per line for n-gram models, tokenizer tokens for Hugging Face ones),
    ``log_perplexity`` (its natural log, the mean negative log-likelihood in nats) and
    ``tokens`` (how many were predicted). A document with no content scores only
    ``tokens: 0`` and is kept: there is nothing to judge.

    Reasons, in order:

    - ``perplexity_too_high``: perplexity above ``max_perplexity``: garbled text, random
      characters, mojibake, keyword lists, or text in a language the model never saw.
      The default ``"auto"`` uses the n-gram model's calibration (the perplexities of
      held-out reference documents, stored by ``train_reference_lm``): the bound is
      Tukey's far-out fence ``exp(q75 + 3 * (q75 - q25))`` of their log-perplexity: a
      document far outside what the reference looks like. The bound comes from the
      model because perplexity scales differ by model, unit and language (under a
      character 5-gram model, English prose scores about 3-6 and Chinese tens to a few
      hundred; shuffled characters score 20-50 times more), so train one model per
      language and use ``languages`` to route documents to it. A model without
      calibration (a Hugging Face model, or a reference of under 1,000 documents) has no
      ``auto`` bound: the scores are still written, so pick a number from their
      distribution and re-decide (fluent web text under a GPT-2-sized model: 10-100).
    - ``perplexity_too_low``: perplexity below ``min_perplexity`` (1.5): the model
      predicts each token with probability above 2/3 on average. Natural prose never
      gets there (English under a character model: 2.5 and up); what does is text the
      model has effectively memorised -- boilerplate and runs that fill its reference,
      or a copy of a reference document -- and, under a Hugging Face model, any
      repeated line or phrase, which it learns to copy in context.

    ``None`` switches a bound off. With ``languages`` set (e.g. ``["zh"]``), only
    documents whose ``metadata["lang"]`` (from ``language_id``) is one of them are scored;
    the others pass untouched.
    """

    class Params(OpParams):
        model: str = Field(
            description="n-gram model file (.ngram) or Hugging Face causal LM directory"
        )
        max_perplexity: float | Literal["auto"] | None = "auto"
        min_perplexity: float | None = Field(1.5, ge=0)
        languages: Annotated[list[str] | None, OneOrMany] = None
        batch_size: int = Field(16, ge=1)
        device: str = "auto"
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
        max_length: int = Field(1024, ge=2)

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(PerplexityFilter.Params, self.params)
        path = Path(self.p.model).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UserError(
                    f"perplexity_filter: model {str(path)!r} is a directory without "
                    "config.json; give a Hugging Face causal LM directory or an .ngram file"
                )
            self.kind = "hf"
        elif path.is_file():
            self.kind = "ngram"
        else:
            raise UserError(
                f"perplexity_filter: model {str(path)!r} does not exist; train an n-gram "
                "model with train_reference_lm or give a Hugging Face model directory"
            )
        self.path = path
        self._max: float | None = None
        self._max_resolved = False

    def files(self) -> list[Path]:
        return [self.path]

    def _scorer(self) -> _Scorer:
        if self.kind == "hf":
            return _hf_scorer(self.path, self.p.device, self.p.dtype, self.p.max_length)
        return cast(_Scorer, _ngram(self.path))

    def upper_bound(self) -> float | None:
        if not self._max_resolved:
            bound = self.p.max_perplexity
            if bound == "auto":
                bound = None
                if self.kind == "ngram":
                    cal = _ngram(self.path).meta.get("calibration")
                    if cal:
                        q = cal["log_perplexity_quantiles"]
                        q25, q75 = q["0.25"], q["0.75"]
                        bound = math.exp(q75 + AUTO_FENCE * (q75 - q25))
            self._max, self._max_resolved = bound, True
        return self._max

    def _scores(self, docs: Sequence[Document]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for nll, n in self._scorer().nll_many([d.text for d in docs]):
            if n == 0:
                out.append({"tokens": 0.0})
                continue
            log_ppl = nll / n
            out.append({"perplexity": math.exp(log_ppl), "log_perplexity": log_ppl, "tokens": n})
        return out

    def score(self, doc: Document) -> dict[str, float]:
        return self._scores([doc])[0]

    def decide(self, scores: dict[str, float]) -> str | None:
        ppl = scores.get("perplexity")
        if ppl is None:
            return None
        upper = self.upper_bound()
        if upper is not None and ppl > upper:
            return "perplexity_too_high"
        if self.p.min_perplexity is not None and ppl < self.p.min_perplexity:
            return "perplexity_too_low"
        return None

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        # Score in batches (one vectorised n-gram pass or one forward pass per batch),
        # then decide and yield in arrival order.
        batch: list[Document] = []
        for doc in docs:
            if self.p.languages is not None and doc.metadata.get("lang") not in self.p.languages:
                self.counters["skipped_language"] += 1
                if batch:
                    yield from self._flush(batch)
                    batch = []
                yield doc
                continue
            batch.append(doc)
            if len(batch) >= self.p.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)

    def _flush(self, batch: list[Document]) -> Iterator[Document]:
        for doc, scores in zip(batch, self._scores(batch), strict=True):
            stored = doc.scores(self.name)
            stored.update(scores)
            reason = self.decide(stored)
            if reason is None:
                yield doc
            else:
                self.drop(doc, reason)


def _ngram(path: Path) -> NgramLM:
    def load() -> NgramLM:
        if not is_ngram_file(path):
            raise UserError(
                f"perplexity_filter: {path} is not an lmops n-gram model; train one with "
                "train_reference_lm, or give a Hugging Face model directory"
            )
        return NgramLM.load(path)

    return cast(NgramLM, _cached(("ngram", *_file_key(path)), load))


# --- quality classifier ------------------------------------------------------------------


@register("quality_classifier")
class QualityClassifierFilter(Filter):
    """Keep documents a trained classifier calls good; drop the rest.

    ``model`` is a file written by
    :func:`lmops.data.classifier.train_quality_classifier` from your own good and bad
    examples (hashed word 1-2-grams and character 2-4-grams, logistic regression; works
    for Chinese and English alike). Score: ``quality_prob``, the probability (0-1) that
    the document is like the good examples. Reason: ``low_quality_score`` when it is
    below ``threshold`` (0.5: the classes are weighted equally in training, so 0.5 means
    "more likely good than bad"; raise it to keep only the clearly good).
    """

    class Params(OpParams):
        model: str = Field(description="classifier file from train_quality_classifier")
        threshold: float = Field(0.5, ge=0, le=1)

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(QualityClassifierFilter.Params, self.params)
        self.path = Path(self.p.model).expanduser()
        if not self.path.is_file():
            raise UserError(
                f"quality_classifier: model {str(self.path)!r} does not exist; train one "
                "with train_quality_classifier"
            )

    def files(self) -> list[Path]:
        return [self.path]

    def _model(self) -> QualityClassifier:
        key = ("classifier", *_file_key(self.path))
        return cast(QualityClassifier, _cached(key, lambda: QualityClassifier.load(self.path)))

    def score(self, doc: Document) -> dict[str, float]:
        return {"quality_prob": self._model().prob(doc.text)}

    def decide(self, scores: dict[str, float]) -> str | None:
        return "low_quality_score" if scores["quality_prob"] < self.p.threshold else None
