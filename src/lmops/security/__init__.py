"""The security stage (see docs/ARCHITECTURE.md); not built yet."""
