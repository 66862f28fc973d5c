"""Shared text libraries below the stages (layers: core -> text -> store -> models -> stages).

* :mod:`lmops.text.cjk`: CJK character ranges, defined once (their bounds are documented there).
* :mod:`lmops.text.pii`: PII and secret detection and masking (data operators, the gateway's
  guardrails, the request log).
* :mod:`lmops.text.words`: words and stable word ids of the hashed-feature models.
* :mod:`lmops.text.logistic`: logistic regression over sparse hashed features (the quality and
  moderation classifiers).

Nothing here imports a stage, the store or a model: only :mod:`lmops.core` and libraries.
"""
