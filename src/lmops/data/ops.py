"""Operator interface and registry for the data stage.

Three kinds of operator, one method each to implement:

- :class:`Mapper` rewrites a document (``apply(doc) -> doc``), e.g. cleaning, PII masking;
- :class:`Filter` scores first and decides second: ``score(doc) -> {name: float}`` is
  written into ``doc.metadata["scores"][op]``, then ``decide(scores) -> reason | None``
  applies thresholds (``None`` keeps the document; a string drops it and names why).
  Changing a threshold never needs a recompute: call ``decide`` on stored scores;
- :class:`GlobalOp` sees the whole corpus (cross-document dedup): ``run(docs) -> docs``
  over an iterator, yielding kept documents and recording drops with ``self.drop``.

Every operator has a registered name and a pydantic ``Params`` model whose field defaults
are the published defaults; ``lmops data ops`` lists them. Operators are built with
``build_op(name, **params)``, which validates the parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lmops.core.errors import UserError
from lmops.data.document import Document

__all__ = [
    "Filter",
    "GlobalOp",
    "Mapper",
    "Op",
    "OpParams",
    "build_op",
    "get_op",
    "list_ops",
    "register",
]


class OpParams(BaseModel):
    """Base for operator parameters: unknown parameters are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Op(ABC):
    """Common base: a name, typed params, and drop accounting."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[OpParams]] = OpParams

    def __init__(self, params: OpParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        # reason -> count, and the first few dropped documents per reason; the executor
        # reads these into the report.
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}
        # Free-form counts an operator wants reported (e.g. PII found per type).
        self.counters: Counter[str] = Counter()

    def drop(self, doc: Document, reason: str) -> None:
        """Record that ``doc`` was dropped for ``reason`` (counted and reported)."""
        self.dropped[reason] += 1
        doc.metadata["drop_reason"] = f"{self.name}:{reason}"
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append({"id": doc.id, "text": doc.text[:300]})

    @abstractmethod
    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        """Process a stream of documents and yield those that are kept."""


class Mapper(Op):
    """Rewrites each document."""

    @abstractmethod
    def apply(self, doc: Document) -> Document: ...

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            yield self.apply(doc)


class Filter(Op):
    """Scores a document, then keeps or drops it by thresholds on the scores."""

    @abstractmethod
    def score(self, doc: Document) -> dict[str, float]: ...

    @abstractmethod
    def decide(self, scores: dict[str, float]) -> str | None:
        """``None`` keeps; a short reason string (e.g. ``"gopher_short_doc"``) drops."""

    def keep(self, doc: Document) -> bool:
        stored = doc.scores(self.name)
        stored.update(self.score(doc))
        reason = self.decide(stored)
        if reason is None:
            return True
        self.drop(doc, reason)
        return False

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            if self.keep(doc):
                yield doc


class GlobalOp(Op):
    """Needs every document (cross-document dedup); runs once over the whole corpus.

    Contract: kept documents are yielded in the order they arrived (the executor relies
    on it to write each document back to its shard), and the decision must not depend on
    how the corpus was sharded.
    """

    is_global: ClassVar[bool] = True


MAX_EXAMPLES = 3  # dropped examples kept per reason for the report
_REGISTRY: dict[str, type[Op]] = {}
OpT = TypeVar("OpT", bound=type[Op])


def register(name: str) -> Callable[[OpT], OpT]:
    """Class decorator: make an operator available under ``name`` in recipes."""

    def deco(cls: OpT) -> OpT:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"operator {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin_ops() -> None:
    # Importing the operator modules registers them; kept lazy so `import lmops` stays fast.
    import importlib
    import pkgutil

    import lmops.data.operators as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def list_ops() -> dict[str, type[Op]]:
    _load_builtin_ops()
    return dict(sorted(_REGISTRY.items()))


def get_op(name: str) -> type[Op]:
    ops = list_ops()
    if name not in ops:
        raise UserError(f"unknown operator {name!r}; run `lmops data ops` to list them")
    return ops[name]


def build_op(name: str, **params: Any) -> Op:
    cls = get_op(name)
    try:
        p = cls.Params(**params)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "?"
        raise UserError(f"operator {name!r}: parameter {field!r}: {err['msg']}") from None
    return cls(p)
