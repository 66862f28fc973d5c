"""The deploy stage (see docs/ARCHITECTURE.md); not built yet."""
