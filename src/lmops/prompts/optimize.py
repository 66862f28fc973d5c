"""Eval-driven prompt optimisation: instructions × bootstrapped few-shot demos, searched by
successive halving on a dev split, scored on a held-out split.

    lmops prompts optimize sentiment --task task.yaml --endpoint http://127.0.0.1:8000/v1 \\
        --model smol --budget 600 [--proposer URL/MODEL] [--promote staging]

The steps (what DSPy's MIPROv2 does, without its Bayesian surrogate):

1. **Split** the task's rows with a seeded shuffle into train / dev / test (counts in the
   task file); the test split is touched only at the end.
2. **Bootstrap demos**: the starting prompt answers train rows; the ones it gets right are
   the demo pool (DSPy's bootstrapped demos), topped up with labelled train rows when too
   few are right. ``demo_sets`` sets of ``k`` demos are drawn (seeded; balanced over the
   labels of a classification task), plus the empty set.
3. **Propose instructions**: the proposer model (any OpenAI-compatible endpoint; the
   target when none is given) is shown the prompt and a few labelled rows and asked for
   an instruction, ``instructions`` times at temperature 1; plus the empty instruction and,
   for a classification task, "answer with exactly one of: <labels>".
4. **Search**: every (instruction, demo set) pair is a candidate, and the starting prompt
   itself is one. Successive halving: all candidates answer a few dev rows, the better
   half answers more, ... until one is left or the budget (calls to the target model,
   bootstrapping included) is spent. Answers are kept per (candidate, row), so a
   candidate promoted to the next rung answers only its new rows.
5. **Final**: the starting prompt and the winner answer every test row; accuracies with
   bootstrap 95 % CIs and the paired CI of their difference. The winner is registered as
   the next version of the prompt (metrics in its metadata; lineage to the starting
   version, the data, the task file and an ``eval_report`` holding every test answer),
   under an ``optimize`` run. Nothing is labelled unless ``promote`` names a label.

**Resume.** Every model answer (and proposal) is appended to a journal under
``$LMOPS_HOME/prompt-optimize/<key>.jsonl`` (the key hashes the prompt version, the task,
the model and the settings) before the next is asked. When the endpoint fails mid-way the
command stops with a one-line error; running it again replays the journal and continues
from the last completed answer. The journal is removed once the version is registered.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lmops.core.errors import UserError
from lmops.core.rows import read_rows
from lmops.prompts.lm import ChatModel
from lmops.prompts.registry import Prompt
from lmops.prompts.registry import create as create_prompt

__all__ = [
    "Candidate",
    "OptimizeResult",
    "OptimizeSettings",
    "OptimizeTask",
    "bootstrap_ci",
    "optimize",
    "read_set",
]

Messages = list[dict[str, str]]


class OptimizeTask(BaseModel):
    """The task file of ``prompts optimize`` (YAML)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str  # a dataset asset ref or a local file/folder of rows (relative to the file)
    input_field: str = "input"
    target_field: str = "output"
    # a classification task: a reply counts as the first label it names
    labels: list[str] | None = None
    train: int = Field(100, ge=1)
    dev: int = Field(100, ge=1)
    test: int = Field(200, ge=1)
    seed: int = 0
    max_tokens: int = Field(16, ge=1)
    variables: dict[str, str] = Field(default_factory=dict)  # fixed values of other variables


class OptimizeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int = Field(ge=1)  # calls to the target model before the final test
    instructions: int = Field(4, ge=0)  # proposals asked of the proposer
    demo_sets: int = Field(4, ge=0)
    k: int = Field(4, ge=0)  # demos per set
    eta: int = Field(2, ge=2)  # successive halving keeps 1/eta per rung
    concurrency: int = Field(4, ge=1)
    seed: int = 0


class Candidate(BaseModel):
    key: str
    instruction: str
    demos: list[int]  # train row indexes
    start: bool = False  # the starting prompt itself


class OptimizeResult(BaseModel):
    best: Candidate
    dev_scores: dict[str, float]
    dev_counts: dict[str, int]
    test_baseline: float
    test_best: float
    baseline_ci: tuple[float, float]
    best_ci: tuple[float, float]
    diff_ci: tuple[float, float]
    calls_search: int  # target answers before the test: bootstrapping and dev rungs
    calls_propose: int  # proposer requests (the target's own when no proposer was given)
    calls_total: int  # every request: search, proposals and the final test
    test_items: int
    registered: str | None = None
    promoted: str | None = None
    run_id: str | None = None


