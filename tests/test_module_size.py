"""No module of the package is longer than 800 lines (docs/ARCHITECTURE.md): one that grows
past it is split along its own seams before anything is added to it."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmops"
LIMIT = 800


def test_no_module_is_longer_than_the_limit() -> None:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 100  # the walk found the package
    long = {
        str(p.relative_to(SRC)): n
        for p in modules
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert not long, f"modules over {LIMIT} lines (split them along their seams): {long}"
