"""The closed loop: watch a deployment, and on drift or a canary regression retrain, compare
challenger with champion, and promote only a clear winner.

It lives in ``pipelines/`` because it orchestrates stages (monitor's checks, the flow-back
export, the user's retraining pipeline, eval's log-likelihood scoring, the store's aliases);
the monitor stage only answers "did it drift?". One round (:func:`watch_once`):

1. ``monitor.checks.check_deployment``: a ``drift_report``;
2. triggered when a content monitor drifted (``drift``) or a canary was answered wrong
   (``canary``), as ``retrain.triggers`` says; the operational monitors (latency, TTFT,
   error rate) alert but trigger only with ``operational`` in the triggers, since a model
   retrained on the logs serves no faster; canaries that got no answer (timeout, lost
   connection, 5xx: a hung deployment) or a right one too late (``max_latency_ms``) fire
   the ``availability`` alert and never trigger, since retraining cannot fix a server nor
   make a model faster (the decision says so); an empty window or one with nothing in
   common with the reference never triggers;
3. flow-back: the judged window's logged chats (from its first request on) (``monitor.metering.export_conversations``, with its
   quality filters) become dataset ``<flowback>-all``; its newest ``holdout`` conversations
   become ``<flowback>-holdout`` (the recent traffic sample, never trained on) and the rest
   ``<flowback>`` (the training data);
4. the user's pipeline YAML runs with ``vars.flowback`` = the training data ref and
   ``vars.champion`` = the champion's concrete version; ``challenger_step``'s output
   ``challenger_output`` is the challenger, which must be a version of the champion's asset
   (so the champion's alias can move to it);
5. both models score the fixed ``eval_set`` and the holdout: negative log-likelihood of each
   reference answer per character (lower is better), through eval's ``HFEvalModel``; a tool
   conversation is rendered with its tools as the gateway renders it (``models.chat``) and
   its answer, a call's name and arguments as logged or the text after a result, scored
   alike; only the chats both models' templates can render are scored (the decision's
   ``skipped`` says how many were not, and why), and a set left with none fails the
   evaluation;
6. promotion moves the champion's alias (``chat@production``) only when the challenger's
   combined NLL is lower by at least ``margin`` (a share of the champion's) and it is not
   worse on the fixed set by more than ``max_regression``. The gateway re-resolves alias
   refs every few seconds (``serve/deployments.py``), so a deployment of ``chat@production``
   serves the new version without a restart (``engine: vllm`` deployments keep the
   version they were launched with until ``lmops serve`` restarts).

A round within ``cooldown_s`` of the last decision does not retrain (it says so): traffic that
moved stays moved after a promotion, so point the check's reference at the new training data.
Every round that retrains records a ``retrain_decision`` asset (``decision.json``): promoted
or not, with the reasons, the scores, and lineage to the drift report, the flow-back data,
champion, challenger and eval set. A failed export, a failed pipeline or an unloadable model
is a decision not to promote, with its reason; nothing is raised out of the loop.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmops.core.errors import LmopsError, UserError, name_hint
from lmops.core.yamlcfg import line_of, load_config
from lmops.monitor.checks import CheckSpec, check_deployment, parse_since, require_traffic
from lmops.monitor.drift import OPERATIONAL
from lmops.monitor.wording import counted, noun_for
from lmops.store import register_kind

if TYPE_CHECKING:
    from lmops.store import Store, Version

__all__ = [
    "RETRAIN_DECISION",
    "Decision",
    "RetrainSpec",
    "WatchSpec",
    "load_watch",
    "watch",
    "watch_once",
]

log = logging.getLogger("lmops.monitor")
# drift: a content monitor (what is asked or answered) drifted; canary: a canary failed;
# operational: latency, TTFT or error rate drifted (opt-in: retraining rarely fixes those)
Trigger = Literal["drift", "canary", "operational"]
_TRIGGERS: tuple[Trigger, ...] = ("drift", "canary")
RETRAIN_DECISION = "retrain_decision"
register_kind(RETRAIN_DECISION)


class RetrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")  # `cooldown: 0` must not retrain on the default

    pipeline: str = Field(description="retraining pipeline YAML (relative to the watch file)")
    champion: str = Field(description="the alias ref served, e.g. chat@production")
    challenger_step: str = Field(description="the pipeline step whose output is the challenger")
    challenger_output: str = "output"
    eval_set: str | None = Field(None, description="fixed eval set: a dataset of chat rows")
    flowback: str = Field("flowback", description="name of the flow-back dataset assets")
    holdout: int = Field(20, ge=1, description="newest logged chats scored, never trained on")
    margin: float = Field(0.02, ge=0, description="relative NLL improvement needed to promote")
    max_regression: float = Field(0.05, ge=0, description="allowed relative loss on eval_set")
    max_eval: int = Field(200, ge=1, description="rows of eval_set scored")
    triggers: list[Trigger] = Field(default_factory=lambda: list(_TRIGGERS))
    cooldown_s: float = Field(
        6 * 3600.0, ge=0, description="no retraining this soon after the last retrain decision"
    )
    device: str = "cpu"


class WatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: CheckSpec
    interval_s: float = Field(300.0, gt=0)
    retrain: RetrainSpec | None = None


class Decision(BaseModel):
    """What one round decided, and why."""

    report: str
    status: str
    triggered: bool = False
    triggers: list[str] = Field(default_factory=list)
    promoted: bool = False
    reasons: list[str] = Field(default_factory=list)
    champion: str | None = None
    challenger: str | None = None
    flowback: str | None = None
    holdout: str | None = None
    pipeline_run: str | None = None
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)
    # per scored set: why chats were left out (a model's template cannot render them) -> how
    # many; both models are scored on the same chats, the rest
    skipped: dict[str, dict[str, int]] = Field(default_factory=dict)
    decision: str | None = None  # the retrain_decision ref, when recorded
    # what the check found beyond drift, shown whether or not it triggers a retrain
    alerts_firing: list[str] = Field(default_factory=list)
    canaries_failing: list[str] = Field(default_factory=list)  # whatever the cause
    # failed for lack of an answer, or right but too late: the deployment's serving (the
    # availability alert), never a retrain trigger
    canaries_unanswered: list[str] = Field(default_factory=list)
    canaries_slow: list[str] = Field(default_factory=list)
    operational_drift: list[str] = Field(default_factory=list)  # latency, TTFT, error rate
    webhook_errors: list[str] = Field(default_factory=list)  # "url: error" per failed POST


def load_watch(path: Path) -> tuple[WatchSpec, Path]:
    """The watch YAML and the folder its relative paths are read from; a retraining
    pipeline that is not there is an error now, not a reason recorded when drift comes."""
    spec, base = load_config(path, WatchSpec), path.resolve().parent
    if spec.retrain is not None and not (base / spec.retrain.pipeline).is_file():
        line = line_of(path, ("retrain", "pipeline"))
        where = f"{path}:{line}" if line else str(path)
        siblings = sorted(p.name for p in base.glob("*.y*ml") if p.resolve() != path.resolve())
        hint = name_hint(Path(spec.retrain.pipeline).name, siblings, "YAML files beside it")
        raise UserError(
            f"{where}: retrain.pipeline: no such file {spec.retrain.pipeline!r} (relative "
            f"to {base})" + (f"; {hint}" if hint else "")
        )
    return spec, base


Chat = tuple[list[dict[str, Any]], list[dict[str, Any]] | None]  # (messages, tools)


def _chat_rows(path: Path, limit: int | None = None) -> list[Chat]:
    """The scored chats of a dataset: rows whose last turn is the assistant's answer, text
    or a tool call (a tool conversation keeps its ``tools``, calls and results, as the
    flow-back wrote them)."""
    from lmops.core.formats import to_chat
    from lmops.core.rows import read_rows

    out: list[Chat] = []
    for row in read_rows([path], on_error="skip"):
        try:
            chat = to_chat(row.values)
        except UserError:
            continue
        if len(chat) < 2 or chat[-1]["role"] != "assistant":
            continue
        last = chat[-1]
        if last.get("tool_calls") or (last.get("content") or "").strip():
            tools = row.values.get("tools")
            out.append((chat, tools if isinstance(tools, list) and tools else None))
        if limit is not None and len(out) >= limit:
            break
    return out


def _split_flowback(
    store: Store, export: Version, spec: RetrainSpec, run_id: str
) -> tuple[Version | None, Version]:
    """(training part or None when nothing is left, holdout part) of the exported chats."""
    lines = (store.assets.path(export.ref).read_text(encoding="utf-8")).splitlines()
    k = min(spec.holdout, max(1, len(lines) // 2))
    train_lines, hold_lines = lines[:-k], lines[-k:]
    made: list[Version | None] = []
    with tempfile.TemporaryDirectory(prefix="lmops-flowback-") as tmp:
        for suffix, part in (("", train_lines), ("-holdout", hold_lines)):
            if not part:
                made.append(None)
                continue
            f = Path(tmp) / f"part{suffix or '-train'}.jsonl"
            f.write_text("\n".join(part) + "\n", encoding="utf-8")
            made.append(
                store.assets.register(
                    "dataset",
                    spec.flowback + suffix,
                    f,
                    metadata={"format": "sft_chat", "source": "request_log", "rows": len(part)},
                    inputs=[(export.ref, "source")],
                    run_id=run_id,
                )
            )
    assert made[1] is not None
    return made[0], made[1]


Pair = tuple[str, str]  # (context, answer): what a model reads and what it should write
_PROBE = "lmops turn-end probe 7431"  # an answer whose rendering shows the turn's end


def _tool_pair(tokenizer: Any, messages: list[dict[str, Any]], tools: Any) -> Pair:
    """(context, answer) of a tool conversation, rendered as the gateway and training render
    it (``models.chat.chat_text``: the tools listed, calls and results in the template's or
    the Hermes form): the answer is what the model writes after the turns before it, the
    call's text (its name and arguments) up to the end of its turn, or the text answer."""
    from lmops.models.chat import chat_text

    context = chat_text(tokenizer, messages[:-1], tools, add_generation_prompt=True)
    last = messages[-1]
    if not last.get("tool_calls"):
        return context, str(last["content"])
    whole = chat_text(tokenizer, messages, tools)
    if not whole.startswith(context):  # a template that renders history differently
        raise UserError("the chat template renders a call's context two ways")
    answer = whole[len(context) :]
    # The end of the turn is not the call's text: what the template writes after a text
    # answer (ChatML's <|im_end|>, Gemma's <end_of_turn>), else the end-of-sequence token
    probe = chat_text(tokenizer, [*messages[:-1], {"role": "assistant", "content": _PROBE}], tools)
    ends = [probe[probe.index(_PROBE) + len(_PROBE) :].strip() if _PROBE in probe else ""]
    ends.append(getattr(tokenizer, "eos_token", None) or "")
    cut = min((answer.index(e) for e in ends if e and e in answer), default=len(answer))
    return context, answer[:cut].rstrip()


