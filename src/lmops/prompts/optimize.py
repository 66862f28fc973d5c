"""Eval-driven prompt optimisation: instructions × bootstrapped few-shot demos, searched by
successive halving on a dev split, scored on a held-out split.

    lmops prompts optimize sentiment --task task.yaml --endpoint http://127.0.0.1:8000/v1 \\
        --model smol --budget 600 [--proposer URL/MODEL] [--promote staging]

The steps (what DSPy's MIPROv2 does, without its Bayesian surrogate):

1. **Split** the task's rows with a seeded shuffle into train / dev / test (counts in the
   task file); the test split is touched only at the end.
2. **Bootstrap demos**: the starting prompt answers train rows, a few at a time, until each
   label has enough right answers for the demo sets or an eighth of the budget is spent;
   the rows it got right are the demo pool (DSPy's bootstrapped demos), topped up with
   labelled rows. ``demo_sets`` orderings of the pool are drawn (seeded; for a
   classification task the labels alternate, so every set shows each); each gives nested
   sets of its first 2, 4, 8, ... ``k`` rows, plus the empty set once.
3. **Propose instructions**: the proposer model (any OpenAI-compatible endpoint; the
   target when none is given) is shown the prompt and a few labelled rows and asked for
   an instruction, ``instructions`` times at temperature 1; plus the empty instruction and,
   for a classification task, "answer with exactly one of: <labels>" (tried first).
4. **Search**: every (instruction, demo set) pair is a candidate, and the starting prompt
   itself is one. A candidate is of the starting prompt's type
   (:class:`~lmops.prompts._candidates.Builder`): a text prompt's demos are written into
   its text, a chat prompt's are turns. A chat candidate is scored through chat; a text
   one as plain text on ``/v1/completions``, as an eval's ``doc_to_text`` will be sent,
   where the target takes it (else through chat, with a warning:
   :func:`~lmops.prompts._candidates.scoring_route`). They are put in a
   prior order (the starting prompt, then along the diagonals of instruction x demo count,
   4 demos first), and as many as the budget lets each answer ``min_rows`` dev rows are
   taken: a rung of 2 rows ranks by noise, since one row is 50 points of accuracy.
   Successive halving: all of them answer the first rows, the better 1/eta answer eta x the
   rows, ... until one is left or the dev split is used; the first rung is made as long as
   the budget (calls to the target model, bootstrapping included) allows. Survivors of a
   rung have answered the same rows, and ties keep the prior order (the starting prompt
   first: no change without evidence). Answers are kept per (candidate, row), so a
   candidate promoted to the next rung answers only its new rows.
5. **Final**: the starting prompt and the winner answer every test row; accuracies with
   bootstrap 95 % CIs and the paired CI of their difference. The winner is registered as
   the next version of the prompt, a text prompt if it started as one, whose template
   renders exactly what was scored (metrics, ``scored_via`` among them, in its metadata;
   lineage to the starting version, the data, the task file and an ``eval_report`` holding
   every test answer), under an ``optimize`` run. Nothing is labelled unless ``promote``
   names a label.

**Resume.** Every model answer (and proposal) is appended to a journal under
``$LMOPS_HOME/prompt-optimize/<key>.jsonl`` (the key hashes the prompt version, the task,
the model and the settings, and the proposer and the completions route where they are
given) before the next is asked. When the endpoint fails mid-way the command stops with a
one-line error, and Ctrl-C stops at once (queued requests are not sent;
:class:`OptimizeInterrupted`); running it again replays the journal and continues from the
last completed answer. The journal is removed once the version is registered.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from lmops.core.errors import UserError
from lmops.core.rows import read_rows
from lmops.prompts._answers import Asker, Journal, OptimizeInterrupted
from lmops.prompts._candidates import TEXT_STOP, Builder, Candidate, Route, scoring_route
from lmops.prompts.lm import ChatModel, EndpointError, TextModel
from lmops.prompts.playground import normalize_answer as _norm
from lmops.prompts.registry import Prompt
from lmops.prompts.registry import create as create_prompt

__all__ = [
    "Candidate",
    "OptimizeInterrupted",
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
    demo_sets: int = Field(4, ge=0)  # independent draws of demos; each gives sets of 2, 4, .. k
    k: int = Field(4, ge=0)  # most demos in a set
    eta: int = Field(2, ge=2)  # successive halving keeps 1/eta per rung, with eta x the rows
    # dev rows every candidate answers at the first rung: with fewer, a 2-row rung ranks
    # candidates by noise (one row is worth 50 points of accuracy)
    min_rows: int = Field(10, ge=1)
    concurrency: int = Field(4, ge=1)
    seed: int = 0
    # most tokens one proposed instruction may take (within the proposer's max_tokens cap)
    proposal_tokens: int = Field(96, ge=1)


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
    # what guessing scores on the same held-out rows: always the most common target, and a
    # uniform pick among the labels (None without labels); a "gain" below these is none
    test_majority: float = 0.0
    majority_target: str = ""
    test_chance: float | None = None
    # how candidates were sent: "completions" (a text prompt as plain text, as an eval's
    # doc_to_text is) or "chat" (messages; a text prompt as one user message)
    scored_via: Route = "chat"
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


def _majority(targets: Sequence[str]) -> tuple[str, float]:
    """The most common target (as scoring compares them) and the share of rows it is."""
    from collections import Counter

    if not targets:
        return "", 0.0
    (label, n), *_ = Counter(_norm(t) for t in targets).most_common(1)
    return label, n / len(targets)


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


# -- candidates (built and sent by lmops.prompts._candidates) ----------------------------------
def _sender(model: ChatModel, task: OptimizeTask) -> Callable[[str | Messages], str]:
    """Sends one request of :meth:`Builder.request`: a text to ``/v1/completions`` (stopped
    at the blank line between demos), messages to chat; greedy, ``task.max_tokens``."""
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": task.max_tokens}

    def send(request: str | Messages) -> str:
        if isinstance(request, str):
            return cast("TextModel", model).complete_text(request, **params, stop=TEXT_STOP)
        return model.complete(request, **params)

    return send


def _identity(model: ChatModel) -> str:
    """Which model ``model`` is: an endpoint's URL and model name, else its kind and name."""
    url, name = getattr(model, "base_url", None), getattr(model, "model", None)
    if isinstance(url, str) and isinstance(name, str):
        return f"{url}/{name}"
    return f"{type(model).__qualname__}:{getattr(model, 'name', '')}"


