"""Responses API state: the table ``responses``, one row per stored response of
``/v1/responses`` (``store: true``), so a later request can continue it
(``previous_response_id``) and its owner can retrieve or delete it. ``expires_at`` is
indexed: ``lmops gc`` deletes the rows past it.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_name", sa.String(128), nullable=True),
        sa.Column("deployment", sa.String(128), nullable=True),
        sa.Column("previous_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
    )
    op.create_index("ix_responses_expires_at", "responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_responses_expires_at", "responses")
    op.drop_table("responses")
