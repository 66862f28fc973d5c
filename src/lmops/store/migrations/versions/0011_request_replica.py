"""Request log: the replica that answered (``replica``), for a deployment over a list of
replicas of one upstream (``upstream: [url, url]``), whose ``model_ref`` names the whole
list: the URL (credentials masked) of the one whose reply, or failure, the request got.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        # nullable: one upstream, an engine, and rows logged before this revision have none
        batch.add_column(sa.Column("replica", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.drop_column("replica")
