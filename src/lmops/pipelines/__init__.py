"""The pipelines stage (see docs/ARCHITECTURE.md); not built yet."""
