"""The pipeline step ``drift``: dataset drift between two dataset assets (the monitor stage's
``compare_datasets``), recorded as a ``drift_report``; with ``fail_on_drift`` a drifted
dataset stops the pipeline (e.g. before training on flow-back data that left the
distribution the eval set stands for).

.. code-block:: yaml

    steps:
      check-data:
        type: drift
        reference: sft-data
        current: ${steps.export.output}
        fail_on_drift: true
        monitors: [language, embedding_mmd]     # default: every text monitor
"""

from __future__ import annotations

from pydantic import Field, field_validator

from lmops.core.errors import UserError
from lmops.pipelines.steps import Params, StepContext, StepOutput, step_type

__all__ = ["DriftParams"]


class DriftParams(Params):
    reference: str
    current: str
    fail_on_drift: bool = False
    monitors: list[str] | None = None
    embedder: str = "auto"
    limit: int | None = Field(None, ge=1)
    plots: bool = True

    @field_validator("monitors")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        from lmops.monitor.drift import known_monitors

        return known_monitors(v)

    def inputs(self) -> list[str]:
        return [self.reference, self.current]


@step_type("drift", DriftParams)
def _drift(ctx: StepContext, p: DriftParams) -> StepOutput:
    """Compare dataset ``current`` with ``reference`` (the monitor stage's text monitors) and
    register a drift_report; ``fail_on_drift`` fails the step when any monitor drifted."""
    from lmops.monitor.checks import compare_datasets
    from lmops.monitor.drift import MonitorConfig

    cfg = MonitorConfig(embedder=p.embedder, monitors=p.monitors, plots=p.plots)
    report, version = compare_datasets(ctx.store, p.reference, p.current, cfg, limit=p.limit)
    if p.fail_on_drift and report.drift:
        raise UserError(
            f"{p.current} drifted from {p.reference} in {', '.join(report.drifted)} "
            f"(see `lmops monitor show {version.ref}`); fail_on_drift is set"
        )
    return StepOutput(
        {"output": version.ref},
        {"status": report.status, "drifted": report.drifted},
        f"{report.status}: {report.message}",
    )
