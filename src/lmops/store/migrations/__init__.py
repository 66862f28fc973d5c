"""Alembic migrations shipped in the package and applied automatically on open."""
