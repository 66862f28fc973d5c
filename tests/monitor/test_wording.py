"""The monitor's messages count in English: one canary, one monitor, one prompt; a noun
agrees with its count in the CLI, the console's alerts and the reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmops.monitor.drift import MonitorConfig, compare_samples
from lmops.monitor.features import Sample
from lmops.monitor.report import DRIFT_REPORT
from lmops.monitor.wording import counted
from lmops.web.pages_stages import alerts


def test_counted_agrees_with_its_number() -> None:
    assert counted(1, "canary", "canaries") == "1 canary"
    assert counted(0, "canary", "canaries") == "0 canaries"
    assert counted(2, "monitor") == "2 monitors"
    assert counted(1, "reference value") == "1 reference value"


def test_one_canary_failing_in_the_consoles_alerts(store: Any, tmp_path: Path) -> None:
    report = tmp_path / "r"
    report.mkdir()
    (report / "report.json").write_text("{}")
    for name, failing in [("one", ["capital"]), ("two", ["capital", "hello"])]:
        canaries = {"failed": len(failing), "failing": failing}
        store.assets.register(DRIFT_REPORT, name, report, metadata={"canaries": canaries})
    said = {a["ref"]: a["what"] for a in alerts(store)}
    assert said["one:1"] == "1 canary failing capital"
    assert said["two:1"] == "2 canaries failing capital, hello"


def test_one_prompt_registered_and_one_monitor_run(cli: Any, store: Any, tmp_path: Path) -> None:
    path = tmp_path / "canaries.yaml"
    path.write_text('prompts:\n  - {id: capital, prompt: "Capital of France?"}\n')
    r = cli("monitor", "canaries", "register", str(path), "--name", "cs")
    assert r.code == 0 and "(1 prompt)" in r.out, r.out + r.err
    assert store.assets.get("cs:1").description == "1 canary prompt"

    ref, cur = Sample("ref"), Sample("cur")
    for i in range(20):
        ref.add(f"question {i}", "answer")
        cur.add(f"question {i}?", "answer")
    cfg = MonitorConfig(monitors=["prompt_chars"], plots=False)
    report = compare_samples(ref, cur, cfg, subject="s", reference="r").report
    assert report.message.endswith("(1 monitor, 0 skipped)"), report.message
    cur = Sample("cur")
    cur.add("question?", "answer")
    report = compare_samples(ref, cur, cfg, subject="s", reference="r").report
    (skipped,) = report.monitors
    assert skipped.skipped == "20 reference values and 1 current value; needs 20 on each side"


def test_one_canary_unanswered_or_slow_in_the_watchers_words() -> None:
    from lmops.pipelines.retrain import _not_retrained

    (slow,) = _not_retrained({"slow": ["capital"]})
    assert slow.startswith("retraining not started: canary capital was answered right but too")
    (hung,) = _not_retrained({"unanswered": ["capital", "json"]})
    assert hung.startswith("retraining not started: canaries capital, json failed for lack")
