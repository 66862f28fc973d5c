"""What an attack run found in the CLI's store commands: secrets in URLs shown half
masked, numbers too big for the database, symlinks out of a registered tree, corrupt
blobs handed out, a full disk reported as a lock. Each answer is one ``error:`` line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import assert_one_line_error, js, ok

HUGE = "99999999999999999999"  # > 2**64
ENORMOUS = "9" * 5000  # more digits than Python converts to int by default


def _secret_free(text: str, *fragments: str) -> None:
    for f in fragments:
        assert f not in text, (f, text)


# -- secrets in URLs ----------------------------------------------------------------------------
def test_info_masks_passwords_with_at_signs(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LMOPS_DATABASE_URL", "postgresql://alice:p@ss@host/db")
    monkeypatch.setenv("LMOPS_ARTIFACTS", "s3://AKIAKEY:sec@ret@bucket/x")
    human = ok(cli("info")).out
    data = js(cli("info", "--json"))
    for text in (human, json.dumps(data)):
        _secret_free(text, "alice", "p@ss", "ss@host", "AKIAKEY", "sec", "ret@")
    assert data["database_url"] == "postgresql://***@host/db"
    assert data["artifacts"] == "s3://***@bucket/x"
    assert "postgresql://***@host/db" in human


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:p@ss@127.0.0.1:1/db",
        "postgresql://alice:p@ss:wd@127.0.0.1:1/db",  # the driver's port parser saw 'wd@127...'
    ],
)
def test_database_url_with_unencoded_at_is_refused_without_fragments(  # type: ignore[no-untyped-def]
    cli, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    line = assert_one_line_error(cli("assets", "list"), "%40", "***@127.0.0.1:1/db")
    _secret_free(line, "alice", "ss@", "wd", "p@")


def test_unparsable_database_url_shows_no_driver_text(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LMOPS_DATABASE_URL", "postgresql://alice:pw:x@127.0.0.1:port/db")
    line = assert_one_line_error(cli("assets", "list"), "LMOPS_DATABASE_URL", "not a valid")
    _secret_free(line, "pw:x", "alice")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgres://alice:s3cret@127.0.0.1:1/db", "write postgresql:// instead"),
        ("postgres+psycopg://alice:s3cret@127.0.0.1:1/db", "write postgresql:// instead"),
        ("mysql://alice:s3cret@127.0.0.1:1/db", "SQLite (sqlite:///PATH, the default) or Pos"),
        ("mysql+pymysql://alice:s3cret@127.0.0.1:1/db", "mysql+pymysql:// is not supported"),
    ],
)
def test_a_database_url_of_the_wrong_scheme_says_which_to_use(  # type: ignore[no-untyped-def]
    cli, monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    """postgres:// was refused as not a valid URL with its user and password to
    percent-encode, and mysql:// asked to install the postgres extra."""
    monkeypatch.setenv("LMOPS_DATABASE_URL", url)
    line = assert_one_line_error(cli("assets", "list"), "LMOPS_DATABASE_URL", says)
    assert "percent-encode" not in line and "pip install" not in line
    _secret_free(line, "alice", "s3cret")


