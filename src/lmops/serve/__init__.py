"""Serving: the OpenAI-compatible gateway (keys, flow control, metering, guardrails) over
the built-in continuous-batching engine, upstream servers, and an in-package fake."""
