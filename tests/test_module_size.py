"""Package-wide rules read from the source: no module is longer than 800 lines (one that
grows past it is split along its own seams, docs/ARCHITECTURE.md), and no module unpickles
with ``weights_only`` off."""

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


def test_no_module_unpickles_with_weights_only_off() -> None:
    """Issue #12 item 12: a checkpoint or state file is read with ``weights_only=True``, so
    loading one never runs code; a module that turns it off fails here."""
    hits = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "weights_only=False" in p.read_text(encoding="utf-8").replace(" ", "")
    ]
    assert not hits, f"torch.load(weights_only=False) in {hits}: load tensors only"
