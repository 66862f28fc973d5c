"""Pipelines: YAML steps over every stage, cached by config and input versions.

``load_pipeline(path)`` → ``run_pipeline(pipeline, store)``; step types live in
``pipelines/steps.py`` and the bundled quickstart in ``pipelines/quickstart.py``."""

from lmops.pipelines import drift_step  # noqa: F401  (registers the `drift` step type)
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
