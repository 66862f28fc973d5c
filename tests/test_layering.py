"""The layering rule of docs/ARCHITECTURE.md, read from the imports of every module.

Layers, bottom to top: core -> text -> store -> models -> stages -> pipelines -> skins. A
module may import its own layer's package and anything below it, never above. Stages
(data, train, eval, prompts, serve, deploy, security, monitor) never import each other,
except the edges in :data:`ALLOWED` (each with its reason in docs/ARCHITECTURE.md); eval
and serve never import train. Every import counts, including those inside functions and
under ``TYPE_CHECKING``: a lazy import is still a dependency. A module belongs to the
folder right under ``lmops/`` it sits in, so code added later is checked too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lmops"

LAYERS: dict[str, int] = {
    "core": 0,
    "text": 1,
    "store": 2,
    "models": 3,
    **dict.fromkeys(
        ("data", "train", "eval", "prompts", "serve", "deploy", "security", "monitor"), 4
    ),
    "pipelines": 5,
    **dict.fromkeys(("cli", "api", "web"), 6),
}
STAGE = 4
# Top-level modules of the package (lmops/__init__.py, lmops/__main__.py): the version and
# the entry point, importable from anywhere, importing nothing of a stage themselves.
ROOT = "<root>"

# Stage -> stage edges that are allowed; the reasons are in docs/ARCHITECTURE.md.
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("serve", "security"),  # the gateway runs the guardrails and checks API keys
        ("serve", "monitor"),  # the gateway writes metrics, the access log and the request log
        ("serve", "prompts"),  # a deployment may serve a registered prompt (prompts.binding)
        ("deploy", "serve"),  # deployment launches and supervises the serving gateway's engines
        ("deploy", "monitor"),  # engine restarts and hangs are metrics
    }
)
# Never, whatever the allow-list says.
FORBIDDEN: frozenset[tuple[str, str]] = frozenset({("eval", "train"), ("serve", "train")})


def _owner(module: str) -> str:
    """The top-level folder of a dotted ``lmops.X...`` module name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """``(imported lmops module, line)`` for every import in ``tree``, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield name, node.lineno
            for alias in node.names:  # "from lmops import serve" imports lmops.serve
                if name == "lmops" and alias.name in LAYERS:
                    yield f"lmops.{alias.name}", node.lineno


def violation(src: str, dst: str) -> str | None:
    """Why an import from folder ``src`` of folder ``dst`` breaks the rule, or None."""
    if src == dst or dst == ROOT:
        return None
    if src == ROOT:
        return None if dst not in LAYERS else "the package root imports nothing of a layer"
    if src not in LAYERS or dst not in LAYERS:
        return f"{src if src not in LAYERS else dst!r} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    if (src, dst) in FORBIDDEN:
        return f"{src} never imports {dst}"
    s, d = LAYERS[src], LAYERS[dst]
    if d > s:
        return f"{src} (layer {s}) imports {dst} (layer {d}), a higher layer"
    if s == d == STAGE and (src, dst) not in ALLOWED:
        return f"stage {src} imports stage {dst} (not in the allow-list)"
    return None  # skins may use each other: `lmops serve` runs the app, which mounts the console


def check_source(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every forbidden import of a module's ``source``, as ``module:line: import -> why``."""
    src = _owner(module)
    out = []
    for name, line in imports(ast.parse(source), module, is_package):
        if name != "lmops" and not name.startswith("lmops."):
            continue
        why = violation(src, _owner(name))
        if why is not None:
            out.append(f"{module}:{line}: imports {name}: {why}")
    return out


def all_violations() -> list[str]:
    found: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        found += check_source(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
    return found


def test_the_package_follows_the_layering_rule() -> None:
    found = all_violations()
    assert not found, "forbidden imports (see docs/ARCHITECTURE.md):\n" + "\n".join(found)


def test_every_top_level_folder_is_in_a_layer() -> None:
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), folders - set(LAYERS)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("lmops.pipelines.serving", "from lmops.api.app import create_app"),  # skin, from below
        ("lmops.store.assets", "def f():\n    from lmops.serve import policy\n"),  # lazy
        ("lmops.eval.run", "import lmops.train.loop"),
        ("lmops.serve.handlers", "from lmops.train import models"),
        ("lmops.data.ops", "from lmops import eval"),
        ("lmops.security.guard", "from ..serve.policy import Policy"),  # relative, upwards
        ("lmops.monitor.metrics", "if TYPE_CHECKING:\n    from lmops.serve.policy import X\n"),
        ("lmops.core.config", "from lmops.text.cjk import HAN"),
        ("lmops.text.pii", "from lmops.store import Store"),
        ("lmops.models.engine", "from lmops.monitor import metrics"),
        ("lmops.newstage.x", "import os"),  # unknown folder: harmless import, still nothing
    ],
)
def test_a_forbidden_import_is_caught(module: str, source: str) -> None:
    found = check_source(source, module)
    if module.startswith("lmops.newstage"):
        assert found == []
        assert violation("newstage", "core") is not None  # but the folder is in no layer
    else:
        assert len(found) == 1 and module in found[0], found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("lmops.serve.policy", "from lmops.security import Guardrails"),
        ("lmops.deploy.launcher", "from lmops.monitor.metrics import Metrics"),
        ("lmops.cli.main", "from lmops.pipelines.runner import run"),
        ("lmops.security.guard", "from lmops.text.pii import detect_pii\nfrom .config import X"),
        ("lmops.train.run", "from lmops.models.loading import load"),
        ("lmops.data.classifier", "import numpy\nfrom lmops.core.atomic import write_atomic"),
        ("lmops.data.executor", "from lmops import __version__"),
        ("lmops.cli.main", "from lmops.api.app import create_app"),
    ],
)
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert check_source(source, module) == []
