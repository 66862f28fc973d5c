"""The monitor stage (see docs/ARCHITECTURE.md); not built yet."""