# -- data -------------------------------------------------------------------------------------------
def read_set(
    store: Any, source: str, base: Path | None = None
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """``(where, row)`` of a dataset ref or local file/folder, and the version ref if an asset."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    ref = None
    if not path.exists():
        v = store.assets.resolve(source)
        ref, path = v.ref, store.assets.path(v.ref)
    return [(r.where, r.values) for r in read_rows([path])], ref


def _norm(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text).strip().lower()


def score(reply: str, target: str, labels: Sequence[str] | None) -> bool:
    """Exact match after lower-casing and dropping punctuation; with ``labels``, the reply
    counts as the label it names first."""
    got = _norm(reply)
    if labels:
        best: tuple[int, str] | None = None
        for lab in labels:
            m = re.search(rf"\b{re.escape(_norm(lab))}\b", got)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), _norm(lab))
        got = best[1] if best else got
    return got == _norm(target)


def bootstrap_ci(
    values: Sequence[float], *, n: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (paired differences for a diff)."""
    import numpy as np

    if not values:
        return (math.nan, math.nan)
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n, len(arr)))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


# -- candidates -------------------------------------------------------------------------------------
def _safe(text: str) -> str:
    """Text that can sit in a template (no ``{{``/``}}``, which would read as variables)."""
    return text.replace("{{", "{ {").replace("}}", "} }")


class _Builder:
    """Builds a candidate's messages from the starting prompt: the instruction (and the
    prompt's own system text) as the system message, each demo as the prompt's user turn
    for the demo's input answered by its output, then the prompt's turn for the input."""

    def __init__(self, start: Prompt, task: OptimizeTask, train: list[dict[str, Any]]) -> None:
        self.start = start
        self.task = task
        self.train = train
        extra = [v for v in start.variables if v != "input" and v not in task.variables]
        if "input" not in start.variables or extra:
            raise UserError(
                f"{start.ref}: optimisation needs a prompt with an {{{{input}}}} variable and "
                f"values for the others in the task's variables (missing: {', '.join(extra) or '-'})"
            )

    def turn(self, x: str) -> tuple[list[str], Messages]:
        msgs = self.start.messages(**self.task.variables, input=x)
        systems = []
        while msgs and msgs[0]["role"] in ("system", "developer"):
            systems.append(msgs.pop(0)["content"])
        return systems, msgs

    def messages(self, c: Candidate, x: str) -> Messages:
        if c.start:
            return self.start.messages(**self.task.variables, input=x)
        systems, rest = self.turn(x)
        system = "\n\n".join(s for s in [c.instruction, *systems] if s)
        out: Messages = [{"role": "system", "content": system}] if system else []
        for i in c.demos:
            row = self.train[i]
            out += self.turn(str(row[self.task.input_field]))[1]
            out.append({"role": "assistant", "content": str(row[self.task.target_field])})
        return out + rest

    def template(self, c: Candidate) -> list[dict[str, str]]:
        """The candidate as a chat template (``{{input}}`` kept a variable)."""
        msgs = self.messages(c, "\x00INPUT\x00")
        return [
            {
                "role": m["role"],
                "content": _safe(m["content"]).replace("\x00INPUT\x00", "{{input}}"),
            }
            for m in msgs
        ]


