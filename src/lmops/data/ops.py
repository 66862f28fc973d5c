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

Records with several fields (see :mod:`lmops.data.document`): a mapper rewrites each part
(each field, each message); filters and global operators read ``doc.text``, the parts
joined, or, when the recipe step names a ``field`` (``op.field``), that field alone. The
field is put in view around the operator's ``__call__`` (for filters and global
operators, including those that override ``__call__``), so operators never deal with
fields themselves. A global operator that rewrites text (``rewrites_text``) can only
rewrite one field at a time.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from lmops.core.errors import UserError, name_hint
from lmops.data.document import Document

__all__ = [
    "Filter",
    "GlobalOp",
    "Mapper",
    "OneOrMany",
    "Op",
    "OpParams",
    "build_op",
    "get_op",
    "list_ops",
    "register",
]


def _field_in_view(call: Callable[[Any, Iterable[Document]], Iterator[Document]]) -> Any:
    """Wrap a filter's or global operator's ``__call__`` so that, with ``op.field`` set,
    documents enter with that field as their text and leave with the joined text back; and
    so that a global operator never silently rewrites the joined text of several fields."""

    @functools.wraps(call)
    def wrapper(self: Op, docs: Iterable[Document]) -> Iterator[Document]:
        if self.field is None:
            out = call(self, docs)
            return _unchanged_joins(self, out) if isinstance(self, GlobalOp) else out
        return _in_view(self, call, docs)

    wrapper._in_view = True  # type: ignore[attr-defined]
    return wrapper


def _in_view(
    op: Op, call: Callable[[Any, Iterable[Document]], Iterator[Document]], docs: Iterable[Document]
) -> Iterator[Document]:
    field = op.field
    assert field is not None

    def focused() -> Iterator[Document]:
        for doc in docs:
            doc.focus(field)
            yield doc

    for doc in call(op, focused()):
        doc.unfocus(op.name)
        yield doc


def _unchanged_joins(op: Op, docs: Iterator[Document]) -> Iterator[Document]:
    for doc in docs:
        if doc.parts is not None and doc.text != doc.joined():
            raise UserError(
                f"{op.name} rewrote the text of {doc.id}, which joins several fields; give the "
                "step a field: naming the one field to rewrite"
            )
        yield doc


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# A parameter holding a list of names takes one name as a list of it (``languages: zh`` is
# ``[zh]``), as a recipe's ``fields: output`` does: ``Annotated[list[str], OneOrMany]``. Not
# for lists of characters (``stop_chars: 。！`` would be one two-character stop).
OneOrMany = BeforeValidator(_one_or_many)


class OpParams(BaseModel):
    """Base for operator parameters: unknown parameters are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Op(ABC):
    """Common base: a name, typed params, and drop accounting."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[OpParams]] = OpParams
    # Global operators that rewrite text (not only keep or drop) say so: on records with
    # several fields they need a step `field:` naming the one field to rewrite.
    rewrites_text: ClassVar[bool] = False
    # Filters and global operators read one field when the step names it (see
    # _field_in_view); mappers handle fields part by part themselves.
    _reads_field_in_view: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and cls._reads_field_in_view and not hasattr(call, "_in_view"):
            cls.__call__ = _field_in_view(call)  # type: ignore[method-assign]

    def __init__(self, params: OpParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        # The recipe step's `field:` (the one field this operator reads); None: every field.
        self.field: str | None = None
        # reason -> count, and the first few dropped documents per reason; the executor
        # reads these into the report.
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}
        # Free-form counts an operator wants reported (e.g. PII found per type).
        self.counters: Counter[str] = Counter()
        # Set by the executor when the recipe keeps every dropped document (keep_dropped):
        # called with each one and its reason, as it is dropped.
        self.on_drop: Callable[[Document, str], None] | None = None

    def drop(self, doc: Document, reason: str) -> None:
        """Record that ``doc`` was dropped for ``reason`` (counted, reported and, with the
        recipe's ``keep_dropped``, written out whole: the one way a drop is recorded)."""
        self.dropped[reason] += 1
        doc.metadata["drop_reason"] = f"{self.name}:{reason}"
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            # A margin past the 300 characters the report shows, so the report can mask PII
            # that straddles the cut before it cuts (lmops.data.report).
            kept.append({"id": doc.id, "text": doc.text[: EXAMPLE_CHARS + EXAMPLE_MARGIN]})
        if self.on_drop is not None:
            self.on_drop(doc, reason)

    @abstractmethod
    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        """Process a stream of documents and yield those that are kept."""

    def files(self) -> list[Path]:
        """Local files it reads besides the documents (a scoring model), so a pipeline
        running the recipe runs it again when one changes."""
        return []


class Mapper(Op):
    """Rewrites each document (each part of a record with several fields)."""

    _reads_field_in_view: ClassVar[bool] = False

    @abstractmethod
    def apply(self, doc: Document) -> Document:
        """Rewrite ``doc.text`` (and annotations) and return ``doc`` itself."""

    def __call__(self, docs: Iterable[Document]) -> Iterator[Document]:
        for doc in docs:
            yield self.apply(doc) if doc.parts is None else doc.map_parts(self.apply, self.field)


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
EXAMPLE_CHARS = 300  # characters of each example the report shows
EXAMPLE_MARGIN = 256
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
        hint = name_hint(str(name), list(ops), "")
        close = f" ({hint})" if hint.startswith("did you mean") else ""
        raise UserError(f"unknown operator {name!r}{close}; run `lmops data ops` to list them")
    return ops[name]


def bad_param(name: str, params: dict[str, Any]) -> str | None:
    """The parameter of ``params`` that operator ``name`` refuses first (None: none, or
    no such operator), so a recipe error can point at its line."""
    cls = list_ops().get(name)
    if cls is None:
        return None
    try:
        cls.Params(**params)
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
        return str(loc[0]) if loc and str(loc[0]) in params else None
    return None


def build_op(name: str, **params: Any) -> Op:
    cls = get_op(name)
    try:
        p = cls.Params(**params)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":  # most often a misspelt one
            known = [*cls.Params.model_fields, "field"]  # `field:` is every step's
            hint = name_hint(field, known, "its parameters")
            close = f" ({hint})" if hint.startswith("did you mean") else f"; {hint}"
            raise UserError(f"operator {name!r}: unknown parameter {field!r}{close}") from None
        raise UserError(f"operator {name!r}: parameter {field!r}: {err['msg']}") from None
    bad = _crossed_bounds(p)
    if bad:
        raise UserError(f"operator {name!r}: parameter {bad}") from None
    return cls(p)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _crossed_bounds(params: OpParams) -> str | None:
    """The first ``max_x`` below its ``min_x`` (``zh_max_x``/``zh_min_x`` alike), named as
    ``'max_x': must be >= min_x (lo), got hi``; such a step would drop every document."""
    fields = type(params).model_fields
    for low in fields:
        high = low.replace("min_", "max_", 1)
        if "min_" not in low or high not in fields:
            continue
        lo, hi = getattr(params, low), getattr(params, high)
        if _number(lo) and _number(hi) and hi < lo:
            return f"{high!r}: must be >= {low} ({lo}), got {hi}"
    return None
