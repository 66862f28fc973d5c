"""``lmops train sweep JOB.yaml``: an Optuna search over a space declared in the job.

```yaml
sweep:
  trials: 8
  metric: eval_loss          # any metric the stage logs (last value of the trial)
  direction: minimize
  space:
    train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    lora.r: {type: categorical, choices: [4, 8, 16]}
    train.warmup_steps: {type: int, low: 0, high: 20}
```
Each trial is a training run of its own (kind ``train``, named ``<output>``); the sweep
itself is a run of kind ``sweep`` whose metric series is the objective per trial. Only the
best trial's output is registered, with its lineage and its run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmops.core.errors import UserError
from lmops.core.yamlcfg import apply_overrides, validate_config
from lmops.train.spec import TrainSpec

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = ["SweepResult", "SweepSpec", "run_sweep"]


class SweepParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs choices")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"{self.type} needs low < high")
        return self


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: int = Field(8, ge=1)
    metric: str = "eval_loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    seed: int = 0
    space: dict[str, SweepParam] = Field(min_length=1)


@dataclass
class SweepResult:
    sweep_run: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    output: str  # the registered "name:N"
    trials: list[dict[str, Any]] = field(default_factory=list)


def run_sweep(spec: TrainSpec, store: Store, *, progress: bool = True) -> SweepResult:
    import optuna

    from lmops.train.run import register_output, run_training

    if spec.sweep is None:
        raise UserError("the job has no `sweep:` section; see `lmops train sweep --help`")
    sweep = validate_config(spec.sweep, SweepSpec, source="sweep")
    base = spec.model_dump(mode="json")
    base["sweep"] = None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=sweep.direction, sampler=optuna.samplers.TPESampler(seed=sweep.seed)
    )
    results: dict[int, Any] = {}
    trials: list[dict[str, Any]] = []

    with store.runs.track(
        "sweep", name=spec.output, config={**base, "sweep": sweep.model_dump()}
    ) as sweep_run:

        def objective(trial: optuna.Trial) -> float:
            overrides = []
            params: dict[str, Any] = {}
            for key, p in sweep.space.items():
                if p.type == "float":
                    v: Any = trial.suggest_float(
                        key, float(p.low or 0), float(p.high or 0), log=p.log
                    )
                elif p.type == "int":
                    v = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), log=p.log)
                else:
                    v = trial.suggest_categorical(key, p.choices or [])
                params[key] = v
                overrides.append(f"{key}={v}")
            trial_spec = validate_config(
                apply_overrides(dict(base), overrides),
                TrainSpec,
                source=f"sweep trial {trial.number}",
            )
            res = run_training(
                trial_spec, store, progress=progress, register=False, ignore_previous=True
            )
            if sweep.metric not in res.final:
                raise UserError(
                    f"sweep.metric {sweep.metric!r} was not logged (logged: {', '.join(sorted(res.final))}); "
                    "for eval_loss set eval_split"
                )
            value = float(res.final[sweep.metric])
            results[trial.number] = (trial_spec, res)
            trials.append(
                {"trial": trial.number, "run_id": res.run_id, "params": params, sweep.metric: value}
            )
            store.runs.log_metrics(sweep_run.id, {sweep.metric: value}, step=trial.number)
            return value

        study.optimize(objective, n_trials=sweep.trials, catch=())
        best = study.best_trial
        best_spec, best_res = results[best.number]
        version = register_output(store, best_spec, best_res)
        store.runs.update(
            sweep_run.id,
            params={
                "best_trial": best.number,
                "best_params": best.params,
                "best_run": best_res.run_id,
            },
        )
    return SweepResult(
        sweep_run.id, best.number, float(best.value or 0.0), dict(best.params), version.ref, trials
    )
