"""Serving: the host of each in-flight row, so a PostgreSQL-backed gateway frees the slots of
a worker that died on the same host at once (its pid can be checked there), not only after
they age out.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inflight") as t:
        t.add_column(sa.Column("host", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inflight") as t:
        t.drop_column("host")