# -- the journal ------------------------------------------------------------------------------------
class _Journal:
    """Answers already obtained (``kind/key/row -> reply``), appended line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that answer is asked again
                self.done[rec["id"]] = rec["reply"]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def add(self, id_: str, reply: str) -> None:
        self.done[id_] = reply
        self._fh.write(json.dumps({"id": id_, "reply": reply}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class _Asker:
    """Asks the model for every (id, messages) not in the journal, in parallel, journaling
    each answer as it arrives; counts the calls made and replayed."""

    def __init__(
        self, model: ChatModel, journal: _Journal, params: dict[str, Any], workers: int
    ) -> None:
        self.model = model
        self.journal = journal
        self.params = params
        self.workers = workers
        self.calls = 0  # answers used (asked now or replayed from the journal)

    def ask(self, items: Sequence[tuple[str, Messages]]) -> dict[str, str]:
        todo = [(i, m) for i, m in items if i not in self.journal.done]
        if todo:
            with ThreadPoolExecutor(self.workers) as pool:
                futures = [(i, pool.submit(self.model.complete, m, **self.params)) for i, m in todo]
                error: Exception | None = None
                for i, f in futures:
                    try:
                        self.journal.add(i, f.result())
                    except Exception as e:  # keep what finished; report the first failure
                        error = error or e
                if error is not None:
                    raise error
        self.calls += len(items)
        return {i: self.journal.done[i] for i, _ in items}


def _propose(
    proposer: ChatModel,
    asker_journal: _Journal,
    start: Prompt,
    task: OptimizeTask,
    train: list[dict[str, Any]],
    n: int,
    seed: int,
) -> list[str]:
    """``n`` instructions from the proposer (journaled like answers)."""
    rng = random.Random(seed)
    out: list[str] = []
    shown = rng.sample(range(len(train)), min(5, len(train)))
    examples = "\n".join(
        f"Input: {train[i][task.input_field]}\nOutput: {train[i][task.target_field]}" for i in shown
    )
    current = "\n".join(m["content"] for m in start.messages(**task.variables, input="<input>"))
    labels = f" The answer is one of: {', '.join(task.labels)}." if task.labels else ""
    for j in range(n):
        id_ = f"propose/{j}"
        if id_ not in asker_journal.done:
            ask = [
                {
                    "role": "user",
                    "content": (
                        "Write one clear instruction for a language model that must solve this "
                        f"task.{labels}\nCurrent prompt:\n{current}\n\nExamples:\n{examples}\n\n"
                        "Reply with the instruction only."
                    ),
                }
            ]
            asker_journal.add(
                id_, proposer.complete(ask, temperature=1.0, max_tokens=96, seed=seed + j)
            )
        text = asker_journal.done[id_].strip().split("\n\n")[0].strip()[:500]
        if text and text not in out:
            out.append(text)
    return out


def _demo_sets(
    good: list[int], train: list[dict[str, Any]], task: OptimizeTask, s: OptimizeSettings
) -> list[list[int]]:
    rng = random.Random(s.seed)
    pool = good + [i for i in range(len(train)) if i not in set(good)]  # bootstrapped first
    sets: list[list[int]] = [[]]
    for _ in range(s.demo_sets):
        if task.labels:  # one of each label in turn, bootstrapped rows preferred
            by: dict[str, list[int]] = {}
            for i in pool:
                by.setdefault(_norm(str(train[i][task.target_field])), []).append(i)
            for v in by.values():
                head = [i for i in v if i in good]
                rest = [i for i in v if i not in good]
                rng.shuffle(head)
                rng.shuffle(rest)
                v[:] = head + rest
            order = [by[k] for k in sorted(by)]
            rng.shuffle(order)
            picked: list[int] = []
            while len(picked) < min(s.k, len(train)) and any(order):
                for v in order:
                    if v and len(picked) < s.k:
                        picked.append(v.pop(0))
        else:
            head = good[:]
            rng.shuffle(head)
            picked = (head + [i for i in pool if i not in head])[: s.k]
        rng.shuffle(picked)
        if picked and picked not in sets:
            sets.append(picked)
    return sets


def optimize(
    store: Any,
    start: Prompt,
    task: OptimizeTask,
    model: ChatModel,
    settings: OptimizeSettings,
    *,
    proposer: ChatModel | None = None,
    task_file: Path | None = None,
    model_name: str = "",
    promote: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Run the optimisation (module docstring) and register the winner."""
    say = on_progress or (lambda _msg: None)
    rows, data_ref = read_set(store, task.dataset, task_file.parent if task_file else None)
    for where, r in rows:
        for f in (task.input_field, task.target_field):
            if f not in r:
                raise UserError(f"{where}: no field {f!r} (fields: {', '.join(r)})")
    need = task.train + task.dev + task.test
    if len(rows) < need:
        raise UserError(
            f"{task.dataset}: {len(rows)} rows, but train+dev+test = {need}; lower the split sizes"
        )
    order = list(range(len(rows)))
    random.Random(task.seed).shuffle(order)
    data = [rows[i][1] for i in order]
    train, dev, test = (
        data[: task.train],
        data[task.train : task.train + task.dev],
        data[task.train + task.dev : need],
    )
    builder = _Builder(start, task, train)
    key = hashlib.sha256(
        json.dumps(
            [start.ref, start.version.digest, task.model_dump(), settings.model_dump(), model_name],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    journal = _Journal(store.settings.home / "prompt-optimize" / f"{key}.jsonl")
    params = {"temperature": 0.0, "max_tokens": task.max_tokens}
    asker = _Asker(model, journal, params, settings.concurrency)
    inputs: list[str | tuple[str, str]] = [(start.ref, "base_prompt")]
    with store.runs.track(
        "optimize",
        config={
            "prompt": start.ref,
            "task": task.model_dump(),
            **settings.model_dump(),
            "model": model_name,
        },
    ) as run:
        if data_ref is not None:
            inputs.append((data_ref, "dataset"))
        locals_ = [(task_file, "task_file")] if task_file else []
        if data_ref is None:
            base = task_file.parent if task_file else Path.cwd()
            p = Path(task.dataset).expanduser()
            locals_.append(
                (p if p.is_absolute() or not (base / p).exists() else base / p, "dataset")
            )
        inputs += store.assets.record_inputs(locals_, run_id=run.id)
        try:
            # 1. bootstrap: which train rows the starting prompt gets right
            first = Candidate(key="start", instruction="", demos=[], start=True)
            n_boot = min(len(train), max(0, settings.budget // 4))
            say(f"bootstrapping demos on {n_boot} train rows")
            replies = asker.ask(
                [
                    (f"boot/{i}", builder.messages(first, str(train[i][task.input_field])))
                    for i in range(n_boot)
                ]
            )
            good = [
                i
                for i in range(n_boot)
                if score(replies[f"boot/{i}"], str(train[i][task.target_field]), task.labels)
            ]
            # 2. instructions and demo sets
            say(f"{len(good)} bootstrapped demos; proposing {settings.instructions} instructions")
            proposals = _propose(
                proposer or model, journal, start, task, train, settings.instructions, settings.seed
            )
            instructions = [""] + [_safe(p) for p in proposals]
            if task.labels:
                instructions.append("Answer with exactly one of: " + ", ".join(task.labels) + ".")
            sets = _demo_sets(good, train, task, settings)
            cands = [first] + [
                Candidate(key=f"i{a}d{b}", instruction=ins, demos=demos)
                for a, ins in enumerate(instructions)
                for b, demos in enumerate(sets)
                if ins or demos
            ]
            by_key = {c.key: c for c in cands}
            # 3. successive halving on dev: each rung spends about its share of what is
            # left, spread over the live candidates; the better 1/eta go on
            correct: dict[tuple[str, int], bool] = {}
            alive = [c.key for c in cands]
            rungs = max(1, math.ceil(math.log(len(alive), settings.eta)))
            n_items = 0

            def dev_score(k: str) -> float:
                return sum(correct.get((k, j), False) for j in range(n_items)) / max(1, n_items)

            while len(alive) > 1:
                left = settings.budget - asker.calls
                per_candidate = left // rungs // len(alive)
                if per_candidate < 1 and n_items < len(dev):
                    break  # the budget cannot give every live candidate another row
                target = min(len(dev), n_items + per_candidate)
                say(f"rung: {len(alive)} candidates on {target} dev rows")
                got = asker.ask(
                    [
                        (f"dev/{k}/{j}", builder.messages(by_key[k], str(dev[j][task.input_field])))
                        for k in alive
                        for j in range(n_items, target)
                    ]
                )
                for id_, reply in got.items():
                    _, k, j = id_.split("/")
                    gold = str(dev[int(j)][task.target_field])
                    correct[(k, int(j))] = score(reply, gold, task.labels)
                n_items = target
                # ties: the starting prompt, then fewer demos (cheaper to serve)
                alive.sort(key=lambda k: (-dev_score(k), not by_key[k].start, len(by_key[k].demos)))
                alive = alive[: max(1, math.ceil(len(alive) / settings.eta))]
                rungs = max(1, rungs - 1)
            best = by_key[alive[0]]
            counts = {k: sum(1 for (kk, _) in correct if kk == k) for k in by_key}
            dev_scores = {
                k: sum(v for (kk, _), v in correct.items() if kk == k) / counts[k]
                for k in by_key
                if counts[k]
            }
            calls_search = asker.calls
            # 4. final: baseline and winner on the held-out test split
            say(f"testing {best.key} and the starting prompt on {len(test)} held-out rows")
            finals: dict[str, list[float]] = {}
            for c in {first.key: first, best.key: best}.values():
                got = asker.ask(
                    [
                        (f"test/{c.key}/{j}", builder.messages(c, str(test[j][task.input_field])))
                        for j in range(len(test))
                    ]
                )
                finals[c.key] = [
                    float(
                        score(
                            got[f"test/{c.key}/{j}"], str(test[j][task.target_field]), task.labels
                        )
                    )
                    for j in range(len(test))
                ]
        finally:
            journal.close()
        base_s, best_s = finals["start"], finals[best.key]
        diffs = [b - a for a, b in zip(base_s, best_s, strict=True)]
        result = OptimizeResult(
            best=best,
            dev_scores=dev_scores,
            dev_counts=counts,
            test_baseline=sum(base_s) / len(base_s),
            test_best=sum(best_s) / len(best_s),
            baseline_ci=bootstrap_ci(base_s, seed=settings.seed),
            best_ci=bootstrap_ci(best_s, seed=settings.seed),
            diff_ci=bootstrap_ci(diffs, seed=settings.seed),
            calls_search=calls_search,
            calls_propose=settings.instructions,
            calls_total=asker.calls + settings.instructions,
            test_items=len(test),
            run_id=run.id,
        )
        store.runs.log_metrics(
            run.id,
            {
                "test_baseline": result.test_baseline,
                "test_best": result.test_best,
                "diff_lo": result.diff_ci[0],
                "diff_hi": result.diff_ci[1],
                "calls": float(result.calls_total),
            },
            0,
        )
        if not best.start:
            evidence = _register_evidence(store, start, result, test, finals, task, inputs, run.id)
            metrics = result.model_dump(
                mode="json", exclude={"best", "dev_scores", "dev_counts", "registered", "promoted"}
            )
            v = create_prompt(
                store,
                start.version.asset,
                builder.template(best),
                config={**start.spec.config},
                message=(
                    f"optimized from {start.ref}: test {result.test_best:.3f} vs "
                    f"{result.test_baseline:.3f} ({len(test)} held-out rows)"
                ),
                inputs=[*inputs, (evidence, "evidence")],
                run_id=run.id,
                metadata={
                    "optimize": {
                        **metrics,
                        "candidate": best.model_dump(),
                        "dev_score": dev_scores.get(best.key),
                    }
                },
            )
            result.registered = v.ref
            if promote:
                from lmops.prompts.registry import label

                label(store, v.ref, promote)
                result.promoted = promote
    journal.path.unlink(missing_ok=True)
    return result


def _register_evidence(
    store: Any,
    start: Prompt,
    r: OptimizeResult,
    test: list[dict[str, Any]],
    finals: dict[str, list[float]],
    task: OptimizeTask,
    inputs: list[str | tuple[str, str]],
    run_id: str,
) -> str:
    """The test answers' scores as an ``eval_report`` (what the new version's numbers
    rest on); its ``name:N``."""
    import tempfile

    body = {
        "prompt": start.ref,
        "candidate": r.best.model_dump(),
        "test_items": len(test),
        "scores": finals,
        "test_baseline": r.test_baseline,
        "test_best": r.test_best,
        "diff_ci95": r.diff_ci,
        "labels": task.labels,
    }
    with tempfile.TemporaryDirectory(prefix="lmops-opt-") as tmp:
        path = Path(tmp) / "evidence.json"
        path.write_text(json.dumps(body, indent=1), encoding="utf-8")
        v = store.assets.register(
            "eval_report",
            f"{start.version.asset}-optimize",
            path,
            metadata={
                "test_baseline": r.test_baseline,
                "test_best": r.test_best,
                "diff_ci95": list(r.diff_ci),
            },
            inputs=inputs,
            run_id=run_id,
        )
    return str(v.ref)
