"""What a check says to its reader: the real reason no monitor ran (too few reference rows
is not a log without bodies), and which embedder ran, with why ``auto`` fell back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lmops.monitor.checks import CheckSpec, check_deployment
from lmops.monitor.report import format_summary
from tests.monitor.traffic import cooking, log_chat, plant_traffic


def test_too_few_reference_rows_is_said_as_such(store: Any, tmp_path: Path) -> None:
    now = datetime.now(UTC) - timedelta(minutes=10)
    for i in range(30):  # bodies logged
        log_chat(store, "chat", cooking(i), "Use butter.", at=now + timedelta(seconds=i), i=i)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": cooking(i)},
                        {"role": "assistant", "content": "Use garlic."},
                    ]
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    ref = str(store.assets.register("dataset", "answers", answers).ref)
    spec = CheckSpec(
        deployment="chat", since="1h", reference=ref, monitor={"embedder": "hashed", "plots": False}
    )
    report, _ = check_deployment(store, spec)
    assert report.status == "no_overlap"
    assert report.message.startswith("too few rows to compare: the reference has 5, and every")
    assert "needs 20 on each side" in report.message and "bodies" not in report.message
    assert "too few rows to compare" in format_summary(report)


def test_the_summary_names_the_embedder_and_why_auto_fell_back(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.monitor.embed as embed

    # as where sentence-transformers is not installed (the package holding the weights is)
    monkeypatch.setattr(embed, "_MINILM_NEEDS", {"lmops_no_such_module": "sentence-transformers"})
    plant_traffic(store, "chat", model_ref=None, n=40, drift=False)
    spec = CheckSpec.model_validate(
        {
            "deployment": "chat",
            "since": "1h",
            "reference_since": "3h",
            "monitor": {"embedder": "auto", "permutations": 50, "plots": False},
        }
    )
    report, _ = check_deployment(store, spec)
    assert report.embedder == "hashed-ngram-512"
    assert format_summary(report).splitlines()[2] == (
        "embedder: hashed-ngram-512 (auto fell back from all-MiniLM-L6-v2: "
        "sentence-transformers is not installed (pip install sentence-transformers))"
    )
    spec.monitor.embedder = "hashed"  # asked for: no note
    report, _ = check_deployment(store, spec)
    assert format_summary(report).splitlines()[2] == "embedder: hashed-ngram-512"
