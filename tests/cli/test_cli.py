"""``lmops`` commands through the real entry point (in-process, see ``tests/conftest.py``).

Each command is checked in its human form and, for reads, its ``--json`` form; errors are
checked for the promised shape: a non-zero exit (2 for user errors), one stderr line
starting with ``error:`` that names the thing, and no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import lmops
from lmops.core.errors import NotFoundError, PermissionDenied

# -- helpers ------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_digest(files: dict[str, bytes]) -> str:
    """The documented directory digest: sha256 of the canonical manifest JSON."""
    rows = sorted(
        ({"path": p, "digest": sha256(b), "size": len(b)} for p, b in files.items()),
        key=lambda r: str(r["path"]),
    )
    return sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode())


def ok(r: Any) -> Any:
    assert r.code == 0, f"exit {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    return r


def js(r: Any) -> Any:
    return json.loads(ok(r).out)


def assert_one_line_error(r: Any, *needles: str, code: int = 2) -> str:
    assert r.code == code, f"exit {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error: "), r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def blob(home: Path, digest: str) -> Path:
    return home / "artifacts" / "blobs" / digest[:2] / digest


def home_settings(home: Path) -> Any:
    from lmops.core.config import Settings

    return Settings(home, f"sqlite:///{home / 'lmops.db'}", str(home / "artifacts"), None)


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated once for the module (migrations are the store tests' subject)."""
    from lmops.store import Store

    home = tmp_path_factory.mktemp("template") / "lmops-home"
    Store(home_settings(home)).close()
    return home / "lmops.db"


@pytest.fixture(autouse=True)
def migrated_home(lmops_home: Path, migrated_db: Path) -> None:
    """Each test's empty LMOPS_HOME starts from a copy of that database: saves a few hundred
    milliseconds of schema creation per test."""
    lmops_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, lmops_home / "lmops.db")


@pytest.fixture(autouse=True)
def terminal_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Human output is checked as an 80-column terminal shows it, whatever runs the tests."""
    from lmops.cli import _output

    for c in (_output.console, _output.err_console):
        monkeypatch.setattr(c, "_width", 80)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder of inputs beside (not inside) LMOPS_HOME."""
    d = tmp_path / "inputs"
    d.mkdir()
    return d


# -- version and info ---------------------------------------------------------------------------
def test_version(cli) -> None:  # type: ignore[no-untyped-def]
    r = ok(cli("--version"))
    assert r.out.strip() == f"lmops {lmops.__version__}"


def test_info_human_and_json(cli, lmops_home: Path) -> None:  # type: ignore[no-untyped-def]
    data = js(cli("info", "--json"))
    assert data["home"] == str(lmops_home)
    assert data["artifacts"] == str(lmops_home / "artifacts")
    assert data["version"] == lmops.__version__
    assert set(data["extras"]) >= {"torch", "postgres", "s3"}
    human = ok(cli("info")).out
    assert f"lmops {lmops.__version__}" in human
    assert str(lmops_home) in human
    assert "extras found" in human


