"""The prompts stage (see docs/ARCHITECTURE.md); not built yet."""
