"""Store: blob claims, the digests a PENDING version is writing, recorded before the bytes
are put in place so ``gc`` (even with a grace of 0) never frees them mid-registration.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_claims",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("versions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_index("ix_blob_claims_version_id", "blob_claims", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_blob_claims_version_id", "blob_claims")
    op.drop_table("blob_claims")
