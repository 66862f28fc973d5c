"""Server time of every console page over a store with 500 runs and 1,000 asset versions
(issue #19: goal <= 300 ms each), printed as a table (``--json`` for the numbers).

    python benchmarks/console_bench.py [--runs 500] [--versions 1000] [--steps 20] [--repeat 5]
                                       [--home DIR] [--json]

Seeds a fresh ``LMOPS_HOME`` through the store's public API: ``--runs`` runs (train, eval,
data and pipeline kinds) each logging ``loss``/``lr``/``grad_norm`` for ``--steps`` steps,
``--versions`` asset versions over 50 assets (datasets, models linked to the datasets they
came from, prompts, eval reports with items) with aliases, 5,000 request-log rows, and a
pipeline step cache. Then it logs in as an admin key and times each page in-process
(and the fragments the evaluation and serving pages load after they show, marked ``+``)
(Starlette's TestClient: the app's own time plus a few hundred microseconds of client),
one warm-up request and ``--repeat`` timed ones, reporting the median and the worst.

Timings on a shared machine are noisy: compare medians of runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GOAL_MS = 300.0


def seed(store: Any, tmp: Path, *, runs: int, versions: int, steps: int) -> dict[str, Any]:
    from lmops.monitor.metering import log_request

    rng = random.Random(0)
    run_ids = []
    kinds = ("train", "train", "eval", "data", "pipeline")
    t0 = time.perf_counter()
    for i in range(runs):
        kind = kinds[i % len(kinds)]
        cfg = {"lr": rng.choice([1e-4, 3e-4, 1e-3]), "model": {"layers": rng.choice([2, 4])}}
        with store.runs.track(kind, config=cfg) as run:
            for step in range(steps):
                store.runs.log_metrics(
                    run.id,
                    {
                        "loss": 4.0 / (1 + 0.1 * step) + rng.random() * 0.05,
                        "lr": cfg["lr"],
                        "grad_norm": rng.random(),
                    },
                    step,
                )
            if kind == "pipeline":
                store.runs.update(
                    run.id,
                    params={"steps": {"data": {"status": "done"}, "train": {"status": "cached"}}},
                )
        run_ids.append(run.id)
    print(f"seeded {runs} runs in {time.perf_counter() - t0:.1f} s", flush=True)

    t0 = time.perf_counter()
    per_asset = max(1, versions // 50)
    f = tmp / "payload"
    refs: dict[str, list[str]] = {"dataset": [], "model": [], "prompt": [], "eval_report": []}
    for a in range(50):
        kind = ("dataset", "model", "prompt", "eval_report")[a % 4]
        name = f"{kind.replace('_', '-')}-{a:02d}"
        for v in range(per_asset):
            inputs: list[tuple[str, str]] = []
            meta: dict[str, Any] = {}
            if kind == "dataset":
                f.mkdir(exist_ok=True)
                rows = "".join(json.dumps({"text": f"doc {a}.{v}.{i}"}) + "\n" for i in range(50))
                (f / "part-00000.jsonl").write_text(rows, encoding="utf-8")
                src, meta = f, {"docs": 50}
            elif kind == "eval_report":
                f.mkdir(exist_ok=True)
                results = {"addition": {"exact_match": rng.random(), "n": 20}}
                model = refs["model"][-1] if refs["model"] else None
                (f / "results.json").write_text(
                    json.dumps({"model": {"name": "m", "ref": model}, "results": results}),
                    encoding="utf-8",
                )
                items = "".join(
                    json.dumps({"task": "addition", "doc": i, "scores": {"exact_match": i % 2}})
                    + "\n"
                    for i in range(20)
                )
                (f / "items.jsonl").write_text(items, encoding="utf-8")
                src = f
                meta = {"model": {"name": "m", "ref": model}, "results": results, "groups": {}}
                if model:
                    inputs = [(model, "model")]
            elif kind == "prompt":
                from lmops.prompts import create

                text = f"Prompt {a} version {v}: write about {{{{topic}}}}."
                refs[kind].append(create(store, name, text, message=f"v{v}").ref)
                continue
            else:
                src = tmp / "file.txt"
                src.write_text(f"{kind} {a} version {v}: about {{{{ topic }}}}", encoding="utf-8")
                meta = {}
                if kind == "model" and refs["dataset"]:
                    inputs = [(refs["dataset"][-1], "dataset")]
            ver = store.assets.register(kind, name, src, metadata=meta, inputs=inputs)
            refs[kind].append(ver.ref)
            if f.exists() and f.is_dir():
                for p in f.iterdir():
                    p.unlink()
        store.assets.alias(refs[kind][-1], "production")
    print(f"seeded {50 * per_asset} versions in {time.perf_counter() - t0:.1f} s", flush=True)

    now = datetime.now(UTC)
    for i in range(5000):
        log_request(
            store,
            at=now - timedelta(seconds=i * 10),
            request_id=f"r{i}",
            endpoint="chat",
            status=429 if i % 50 == 0 else 200,
            key_name=f"key-{i % 5}",
            deployment=f"dep-{i % 3}",
            prompt_tokens=20,
            completion_tokens=30,
            latency_ms=40.0 + i % 17,
            guardrails={"actions": [{"action": "pii_mask", "direction": "input"}]}
            if i % 20 == 0
            else None,
        )
    for i in range(40):
        store.steps.put(
            f"k{i}",
            pipeline="bench",
            step=f"s{i}",
            step_type="train",
            outputs={"model": refs["model"][i % len(refs["model"])]},
        )
    return {"runs": run_ids, "refs": refs}


def pages(s: dict[str, Any]) -> list[tuple[str, str]]:
    refs = s["refs"]

    def part(ref: str) -> str:
        name, _, v = ref.rpartition(":")
        return f"{name}/{v}"

    model, dataset = refs["model"][-1], refs["dataset"][-1]
    report, prompt = refs["eval_report"][-1], refs["prompt"][-1]
    return [
        ("overview", "/ui"),
        ("assets", "/ui/assets"),
        ("assets search", "/ui/assets?q=model&kind=model"),
        ("asset versions", f"/ui/assets/{model.rpartition(':')[0]}"),
        ("version + lineage", f"/ui/assets/{part(model)}"),
        ("file preview", f"/ui/assets/{part(dataset)}/file?path=part-00000.jsonl"),
        ("runs", "/ui/runs"),
        ("runs page 5", "/ui/runs?page=5"),
        ("runs text filter", "/ui/runs?kind=train&q=a"),
        ("run", f"/ui/runs/{s['runs'][0]}"),
        ("compare 5 runs", "/ui/runs/compare?" + "&".join(f"ids={i}" for i in s["runs"][:5])),
        ("data", "/ui/data"),
        ("dataset", f"/ui/data/{part(dataset)}"),
        ("evaluation", "/ui/eval"),
        ("  + leaderboard", "/ui/eval/leaderboard"),
        ("eval compare", f"/ui/eval/compare?refs={refs['eval_report'][-2]}&refs={report}"),
        ("eval report", f"/ui/eval/{part(report)}"),
        ("prompts", "/ui/prompts"),
        ("prompt + diff", f"/ui/prompts/{prompt.rpartition(':')[0]}"),
        ("playground", "/ui/playground"),
        ("serving", "/ui/serving"),
        ("  + usage 1h", "/ui/serving/usage"),
        ("  + refusals 1h", "/ui/serving/refusals"),
        ("  + usage 24h", "/ui/serving/usage?window=24h"),
        ("  + refusals 24h", "/ui/serving/refusals?window=24h"),
        ("monitoring", "/ui/monitoring"),
        ("pipelines", "/ui/pipelines"),
        ("audit", "/ui/audit"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--home", type=Path, help="keep the seeded store here and reuse it on the next run"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmops-console-bench-") as tmp:
        home = args.home or Path(tmp) / "home"
        reuse = (home / "console-bench.json").exists()
        os.environ["LMOPS_HOME"] = str(home)
        os.environ["LMOPS_ACCESS_LOG"] = "off"
        for var in ("LMOPS_DATABASE_URL", "LMOPS_ARTIFACTS"):
            os.environ.pop(var, None)
        from fastapi.testclient import TestClient

        from lmops.api.app import create_app
        from lmops.store import Store

        store = Store(origin="api")
        if reuse:
            saved = json.loads((home / "console-bench.json").read_text())
            secret, s = saved["secret"], saved["seed"]
        else:
            _, secret = store.keys.create("bench", role="admin")
            s = seed(store, Path(tmp), runs=args.runs, versions=args.versions, steps=args.steps)
            (home / "console-bench.json").write_text(json.dumps({"secret": secret, "seed": s}))
        client = TestClient(create_app(store))
        form = client.get("/ui/login").text
        token = re.search(r'name="token" value="([^"]+)"', form)
        assert token is not None
        client.post("/ui/login", data={"key": secret, "token": token.group(1)})
        rows: list[dict[str, Any]] = []
        for label, path in pages(s):
            r = client.get(path)  # warm-up (and the check that it renders)
            if r.status_code != 200:
                raise SystemExit(f"{path}: HTTP {r.status_code}: {r.text[:300]}")
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                client.get(path)
                times.append((time.perf_counter() - t) * 1000)
            rows.append(
                {
                    "page": label,
                    "path": path,
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                    "kib": round(len(r.content) / 1024, 1),
                }
            )
        store.close()
    if args.json:
        print(json.dumps({"runs": args.runs, "versions": args.versions, "pages": rows}, indent=1))
        return
    print(f"\n{args.runs} runs x {args.steps} steps x 3 metrics, {args.versions} asset versions")
    print(f"{'page':<20} {'median ms':>10} {'max ms':>8} {'KiB':>7}  goal {GOAL_MS:.0f} ms")
    for row in rows:
        flag = "" if row["median_ms"] <= GOAL_MS else "  OVER"
        print(
            f"{row['page']:<20} {row['median_ms']:>10.1f} {row['max_ms']:>8.1f} "
            f"{row['kib']:>7.1f}{flag}"
        )


if __name__ == "__main__":
    main()
