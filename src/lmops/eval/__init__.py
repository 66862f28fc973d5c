"""Evaluation stage: lm-eval compatible tasks, log-likelihood and generation scoring, judges, safety, contamination and serving performance."""
