"""The eval stage (see docs/ARCHITECTURE.md); not built yet."""
