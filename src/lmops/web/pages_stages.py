"""Console pages over the stages: data, evaluation, prompts (with the playground in
:mod:`lmops.web.playground`), serving (keys, usage, rejections, guardrails), monitoring
and pipelines. Each reads the store and calls the stage functions the CLI calls."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from lmops.core.errors import UserError
from lmops.store import Store, Version
from lmops.web.app import PREFIX, Page, render
from lmops.web.pages_store import deployments, version_file
from lmops.web.session import require_write
from lmops.web.svg import lineage_svg

__all__ = ["add_routes", "alerts", "latest_versions"]

PREVIEW_ROWS = 20
ITEMS_PER_PAGE = 50
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}
REPORTS_SHOWN = 100  # newest eval reports listed (the asset pages list every one)
BOARD_ROWS = 10  # rows per leaderboard block unless asked for all
MONITOR_KINDS = ("drift_report", "canary_set", "alert")


def latest_versions(store: Store, kind: str, *, every: bool = False) -> list[Version]:
    """The newest READY version of each asset of ``kind`` (``every``: all READY versions),
    newest first."""
    out: list[Version] = []
    for a in store.assets.list(kind=kind):
        if every:
            out += [v for v in store.assets.show(a.name).versions if v.status.value == "READY"]
        elif a.latest is not None:
            out.append(store.assets.get(f"{a.name}:{a.latest}"))
    return sorted(out, key=lambda v: v.created_at, reverse=True)


def alerts(store: Store) -> list[dict[str, Any]]:
    """What needs a look, from the newest version of each monitoring asset (the monitor
    stage keeps its alert states in each ``drift_report``'s metadata): alerts firing,
    failing canaries, a report that drifted; and any version of kind ``alert``."""
    from lmops.monitor.wording import counted

    out = []
    for kind in MONITOR_KINDS:
        for v in latest_versions(store, kind):
            m = v.metadata
            raw_states, raw_canaries = m.get("alerts"), m.get("canaries")
            states: dict[str, Any] = raw_states if isinstance(raw_states, dict) else {}
            firing = sorted(
                k for k, st in states.items() if isinstance(st, dict) and st.get("firing")
            )
            canaries: dict[str, Any] = raw_canaries if isinstance(raw_canaries, dict) else {}
            what: list[str] = []
            if firing:
                what.append("firing: " + ", ".join(firing))
            if canaries.get("failed"):
                failing = ", ".join(map(str, canaries.get("failing") or []))
                n = int(canaries["failed"])
                what.append(f"{counted(n, 'canary', 'canaries')} failing {failing}".strip())
            if m.get("drift") is True and not firing:
                what.append(m.get("message") or "drifted: " + ", ".join(m.get("drifted") or []))
            if kind == "alert":
                what.append(str(m.get("message") or v.description or "alert"))
            if what:
                out.append(
                    {"ref": v.ref, "kind": kind, "time": v.created_at, "what": "; ".join(what)}
                )
    return sorted(out, key=lambda a: a["time"], reverse=True)


def _rows_preview(path: Path, most: int) -> tuple[list[str], list[dict[str, Any]]]:
    from lmops.core.rows import Row, iter_rows

    rows = [r.values for r in islice(iter_rows(path), most) if isinstance(r, Row)]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols[:8], rows


def _is_wrong(item: dict[str, Any]) -> bool:
    scores = item.get("scores") or {}
    first = next(iter(scores.values()), None)
    return isinstance(first, int | float) and first == 0


def _form_limit(form: Any, field: str) -> int | None:
    """A key's ``rpm``/``tpm`` from a form; empty: no limit."""
    raw = str(form.get(field, "")).strip()
    if raw and not raw.isdigit():
        raise UserError(f"{field}: give a whole number of requests/tokens per minute")
    return int(raw) if raw else None


def _form_scopes(form: Any) -> list[str] | None:
    """The deployments a key may call, comma-separated (empty: all), as ``--scope``."""
    scopes = [d.strip() for d in str(form.get("scopes", "")).split(",") if d.strip()]
    return scopes or None


def add_routes(r: APIRouter) -> None:
    # -- data ------------------------------------------------------------------------------------
    @r.get("/data", response_class=HTMLResponse)
    def data(request: Request, viewer: Page) -> HTMLResponse:
        return render(
            request,
            viewer,
            "data.html",
            section="data",
            datasets=latest_versions(viewer.store, "dataset"),
        )

    @r.get("/data/{name}/{version}", response_class=HTMLResponse)
    def dataset(request: Request, viewer: Page, name: str, version: int) -> HTMLResponse:
        from lmops.core.rows import row_format

        store = viewer.store
        v = store.assets.resolve(f"{name}:{version}")
        entries = store.assets.manifest(v.ref)[1]
        readable = [
            e
            for e in entries
            # _report/, _errors.jsonl: the data stage's own files, not rows of the set
            if not any(part.startswith("_") for part in e.path.split("/"))
            and row_format(Path(e.path)) is not None
        ]
        cols: list[str] = []
        rows: list[dict[str, Any]] = []
        if readable:
            cols, rows = _rows_preview(version_file(store, v.ref, readable[0].path), PREVIEW_ROWS)
        report = None
        paths = {e.path for e in entries}
        for rel in ("_report/report.json", "report.json"):
            if rel in paths:
                report = json.loads(version_file(store, v.ref, rel).read_text(encoding="utf-8"))
                break
        plots = [e.path for e in entries if e.path.endswith(".png")]
        return render(
            request,
            viewer,
            "dataset.html",
            section="data",
            v=v,
            cols=cols,
            rows=rows,
            first_file=readable[0].path if readable else None,
            report=report,
            plots=plots,
        )

    # -- evaluation ------------------------------------------------------------------------------
    @r.get("/eval", response_class=HTMLResponse)
    def evaluation(request: Request, viewer: Page, task: str = "") -> HTMLResponse:
        reports = latest_versions(viewer.store, "eval_report", every=True)
        return render(
            request,
            viewer,
            "eval.html",
            section="eval",
            reports=reports[:REPORTS_SHOWN],
            n_reports=len(reports),
            task=task,
        )

    @r.get("/eval/leaderboard", response_class=HTMLResponse)
    def eval_leaderboard(
        request: Request,
        viewer: Page,
        task: str = "",
        every: Annotated[bool, Query(alias="all")] = False,
    ) -> HTMLResponse:
        """The leaderboard (eval's own ``leaderboard``), a fragment the evaluation page
        loads after it shows: it reads every report's scores."""
        from lmops.eval.compare import leaderboard

        blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in leaderboard(viewer.store, task=task or None):
            blocks.setdefault((row["task"], row["metric"]), []).append(row)
        return render(
            request,
            viewer,
            "eval_board.html",
            blocks=blocks,
            task=task,
            board_rows=None if every else BOARD_ROWS,
        )

    @r.get("/eval/compare", response_class=HTMLResponse)
    def eval_compare(
        request: Request, viewer: Page, refs: Annotated[list[str] | None, Query()] = None
    ) -> HTMLResponse:
        from lmops.eval.compare import compare_reports

        refs = list(dict.fromkeys(x for x in refs or [] if x))
        if len(refs) < 2:
            raise UserError("pick at least two eval reports to compare")
        # the oldest report is the baseline the others are compared with
        refs.sort(key=lambda ref: viewer.store.assets.resolve(ref).created_at)
        result = compare_reports(viewer.store, refs)
        return render(request, viewer, "eval_compare.html", section="eval", result=result)

    @r.get("/eval/{name}/{version}", response_class=HTMLResponse)
    def eval_report(
        request: Request,
        viewer: Page,
        name: str,
        version: int,
        task: str = "",
        wrong: bool = False,
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> HTMLResponse:
        store = viewer.store
        v = store.assets.resolve(f"{name}:{version}")
        if v.kind != "eval_report":
            raise UserError(f"{v.ref} is a {v.kind}, not an eval_report")
        items: list[dict[str, Any]] = []
        if "items.jsonl" in {e.path for e in store.assets.manifest(v.ref)[1]}:
            with open(version_file(store, v.ref, "items.jsonl"), encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if (not task or item.get("task") == task) and (not wrong or _is_wrong(item)):
                        items.append(item)
        pages = max(1, -(-len(items) // ITEMS_PER_PAGE))
        return render(
            request,
            viewer,
            "eval_report.html",
            section="eval",
            v=v,
            results=v.metadata.get("results") or {},
            groups=v.metadata.get("groups") or {},
            items=items[(page - 1) * ITEMS_PER_PAGE : page * ITEMS_PER_PAGE],
            n_items=len(items),
            task=task,
            wrong=wrong,
            page=page,
            pages=pages,
        )

    # -- prompts ---------------------------------------------------------------------------------
    @r.get("/prompts", response_class=HTMLResponse)
    def prompts(request: Request, viewer: Page) -> HTMLResponse:
        from lmops.prompts import list_prompts

        store = viewer.store
        return render(
            request,
            viewer,
            "prompts.html",
            section="prompts",
            prompts=list_prompts(store),
        )

    @r.get("/prompts/{name}", response_class=HTMLResponse)
    def prompt(request: Request, viewer: Page, name: str, a: int = 0, b: int = 0) -> HTMLResponse:
        from lmops.prompts import diff, load

        store = viewer.store
        asset = store.assets.show(name)
        if asset.kind != "prompt":
            raise UserError(f"{name!r} is a {asset.kind}, not a prompt")
        ready = [v.version for v in asset.versions if v.status.value == "READY"]
        b = b or (ready[-1] if ready else 0)
        a = a or (ready[-2] if len(ready) > 1 else b)
        lines: list[tuple[str, str]] = []
        spec = None
        if b:
            spec = load(store, f"{name}:{b}").spec
            for line in diff(store, f"{name}:{a}", f"{name}:{b}").splitlines():
                kind = (
                    "hunk"
                    if line.startswith(("@@", "---", "+++"))
                    else "add"
                    if line.startswith("+")
                    else "del"
                    if line.startswith("-")
                    else "ctx"
                )
                lines.append((kind, line))
        return render(
            request,
            viewer,
            "prompt.html",
            section="prompts",
            asset=asset,
            versions=list(reversed(asset.versions)),
            a=a,
            b=b,
            diff=lines,
            spec=spec,
        )

    # -- serving ---------------------------------------------------------------------------------
    @r.get("/serving", response_class=HTMLResponse)
    def serving(request: Request, viewer: Page, window: str = "1h") -> HTMLResponse:
        store = viewer.store
        return render(
            request,
            viewer,
            "serving.html",
            section="serving",
            deployments=deployments(request),
            keys=store.keys.list() if viewer.can_write else None,
            window=window if window in WINDOWS else "1h",
            windows=list(WINDOWS),
            only=None if viewer.can_write else viewer.key.name,
        )

    # The request log is read per view, so its cost grows with the rows in the window: the
    # usage and the refusals are two fragments the serving page loads after it shows.
    @r.get("/serving/usage", response_class=HTMLResponse)
    def serving_usage(request: Request, viewer: Page, window: str = "1h") -> HTMLResponse:
        from lmops.monitor.metering import usage

        window = window if window in WINDOWS else "1h"
        # an admin sees every key's usage; any other key its own (as it sees no other keys)
        only = None if viewer.can_write else viewer.key.name
        report = usage(viewer.store, since=datetime.now(UTC) - WINDOWS[window], key=only)
        return render(request, viewer, "serving_usage.html", report=report, window=window)

    @r.get("/serving/refusals", response_class=HTMLResponse)
    def serving_refusals(request: Request, viewer: Page, window: str = "1h") -> HTMLResponse:
        from lmops.monitor.metering import NO_KEY

        window = window if window in WINDOWS else "1h"
        only = None if viewer.can_write else viewer.key.name
        rejected: Counter[tuple[str, str]] = Counter()
        actions: Counter[tuple[str, str, str]] = Counter()
        recent: list[dict[str, Any]] = []
        since = datetime.now(UTC) - WINDOWS[window]
        for rec in viewer.store.requests.scan(since=since, key=only):
            if rec.status == 429:
                rejected[(rec.key_name or NO_KEY, rec.deployment or NO_KEY)] += 1
            for act in (rec.guardrails or {}).get("actions", []):
                what = str(act.get("action") or act.get("type") or act.get("kind") or "action")
                actions[(rec.deployment or NO_KEY, what, str(act.get("direction", "")))] += 1
                recent.append({"time": rec.time, "deployment": rec.deployment, **act})
        return render(
            request,
            viewer,
            "serving_refusals.html",
            rejected=sorted(rejected.items()),
            actions=sorted(actions.items()),
            recent=recent[-20:][::-1],
            window=window,
        )

    @r.get("/serving/trace", response_class=HTMLResponse)
    def serving_trace(
        request: Request,
        viewer: Page,
        request_id: str = "",
        deployment: str = "",
    ) -> HTMLResponse:
        """A served answer traced back (``lmops trace``): by its id or the response's
        x-request-id (a refused request's too), or the newest answer of a deployment; a key
        that is not an admin sees its own requests only."""
        from lmops.store.trace import trace_request

        only = None if viewer.can_write else viewer.key.name
        rid = request_id.strip() or None
        t = None
        if rid and deployment:
            raise UserError(
                "give an answer or request id, or a deployment (its newest answer), not both"
            )
        if rid or deployment:
            t = trace_request(viewer.store, rid, only_key=only, deployment=deployment or None)
        return render(
            request,
            viewer,
            "serving_trace.html",
            section="serving",
            t=t,
            request_id=rid or "",
            deployment=deployment,
            deployments=deployments(request),
            graph=lineage_svg(t.model, base=f"{PREFIX}/assets") if t and t.model else None,
            # a prompt made from nothing is only a source (listed below), as in the CLI
            prompt_graph=lineage_svg(t.prompt, base=f"{PREFIX}/assets")
            if t and t.prompt and t.prompt.upstream
            else None,
        )

    @r.post("/keys", response_class=HTMLResponse)
    async def create_key(request: Request, viewer: Page) -> Response:
        await require_write(request, viewer)
        form = await request.form()
        name = str(form.get("name", "")).strip()
        role = str(form.get("role", "user"))
        days = str(form.get("days", "")).strip()
        if days and not days.isdigit():
            raise UserError("expires: give a whole number of days")
        expires = datetime.now(UTC) + timedelta(days=int(days)) if days else None
        record, secret = viewer.store.keys.create(
            name,
            role=role,
            rpm=_form_limit(form, "rpm"),
            tpm=_form_limit(form, "tpm"),
            expires_at=expires,
            scopes=_form_scopes(form),
        )
        resp = render(
            request, viewer, "key_created.html", section="serving", record=record, secret=secret
        )
        resp.headers["Cache-Control"] = "no-store"  # the secret is on this page only
        return resp

    @r.post("/keys/{name}/revoke")
    async def revoke_key(request: Request, viewer: Page, name: str) -> Response:
        await require_write(request, viewer)
        viewer.store.keys.revoke(name, keep_an_admin=True)
        return RedirectResponse(f"{PREFIX}/serving", 303)

    @r.post("/keys/{name}/update")
    async def update_key(request: Request, viewer: Page, name: str) -> Response:
        """The edit form of a key row: every field is sent, so an empty one removes that
        limit, and an expiry date that is the key's own keeps its exact time."""
        await require_write(request, viewer)
        form = await request.form()
        key = viewer.store.keys.get(name)
        changes: dict[str, Any] = {
            "role": str(form.get("role", key.role)),
            "rpm": _form_limit(form, "rpm"),
            "tpm": _form_limit(form, "tpm"),
            "scopes": _form_scopes(form),
        }
        day = str(form.get("expires", "")).strip()
        if not day:
            changes["expires_at"] = None
        elif key.expires_at is None or day != key.expires_at.astimezone(UTC).date().isoformat():
            try:  # the start of that day, UTC, as `lmops keys update --expires DAY`
                changes["expires_at"] = datetime.fromisoformat(day).replace(tzinfo=UTC)
            except ValueError:
                raise UserError(f"expires: {day!r} is not a date like 2027-01-31") from None
        viewer.store.keys.update(name, **changes, keep_an_admin=True)
        return RedirectResponse(f"{PREFIX}/serving", 303)

    @r.post("/keys/{name}/rotate", response_class=HTMLResponse)
    async def rotate_key(request: Request, viewer: Page, name: str) -> Response:
        await require_write(request, viewer)
        record, secret = viewer.store.keys.rotate(name)
        resp = render(
            request,
            viewer,
            "key_created.html",
            section="serving",
            record=record,
            secret=secret,
            rotated=True,
            own=record.name == viewer.key.name,
        )
        resp.headers["Cache-Control"] = "no-store"  # the secret is on this page only
        return resp

    # -- monitoring ------------------------------------------------------------------------------
    @r.get("/monitoring", response_class=HTMLResponse)
    def monitoring(request: Request, viewer: Page) -> HTMLResponse:
        store = viewer.store
        return render(
            request,
            viewer,
            "monitoring.html",
            section="monitoring",
            drift=latest_versions(store, "drift_report", every=True)[:100],
            canaries=latest_versions(store, "canary_set"),
            alerts=alerts(store),
        )

    @r.get("/monitoring/{name}/{version}", response_class=HTMLResponse)
    def drift_report(request: Request, viewer: Page, name: str, version: int) -> HTMLResponse:
        from lmops.monitor.report import load_report

        store = viewer.store
        v = store.assets.resolve(f"{name}:{version}")
        if v.kind != "drift_report":
            raise UserError(f"{v.ref} is a {v.kind}, not a drift_report")
        files = {e.path for e in store.assets.manifest(v.ref)[1]}
        report = load_report(store, v.ref)
        plots = {m.name: m.plot for m in report.monitors if m.plot}
        return render(
            request,
            viewer,
            "drift_report.html",
            section="monitoring",
            v=v,
            report=report,
            plots={k: p for k, p in plots.items() if p in files},
        )

    # -- pipelines -------------------------------------------------------------------------------
    @r.get("/pipelines", response_class=HTMLResponse)
    def pipelines(request: Request, viewer: Page) -> HTMLResponse:
        store = viewer.store
        runs = store.runs.list(kind="pipeline", limit=200)
        return render(
            request,
            viewer,
            "pipelines.html",
            section="pipelines",
            runs=runs,
            cache=sorted(store.steps.list(), key=lambda c: (c.pipeline, c.step)),
        )

    @r.post("/pipelines/cache/clear")
    async def clear_cache(request: Request, viewer: Page) -> Response:
        await require_write(request, viewer)
        form = await request.form()
        pipeline = str(form.get("pipeline", "")).strip()
        if not pipeline:
            raise UserError("name the pipeline whose cache to clear")
        viewer.store.steps.clear(pipeline, str(form.get("step", "")).strip() or None)
        return RedirectResponse(f"{PREFIX}/pipelines", 303)

    from lmops.web.playground import add_routes as playground_routes

    playground_routes(r)
