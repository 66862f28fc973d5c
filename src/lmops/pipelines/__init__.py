"""Pipelines: YAML steps over every stage, cached by config and input versions.

``load_pipeline(path)`` → ``run_pipeline(pipeline, store)``; step types live in
``pipelines/steps.py`` (the deploy stage's in ``deploy_steps.py``, drift in ``drift_step.py``) and the bundled quickstart in ``pipelines/quickstart.py``."""

from lmops.pipelines import deploy_steps, drift_step  # noqa: F401  (register their step types)
from lmops.pipelines.runner import PipelineRun, StepState, plan_pipeline, run_pipeline
from lmops.pipelines.spec import Pipeline, load_pipeline, pipeline_from_dict

__all__ = [
    "Pipeline",
    "PipelineRun",
    "StepState",
    "load_pipeline",
    "pipeline_from_dict",
    "plan_pipeline",
    "run_pipeline",
]