def _prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """A text chat's context as eval's ``HFEvalModel.apply_chat_template`` renders it (a
    template that refuses the system role gets the turns without it)."""
    import jinja2

    if not tokenizer.chat_template:
        raise UserError("the tokenizer has no chat template (tokenizer_config.json)")
    kw: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    try:
        return str(tokenizer.apply_chat_template(messages, **kw))
    except jinja2.TemplateError:
        plain = [m for m in messages if m["role"] != "system"]
        return str(tokenizer.apply_chat_template(plain, **kw))


def _render(tokenizer: Any, chats: list[Chat]) -> list[Pair | str]:
    """Each chat as (context, answer) through ``tokenizer``'s template, or why it cannot be:
    a tool conversation is rendered with its tools (:func:`_tool_pair`), and a template
    can refuse what that needs (Gemma's and old Mistral's ``raise_exception`` on the system
    message that lists the tools where the template cannot)."""
    import jinja2

    from lmops.core.toolrows import has_tool_turns

    out: list[Pair | str] = []
    for messages, tools in chats:
        try:
            if tools or has_tool_turns(messages):
                out.append(_tool_pair(tokenizer, messages, tools))
            else:
                out.append((_prompt(tokenizer, messages[:-1]), str(messages[-1]["content"])))
        except (UserError, ValueError, TypeError, jinja2.TemplateError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            out.append(f"its chat template cannot render it ({first or type(e).__name__})")
    return out


def _nll_per_char(path: Path, sets: dict[str, list[Pair]], device: str) -> dict[str, float]:
    """Per set: negative log-likelihood of each answer given its context, summed and divided
    by the answers' characters (comparable across tokenizers)."""
    from lmops.eval.lm import HFEvalModel

    m = HFEvalModel(path, device=device, batch_size=8)
    try:
        out = {}
        for name, pairs in sets.items():
            lps = m.loglikelihood(pairs)
            out[name] = -sum(lp for lp, _ in lps) / max(sum(len(a) for _, a in pairs), 1)
    finally:
        m.close()
    return out


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of {path}: {e}") from None


def _compare(
    store: Store,
    models: dict[str, str],
    sets: dict[str, list[Chat]],
    device: str,
    skipped: dict[str, dict[str, int]],
) -> dict[str, dict[str, float]]:
    """Scores of each model (role -> ref) on each set (name -> chats), and ``combined``,
    their mean. Every chat is rendered for every model first and only the chats all of them
    can render are scored, so the models are compared on the same chats; ``skipped`` gets,
    per set, why the others were left out and how many. A set with nothing left to score
    is a ``UserError`` (a score of nothing would read as a perfect one)."""
    paths = {who: store.assets.path(ref) for who, ref in models.items()}
    rendered = {
        who: {name: _render(_load_tokenizer(p), chats) for name, chats in sets.items()}
        for who, p in paths.items()
    }
    kept: dict[str, dict[str, list[Pair]]] = {who: {} for who in models}
    for name, chats in sets.items():
        why: dict[str, int] = {}
        keep = []
        for i in range(len(chats)):
            bad = [
                f"{who} {models[who]}: {r[name][i]}"
                for who, r in rendered.items()
                if isinstance(r[name][i], str)
            ]
            if bad:
                why["; ".join(bad)] = why.get("; ".join(bad), 0) + 1
            else:
                keep.append(i)
        if why:
            skipped[name] = why
        if not keep:
            reasons = "; ".join(f"{n} x {w}" for w, n in why.items())
            raise UserError(
                f"{name}: none of its {counted(len(chats), 'chat')} can be scored by "
                + ("both models" if len(models) == 2 else "every model")
                + (f" ({reasons})" if reasons else " (no row ends with an assistant's answer)")
            )
        for who in models:
            kept[who][name] = [rendered[who][name][i] for i in keep]  # type: ignore[misc]
    out = {}
    for who, p in paths.items():
        scores = _nll_per_char(p, kept[who], device)
        scores["combined"] = sum(scores.values()) / len(scores)
        out[who] = scores
    return out


def _judge(spec: RetrainSpec, champ: dict[str, float], chall: dict[str, float]) -> list[str]:
    """Reasons not to promote (empty: promote)."""
    why = []
    # scores are positive (_compare refuses a set with nothing scored); a perfect champion
    # (NLL 0) cannot be beaten
    gain = (champ["combined"] - chall["combined"]) / max(champ["combined"], 1e-12)
    if gain < spec.margin:
        why.append(
            f"challenger's NLL/char {chall['combined']:.4f} vs champion's "
            f"{champ['combined']:.4f}: {gain:+.1%} better, below the margin {spec.margin:.1%}"
        )
    if "eval_set" in champ:
        loss = (chall["eval_set"] - champ["eval_set"]) / max(champ["eval_set"], 1e-12)
        if loss > spec.max_regression:
            why.append(
                f"challenger is {loss:.1%} worse on the fixed eval set "
                f"(at most {spec.max_regression:.1%} allowed)"
            )
    return why


def _retrain(
    store: Store,
    spec: RetrainSpec,
    base_dir: Path,
    deployment: str,
    since: datetime | None,
    d: Decision,
    run_id: str,
    inputs: list[tuple[str, str]],
    progress: bool = False,
) -> None:
    """Steps 3-6 of the module docstring; fills ``d`` (reasons explain a refusal)."""
    from lmops.monitor.metering import export_conversations
    from lmops.pipelines import load_pipeline, run_pipeline

    champion = store.assets.resolve(spec.champion)
    d.champion = champion.ref
    inputs.append((champion.ref, "champion"))
    try:
        export = export_conversations(
            store, deployment=deployment, output=f"{spec.flowback}-all", since=since
        )
    except UserError as e:
        d.reasons.append(f"no flow-back data: {e}")
        return
    train, hold = _split_flowback(store, export, spec, run_id)
    d.holdout = hold.ref
    inputs.append((hold.ref, "holdout"))
    if train is None:
        d.reasons.append(f"only {export.metadata.get('count')} logged chats: all kept to score")
        return
    d.flowback = train.ref
    inputs.append((train.ref, "flowback"))
    try:
        pipe = load_pipeline(
            base_dir / spec.pipeline, variables={"flowback": train.ref, "champion": champion.ref}
        )
        res = run_pipeline(pipe, store, progress=progress)
    except LmopsError as e:
        d.reasons.append(f"retraining pipeline {spec.pipeline}: {e}")
        return
    d.pipeline_run = res.run_id
    if not res.ok:
        bad = res.failed
        where = f"step {bad.name}: {bad.error}" if bad else "a step did not run"
        d.reasons.append(f"retraining pipeline {spec.pipeline} failed at {where}")
        return
    step = res.steps.get(spec.challenger_step)
    out = step.outputs.get(spec.challenger_output) if step else None
    if out is None:
        d.reasons.append(
            f"the pipeline has no output {spec.challenger_output!r} of step "
            f"{spec.challenger_step!r}; set retrain.challenger_step/challenger_output"
        )
        return
    challenger = store.assets.resolve(out)
    d.challenger = challenger.ref
    inputs.append((challenger.ref, "challenger"))
    if challenger.asset != champion.asset:
        d.reasons.append(
            f"challenger {challenger.ref} is not a version of {champion.asset}; make the "
            f"training step register its output as {champion.asset!r} so the alias can move"
        )
        return
    sets = {"holdout": _chat_rows(store.assets.path(hold.ref))}
    if spec.eval_set:
        ev = store.assets.resolve(spec.eval_set)
        inputs.append((ev.ref, "eval_set"))
        sets["eval_set"] = _chat_rows(store.assets.path(ev.ref), spec.max_eval)
    try:
        models = {"champion": champion.ref, "challenger": challenger.ref}
        d.scores = _compare(store, models, sets, spec.device, d.skipped)
    except LmopsError as e:
        d.reasons.append(f"evaluation failed: {e}")
        return
    d.reasons += _judge(spec, d.scores["champion"], d.scores["challenger"])
    if not d.reasons:
        alias = spec.champion.split("@", 1)[1] if "@" in spec.champion else None
        if alias is None:
            d.reasons.append(f"champion {spec.champion!r} is not an alias ref (name@alias)")
            return
        store.assets.alias(challenger.ref, alias)
        d.promoted = True
        d.reasons.append(
            f"{challenger.ref} beats {champion.ref} by the margin; {champion.asset}@{alias} "
            f"now points at it"
        )


def _decision_name(deployment: str) -> str:
    from lmops.monitor.checks import report_name

    return "retrain-" + report_name(deployment).removeprefix("drift-")


def _last_decision(store: Store, deployment: str) -> Version | None:
    try:
        return store.assets.resolve(_decision_name(deployment))
    except UserError:
        return None


def _record(
    store: Store, deployment: str, d: Decision, inputs: list[tuple[str, str]], run_id: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="lmops-decision-") as tmp:
        f = Path(tmp) / "decision.json"
        f.write_text(json.dumps(d.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        v = store.assets.register(
            RETRAIN_DECISION,
            _decision_name(deployment),
            f,
            metadata={"promoted": d.promoted, "reasons": d.reasons, "triggers": d.triggers},
            inputs=inputs,
            run_id=run_id,
            description=("promoted " if d.promoted else "not promoted: ") + "; ".join(d.reasons),
        )
    d.decision = v.ref


def _not_retrained(canaries: dict[str, Any]) -> list[str]:
    """Why failing canaries did not start a retraining round: none was answered wrong; they
    got no answer, or a right one too late."""
    out = []
    for key, what, kind in [
        ("unanswered", "failed for lack of an answer", "an availability failure"),
        ("slow", "{were} answered right but too late", "a latency failure"),
    ]:
        if ids := canaries.get(key):
            why = canaries.get(f"{key}_why")
            what = what.format(were="was" if len(ids) == 1 else "were")
            out.append(
                f"retraining not started: {noun_for(len(ids), 'canary', 'canaries')} "
                f"{', '.join(ids)} {what}"
                + (f" ({why})" if why else "")
                + f", {kind} of the deployment that retraining cannot fix; look at the "
                "server (the availability alert)"
            )
    return out


def watch_once(
    store: Store, spec: WatchSpec, base_dir: Path = Path("."), *, progress: bool = False
) -> Decision:
    """One round: check, and when triggered retrain and decide (see the module docstring);
    ``progress`` shows the embedding and the pipeline's steps on standard error. A
    deployment the request log has never seen is refused before anything is recorded."""
    require_traffic(store, spec.check)
    report, version = check_deployment(store, spec.check, progress=progress)
    d = Decision(
        report=version.ref,
        status=report.status,
        alerts_firing=sorted(n for n, st in report.alerts.items() if st.get("firing")),
        canaries_failing=list((report.canaries or {}).get("failing") or []),
        canaries_unanswered=list((report.canaries or {}).get("unanswered") or []),
        canaries_slow=list((report.canaries or {}).get("slow") or []),
        operational_drift=[n for n in report.drifted if n in OPERATIONAL],
        webhook_errors=[
            f"{n.get('url')}: {n.get('error')}" for n in report.notifications if not n.get("ok")
        ],
    )
    r = spec.retrain
    if report.status in ("empty", "no_overlap"):
        d.reasons.append(f"nothing to decide: {report.message}")
        return d
    if r is None:
        return d
    content = [n for n in report.drifted if n not in OPERATIONAL]
    if "drift" in r.triggers and content:
        d.triggers.append("drift: " + ", ".join(content))
    if "operational" in r.triggers and d.operational_drift:
        d.triggers.append("operational drift: " + ", ".join(d.operational_drift))
    wrong = (report.canaries or {}).get("wrong") or []
    if "canary" in r.triggers and wrong:
        d.triggers.append("canaries answered wrong: " + ", ".join(wrong))
    d.triggered = bool(d.triggers)
    if not d.triggered:
        if "canary" in r.triggers:
            d.reasons += _not_retrained(report.canaries or {})
        return d
    # Traffic that moved stays moved after a promotion: without a pause every round would
    # retrain again on the same drift (point the reference at the new training data).
    last = _last_decision(store, spec.check.deployment)
    if last is not None:
        age = (datetime.now(UTC) - last.created_at.astimezone(UTC)).total_seconds()
        if age < r.cooldown_s:
            d.reasons.append(
                f"cooling down: {last.ref} decided {age:.0f} s ago (retrain.cooldown_s "
                f"{r.cooldown_s:g}); not retraining yet"
            )
            return d
    inputs: list[tuple[str, str]] = [(version.ref, "trigger")]
    with store.runs.track("retrain", name=f"retrain {spec.check.deployment}") as run:
        # the flow-back covers exactly the window that was judged
        first = report.window.get("first")
        since = datetime.fromisoformat(first) if first else parse_since(spec.check.since)
        try:
            _retrain(store, r, base_dir, spec.check.deployment, since, d, run.id, inputs, progress)
        except LmopsError as e:  # a bad champion ref, a vanished asset: recorded, not raised
            d.reasons.append(str(e))
        _record(store, spec.check.deployment, d, inputs, run.id)
    return d


def watch(
    store: Store,
    spec: WatchSpec,
    base_dir: Path = Path("."),
    *,
    once: bool = False,
    progress: bool = False,
    on_round: Callable[[Decision | None, str | None], None] | None = None,
    rounds: int | None = None,
) -> None:
    """Rounds every ``interval_s`` until interrupted (``once``: one round). A round that fails
    is reported through ``on_round(None, error)`` and the next one runs anyway."""
    done = 0
    while True:
        try:
            d, err = watch_once(store, spec, base_dir, progress=progress), None
        except LmopsError as e:
            d, err = None, str(e)
        except Exception as e:  # the watcher outlives any one round's failure
            log.exception("monitor round failed")
            d, err = None, f"{type(e).__name__}: {e}"
        if on_round is not None:
            on_round(d, err)
        done += 1
        if once or (rounds is not None and done >= rounds):
            return
        time.sleep(spec.interval_s)
