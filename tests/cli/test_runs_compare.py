"""`lmops runs compare` / `GET /api/runs/compare` / the console's comparison: one
``store.runs.compare`` under all three."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.core.errors import NotFoundError, UserError
from lmops.store import Store


def _runs(store: Store) -> list[str]:
    ids = []
    for lr, name in ((3e-4, "sft"), (1e-4, "sft")):
        r = store.runs.start("train", name=name, config={"train": {"lr": lr, "epochs": 1}})
        for step in range(1, 4):
            store.runs.log_metrics(r.id, {"loss": 3 - step * lr * 1000}, step=step)
        if lr > 2e-4:  # only the first run was evaluated
            store.runs.log_metrics(r.id, {"eval_acc": 0.75}, step=3)
        store.runs.finish(r.id)
        ids.append(r.id)
    return ids


def test_store_compare_lines_up_metrics_and_splits_params(store: Store) -> None:
    a, b = _runs(store)
    cmp = store.runs.compare([a, b, a])  # a run given twice counts once
    assert [r.id for r in cmp.runs] == [a, b]
    loss_a, loss_b = cmp.metrics["loss"]
    assert loss_a is not None and loss_b is not None
    assert (loss_a.last, loss_a.step, loss_a.min, loss_a.max, loss_a.points) == (
        pytest.approx(2.1),
        3,
        pytest.approx(2.1),
        pytest.approx(2.7),
        3,
    )
    assert loss_b.last == pytest.approx(2.7)
    assert cmp.metrics["eval_acc"][1] is None  # b has no such metric
    assert cmp.differing == {"config.train.lr": [3e-4, 1e-4]}
    assert cmp.same == {"config.train.epochs": 1}
    with pytest.raises(UserError, match="at least two"):
        store.runs.compare([a])
    with pytest.raises(NotFoundError, match="nope"):
        store.runs.compare([a, "nope"])


def test_cli_table_json_and_plot(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = _runs(store)
    png = tmp_path / "cmp.png"
    r = cli("runs", "compare", a, b, "--plot", str(png))
    assert r.code == 0, r.err
    assert "2.1 @3 (2.1..2.7)" in r.out and "config.train.lr" in r.out
    assert "1 params are the same in every run" in r.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("runs", "compare", a, b, "--all")
    assert "config.train.epochs" in r.out
    r = cli("runs", "compare", a, b, "--json")
    got = json.loads(r.out)
    assert got["differing"] == {"config.train.lr": [3e-4, 1e-4]}
    assert got["metrics"]["eval_acc"][1] is None
    r = cli("runs", "compare", a)
    assert r.code == 2 and "at least two run ids" in r.err


def test_api_compare(store: Store) -> None:
    from fastapi.testclient import TestClient

    from lmops.api.app import create_app

    a, b = _runs(store)
    _, secret = store.keys.create("reader", role="user")
    client = TestClient(create_app(store))
    auth = {"Authorization": f"Bearer {secret}"}
    r = client.get("/api/runs/compare", params={"ids": [a, b]}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["differing"] == {"config.train.lr": [3e-4, 1e-4]}
    r = client.get("/api/runs/compare", params={"ids": [a]}, headers=auth)
    assert r.status_code == 400 and "at least two" in r.text
