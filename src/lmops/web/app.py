"""The console's plumbing: the ``/ui`` router, templates, static files and error pages.

Pages live in :mod:`lmops.web.pages_store` (overview, assets, runs, audit) and
:mod:`lmops.web.pages_stages` (data, evaluation, prompts and playground, serving,
monitoring, pipelines). Each page reads the store and calls the stage functions the CLI
and API call; nothing here re-implements stage logic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from lmops import __version__
from lmops.core.errors import ConflictError, LmopsError, NotFoundError, PermissionDenied, UserError
from lmops.web.session import CsrfRefused, LoginRequired, Viewer, read_session

__all__ = ["PREFIX", "ConsoleRoute", "Page", "render", "templates"]

PREFIX = "/ui"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

NAV = [
    ("overview", "Overview", ""),
    ("assets", "Assets", "/assets"),
    ("runs", "Runs", "/runs"),
    ("data", "Data", "/data"),
    ("eval", "Evaluation", "/eval"),
    ("prompts", "Prompts", "/prompts"),
    ("serving", "Serving", "/serving"),
    ("monitoring", "Monitoring", "/monitoring"),
    ("pipelines", "Pipelines", "/pipelines"),
    ("audit", "Audit", "/audit"),
]


# Pages load only from this server (the playground's inline script and htmx's indicator
# style are the only inline code) and are never framed, so a write button cannot be
# clickjacked.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


# -- template filters ------------------------------------------------------------------------------
def _when(dt: datetime | None) -> str:
    if dt is None:
        return ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _ms(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    s = (end - start).total_seconds()
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _json(v: Any) -> str:
    return json.dumps(v, indent=1, ensure_ascii=False, default=str, sort_keys=True)


templates.env.filters.update(
    when=_when,
    size=_size,
    num=_num,
    ms=_ms,
    tojson_pretty=_json,
    q=lambda s: quote(str(s), safe=""),
)
templates.env.globals.update(
    duration=_duration, zip=zip, prefix=PREFIX, nav=NAV, lmops_version=__version__
)


def render(
    request: Request,
    viewer: Viewer | None,
    template: str,
    /,
    *,
    status_code: int = 200,
    section: str = "",
    **context: Any,
) -> HTMLResponse:
    """A page: ``template`` inside the layout, with the viewer (nav, CSRF token, write
    rights)."""
    resp = templates.TemplateResponse(
        request,
        template,
        {"viewer": viewer, "section": section, **context},
        status_code=status_code,
    )
    resp.headers.update(SECURITY_HEADERS)
    return resp


# -- errors ----------------------------------------------------------------------------------------
def _status(exc: LmopsError) -> int:
    for cls, status in (
        (CsrfRefused, 403),
        (PermissionDenied, 403),
        (NotFoundError, 404),
        (ConflictError, 409),
        (UserError, 400),
    ):
        if isinstance(exc, cls):
            return status
    return 500


class ConsoleRoute(APIRoute):
    """Answers errors as console pages: no session sends a page load to the login form
    (and any other request gets a 401); an lmops error is its status with its message."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as e:
                if request.method == "GET" and "hx-request" not in request.headers:
                    target = quote(str(request.url.path) + _query(request), safe="")
                    return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
                return render(request, None, "error.html", status_code=401, message=str(e))
            except LmopsError as e:
                return render(request, None, "error.html", status_code=_status(e), message=str(e))

        return route


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


Page = Annotated[Viewer, Depends(read_session)]


def mount_console(app: FastAPI) -> None:
    """Add the console under ``/ui`` (pages and ``/ui/static``)."""
    from fastapi import APIRouter

    from lmops.web import pages_stages, pages_store

    router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
    pages_store.add_routes(router)
    pages_stages.add_routes(router)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
