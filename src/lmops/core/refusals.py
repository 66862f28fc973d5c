"""A 429's facts: which limit refused a request, as the gateway words it and as data.

The gateway (``lmops.serve.limits``) words its refusals with the heads here and says the same
as data in the 429's ``error.lmops`` (``scope``, ``name``, ``limit``, ``retry_after_s``,
``too_large``). Two readers need them back: the gateway, passing on an upstream's 429
(``lmops.serve.upstream_backend``), and a canary reading the gateway's answer
(``lmops.monitor.canary``). An older lmops gateway said them in words only, so both read
its message; serve and monitor do not import each other, so the words and their one reader
live here, side by side, and a rewording changes both.

Facts from elsewhere (an upstream's body, any server's) are data from outside: :func:`clean`
keeps the five fields, each of its type, and drops the rest.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "LIMITS",
    "SCOPES",
    "clean",
    "from_message",
    "rate_limit_reached",
    "too_large",
    "too_many_concurrent",
]

# What ``limit`` names: a field of lmops.serve.limits.Limits
LIMITS = frozenset({"rpm", "tpm", "tokens_per_day", "tokens_per_month", "max_concurrent"})
# What ``scope`` names: an API key's limits, a deployment's, or an upstream's passed on
SCOPES = frozenset({"key", "deployment", "upstream"})
# the limiter's scope prefixes ("key:ci", "dep:chat") and the scopes they are
_KINDS = {"key": "key", "dep": "deployment"}
_NAME_CHARS = 256  # longer is no key's nor deployment's name


def too_large(scope: str) -> str:
    """The head of the message of a request over a limit on its own (``scope``: the
    limiter's, ``key:NAME`` or ``dep:NAME``)."""
    return f"request too large for {scope}: "


def rate_limit_reached(scope: str) -> str:
    """The head of the message of a window's limit reached."""
    return f"rate limit reached for {scope}: "


def too_many_concurrent(scope: str) -> str:
    """The head of the message of a concurrency cap reached."""
    return f"too many concurrent requests for {scope}: "


# The heads above as an older gateway wrote them, followed by what names the limit:
# "...for dep:chat: it needs 9 tokens and the limit is tpm 3 per minute; ...",
# "...for key:ci: rpm 60 requests per minute; ...", "...for key:ci: 2 in flight, ...".
_SCOPE = r"(key|dep):(.+?): "
_TOO_LARGE = re.compile(r"request too large for " + _SCOPE + r"(?:.*?the limit is (\w+) )?")
_REACHED = re.compile(r"rate limit reached for " + _SCOPE + r"(?:(\w+) )?")
_TOO_MANY = re.compile(r"too many concurrent requests for " + _SCOPE)


def from_message(message: str) -> dict[str, Any] | None:
    """The facts a gateway's 429 ``message`` names in words (a gateway older than
    ``error.lmops`` said them only so), or None where it names none (another server's).
    ``retry_after_s`` is not in the words: None (the caller has ``Retry-After``)."""
    if m := _TOO_LARGE.search(message):
        kind, name, limit, large = m[1], m[2], m[3], True
    elif m := _REACHED.search(message):
        kind, name, limit, large = m[1], m[2], m[3], False
    elif m := _TOO_MANY.search(message):
        kind, name, limit, large = m[1], m[2], "max_concurrent", False
    else:
        return None
    return clean(
        {"scope": _KINDS[kind], "name": name, "limit": limit, "retry_after_s": None,
         "too_large": large}
    )  # fmt: skip


def clean(facts: Any) -> dict[str, Any] | None:
    """``facts`` from outside (an upstream's ``error.lmops``) as this gateway's: the five
    fields only, each of its type or None (``scope`` and ``limit`` among the known words,
    ``name`` a string, ``retry_after_s`` a finite number >= 0, ``too_large`` only when it
    is ``true``); anything else in it is dropped. None where ``facts`` is no object."""
    if not isinstance(facts, dict):
        return None
    scope, name, limit, wait = (facts.get(f) for f in ("scope", "name", "limit", "retry_after_s"))
    wait = float(wait) if isinstance(wait, int | float) and not isinstance(wait, bool) else None
    wait = wait if wait is not None and math.isfinite(wait) and wait >= 0 else None
    return {
        "scope": scope if isinstance(scope, str) and scope in SCOPES else None,
        "name": name if isinstance(name, str) and len(name) <= _NAME_CHARS else None,
        "limit": limit if isinstance(limit, str) and limit in LIMITS else None,
        "retry_after_s": wait,
        "too_large": facts.get("too_large") is True,
    }
