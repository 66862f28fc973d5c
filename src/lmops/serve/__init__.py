"""The serve stage (see docs/ARCHITECTURE.md); not built yet."""
