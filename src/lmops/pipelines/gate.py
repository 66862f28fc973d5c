"""The gate's conditions: each names a metric and the rules it must meet; a candidate passes the
gate when every condition does. Scores are computed once (the eval reports); deciding is separate,
so a gate can be re-tuned without evaluating again.

.. code-block:: yaml

    conditions:
      - {metric: addition/exact_match, improve_by: 0.05}        # better than the baseline by 0.05 or more
      - {metric: "perplexity:heldout/word_perplexity", not_worse_than: 10%}  # at most 10 % worse
      - {metric: safety/safe_response_rate, min: 0.5}           # an absolute floor (``max``: a ceiling)

``improve_by`` and ``not_worse_than`` compare with the gate's ``baseline`` report, in the metric's
better direction: a number is in the metric's units, ``"N%"`` is a share of the baseline's value.
The direction comes from the metric's name (:func:`higher_is_better`: lm-eval's registry of
``lmops.eval.metrics``, then names such as ``*perplexity``, ``*loss``, ``bits_per_byte``), or
from ``higher_is_better:`` on the condition, which an unknown name requires.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from lmops.core.errors import UserError

__all__ = ["Condition", "Verdict", "fmt", "higher_is_better", "judge"]

# Metric names (the part after "task/", before lm-eval's ",filter") by direction; the first
# pattern that matches decides.
_LOWER = re.compile(
    r"perplexity|bits_per_byte|(^|_)loss$|error|(^|_)(wer|cer|ter)$|latency|ttft|_ms$|"
    r"seconds|compliance_rate|unsafe|toxicity"
)
_HIGHER = re.compile(
    r"acc|exact_match|(^|_)f1|rouge|bleu|chrf|mc[12]$|pass@|safe_response_rate|refusal_rate|"
    r"win_rate|score$|margin$|reward|per_s$|throughput"
)


def higher_is_better(metric: str, explicit: bool | None = None) -> bool | None:
    """Whether a larger value of ``metric`` ("task/name" or "task/name,filter") is better:
    ``explicit`` when given, else the registry's word, else the name's; ``None`` when
    nothing says."""
    if explicit is not None:
        return explicit
    from lmops.eval.metrics import METRICS

    name = metric.rsplit("/", 1)[-1].split(",", 1)[0].lower()
    if name in METRICS:
        return METRICS[name].higher_is_better
    if _LOWER.search(name):
        return False
    if _HIGHER.search(name):
        return True
    return None


_MARGIN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _margin(value: float | str, baseline: float) -> float:
    """A margin in the metric's units: a number as it is, ``"N%"`` as N % of ``|baseline|``."""
    if isinstance(value, str):
        m = _MARGIN.match(value)
        assert m is not None  # checked when the condition was loaded
        return float(m.group(1)) / 100 * abs(baseline)
    return float(value)


class Condition(BaseModel):
    """One metric and its rules (at least one): ``min`` / ``max`` bound the value;
    ``improve_by`` / ``not_worse_than`` compare it with the baseline's."""

    model_config = ConfigDict(extra="forbid")

    metric: str  # "task/metric" as in the eval report, e.g. "addition/exact_match"
    min: float | None = None
    max: float | None = None
    improve_by: float | str | None = None  # better than the baseline by at least this
    not_worse_than: float | str | None = None  # worse than the baseline by at most this
    higher_is_better: bool | None = None  # default: from the metric's name

    @field_validator("improve_by", "not_worse_than")
    @classmethod
    def _check_margin(cls, v: float | str | None) -> float | str | None:
        if v is None:
            return v
        if isinstance(v, str):
            if not _MARGIN.match(v):
                raise ValueError(f"{v!r}: expected a number (in the metric's units) or 'N%'")
            return v.strip()
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{v}: a margin is a number >= 0 or 'N%'")
        return v

    @model_validator(mode="after")
    def _check_rules(self) -> Condition:
        if all(x is None for x in (self.min, self.max, self.improve_by, self.not_worse_than)):
            raise ValueError(f"{self.metric}: no rule; give min, max, improve_by or not_worse_than")
        if self.improve_by is not None and self.not_worse_than is not None:
            raise ValueError(f"{self.metric}: improve_by and not_worse_than exclude each other")
        if self.relative and self.direction is None:
            raise ValueError(
                f"{self.metric}: which way is better is not known from its name; "
                "set higher_is_better: true or false"
            )
        return self

    @property
    def relative(self) -> bool:
        """Whether a rule compares with the baseline."""
        return self.improve_by is not None or self.not_worse_than is not None

    @property
    def direction(self) -> bool | None:
        return higher_is_better(self.metric, self.higher_is_better)


@dataclass(frozen=True)
class Verdict:
    """One condition judged on one candidate: the values, whether it passed, and why."""

    metric: str
    value: float
    baseline: float | None
    higher_is_better: bool | None
    rules: str  # "improve_by 0.05", "not_worse_than 10%, min 0.5"
    passed: bool
    reason: str  # "1.000 vs baseline 0.010: better by 0.990, needs 0.050"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """``metric value ... : pass|FAIL``, as the gate prints it."""
        return f"{self.metric} {self.reason}: {'pass' if self.passed else 'FAIL'}"


def fmt(v: float) -> str:
    """A metric value for people: 0.719, 3.194, 67.2, 6,796.9."""
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"


def judge(cond: Condition, value: float, baseline: float | None) -> Verdict:
    """Judge ``value`` (and ``baseline``, needed by relative rules) against ``cond``."""
    hib = cond.direction
    parts: list[str] = []
    failed = False
    rules: list[str] = []
    if cond.relative:
        if baseline is None:
            raise UserError(f"{cond.metric}: improve_by / not_worse_than need the gate's baseline")
        assert hib is not None
        gain = (value - baseline) if hib else (baseline - value)  # > 0: better
        pct = isinstance(cond.improve_by or cond.not_worse_than, str)

        def size(x: float) -> str:
            if pct:
                return f"{abs(x) / abs(baseline) * 100:,.1f} %" if baseline else "inf %"
            return fmt(abs(x))

        change = (
            f"better by {size(gain)}"
            if gain > 0
            else f"worse by {size(gain)}"
            if gain < 0
            else "unchanged"
        )
        head = f"{fmt(value)} vs baseline {fmt(baseline)}: {change}"
        if cond.improve_by is not None:
            need = _margin(cond.improve_by, baseline)
            ok = gain > 0 and gain >= need
            rules.append(f"improve_by {cond.improve_by}")
            parts.append(f"{head}, needs {size(need) if need else 'any improvement'}")
        else:
            assert cond.not_worse_than is not None
            allowed = _margin(cond.not_worse_than, baseline)
            ok = -gain <= allowed
            rules.append(f"not_worse_than {cond.not_worse_than}")
            parts.append(f"{head}, allows {size(allowed) if allowed else 'no loss'}")
        failed |= not ok
    for bound, name in ((cond.min, "min"), (cond.max, "max")):
        if bound is None:
            continue
        ok = value >= bound if name == "min" else value <= bound
        rules.append(f"{name} {bound:g}")
        parts.append(f"{fmt(value)}, {name} {fmt(bound)}" if not parts else f"{name} {fmt(bound)}")
        failed |= not ok
    return Verdict(
        cond.metric, value, baseline, hib, ", ".join(rules), not failed, "; ".join(parts)
    )