def _propose(
    proposer: ChatModel,
    asker_journal: Journal,
    start: Prompt,
    task: OptimizeTask,
    train: list[dict[str, Any]],
    n: int,
    seed: int,
    max_tokens: int,
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
            try:
                reply = proposer.complete(
                    ask, temperature=1.0, max_tokens=max_tokens, seed=seed + j
                )
            except EndpointError as e:
                hint = " (--proposal-tokens lowers it)" if "max_tokens" in str(e) else ""
                raise EndpointError(f"proposing an instruction: {e}{hint}") from None
            asker_journal.add(id_, reply)
        text = asker_journal.done[id_].strip().split("\n\n")[0].strip()[:500]
        if text and text not in out:
            out.append(text)
    return out


def _sizes(k: int) -> list[int]:
    """Demo counts tried below ``k``: 2, 4, 8, ... and ``k`` itself."""
    out = [n for n in (2**i for i in range(1, 8)) if n < k]
    return [*out, k] if k else []


def _demo_sets(
    good: list[int], train: list[dict[str, Any]], task: OptimizeTask, s: OptimizeSettings
) -> list[list[list[int]]]:
    """``s.demo_sets`` draws, each a list of nested demo sets (the first 2, 4, ... ``k`` rows
    of one ordering, so sizes differ only by the rows added). Rows the target answered
    right come first (DSPy's bootstrapped demos), topped up with labelled rows; for a
    classification task the labels alternate, so every set of two or more shows each."""
    rng = random.Random(s.seed)
    sizes = _sizes(min(s.k, len(train)))
    good_set = set(good)
    draws: list[list[list[int]]] = []
    for _ in range(s.demo_sets if sizes else 0):
        groups: dict[str, list[int]] = {}
        for i in range(len(train)):
            key = _norm(str(train[i][task.target_field])) if task.labels else ""
            groups.setdefault(key, []).append(i)
        for v in groups.values():
            head = [i for i in v if i in good_set]
            rest = [i for i in v if i not in good_set]
            rng.shuffle(head)
            rng.shuffle(rest)
            v[:] = head + rest
        order = [groups[k] for k in sorted(groups)]
        rng.shuffle(order)
        picked: list[int] = []
        while len(picked) < sizes[-1] and any(order):
            for v in order:
                if v and len(picked) < sizes[-1]:
                    picked.append(v.pop(0))
        # shuffle within each pair of labels, so the last demo is not always the same label
        # (a small model copies the last answer it saw)
        step = max(1, len(order))
        for a in range(0, len(picked), step):
            block = picked[a : a + step]
            rng.shuffle(block)
            picked[a : a + step] = block
        sets = [picked[:n] for n in sizes if n <= len(picked)]
        if sets and sets not in draws:
            draws.append(sets)
    return draws


def _schedule(n_cands: int, n0: int, n_dev: int, eta: int) -> list[tuple[int, int]]:
    """Successive halving's rungs as ``(live candidates, dev rows)``: ``n0`` rows for all,
    then 1/eta of them on eta x the rows, until one is left or the dev split is used up."""
    rungs: list[tuple[int, int]] = []
    alive, rows = n_cands, min(n0, n_dev)
    while True:
        rungs.append((alive, rows))
        alive, rows = max(1, math.ceil(alive / eta)), min(n_dev, rows * eta)
        if alive <= 1 or rungs[-1][1] >= n_dev:  # a lone survivor needs no more rows
            return rungs


def _cost(rungs: list[tuple[int, int]]) -> int:
    """Target calls of a schedule: each rung's candidates answer only their new rows."""
    return sum(c * (n - (rungs[i - 1][1] if i else 0)) for i, (c, n) in enumerate(rungs))


def _plan(n_cands: int, left: int, n_dev: int, s: OptimizeSettings) -> tuple[int, int]:
    """``(candidates, first-rung rows)`` that fit ``left`` calls: as many candidates as can
    each get ``min_rows`` rows (a rung of fewer ranks by noise), then the first rung made
    as long as what remains allows. Two candidates (the start and the best guess) at
    fewer rows when even that does not fit; ``(1, 0)`` when nothing can be compared."""
    n0 = min(s.min_rows, n_dev)
    n = n_cands
    while n > 2 and _cost(_schedule(n, n0, n_dev, s.eta)) > left:
        n -= 1
    if n < 2 or _cost(_schedule(n, n0, n_dev, s.eta)) > left:
        n0 = min(n_dev, left // 2)
        return (2, n0) if n_cands >= 2 and n0 >= 1 else (1, 0)
    while n0 < n_dev and _cost(_schedule(n, n0 + 1, n_dev, s.eta)) <= left:
        n0 += 1
    return n, n0


def _prior(n_ins: int, draws: list[list[list[int]]]) -> list[tuple[int, int, int]]:
    """Candidates ``(instruction, draw, size index)`` in the order they are tried when the
    budget cannot take them all: the first draw before the others, and within it along
    diagonals of instruction x demo count, so the first few cover both the instructions
    and the demo counts. Demo counts go middle first (what DSPy's defaults use), then
    more, then fewer, then none; instructions in the order given (built-in first)."""
    out: list[tuple[int, int, int]] = []
    for d, sets in enumerate(draws or [[]]):
        n_sizes = len(sets) + (1 if d == 0 else 0)  # the empty set once, in the first draw
        # 4 demos first, then 8 before 2: |log2(size) - 2|, ties to the larger
        by_pref = sorted(
            range(len(sets)), key=lambda j: (abs(math.log2(len(sets[j])) - 2), -len(sets[j]))
        )
        sizes = [*by_pref, -1] if d == 0 else by_pref  # -1: no demos
        pairs = [(a, b) for a in range(n_ins) for b in range(n_sizes)]
        pairs.sort(key=lambda ab: (ab[0] + ab[1], ab[0]))
        out += [(a, d, sizes[b]) for a, b in pairs]
    return out


def _refuse_bound(model: ChatModel, role: str) -> None:
    """A ``UserError`` when ``model`` is an ``lmops serve`` deployment that binds a prompt.

    The gateway wraps every request that picks no registered prompt in the bound one, so a
    candidate (rendered here: it is no registered version yet) would be scored inside that
    prompt, and the winner would be the best pair, not the best prompt. ``prompts run`` and
    ``compare`` avoid it by sending a version's ref; a candidate has none, and the gateway
    (rightly) has no per-request switch to skip the operator's prompt, so the way out is a
    deployment of the same model that binds none, or a local model."""
    bound = getattr(model, "bound_prompt", None)
    if getattr(model, "card_unknown", False):
        raise UserError(
            f"{getattr(model, 'base_url', '')} ({getattr(model, 'model', '')}): "
            f"{getattr(model, 'card_error', '')}; {role}: its /v1/models card could not be "
            "read, so whether the deployment binds a prompt (which would wrap every "
            "candidate) is not known; check the endpoint and try again"
        )
    if bound:
        where = getattr(model, "base_url", "")
        name = getattr(model, "model", "")
        raise UserError(
            f"{where} ({name}): {role}, deployment {name!r}, binds prompt {bound}, which the "
            "gateway would wrap around every candidate; optimise against a deployment of the "
            "same model that binds none (no `prompt:` in the deployments YAML), or run the "
            "model in this process (--local)"
        )


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
    """Run the optimisation (module docstring) and register the winner. A deployment that
    binds a prompt is refused before anything is asked (:func:`_refuse_bound`)."""
    say = on_progress or (lambda _msg: None)
    _refuse_bound(model, "the target")
    if proposer is not None:
        _refuse_bound(proposer, "the proposer")
    rows, data_ref = read_set(store, task.dataset, task_file.parent if task_file else None)
    for where, r in rows:
        for f in (task.input_field, task.target_field):
            if f not in r:
                raise UserError(f"{where}: no field {f!r} (fields: {', '.join(r)})")
        # a target no label names is scored wrong whatever the model says: the task is
        # mislabelled (targets 'English' with labels [en, zh]), not hard
        if task.labels and _norm(str(r[task.target_field])) not in map(_norm, task.labels):
            raise UserError(
                f"{where}: target {str(r[task.target_field])!r} is not one of labels "
                f"[{', '.join(task.labels)}]"
            )
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
    # a text prompt is scored as it will be used, on /v1/completions, where the target
    # takes plain text (lmops.prompts._candidates); else through chat, with a warning
    route, why = scoring_route(model, start.spec.type == "text", _identity(model), start.ref)
    builder = Builder(start, task, train, route)
    if route == "completions":
        say(f"{start.ref} is a text prompt: candidates are sent to /v1/completions ({why})")
    # what the journal's answers and proposals came from; a run with another proposer
    # must not resume with the old one's instructions, nor one scored through chat with
    # answers to plain text (without either, the key is as before)
    made_by: list[Any] = [
        start.ref,
        start.version.digest,
        task.model_dump(),
        settings.model_dump(),
        model_name,
    ]
    if proposer is not None:
        made_by.append(_identity(proposer))
    if route == "completions":
        made_by.append({"scored_via": route, "stop": TEXT_STOP})
    key = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:20]
    journal = Journal(store.settings.home / "prompt-optimize" / f"{key}.jsonl")
    asker = Asker(_sender(model, task), journal, settings.concurrency)
    inputs: list[str | tuple[str, str]] = [(start.ref, "base_prompt")]
    with store.runs.track(
        "optimize",
        config={
            "prompt": start.ref,
            "task": task.model_dump(),
            **settings.model_dump(),
            "model": model_name,
            "scored_via": route,
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
            # 1. bootstrap: the starting prompt answers train rows, a few at a time, until
            # each label has enough right answers for every draw's largest set, or an
            # eighth of the budget is spent (the dev rungs need the rest to rank)
            first = Candidate(key="start", instruction="", demos=[], start=True)
            kmax = min(settings.k, len(train))
            labels = [_norm(lab) for lab in task.labels] if task.labels else [""]
            want = math.ceil(kmax / len(labels)) * max(1, settings.demo_sets)
            cap = min(len(train), settings.budget // 8) if kmax and settings.demo_sets else 0
            step = max(4, settings.concurrency)
            say(f"bootstrapping demos on up to {cap} train rows")
            good: list[int] = []
            asked = 0
            while asked < cap:
                batch = range(asked, min(cap, asked + step))
                replies = asker.ask(
                    [
                        (f"boot/{i}", builder.request(first, str(train[i][task.input_field])))
                        for i in batch
                    ]
                )
                good += [
                    i
                    for i in batch
                    if score(replies[f"boot/{i}"], str(train[i][task.target_field]), task.labels)
                ]
                asked = batch.stop
                found = [
                    _norm(str(train[i][task.target_field])) if task.labels else "" for i in good
                ]
                if all(found.count(lab) >= want for lab in labels):
                    break
            # 2. instructions and demo sets; the built-in label instruction first, then the
            # prompt's own (none), then the proposals
            say(f"{len(good)} bootstrapped demos; proposing {settings.instructions} instructions")
            proposals = _propose(
                proposer or model,
                journal,
                start,
                task,
                train,
                settings.instructions,
                settings.seed,
                settings.proposal_tokens,
            )
            instructions = ["", *proposals]
            if task.labels:
                instructions.insert(
                    0, "Answer with exactly one of: " + ", ".join(task.labels) + "."
                )
            draws = _demo_sets(good, train, task, settings)
            cands = [first]
            for ins, d, at in _prior(len(instructions), draws):
                demos = draws[d][at] if at >= 0 else []
                if instructions[ins] or demos:
                    cands.append(
                        Candidate(
                            key=f"i{ins}d{d}k{len(demos)}",
                            instruction=instructions[ins],
                            demos=demos,
                        )
                    )
            by_key = {c.key: c for c in cands}
            # 3. successive halving on dev: as many candidates as can each answer
            # `min_rows` rows in the first rung, taken in the prior order; each rung keeps
            # the better 1/eta on eta x the rows. Every survivor has answered the same rows,
            # so a comparison is never between a short lucky run and a long one; ties keep
            # the prior order, where the starting prompt comes first
            n_cands, n0 = _plan(len(cands), settings.budget - asker.calls, len(dev), settings)
            rungs = _schedule(n_cands, n0, len(dev), settings.eta) if n0 else []
            correct: dict[tuple[str, int], bool] = {}
            alive = [c.key for c in cands[:n_cands]]
            rank = {c.key: i for i, c in enumerate(cands)}
            n_items = 0

            def dev_score(k: str) -> float:
                return sum(correct.get((k, j), False) for j in range(n_items)) / max(1, n_items)

            for live, target in rungs:
                alive = alive[:live]
                say(f"rung: {len(alive)} of {len(cands)} candidates on {target} dev rows")
                got = asker.ask(
                    [
                        (f"dev/{k}/{j}", builder.request(by_key[k], str(dev[j][task.input_field])))
                        for k in alive
                        for j in range(n_items, target)
                    ]
                )
                for id_, reply in got.items():
                    _, k, j = id_.split("/")
                    gold = str(dev[int(j)][task.target_field])
                    correct[(k, int(j))] = score(reply, gold, task.labels)
                n_items = target
                alive.sort(key=lambda k: (-dev_score(k), rank[k]))
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
                        (f"test/{c.key}/{j}", builder.request(c, str(test[j][task.input_field])))
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
        except OptimizeInterrupted:
            raise
        except KeyboardInterrupt:  # between batches (a proposal): the same one line
            raise OptimizeInterrupted(len(journal.done)) from None
        finally:
            journal.close()
        base_s, best_s = finals["start"], finals[best.key]
        diffs = [b - a for a, b in zip(base_s, best_s, strict=True)]
        majority, share = _majority([str(row[task.target_field]) for row in test])
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
            test_majority=share,
            majority_target=majority,
            test_chance=1 / len(task.labels) if task.labels else None,
            scored_via=route,
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
            _check_template(builder.template(best))  # before any asset is registered
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


def _check_template(template: str | list[dict[str, str]]) -> None:
    """Parse the winner's template (a candidate that cannot be written as one must fail
    before its evidence is registered, not leave a report without a prompt)."""
    from lmops.prompts.template import Template

    parts = [template] if isinstance(template, str) else [m["content"] for m in template]
    for i, text in enumerate(parts):
        Template(text, where=f"optimised template[{i}]")


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
