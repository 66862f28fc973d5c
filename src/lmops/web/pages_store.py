"""Console pages over the store itself: log in/out, overview, assets (versions, aliases,
file preview, lineage), runs (filter, charts, compare) and the audit log."""

from __future__ import annotations

import mimetypes
from collections import Counter
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from lmops.core.errors import NotFoundError, PermissionDenied, UserError
from lmops.store import Run, Store
from lmops.store.runs import flatten
from lmops.web.app import PREFIX, Page, render
from lmops.web.session import (
    COOKIE,
    SESSION_TTL_S,
    check_csrf,
    check_login_token,
    end_session,
    login_token,
    new_session,
    require_write,
)
from lmops.web.svg import PALETTE, Series, line_chart, lineage_svg

__all__ = ["add_routes", "deployments", "preview_text"]


VERSIONS_PER_PAGE = 50
RUNS_LIMIT = 1000  # a text or status filter searches the newest this many runs
RUNS_PER_PAGE = 100
# the run kinds lmops' stages record: the kind filter offers these and those shown
RUN_KINDS = (
    "batch",
    "data",
    "deploy_report",
    "distill",
    "eval",
    "gate",
    "merge",
    "mix",
    "package",
    "pipeline",
    "prune",
    "quantize",
    "retrain",
    "tokenize",
    "tokenizer",
    "train",
)
PREVIEW_BYTES = 64 * 1024  # a file preview shows the first 64 KiB


def deployments(request: Request) -> list[dict[str, Any]]:
    """The deployments this server's gateway answers (none when ``/v1`` is not mounted)."""
    gw = getattr(request.app.state, "gateway", None)
    if gw is None:
        return []
    out = []
    for name, dep in sorted(gw.registry.deployments.items()):
        spec = dep.spec
        source = (
            f"upstream {dep.upstream.shown_url}"
            if dep.upstream is not None
            else "fake backend"
            if spec.fake is not None
            else "A/B split"
            if spec.split
            else f"model {spec.model}"
        )
        versions = [str(t.version) for t, _ in dep.targets]
        weights = [w for _, w in dep.targets]
        out.append({"name": name, "source": source, "versions": versions, "weights": weights})
    return out


def _log_tail(run: Run) -> tuple[str, int] | str:
    """The last :data:`LOG_LINES` lines of the run's log with its line count, or why it
    has none."""
    from lmops.store.runlog import read_run_log

    try:
        text = read_run_log(run)
    except NotFoundError as e:
        return str(e)
    lines = text.splitlines()
    return "\n".join(lines[-LOG_LINES:]), len(lines)


LOG_LINES = 200


def version_file(store: Store, ref: str, rel: str) -> Path:
    """The local path of file ``rel`` of version ``ref``; only paths its manifest lists."""
    v, entries = store.assets.manifest(ref)
    if rel not in {e.path for e in entries}:
        raise NotFoundError(f"{ref} has no file {rel!r}")
    root = store.assets.path(v.ref)
    # a one-file version's path is the file itself: a stored file's view, or the file an
    # external reference recorded (layout "external", so the layout alone cannot say)
    return root if root.is_file() else root / rel


def preview_text(path: Path, most: int = PREVIEW_BYTES) -> tuple[str | None, bool]:
    """The start of a text file and whether it was cut; ``None`` for binary content."""
    with open(path, "rb") as fh:
        head = fh.read(most + 1)
    cut = len(head) > most
    try:
        return head[:most].decode("utf-8", errors="strict" if not cut else "ignore"), cut
    except UnicodeDecodeError:
        return None, cut


def _run_matches(run: Run, q: str, status: str) -> bool:
    if status and run.status.value != status:
        return False
    if not q:
        return True
    q = q.lower()
    return q in run.id.lower() or q in run.name.lower() or q in run.kind.lower()


