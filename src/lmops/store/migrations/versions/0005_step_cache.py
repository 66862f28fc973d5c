"""Pipelines: the step cache (a step's cache key -> the outputs it produced).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("pipeline", sa.String(128), nullable=False),
        sa.Column("step", sa.String(128), nullable=False),
        sa.Column("step_type", sa.String(32), nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_step_cache_pipeline_step", "step_cache", ["pipeline", "step"])


def downgrade() -> None:
    op.drop_index("ix_step_cache_pipeline_step", "step_cache")
    op.drop_table("step_cache")
