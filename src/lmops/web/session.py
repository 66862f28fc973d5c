"""Console sessions: log in with an API key, then an encrypted cookie and a CSRF token.

The cookie (``lmops_session``: HttpOnly, SameSite=Strict, path ``/ui``) is a Fernet token
(AES-128-CBC + HMAC-SHA256, from ``cryptography``) holding the key's secret and the
session's CSRF token. The secret is kept, encrypted, because the playground calls the
gateway's ``/v1`` as that key (so limits, scopes and metering apply to it as to any client);
it is never readable by the browser or by anyone without the server's console secret.
Every request authenticates the secret again (``store.keys.authenticate``), so a revoked
or expired key ends its sessions at once.

The console secret is ``$LMOPS_HOME/console.key`` (mode 0600, created on first use with a
no-overwrite link, so every worker of one server reads the same key), or
``LMOPS_CONSOLE_SECRET`` (a Fernet key) when set.

Logging out ends the session on the server too: its id (a hash of its CSRF token) goes into
``$LMOPS_HOME/console-logouts`` (one line per session, appended; entries older than the
session lifetime are dropped), which every worker reads when it changes, so a copy of the
cookie stops working at once.

Writes need an ``admin`` key and the CSRF token, sent as the ``csrf`` form field or the
``X-CSRF-Token`` header (htmx requests carry it from ``hx-headers`` on ``<body>``). The
login form, which has no session yet, carries a token signed with the console secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from fastapi import Request

from lmops.core.errors import PermissionDenied
from lmops.store import ApiKey, Store

__all__ = [
    "COOKIE",
    "SESSION_TTL_S",
    "CsrfRefused",
    "LoginRequired",
    "Viewer",
    "check_csrf",
    "check_login_token",
    "console_fernet",
    "end_session",
    "login_token",
    "new_session",
    "read_session",
    "require_write",
]

COOKIE = "lmops_session"
SECRET_ENV = "LMOPS_CONSOLE_SECRET"
SESSION_TTL_S = 12 * 3600  # a working day; then log in again
LOGIN_TOKEN_TTL_S = 3600  # how long a login form stays valid


class LoginRequired(PermissionDenied):
    """No session, or one whose key no longer authenticates: the console shows the login."""


class CsrfRefused(PermissionDenied):
    """A write without this session's CSRF token (HTTP 403)."""


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key of the session, its CSRF token, and the store acting as
    that key (origin ``console``, so the audit log names both)."""

    key: ApiKey
    secret: str
    csrf: str
    store: Store

    @property
    def can_write(self) -> bool:
        return self.key.role == "admin"


def console_fernet(store: Store) -> Fernet:
    """The server's console cipher (see the module docstring); cached on the store."""
    cached = getattr(store, "_console_fernet", None)
    if cached is not None:
        return cached
    env = os.environ.get(SECRET_ENV)
    key = env.encode() if env else _secret_file(store.settings.home / "console.key")
    fernet = Fernet(key)
    store._console_fernet = fernet  # type: ignore[attr-defined]
    return fernet


def _secret_file(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".console-key-", dir=path.parent)
    try:
        os.write(fd, Fernet.generate_key())
        os.close(fd)
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):  # another worker won the race: use its key
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()


def new_session(store: Store, secret: str) -> tuple[ApiKey, str]:
    """Authenticate ``secret`` and return the key and the cookie value of a new session
    (``PermissionDenied`` with the store's message if the key is unknown, revoked or
    expired)."""
    key = store.keys.authenticate(secret)
    payload = {"k": secret, "c": secrets.token_urlsafe(24)}
    return key, console_fernet(store).encrypt(json.dumps(payload).encode()).decode()


def read_session(request: Request) -> Viewer:
    """The viewer of this request's session; ``LoginRequired`` when there is none or its
    key no longer authenticates."""
    store: Store = request.app.state.store
    raw = request.cookies.get(COOKIE)
    if not raw:
        raise LoginRequired("log in with an API key")
    try:
        payload = json.loads(console_fernet(store).decrypt(raw.encode(), ttl=SESSION_TTL_S))
        secret, csrf = str(payload["k"]), str(payload["c"])
    except (InvalidToken, ValueError, KeyError, TypeError):
        raise LoginRequired("your session expired; log in again") from None
    if _session_id(csrf) in _ended(store):
        raise LoginRequired("you logged out of this session; log in again")
    try:
        key = store.keys.authenticate(secret)
    except PermissionDenied as e:
        raise LoginRequired(f"{e}; log in with another key") from None
    request.state.lmops_key = key  # the access log names the key (prefix and name only)
    return Viewer(key=key, secret=secret, csrf=csrf, store=store.as_actor(key.name, "console"))


async def check_csrf(request: Request, viewer: Viewer) -> None:
    """Refuse a request without this session's CSRF token (header or form field)."""
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent, viewer.csrf):
        raise CsrfRefused("CSRF token missing or wrong; reload the page and try again")


async def require_write(request: Request, viewer: Viewer) -> None:
    """Refuse a write without this session's CSRF token or from a key that is not admin."""
    await check_csrf(request, viewer)
    if not viewer.can_write:
        raise PermissionDenied(
            f"API key {viewer.key.name!r} has role {viewer.key.role!r}; this needs admin"
        )


def login_token(store: Store) -> str:
    """A token for the login form: the time, signed with the console secret."""
    return console_fernet(store).encrypt(f"login:{int(time.time())}".encode()).decode()


def check_login_token(store: Store, token: str) -> None:
    try:
        ok = console_fernet(store).decrypt(token.encode(), ttl=LOGIN_TOKEN_TTL_S)
    except InvalidToken:
        ok = b""
    if not ok.startswith(b"login:"):
        raise CsrfRefused("the login form expired; reload the page and log in again")


# -- logout ---------------------------------------------------------------------------------------
def _session_id(csrf: str) -> str:
    return hashlib.sha256(csrf.encode()).hexdigest()[:32]


def _logouts(store: Store) -> Path:
    return store.settings.home / "console-logouts"


def _ended(store: Store) -> frozenset[str]:
    """Ids of the sessions logged out within their lifetime, read again only when the file
    changed (its size and mtime; cached on the store)."""
    path = _logouts(store)
    try:
        st = path.stat()
    except FileNotFoundError:
        return frozenset()
    stamp = (st.st_size, st.st_mtime_ns)
    cached = getattr(store, "_console_logouts", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    cutoff = time.time() - SESSION_TTL_S
    ids = set()
    for line in path.read_text("utf-8").splitlines():
        sid, _, at = line.partition(" ")
        with contextlib.suppress(ValueError):
            if float(at) >= cutoff:
                ids.add(sid)
    ended = frozenset(ids)
    store._console_logouts = (stamp, ended)  # type: ignore[attr-defined]
    return ended


def end_session(store: Store, viewer: Viewer) -> None:
    """Record that ``viewer``'s session ended (logout): one appended line (a single small
    ``O_APPEND`` write, so workers appending at once never interleave); once the file is
    large, entries past the session lifetime are dropped with a write-then-rename."""
    path = _logouts(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{_session_id(viewer.csrf)} {time.time():.0f}\n".encode())
    finally:
        os.close(fd)
    if path.stat().st_size > 1 << 20:
        cutoff = time.time() - SESSION_TTL_S
        keep = [
            line
            for line in path.read_text("utf-8").splitlines()
            if line.partition(" ")[2].isdigit() and float(line.partition(" ")[2]) >= cutoff
        ]
        fd, tmp = tempfile.mkstemp(prefix=".console-logouts-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
