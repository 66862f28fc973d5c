"""Request log: the prompt version that served a request (``prompt_ref``, ``name:N``), when a
deployment binds a registered prompt or the request picks one (issue #16).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.add_column(sa.Column("prompt_ref", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.drop_column("prompt_ref")
