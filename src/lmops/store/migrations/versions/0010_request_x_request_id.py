"""Request log: the gateway's request id (``x_request_id``), the ``x-request-id`` header of
the response, so that a request is found by the one id every client holds, a refused one
(which has no answer ``id``) included. Indexed: ``lmops trace`` looks rows up by it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        # nullable: rows logged before this revision have none
        batch.add_column(sa.Column("x_request_id", sa.String(128), nullable=True))
    op.create_index("ix_request_log_x_request_id", "request_log", ["x_request_id"])


def downgrade() -> None:
    op.drop_index("ix_request_log_x_request_id", "request_log")
    with op.batch_alter_table("request_log") as batch:
        batch.drop_column("x_request_id")