def test_info_shows_the_shared_datasets_eval_finds(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # not only $LMOPS_SHARED_DATASETS: also ../shared/datasets beside the current folder
    monkeypatch.delenv("LMOPS_SHARED_DATASETS", raising=False)
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    expected = str((tmp_path / "shared" / "datasets").resolve())
    assert js(cli("info", "--json"))["shared_datasets"] == expected


# -- register -----------------------------------------------------------------------------------
def test_register_file_with_meta_tags_and_description(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    body = b"text\nhello world\n"
    f = write(files / "train.csv", body)
    v = js(
        cli(
            "assets", "register", "dataset", "ds", str(f),
            "--meta", "lr=0.001",
            "--meta", "epochs=3",
            "--meta", "cfg={\"layers\": [1, 2]}",
            "--meta", "shuffle=true",
            "--meta", "source=hand written",
            "--meta", "eq=a=b",
            "--tag", "tiny", "--tag", "csv",
            "-d", "a tiny csv",
            "--json",
        )
    )  # fmt: skip
    assert (v["asset"], v["kind"], v["version"], v["status"]) == ("ds", "dataset", 1, "READY")
    assert v["layout"] == "file"
    assert v["digest"] == sha256(body)
    assert (v["size"], v["files"]) == (len(body), 1)
    assert v["metadata"] == {
        "lr": 0.001,
        "epochs": 3,
        "cfg": {"layers": [1, 2]},
        "shuffle": True,
        "source": "hand written",
        "eq": "a=b",
    }
    assert v["tags"] == ["csv", "tiny"]
    assert v["description"] == "a tiny csv"
    assert datetime.fromisoformat(v["created_at"]).tzinfo is not None
    # the text of one version shows it too (only the asset's did)
    shown = ok(cli("assets", "show", "ds:1")).out.splitlines()
    assert shown[1].strip() == "a tiny csv", shown

    # A second registration is version 2; the human line names ref, kind and digest prefix.
    r = ok(cli("assets", "register", "dataset", "ds", str(f)))
    assert r.out.strip() == f"registered ds:2 (dataset, {len(body)} B, sha256 {sha256(body)[:12]})"

    # The stored file reads back byte for byte, under its own name.
    p = Path(ok(cli("assets", "path", "ds:1")).out.strip())
    assert p.name == "train.csv"
    assert p.read_bytes() == body


def test_register_directory(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    tree = {
        "config.json": b'{"hidden": 64}',
        "weights/a.bin": b"\x00" * 100,
        "weights/b.bin": b"\x01" * 50,
        "tok/vocab.txt": b"a\nb\n",
    }
    for rel, data in tree.items():
        write(files / "model" / rel, data)
    v = js(cli("assets", "register", "model", "tiny", str(files / "model"), "--json"))
    assert v["layout"] == "dir"
    assert v["files"] == 4
    assert v["size"] == sum(len(b) for b in tree.values())
    assert v["digest"] == manifest_digest(tree)

    root = Path(ok(cli("assets", "path", "tiny")).out.strip())
    assert root.is_dir()
    got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == tree
    # The view is read-only: nobody edits a stored version in place.
    assert not os.stat(root / "config.json").st_mode & stat.S_IWUSR


# -- list and show ------------------------------------------------------------------------------
def test_assets_list(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    assert "no assets yet" in ok(cli("assets", "list")).out
    assert js(cli("assets", "list", "--json")) == []

    f = write(files / "a.txt", b"a")
    ok(cli("assets", "register", "dataset", "alpha", str(f)))
    ok(cli("assets", "register", "dataset", "alpha", str(f)))
    ok(cli("assets", "register", "prompt", "beta", str(f)))
    ok(cli("assets", "alias", "alpha:1", "prod"))

    listed = js(cli("assets", "list", "--json"))
    assert [(a["name"], a["kind"], a["latest"], a["aliases"]) for a in listed] == [
        ("alpha", "dataset", 2, {"prod": 1}),
        ("beta", "prompt", 1, {}),
    ]
    assert [a["name"] for a in js(cli("assets", "list", "--kind", "prompt", "--json"))] == ["beta"]
    assert js(cli("assets", "list", "--kind", "model", "--json")) == []

    human = ok(cli("assets", "list")).out
    assert "alpha" in human and "beta" in human
    assert "prod→1" in human


def test_assets_show_all_versions_one_version_and_alias(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = b"first\n", b"second version\n"
    ok(cli("assets", "register", "dataset", "ds", str(write(files / "1.txt", v1))))
    ok(cli("assets", "register", "dataset", "ds", str(write(files / "2.txt", v2))))
    ok(cli("assets", "alias", "ds:1", "prod"))

    asset = js(cli("assets", "show", "ds", "--json"))
    assert (asset["name"], asset["kind"], asset["latest"]) == ("ds", "dataset", 2)
    assert asset["aliases"] == {"prod": 1}
    versions = asset["versions"]
    assert [(v["version"], v["status"], v["digest"], v["aliases"]) for v in versions] == [
        (1, "READY", sha256(v1), ["prod"]),
        (2, "READY", sha256(v2), []),
    ]
    created = [datetime.fromisoformat(v["created_at"]) for v in versions]
    assert created[0] <= created[1] <= datetime.now(UTC)

    one = js(cli("assets", "show", "ds:2", "--json"))
    assert "versions" not in one
    assert (one["asset"], one["version"], one["digest"]) == ("ds", 2, sha256(v2))
    by_alias = js(cli("assets", "show", "ds@prod", "--json"))
    assert (by_alias["version"], by_alias["aliases"]) == (1, ["prod"])
    assert js(cli("assets", "show", "ds@latest", "--json"))["version"] == 2

    human = ok(cli("assets", "show", "ds")).out
    assert "ds (dataset) latest READY: 2" in human
    assert sha256(v1)[:12] in human and sha256(v2)[:12] in human
    human_one = ok(cli("assets", "show", "ds@prod")).out
    assert human_one.splitlines()[0] == "ds:1 (dataset) READY  aliases: prod"
    assert f"digest   {sha256(v1)}" in human_one


def test_alias_move_and_unalias(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    f = write(files / "a.txt", b"a")
    g = write(files / "b.txt", b"b")
    ok(cli("assets", "register", "model", "m", str(f)))
    ok(cli("assets", "register", "model", "m", str(g)))

    assert ok(cli("assets", "alias", "m:1", "prod")).out.strip() == "m@prod → m:1"
    moved = js(cli("assets", "alias", "m:2", "prod", "--json"))
    assert (moved["version"], moved["aliases"]) == (2, ["prod"])
    assert js(cli("assets", "show", "m@prod", "--json"))["version"] == 2
    assert js(cli("assets", "show", "m:1", "--json"))["aliases"] == []
    # An alias can be set from another alias.
    ok(cli("assets", "alias", "m@prod", "staging"))
    assert js(cli("assets", "show", "m", "--json"))["aliases"] == {"prod": 2, "staging": 2}

    events = js(cli("audit", "list", "--action", "asset.alias", "--json"))
    move = next(e for e in events if e["target"] == "m@prod" and e["details"]["from"])
    assert move["details"] == {"from": "m:1", "to": "m:2"}

    assert ok(cli("assets", "unalias", "m", "prod")).out.strip() == "removed m@prod"
    assert_one_line_error(cli("assets", "show", "m@prod"), "prod")
    assert_one_line_error(cli("assets", "unalias", "m", "prod"), "prod")


# -- lineage ------------------------------------------------------------------------------------
def test_lineage_multi_level(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    f = write(files / "x.txt", b"x")
    ok(cli("assets", "register", "dataset", "raw", str(f)))
    ok(cli("assets", "alias", "raw:1", "gold"))
    ok(cli("assets", "register", "dataset", "clean", str(f), "--input", "raw@gold"))
    ok(cli("assets", "register", "tokenizer", "tok", str(f)))
    ok(
        cli(
            "assets", "register", "model", "lm", str(f),
            "--input", "clean", "--input", "tok:1",
        )
    )  # fmt: skip
    # Inputs were pinned at registration: moving the alias later does not rewrite history.
    ok(cli("assets", "register", "dataset", "raw", str(write(files / "y.txt", b"y"))))
    ok(cli("assets", "alias", "raw:2", "gold"))

    g = js(cli("assets", "lineage", "lm:1", "--json"))
    assert g["root"] == "lm:1"
    assert {(e["child"], e["parent"], e["role"]) for e in g["upstream"]} == {
        ("lm:1", "clean:1", "input"),
        ("lm:1", "tok:1", "input"),
        ("clean:1", "raw:1", "input"),
    }
    assert g["downstream"] == []
    assert set(g["nodes"]) == {"lm:1", "clean:1", "tok:1", "raw:1"}
    assert g["nodes"]["tok:1"]["kind"] == "tokenizer"
    assert g["runs"] == {"lm:1": None, "clean:1": None, "tok:1": None, "raw:1": None}

    shallow = js(cli("assets", "lineage", "lm", "--depth", "1", "--json"))
    assert {e["parent"] for e in shallow["upstream"]} == {"clean:1", "tok:1"}

    down = js(cli("assets", "lineage", "raw:1", "--json"))
    assert down["upstream"] == []
    assert {(e["child"], e["parent"]) for e in down["downstream"]} == {
        ("clean:1", "raw:1"),
        ("lm:1", "clean:1"),
    }
    assert js(cli("assets", "lineage", "raw:2", "--json"))["downstream"] == []

    # Human: a tree, each level indented under the one it came from.
    human = ok(cli("assets", "lineage", "lm:1")).out.splitlines()
    assert human[0] == "upstream of lm:1 (model)"
    clean = next(i for i, line in enumerate(human) if "input clean:1 (dataset)" in line)
    raw = next(i for i, line in enumerate(human) if "input raw:1 (dataset)" in line)
    assert raw == clean + 1

    def indent(line: str) -> int:
        return line.index("input")

    assert indent(human[raw]) > indent(human[clean])
    assert any("input tok:1 (tokenizer)" in line for line in human)
    assert human[-1] == "downstream: none"

    down_human = ok(cli("assets", "lineage", "raw:1")).out
    assert "upstream: none" in down_human
    assert "downstream of raw:1 (dataset)" in down_human
    assert "lm:1 (model)" in down_human


def test_lineage_marks_a_deleted_version(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    """A deleted input stays in the lineage (history is not rewritten) but is marked, since
    `assets path` no longer hands it out; it was listed as if it were there."""
    f = write(files / "x.txt", b"x")
    ok(cli("assets", "register", "dataset", "shake", str(f)))
    ok(cli("assets", "register", "dataset", "shake-clean", str(f), "--input", "shake:1"))
    ok(cli("assets", "delete", "shake:1"))
    human = ok(cli("assets", "lineage", "shake-clean:1")).out
    line = next(x for x in human.splitlines() if "shake:1" in x)
    assert "input shake:1 (dataset) DELETED" in line
    assert "DELETED" not in human.splitlines()[0]  # the READY root is not marked
    root = ok(cli("assets", "lineage", "shake:1")).out.splitlines()
    assert any(x.startswith("downstream of shake:1 (dataset) DELETED") for x in root), root


# -- verify, delete, gc -------------------------------------------------------------------------
def test_verify_then_tamper(cli, files: Path, lmops_home: Path) -> None:  # type: ignore[no-untyped-def]
    good, victim = b"stays intact\n", b"will be tampered with\n"
    ok(cli("assets", "register", "dataset", "good", str(write(files / "g.txt", good))))
    ok(cli("assets", "register", "dataset", "victim", str(write(files / "v.txt", victim))))

    r = ok(cli("assets", "verify"))
    assert r.out.strip() == "checked 2 version(s): all intact"
    assert js(cli("assets", "verify", "--json")) == {
        "ok": True,
        "checked": 2,
        "versions": {"good:1": [], "victim:1": []},
        "changed": {},  # external references whose local files changed (none here)
    }

    b = blob(lmops_home, sha256(victim))
    assert b.read_bytes() == victim
    os.chmod(b, stat.S_IRUSR | stat.S_IWUSR)
    b.write_bytes(b"WILL" + victim[4:])

    r = cli("assets", "verify")  # exit status: see test_verify_exits_1_when_damaged
    assert "checked 2 version(s): 1 damaged" in r.out
    assert "CORRUPT victim:1" in r.err and "v.txt" in r.err
    assert "good:1" not in r.err
    rep = json.loads(cli("assets", "verify", "--json").out)
    assert rep["ok"] is False and rep["versions"]["good:1"] == []
    assert "corrupt" in rep["versions"]["victim:1"][0]
    # Verifying only the intact asset still passes.
    ok(cli("assets", "verify", "good"))

    b.unlink()
    rep = json.loads(cli("assets", "verify", "victim:1", "--json").out)
    assert "missing" in rep["versions"]["victim:1"][0]


def test_delete_then_gc_frees_blob(cli, files: Path, lmops_home: Path) -> None:  # type: ignore[no-untyped-def]
    old, new = b"old bytes, only in v1\n", b"new bytes\n"
    ok(cli("assets", "register", "dataset", "ds", str(write(files / "old.txt", old))))
    ok(cli("assets", "register", "dataset", "ds", str(write(files / "new.txt", new))))
    ok(cli("assets", "alias", "ds:1", "prod"))
    view = Path(ok(cli("assets", "path", "ds:1")).out.strip()).parent
    assert view.parent.name == "views"  # a materialised view, which gc must drop too

    refused = cli("assets", "delete", "ds:1")  # prod points at it: a deployment may follow it
    assert_one_line_error(refused, "ds:1: aliases point at it (ds@prod -> ds:1)", "--force")
    r = ok(cli("assets", "delete", "ds@prod"))  # by the alias itself: what it names goes
    assert r.out.strip() == "deleted ds:1 (and its alias @prod); run `lmops gc` to free space"
    shown = js(cli("assets", "show", "ds", "--json"))
    assert [v["status"] for v in shown["versions"]] == ["DELETED", "READY"]
    assert shown["aliases"] == {}  # deleting a version drops its aliases
    assert_one_line_error(cli("assets", "path", "ds:1"), "ds:1", "DELETED")
    assert_one_line_error(cli("assets", "delete", "ds:1"), "ds:1", "already deleted")

    # The default grace period keeps a just-unreferenced blob.
    assert js(cli("gc", "--json"))["blobs_removed"] == 0
    assert blob(lmops_home, sha256(old)).exists()
    assert not view.exists()  # views are caches: dropped as soon as no live version uses them

    rep = js(cli("gc", "--grace", "0", "--json"))
    assert rep == {
        "blobs_removed": 1,
        "bytes_freed": len(old),
        "abandoned_marked_failed": 0,
        "responses_expired": 0,
    }
    assert not blob(lmops_home, sha256(old)).exists()
    assert blob(lmops_home, sha256(new)).read_bytes() == new
    ok(cli("assets", "verify"))

    ok(cli("assets", "alias", "ds:2", "prod"))
    assert js(cli("assets", "delete", "ds", "--force", "--json")) == {
        "deleted": ["ds:2"],
        "aliases_removed": ["@prod"],
    }
    assert ok(cli("gc", "--grace", "0")).out.strip() == f"removed 1 blob(s), freed {len(new)} B"
    assert js(cli("assets", "show", "ds", "--json"))["latest"] is None


# -- runs ---------------------------------------------------------------------------------------
def test_runs_list_and_show(cli, store) -> None:  # type: ignore[no-untyped-def]
    assert ok(cli("runs", "list")).out.strip() == "no runs yet"
    with store.runs.track("train", name="tiny", config={"lr": 0.01}, params={"seed": 1}) as run:
        store.runs.log_metrics(run.id, {"loss": 2.0, "acc": 0.5}, step=1)
        store.runs.log_metrics(run.id, {"loss": 1.5}, step=2)
    with pytest.raises(RuntimeError), store.runs.track("eval", name="broken") as failed:
        raise RuntimeError("out of cheese")

    runs = js(cli("runs", "list", "--json"))
    assert [r["id"] for r in runs] == [failed.id, run.id]  # newest first
    by_id = {r["id"]: r for r in runs}
    assert by_id[run.id]["status"] == "SUCCEEDED"
    assert by_id[run.id]["summary"] == {"loss": 1.5, "acc": 0.5}
    assert by_id[failed.id]["status"] == "FAILED"
    assert [r["id"] for r in js(cli("runs", "list", "--kind", "train", "--json"))] == [run.id]
    assert len(js(cli("runs", "list", "--limit", "1", "--json"))) == 1

    human = ok(cli("runs", "list")).out  # full ids: see test_run_ids_are_not_cut_short
    assert run.id[:8] in human and failed.id[:8] in human
    assert "loss=1.5" in human and "acc=0.5" in human

    shown = js(cli("runs", "show", run.id, "--json"))
    assert shown["config"] == {"lr": 0.01} and shown["params"] == {"seed": 1}
    assert [(m["step"], m["value"]) for m in shown["metrics"]["loss"]] == [(1, 2.0), (2, 1.5)]
    human = ok(cli("runs", "show", run.id)).out
    assert f"run {run.id} (train tiny) SUCCEEDED" in human
    assert "2 points, last 1.5 at step 2" in human
    assert "out of cheese" in ok(cli("runs", "show", failed.id)).out


# -- keys ---------------------------------------------------------------------------------------
def test_keys_create_list_revoke(cli, store) -> None:  # type: ignore[no-untyped-def]
    created = js(
        cli(
            "keys", "create", "--name", "ci", "--role", "admin",
            "--rpm", "10", "--tpm", "1000", "--expires", "2099-01-01", "--json",
        )
    )  # fmt: skip
    secret = created["key"]
    assert secret.startswith("lmk-") and len(secret) > 30
    rec = created["record"]
    assert (rec["name"], rec["role"], rec["rpm"], rec["tpm"]) == ("ci", "admin", 10, 1000)
    assert datetime.fromisoformat(rec["expires_at"]) == datetime(2099, 1, 1, tzinfo=UTC)
    assert rec["prefix"] == secret[:12] and rec["revoked_at"] is None
    assert store.keys.authenticate(secret).name == "ci"  # the printed secret is the real one

    # Human form: the secret alone on its own line, printed once.
    r = ok(cli("keys", "create", "--name", "dev"))
    human_secret = r.out.strip().splitlines()[-1]
    assert human_secret.startswith("lmk-")
    assert r.out.count(human_secret) == 1
    assert store.keys.authenticate(human_secret).role == "user"

    listing = ok(cli("keys", "list", "--json")).out
    assert secret not in listing and human_secret not in listing
    keys = {k["name"]: k for k in json.loads(listing)}
    assert set(keys) == {"ci", "dev"}
    assert "key" not in keys["ci"] and "secret_hash" not in keys["ci"]
    human = ok(cli("keys", "list")).out
    assert secret not in human and secret[:12] in human
    assert "active" in human

    assert ok(cli("keys", "revoke", "ci")).out.strip() == "revoked key ci"
    keys = {k["name"]: k for k in js(cli("keys", "list", "--json"))}
    assert keys["ci"]["revoked_at"] is not None and keys["dev"]["revoked_at"] is None
    assert "revoked" in ok(cli("keys", "list")).out
    with pytest.raises(PermissionDenied, match="revoked"):
        store.keys.authenticate(secret)
    assert js(cli("keys", "revoke", "ci", "--json"))["name"] == "ci"  # idempotent

    assert_one_line_error(cli("keys", "create", "--name", "dev"), "dev", "exists")


def test_keys_update_changes_limits_not_the_secret(cli, store) -> None:  # type: ignore[no-untyped-def]
    secret = js(cli("keys", "create", "--name", "svc", "--rpm", "10", "--scope", "chat", "--json"))[
        "key"
    ]
    out = ok(cli("keys", "update", "svc", "--rpm", "1", "--tpm", "500", "--scope", "a",
                 "--scope", "b", "--expires", "2099-01-01", "--role", "admin")).out  # fmt: skip
    assert " ".join(out.split()).startswith("updated key svc: rpm 10 -> 1, tpm none -> 500, ")
    assert "scopes chat -> a, b" in out and "role user -> admin" in out and secret not in out
    key = store.keys.authenticate(secret)  # the same secret still works, with the new limits
    assert (key.rpm, key.tpm, key.scopes, key.role) == (1, 500, ["a", "b"], "admin")
    assert key.expires_at == datetime(2099, 1, 1, tzinfo=UTC)

    # --no-* remove a limit; --json prints the record (never a secret)
    rec = js(cli("keys", "update", "svc", "--no-rpm", "--no-tpm", "--all-scopes", "--no-expiry",
                 "--json"))  # fmt: skip
    assert (rec["rpm"], rec["tpm"], rec["scopes"], rec["expires_at"]) == (None, None, None, None)
    assert "key" not in rec and "secret_hash" not in rec and rec["prefix"] == secret[:12]
    assert "unchanged" in ok(cli("keys", "update", "svc", "--role", "admin")).out
    assert [e.details for e in store.audit.list(action="key.update", limit=1)] == [
        {"rpm": [1, None], "tpm": [500, None], "scopes": [["a", "b"], None],
         "expires_at": ["2099-01-01T00:00:00+00:00", None]}
    ]  # fmt: skip

    assert_one_line_error(cli("keys", "update", "svc"), "nothing to change", "--no-rpm")
    assert_one_line_error(cli("keys", "update", "svc", "--rpm", "2", "--no-rpm"), "not both")
    assert_one_line_error(cli("keys", "update", "svc", "--tpm", "0"), "--tpm must be a positive")
    assert_one_line_error(cli("keys", "update", "svc", "--role", "root"), "invalid role")
    assert_one_line_error(cli("keys", "update", "svc", "--expires", "soon"), "--expires 'soon'")
    assert_one_line_error(cli("keys", "update", "svd", "--rpm", "1"), "did you mean 'svc'")
    ok(cli("keys", "revoke", "svc"))
    assert_one_line_error(cli("keys", "update", "svc", "--rpm", "1"), "revoked", code=2)


def test_keys_rotate_prints_a_new_secret_once(cli, store) -> None:  # type: ignore[no-untyped-def]
    old = js(cli("keys", "create", "--name", "svc", "--rpm", "7", "--json"))["key"]
    r = ok(cli("keys", "rotate", "svc"))
    new = r.out.strip().splitlines()[-1]
    assert new.startswith("lmk-") and new != old and r.out.count(new) == 1
    key = store.keys.authenticate(new)
    assert (key.name, key.rpm, key.prefix) == ("svc", 7, new[:12])
    with pytest.raises(PermissionDenied, match="invalid API key"):
        store.keys.authenticate(old)
    again = js(cli("keys", "rotate", "svc", "--json"))
    assert again["record"]["prefix"] == again["key"][:12] and again["record"]["rpm"] == 7
    with pytest.raises(PermissionDenied):
        store.keys.authenticate(new)
    listing = ok(cli("keys", "list", "--json")).out
    assert again["key"] not in listing and [k["name"] for k in json.loads(listing)] == ["svc"]
    assert_one_line_error(cli("keys", "rotate", "nope"), "'nope' not found")
    ok(cli("keys", "revoke", "svc"))
    assert_one_line_error(cli("keys", "rotate", "svc"), "revoked", "cannot rotate")


def test_audit_list(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    f = write(files / "a.txt", b"a")
    ok(cli("assets", "register", "dataset", "ds", str(f)))
    ok(cli("keys", "create", "--name", "k1"))
    events = js(cli("audit", "list", "--json"))
    assert [(e["action"], e["target"]) for e in events[:2]] == [
        ("key.create", "k1"),
        ("asset.register", "ds:1"),
    ]
    assert {e["origin"] for e in events} == {"cli"}
    assert js(cli("audit", "list", "--action", "key.", "--json"))[0]["target"] == "k1"
    assert len(js(cli("audit", "list", "--limit", "1", "--json"))) == 1
    human = ok(cli("audit", "list")).out
    assert "asset.register" in human and "key.create" in human


# -- errors -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def error_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """One home with one asset (``ds:1``) shared by the error cases: a failing command must
    leave it as it was, which each case checks through the audit log."""
    from lmops.store import Store

    root = tmp_path_factory.mktemp("cli-errors")
    store = Store(home_settings(root / "lmops-home"))
    f = write(root / "inputs" / "a.txt", b"a")
    store.assets.register("dataset", "ds", f)
    yield f, store
    store.close()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["assets", "show", "nope"], ["'nope'", "not found"]),
        (["assets", "show", "nope:1"], ["'nope'"]),
        (["assets", "show", "ds:9"], ["ds:9"]),
        (["assets", "show", "ds@nowhere"], ["nowhere"]),
        (["assets", "show", "ds:0"], ["ds:0"]),
        (["assets", "show", "bad name"], ["bad name", "invalid asset name"]),
        (["assets", "path", "nope"], ["nope"]),
        (["assets", "lineage", "nope:2"], ["nope"]),
        (["assets", "verify", "nope"], ["nope"]),
        (["assets", "delete", "nope"], ["nope"]),
        (["assets", "alias", "nope:1", "prod"], ["nope"]),
        (["assets", "alias", "ds:1", "latest"], ["latest"]),
        (["assets", "alias", "ds:1", "9lives"], ["9lives"]),
        (["assets", "unalias", "ds", "prod"], ["prod"]),
        (["assets", "register", "model", "ds", "{file}"], ["'ds'", "dataset", "model"]),
        (["assets", "register", "dataset", "new", "{missing}"], ["no-such-file.txt"]),
        (["assets", "register", "dataset", "bad/name", "{file}"], ["bad/name"]),
        (["assets", "register", "dataset", ".hidden", "{file}", "--json"], [".hidden"]),
        (["assets", "register", "widget", "w", "{file}"], ["widget", "known kinds"]),
        (["assets", "register", "dataset", "new", "{file}", "--meta", "novalue"], ["novalue"]),
        (["assets", "register", "model", "new", "{file}", "--input", "nope:1"], ["nope"]),
        (["runs", "show", "0123abcd"], ["0123abcd"]),
        (["keys", "create", "--name", "k", "--expires", "someday"], ["--expires", "someday"]),
        (["keys", "create", "--name", "k", "--expires", "2001-01-01"], ["2001-01-01", "past"]),
        (["keys", "create", "--name", "k", "--role", "root"], ["root"]),
        (["keys", "create", "--name", "k", "--rpm", "0"], ["rpm"]),
        (["keys", "create", "--name", "bad name"], ["bad name"]),
        (["keys", "revoke", "ghost"], ["ghost"]),
    ],
)
def test_user_errors_are_one_line(  # type: ignore[no-untyped-def]
    cli,
    error_home: tuple[Path, Any],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    needles: list[str],
) -> None:
    existing, store = error_home
    monkeypatch.setenv("LMOPS_HOME", str(store.settings.home))
    missing = existing.parent / "no-such-file.txt"
    argv = [a.format(file=existing, missing=missing) for a in args]
    before = (store.audit.list(limit=1000), store.assets.show("ds"), store.keys.list())

    r = cli(*argv)
    assert_one_line_error(r, *needles)
    assert r.out == ""
    # A failed command changed nothing (every change writes an audit event).
    assert (store.audit.list(limit=1000), store.assets.show("ds"), store.keys.list()) == before
    assert [a.name for a in store.assets.list()] == ["ds"]


def test_usage_errors_exit_2(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("assets", "show")
    assert r.code == 2 and "Missing argument" in r.err
    r = cli("runs", "list", "--limit", "0")
    assert r.code == 2 and "--limit" in r.err
    r = cli("assets", "frobnicate")
    assert r.code == 2 and "frobnicate" in r.err
    assert "Traceback" not in r.err


def test_debug_raises_the_error(cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="'nope'"):
        cli("--debug", "assets", "show", "nope")
    # Without --debug the same error is one line again.
    assert_one_line_error(cli("assets", "show", "nope"), "nope")


# -- bugs found while writing these tests -------------------------------------------------------
def test_verify_exits_1_when_damaged(cli, files: Path, lmops_home: Path) -> None:  # type: ignore[no-untyped-def]
    body = b"tamper me\n"
    ok(cli("assets", "register", "dataset", "ds", str(write(files / "t.txt", body))))
    assert cli("assets", "verify").code == 0
    b = blob(lmops_home, sha256(body))
    os.chmod(b, stat.S_IRUSR | stat.S_IWUSR)
    b.write_bytes(b"TAMPER me\n")
    assert cli("assets", "verify").code == 1
    assert cli("assets", "verify", "ds:1", "--json").code == 1


def test_run_ids_are_not_cut_short(cli, store) -> None:  # type: ignore[no-untyped-def]
    with store.runs.track("train", name="tiny") as run:
        store.runs.log_metrics(run.id, {"loss": 2.0, "acc": 0.5}, step=1)
    assert run.id in ok(cli("runs", "list")).out


def test_same_input_twice_is_not_an_internal_error(  # type: ignore[no-untyped-def]
    cli, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.store.db

    # Skip the retry back-off so the failure shows in milliseconds, not ~40 s.
    monkeypatch.setattr(lmops.store.db.time, "sleep", lambda _s: None)
    f = write(files / "a.txt", b"a")
    ok(cli("assets", "register", "dataset", "ds", str(f)))
    ok(cli("assets", "alias", "ds:1", "prod"))
    r = cli("assets", "register", "model", "m", str(f), "--input", "ds:1", "--input", "ds@prod")
    assert "internal error" not in r.err
    if r.code == 0:
        edges = js(cli("assets", "lineage", "m:1", "--json"))["upstream"]
        assert [(e["child"], e["parent"]) for e in edges] == [("m:1", "ds:1")]
    else:
        assert_one_line_error(r, "ds")


def test_error_message_with_brackets_is_printed_verbatim(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    missing = files / "data[/v1].txt"
    r = cli("assets", "register", "dataset", "ds", str(missing))
    assert_one_line_error(r, "data[/v1].txt")


def test_metadata_is_printed_verbatim(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    f = write(files / "a.txt", b"a")
    ok(cli("assets", "register", "dataset", "ds", str(f), "--meta", "note=[red]hot"))
    assert "[red]hot" in ok(cli("assets", "show", "ds:1")).out


def test_asset_created_at_is_timezone_aware(cli, files: Path) -> None:  # type: ignore[no-untyped-def]
    ok(cli("assets", "register", "dataset", "ds", str(write(files / "a.txt", b"a"))))
    listed = js(cli("assets", "list", "--json"))[0]
    shown = js(cli("assets", "show", "ds", "--json"))
    for value in (listed["created_at"], shown["created_at"]):
        assert datetime.fromisoformat(value).tzinfo is not None, value
