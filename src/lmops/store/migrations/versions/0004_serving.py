"""Serving: request log (metering), rate-limit windows and in-flight requests shared by
every server worker.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(64), nullable=False, index=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=True),
        sa.Column("deployment", sa.String(128), nullable=True),
        sa.Column("model_ref", sa.String(255), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("guardrails", sa.JSON, nullable=False),
        sa.Column("request_body", sa.JSON, nullable=True),
        sa.Column("response_body", sa.JSON, nullable=True),
    )
    op.create_index("ix_request_log_key_time", "request_log", ["key_name", "time"])
    op.create_index("ix_request_log_dep_time", "request_log", ["deployment", "time"])
    op.create_table(
        "rate_windows",
        sa.Column("scope", sa.String(255), primary_key=True),
        sa.Column("window", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "inflight",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scope", sa.String(255), nullable=False, index=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inflight")
    op.drop_table("rate_windows")
    op.drop_index("ix_request_log_dep_time", "request_log")
    op.drop_index("ix_request_log_key_time", "request_log")
    op.drop_table("request_log")
