"""Every ``--help`` shows what its help strings say. Typer renders help as rich markup, where
``[onnx]`` is a style tag and vanishes: ``deploy export --help`` said ``pip install 'lmops'``
for ``pip install 'lmops[onnx]'``. A bracket meant literally is written ``\\[``; here every
command's help is rendered and each bracketed word of its help strings must be in it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# a word with a bracketed part, as written in the source: lmops\[onnx], name[:N]...
_BRACKETED = re.compile(r"[^\s(]*\\?\[[^\]\s]*\][^\s,.;)]*")


def _commands(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            yield from _commands(sub, [*path, name])


def _help_strings(cmd: Any) -> list[str]:
    texts = [cmd.help or "", cmd.short_help or "", cmd.epilog or ""]
    return texts + [getattr(p, "help", None) or "" for p in cmd.params]


def test_every_help_keeps_its_brackets() -> None:
    import typer
    from typer.testing import CliRunner

    from lmops.cli.main import app

    runner = CliRunner()
    checked = 0
    for path, cmd in _commands(typer.main.get_command(app), []):
        words = {w.replace("\\[", "[") for t in _help_strings(cmd) for w in _BRACKETED.findall(t)}
        if not words:
            continue
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert r.exit_code == 0, (path, r.output)
        shown = " ".join(r.output.replace("│", " ").split())
        for word in words:
            assert word in shown, (" ".join(path), word, shown)
        checked += 1
    assert checked >= 2  # deploy export and deploy quantize at least


def test_the_install_hints_name_their_extras() -> None:
    from typer.testing import CliRunner

    from lmops.cli.main import app

    runner = CliRunner()
    for args, extra in (
        (["deploy", "export"], "'lmops[onnx]'"),
        (["deploy", "quantize"], "'lmops[gpu]'"),
    ):
        r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
        assert extra in " ".join(r.output.replace("│", " ").split()), r.output


def test_a_group_lists_each_command_on_unbroken_lines() -> None:
    """A command's summary in its group's listing is its first paragraph, joined: typer kept the
    docstring's own line breaks there, so ``lmops data --help`` broke ``validate``'s summary
    mid-sentence ("reason (exit 1 if any," then a row of its own) whatever the width."""
    import inspect

    import typer
    from typer.testing import CliRunner

    from lmops.cli.main import app

    runner = CliRunner()
    checked = 0
    for path, cmd in _commands(typer.main.get_command(app), []):
        subs = {n: c for n, c in getattr(cmd, "commands", {}).items() if not c.hidden}
        wrapped = {
            n: " ".join(inspect.cleandoc(c.help).split("\n\n")[0].split())
            for n, c in subs.items()
            if c.help and "\n" in inspect.cleandoc(c.help).split("\n\n")[0]
        }
        if not wrapped:
            continue
        # wide enough that no summary wraps: each must then be on its command's one line
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "2000"})
        assert r.exit_code == 0, (path, r.output)
        lines = {" ".join(line.replace("│", " ").split()) for line in r.output.splitlines()}
        for name, summary in wrapped.items():
            assert any(line.startswith(f"{name} ") and summary in line for line in lines), (
                " ".join([*path, name]),
                summary,
            )
            checked += 1
    assert checked >= 3  # trace, data validate, data from-logs at least
