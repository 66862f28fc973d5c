"""A training set's records read as a stage reads them: each row's shape
(:mod:`lmops.core.shapes`) or its problem, and the checks of the set as a whole. The one
reading behind ``lmops train`` (``train.data.load_training_rows``) and ``lmops data
validate --stage``, so that both name the same first bad row with the same words.

    reader = RowReader("sft", columns, tags)
    mapping_problem(reader.columns, rows)   # a mapped column that no row has
    read_item(reader, item)                 # Read (shape, lmops row) or RowError
    set_problem("sft", shapes, where)       # SFT of text rows only
    validate_shapes(items, reader)          # all of it, as a ValidationReport
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lmops.core.errors import name_hint
from lmops.core.formats import RowError, ValidationReport
from lmops.core.rows import ANNOTATIONS_KEY, BadRow, Row
from lmops.core.shapes import Read, RowProblem, RowReader

__all__ = ["SHAPE_STAGES", "mapping_problem", "read_item", "set_problem", "validate_shapes"]

# The stages that read rows by their shape (pretrain reads text, PPO any row's prompt).
SHAPE_STAGES: tuple[str, ...] = ("sft", "reward", "dpo", "kto", "orpo")


def read_item(reader: RowReader, item: Row | BadRow, number: int | None = None) -> Read | RowError:
    """One record as ``reader``'s stage reads it, or its problem naming its place
    (``file:line: field 'conversations[1].from': ... (expected sharegpt rows)``).
    ``number``: the row's place among all rows read (default: in its file)."""
    n = item.number if number is None else number
    if isinstance(item, BadRow):
        return RowError(n, "", item.reason, item.code, item.where)
    values = item.values
    if ANNOTATIONS_KEY in values:  # lmops's scores are never part of a training row
        values = {k: v for k, v in values.items() if k != ANNOTATIONS_KEY}
    try:
        return reader.read(values)
    except RowProblem as e:
        reason = e.reason + (f" (expected {e.shape} rows)" if e.shape is not None else "")
        return RowError(n, e.field, reason, e.code, item.where)


def mapping_problem(columns: Mapping[str, str], rows: list[Row]) -> tuple[str, str] | None:
    """A mapped column that no row has, the mapping's mistake, not the rows': ``(where,
    reason)`` at the first row, or None when every mapped column is somewhere."""
    for name, column in columns.items():
        if rows and not any(column in row.values for row in rows):
            hint = name_hint(column, sorted(rows[0].values), "the rows have")
            return (
                rows[0].where,
                f"field {column!r} (columns.{name}) is in no row ({hint}); fix columns in the job",
            )
    return None


def set_problem(stage: str, shapes: Mapping[str, int], first: str) -> tuple[str, str] | None:
    """What is wrong with the usable rows as a whole, as ``(where, reason)`` (``first``:
    where the first usable row is); None when nothing is."""
    if stage == "sft" and set(shapes) == {"pretrain"}:
        return (
            first,
            "stage sft needs alpaca, chat, ShareGPT or prompt/completion rows (text rows may "
            "be mixed in, not trained alone: that is stage pretrain)",
        )
    return None


def validate_shapes(
    items: Iterable[Row | BadRow],
    reader: RowReader,
    *,
    max_errors: int = 100,
    look: Callable[[str, str, Mapping[str, Any]], None] | None = None,
) -> ValidationReport:
    """Every record read as ``reader``'s stage reads it: the shape of each usable row
    (``shapes``: counts; ``shape_runs``: consecutive rows of one shape, first and last
    place), each problem as training states it, and the set's own problems (a mapped
    column in no row, an SFT set of text rows only) as errors of the row they name.
    ``look``: called with each usable row's place, shape and lmops row (``lmops data
    validate``'s notes)."""
    items = list(items)
    good = [item for item in items if isinstance(item, Row)]
    report = ValidationReport(format=None, stage=reader.stage)
    counts: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    runs: list[dict[str, Any]] = []
    first_good = ""

    def add(error: RowError) -> None:
        counts[error.code] += 1
        if len(report.errors) < max_errors:
            report.errors.append(error)
        else:
            report.truncated = True

    mapping = mapping_problem(reader.columns, good)
    if mapping is not None:  # no row can be read as the job says: this one problem
        add(RowError(1, "", mapping[1], "missing", mapping[0]))
        report.total_rows, items = len(items), []
    for n, item in enumerate(items, 1):
        report.total_rows = n
        got = read_item(reader, item, n)
        if isinstance(got, RowError):
            add(got)
            continue
        report.valid_rows += 1
        shapes[got.shape] += 1
        if look is not None:
            look(item.where, got.shape, got.row)
        first_good = first_good or item.where
        if runs and runs[-1]["shape"] == got.shape:
            runs[-1].update(rows=runs[-1]["rows"] + 1, last=item.where)
        else:
            runs.append({"shape": got.shape, "rows": 1, "first": item.where, "last": item.where})
    whole = set_problem(reader.stage, shapes, first_good)
    if whole is not None:
        add(RowError(1, "", whole[1], "stage", whole[0]))
        report.valid_rows = 0
    report.error_counts = dict(counts)
    report.shapes = dict(shapes)
    report.shape_runs = runs
    report.warnings = reader.unmapped(row.values for row in good)
    return report
