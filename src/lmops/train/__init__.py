"""The train stage (see docs/ARCHITECTURE.md); not built yet."""