def add_routes(r: APIRouter) -> None:
    # -- session ---------------------------------------------------------------------------------
    @r.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "") -> HTMLResponse:
        store: Store = request.app.state.store
        return render(request, None, "login.html", token=login_token(store), next=next)

    @r.post("/login")
    def login(
        request: Request,
        key: Annotated[str, Form()],
        token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "",
    ) -> Response:
        store: Store = request.app.state.store
        check_login_token(store, token)
        try:
            _key, cookie = new_session(store, key.strip())
        except PermissionDenied as e:
            return render(
                request,
                None,
                "login.html",
                status_code=401,
                token=login_token(store),
                next=next,
                error=str(e),
            )
        # only a path inside the console, never another site
        target = next if next.startswith(PREFIX + "/") or next == PREFIX else PREFIX
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(
            COOKIE,
            cookie,
            max_age=SESSION_TTL_S,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    @r.post("/logout")
    async def logout(request: Request, viewer: Page) -> Response:
        await check_csrf(request, viewer)  # another site must not end a session
        end_session(viewer.store, viewer)  # a copied cookie must not outlive the logout
        resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
        resp.delete_cookie(COOKIE, path=PREFIX)
        return resp

    # -- overview --------------------------------------------------------------------------------
    @r.get("", response_class=HTMLResponse)
    def overview(request: Request, viewer: Page) -> HTMLResponse:
        store = viewer.store
        assets = store.assets.list()
        runs = store.runs.list(limit=10)
        from lmops.web.pages_stages import alerts

        return render(
            request,
            viewer,
            "overview.html",
            section="overview",
            kinds=sorted(Counter(a.kind for a in assets).items()),
            assets=sorted(assets, key=lambda a: a.created_at, reverse=True)[:10],
            n_assets=len(assets),
            runs=runs,
            deployments=deployments(request),
            alerts=alerts(store)[:10],
        )

    # -- assets ----------------------------------------------------------------------------------
    @r.get("/assets", response_class=HTMLResponse)
    def assets(request: Request, viewer: Page, q: str = "", kind: str = "") -> HTMLResponse:
        every = viewer.store.assets.list()
        kinds = sorted(Counter(a.kind for a in every).items())
        shown = [
            a
            for a in every
            if (not kind or a.kind == kind) and (not q or q.lower() in a.name.lower())
        ]
        name = "assets_table.html" if "hx-request" in request.headers else "assets.html"
        return render(
            request, viewer, name, section="assets", assets=shown, kinds=kinds, q=q, kind=kind
        )

    @r.get("/assets/{name}", response_class=HTMLResponse)
    def asset(
        request: Request, viewer: Page, name: str, page: Annotated[int, Query(ge=1)] = 1
    ) -> HTMLResponse:
        a = viewer.store.assets.show(name)
        newest = list(reversed(a.versions))
        pages = max(1, -(-len(newest) // VERSIONS_PER_PAGE))
        shown = newest[(page - 1) * VERSIONS_PER_PAGE : page * VERSIONS_PER_PAGE]
        return render(
            request,
            viewer,
            "asset.html",
            section="assets",
            asset=a,
            versions=shown,
            page=page,
            pages=pages,
        )

    @r.get("/assets/{name}/{version}", response_class=HTMLResponse)
    def version(request: Request, viewer: Page, name: str, version: int) -> HTMLResponse:
        store = viewer.store
        v = store.assets.get(f"{name}:{version}")
        files: list[Any] = []
        if v.status.value == "READY":
            files = store.assets.manifest(v.ref)[1]
        graph = store.assets.lineage(v.ref)
        return render(
            request,
            viewer,
            "version.html",
            section="assets",
            v=v,
            files=files[:500],
            n_files=len(files),
            graph=lineage_svg(graph, base=f"{PREFIX}/assets"),
            n_nodes=len(graph.nodes),
            runs=graph.runs,
        )

    @r.get("/assets/{name}/{version}/file", response_class=HTMLResponse)
    def file_preview(
        request: Request, viewer: Page, name: str, version: int, path: str, raw: bool = False
    ) -> Response:
        ref = f"{name}:{version}"
        local = version_file(viewer.store, ref, path)
        if raw:  # images and downloads; served as plain bytes, never as a page of ours
            media = mimetypes.guess_type(path)[0] or "application/octet-stream"
            if media.startswith("text/html") or "svg" in media or "javascript" in media:
                media = "text/plain"
            return FileResponse(
                local, media_type=media, headers={"X-Content-Type-Options": "nosniff"}
            )
        text, cut = preview_text(local)
        return render(
            request,
            viewer,
            "file.html",
            section="assets",
            ref=ref,
            name=name,
            version=version,
            path=path,
            text=text,
            cut=cut,
            size=local.stat().st_size,
            image=(mimetypes.guess_type(path)[0] or "").startswith("image/") and "svg" not in path,
        )

    @r.post("/assets/{name}/alias", response_class=HTMLResponse)
    async def move_alias(request: Request, viewer: Page, name: str) -> Response:
        await require_write(request, viewer)
        form = await request.form()
        alias, ver, confirm = (
            str(form.get(k, "")).strip() for k in ("alias", "version", "confirm")
        )
        if not alias or not ver.isdigit():
            raise UserError("give an alias and a version number")
        store = viewer.store
        target = store.assets.resolve(f"{name}:{ver}")
        current = store.assets.show(name).aliases.get(alias)
        if confirm != "yes":  # a move shows what changes and asks first
            return render(
                request,
                viewer,
                "confirm_alias.html",
                section="assets",
                name=name,
                alias=alias,
                target=target,
                current=current,
            )
        store.assets.alias(target.ref, alias)
        return RedirectResponse(f"{PREFIX}/assets/{quote(name, safe='')}", status_code=303)

    # -- runs ------------------------------------------------------------------------------------
    @r.get("/runs", response_class=HTMLResponse)
    def runs(
        request: Request,
        viewer: Page,
        kind: str = "",
        status: str = "",
        q: str = "",
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> HTMLResponse:
        # Without a text or status filter only the runs of this page are read (newest
        # first; the kind is filtered by the store); with one, the newest RUNS_LIMIT.
        if q or status:
            every = viewer.store.runs.list(kind=kind or None, limit=RUNS_LIMIT)
            matched = [run for run in every if _run_matches(run, q, status)]
        else:
            matched = viewer.store.runs.list(kind=kind or None, limit=page * RUNS_PER_PAGE + 1)
        shown = matched[(page - 1) * RUNS_PER_PAGE : page * RUNS_PER_PAGE]
        more = len(matched) > page * RUNS_PER_PAGE
        # the metric columns: the names most runs shown report, at most six
        counts = Counter(m for run in shown for m in run.summary)
        columns = [m for m, _ in counts.most_common(6)]
        template = "runs_table.html" if "hx-request" in request.headers else "runs.html"
        return render(
            request,
            viewer,
            template,
            section="runs",
            runs=shown,
            columns=columns,
            kinds=sorted(
                set(RUN_KINDS) | {run.kind for run in shown} | ({kind} if kind else set())
            ),
            kind=kind,
            status=status,
            q=q,
            page=page,
            more=more,
            limit=RUNS_LIMIT,
            filtered=bool(q or status),
        )

    @r.get("/runs/compare", response_class=HTMLResponse)
    def compare_runs(
        request: Request, viewer: Page, ids: Annotated[list[str] | None, Query()] = None
    ) -> HTMLResponse:
        ids = list(dict.fromkeys(i for i in ids or [] if i))
        if len(ids) < 2:
            raise UserError("pick at least two runs to compare (tick them in the runs list)")
        cmp = viewer.store.runs.compare(ids[: len(PALETTE)])
        chosen = cmp.runs
        names = list(cmp.metrics)
        charts = [
            line_chart(
                m,
                [
                    Series(run.name or run.id, [(p.step, p.value) for p in run.metrics[m]], color)
                    for run, color in zip(chosen, PALETTE, strict=False)
                    if m in run.metrics
                ],
            )
            for m in names
        ]
        differing = list(cmp.differing.items())
        same = list(cmp.same.items())
        return render(
            request,
            viewer,
            "runs_compare.html",
            section="runs",
            runs=list(zip(chosen, PALETTE, strict=False)),
            charts=charts,
            differing=differing,
            same=same,
            summary_names=names,
        )

    @r.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, viewer: Page, run_id: str) -> HTMLResponse:
        run = viewer.store.runs.get(run_id)
        charts = [
            line_chart(m, [Series(m, [(p.step, p.value) for p in series])])
            for m, series in sorted(run.metrics.items())
        ]
        return render(
            request,
            viewer,
            "run.html",
            section="runs",
            run=run,
            charts=charts,
            config=flatten(run.config),
            params=flatten(run.params),
            log=_log_tail(run),
        )

    # -- audit -----------------------------------------------------------------------------------
    @r.get("/audit", response_class=HTMLResponse)
    def audit(
        request: Request,
        viewer: Page,
        action: str = "",
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> HTMLResponse:
        if not viewer.can_write:  # as /api/audit: the audit log is for admins
            raise PermissionDenied(
                f"API key {viewer.key.name!r} has role {viewer.key.role!r}; "
                "the audit log needs an admin key"
            )
        events = viewer.store.audit.list(action=action or None, limit=limit)
        return render(
            request,
            viewer,
            "audit.html",
            section="audit",
            events=events,
            action=action,
            limit=limit,
        )
