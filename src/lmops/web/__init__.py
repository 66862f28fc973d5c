"""The web stage (see docs/ARCHITECTURE.md); not built yet."""
