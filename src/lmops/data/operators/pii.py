"""The ``pii_mask`` operator: personal data and secrets replaced by typed placeholders."""

from __future__ import annotations

from typing import Annotated, cast

from pydantic import field_validator

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.ops import Mapper, OneOrMany, OpParams, register
from lmops.text.pii import PII_TYPES, mask_pii, normalize_pii_types

__all__ = ["PiiMask"]


@register("pii_mask")
class PiiMask(Mapper):
    """Mask personal data and secrets found by :func:`lmops.text.pii.detect_pii`.

    Each finding is replaced by ``placeholder_format`` with ``{type}`` filled in: by
    default ``<EMAIL>``, ``<PHONE>``, ``<ID_CARD>``, ``<IBAN>``, ``<SSN>``, ``<PASSPORT>``,
    ``<BANK_CARD>``, ``<IP>``, ``<SECRET>``. ``types`` limits masking to some types (names are
    case-insensitive; ``None`` masks all). The number of replacements per type is added to
    ``doc.metadata["pii"]`` (``{"PHONE": 2, "EMAIL": 1}``; summed if the operator runs
    twice), so the run report can total them; a document with nothing masked gets no
    ``"pii"`` entry.
    """

    class Params(OpParams):
        types: Annotated[tuple[str, ...] | None, OneOrMany] = None
        placeholder_format: str = "<{type}>"

        @field_validator("types")
        @classmethod
        def _known_types(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
            try:
                canon = normalize_pii_types(v)
            except UserError as e:
                raise ValueError(str(e)) from None
            # Canonical names in priority order, so equal configs compare (and hash) equal.
            return None if canon is None else tuple(t for t in PII_TYPES if t in canon)

        @field_validator("placeholder_format")
        @classmethod
        def _formattable(cls, v: str) -> str:
            try:
                v.format(type="EMAIL")
            except (KeyError, IndexError, ValueError):
                raise ValueError(
                    "must be a format string whose only field is {type}, e.g. '<{type}>'"
                ) from None
            return v

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(PiiMask.Params, self.params)

    def apply(self, doc: Document) -> Document:
        text, counts = mask_pii(doc.text, self.p.types, self.p.placeholder_format)
        if counts:
            doc.text = text
            totals: dict[str, int] = doc.metadata.setdefault("pii", {})
            for typ, n in counts.items():
                totals[typ] = totals.get(typ, 0) + n
            self.counters.update(counts)  # totals per type for the run report
        return doc