def test_artifact_root_credentials_are_masked_in_errors(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LMOPS_ARTIFACTS", "s3://AKIAKEY:sec@ret@bucket/x")
    r = cli("assets", "list")
    _secret_free(r.out + r.err, "AKIAKEY", "sec", "ret@")


# -- numbers the database cannot hold -----------------------------------------------------------
@pytest.fixture
def ds(cli, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    f = tmp_path / "ds.txt"
    f.write_text("data")
    ok(cli("assets", "register", "dataset", "ds", str(f)))
    return "ds"


@pytest.mark.parametrize("number", [HUGE, ENORMOUS, "9223372036854775808"])
@pytest.mark.parametrize(
    "command",
    [
        ["assets", "show"],
        ["assets", "path"],
        ["assets", "verify"],
        ["assets", "lineage"],
        ["assets", "delete"],
        ["assets", "alias", "{ref}", "prod"],
    ],
)
def test_version_numbers_out_of_range_are_one_line(  # type: ignore[no-untyped-def]
    cli, ds: str, number: str, command: list[str]
) -> None:
    ref = f"{ds}:{number}"
    argv = [a.format(ref=ref) for a in command]
    if "{ref}" not in command:
        argv.append(ref)
    line = assert_one_line_error(cli(*argv), "out of range")
    assert len(line) < 400  # the 5000 digits are not echoed back


# -- symlinks, corrupt blobs, full disk ---------------------------------------------------------
def test_register_refuses_links_out_of_the_tree_unless_asked(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "secret.txt").write_text("s")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("ok")
    (tree / "leak").symlink_to(tmp_path / "secret.txt")
    line = assert_one_line_error(cli("assets", "register", "dataset", "t", str(tree)))
    assert str(tree / "leak") in line and str(tmp_path / "secret.txt") in line
    assert cli("assets", "show", "t").code == 2  # nothing registered
    v = js(cli("assets", "register", "dataset", "t", str(tree), "--follow-symlinks", "--json"))
    assert v["files"] == 2


def test_path_refuses_a_corrupt_blob(cli, ds: str, lmops_home: Path) -> None:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256(b"data").hexdigest()
    blob = lmops_home / "artifacts" / "blobs" / digest[:2] / digest
    os.chmod(blob, 0o644)
    blob.write_bytes(b"dat4")
    line = assert_one_line_error(cli("assets", "path", ds), "ds:1", "ds.txt", code=1)
    assert "lmops assets verify" in line


def test_full_disk_while_storing_is_one_line(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, lmops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.store import artifacts

    def no_space(*_a: Any, **_k: Any) -> tuple[str, int]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts, "_copy", no_space)
    f = tmp_path / "w.bin"
    f.write_bytes(b"w" * 1000)
    line = assert_one_line_error(cli("assets", "register", "model", "w", str(f)), "disk full")
    assert str(lmops_home / "artifacts") in line
    assert js(cli("assets", "show", "w:1", "--json"))["status"] == "FAILED"


def test_gc_refuses_a_negative_grace(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("gc", "--grace", "-1")
    assert r.code == 2 and "--grace" in r.err


def test_serve_refuses_a_port_out_of_range(cli) -> None:  # type: ignore[no-untyped-def]
    # 99999 was announced as such and bound as 99999 % 65536 = 34463
    for port in ("99999", "0", "-1"):
        r = cli("serve", "--port", port)
        assert r.code == 2 and "Invalid value for '--port'" in r.err, (port, r.err)


def test_serve_checks_every_deployment_before_it_says_it_serves(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path
) -> None:
    """A misspelt ref or a folder without a tokenizer fails before "serving on" (it used to
    be printed first, then the error without the deployment's name)."""
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    d = tmp_path / "d.yaml"
    d.write_text(
        "deployments:\n"
        "  - {name: ok, fake: {tokens: 2}}\n"
        f"  - {{name: chat, model: '{folder}'}}\n"
        "  - {name: ghost, model: nosuch-model}\n"
    )
    r = cli("serve", "--deployments", str(d))
    assert r.code == 2 and "serving on" not in r.out
    assert r.err.startswith("error: deployment 'chat': ") and "has no tokenizer" in r.err
    d.write_text("deployments:\n  - {name: ghost, model: nosuch-model}\n")
    r = cli("serve", "--deployments", str(d))
    assert r.code == 2 and r.err.startswith("error: deployment 'ghost': 'nosuch-model' is")
    d.write_text("deployments:\n  - {name: bound, fake: {tokens: 2}, prompt: nosuch-prompt}\n")
    r = cli("serve", "--deployments", str(d))
    assert r.code == 2 and r.err.startswith("error: deployment 'bound': ")
    twice = d.with_name("twice.yaml")
    twice.write_text("deployments:\n  - {name: ok, fake: {tokens: 2}}\n")
    r = cli("serve", "--model", f"ok={folder}", "--deployments", str(twice))
    assert r.code == 2 and f"deployment 'ok' is defined twice (by --model and in {twice})" in r.err
    twice.write_text("deployments:\n  - {name: a, fake: {}}\n  - {name: a, fake: {}}\n")
    r = cli("serve", "--deployments", str(twice))
    assert r.code == 2 and f"deployment 'a' is defined twice (in {twice})" in r.err
    r = cli("serve", "--model", f"b={folder}", "--model", f"b={folder}")
    assert r.code == 2 and "deployment 'b' is defined twice (by --model)" in r.err


def test_a_bad_since_names_since(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("usage", "--since", "yesterday")
    assert r.code == 2 and r.err.startswith("error: --since 'yesterday': expected a date")
    assert "24h" in r.err
