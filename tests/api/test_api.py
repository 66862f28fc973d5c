"""The HTTP API against a real ``lmops serve`` (uvicorn on 127.0.0.1), spoken to with httpx.

One server runs for the module (see ``conftest.py``); every test works on asset and key
names of its own so the tests do not depend on each other's order. The last test stops
the server with SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import Server

ROOT = Path(__file__).resolve().parents[2]


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


def assert_error(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """``r`` is an error in the documented shape with ``status``; returns ``error``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    for n in needles:
        assert n in err["message"], err
    return err


def register(
    c: httpx.Client,
    kind: str,
    name: str,
    files: dict[str, bytes],
    *,
    metadata: dict[str, Any] | None = None,
    inputs: Sequence[str] = (),
    description: str = "",
) -> httpx.Response:
    data = {"kind": kind, "name": name, "description": description}
    if metadata is not None:
        data["metadata"] = json.dumps(metadata)
    if inputs:
        data["inputs"] = ",".join(inputs)
    parts = [("files", (path, body, "application/octet-stream")) for path, body in files.items()]
    return c.post("/api/assets", data=data, files=parts)


def make_key(server: Server, name: str, role: str) -> str:
    _, secret = server.store.keys.create(name, role=role)  # type: ignore[attr-defined]
    return secret


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def user(server: Server) -> Iterator[httpx.Client]:
    with server.client(make_key(server, "reader-1", "user")) as c:
        yield c


@pytest.fixture(scope="module")
def known(admin: httpx.Client) -> str:
    """An asset that exists (one READY version), for tests about refs near it."""
    assert register(admin, "dataset", "known-ds", {"a.txt": b"known\n"}).status_code == 201
    return "known-ds"


# -- packaging ----------------------------------------------------------------------------------
def test_python_multipart_is_a_declared_dependency() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace("_", "-").lower().startswith("python-multipart") for d in deps), deps


# -- probes and schema --------------------------------------------------------------------------
def test_healthz_needs_no_key(server: Server) -> None:
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_reports_each_check(server: Server) -> None:
    r = httpx.get(f"{server.url}/readyz")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "checks": {"database": "ok", "artifacts": "ok"}}


def test_openapi_lists_the_api_paths(server: Server) -> None:
    r = httpx.get(f"{server.url}/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in [
        "/api/info",
        "/api/assets",
        "/api/assets/{ref}",
        "/api/assets/{ref}/alias",
        "/api/assets/{ref}/lineage",
        "/api/assets/{ref}/verify",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/keys",
        "/api/keys/{name}",
        "/api/keys/{name}/rotate",
        "/api/gc",
        "/api/audit",
    ]:
        assert p in paths, p
    assert {"get", "post"} <= set(paths["/api/assets"])
    assert {"get", "delete"} <= set(paths["/api/assets/{ref}"])


def test_serve_prints_where_it_listens(server: Server) -> None:
    assert f"serving on {server.url}" in server.output()


# -- authentication and roles -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/info"), ("GET", "/api/assets"), ("POST", "/api/gc"), ("GET", "/api/keys")],
)
def test_no_key_is_401_with_challenge(server: Server, method: str, path: str) -> None:
    with server.client() as c:
        r = c.request(method, path)
    err = assert_error(r, 401, "Authorization: Bearer")
    assert err["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Bearer lmk-not-a-real-key-at-all", "Basic dXNlcjpwYXNz", "Bearer", "lmk-no-scheme"],
)
def test_bad_credentials_are_401(server: Server, header: str) -> None:
    r = httpx.get(f"{server.url}/api/assets", headers={"Authorization": header})
    assert_error(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"


def test_info_with_any_key(server: Server, user: httpx.Client) -> None:
    r = user.get("/api/info")
    assert r.status_code == 200
    body = r.json()
    assert body["home"] == str(server.home)
    assert body["database_url"].startswith("sqlite:///")


def test_user_key_reads_but_cannot_change(
    admin: httpx.Client, user: httpx.Client, known: str
) -> None:
    for path in [
        "/api/assets",
        f"/api/assets/{known}",
        f"/api/assets/{known}:1/lineage",
        "/api/runs",
    ]:
        assert user.get(path).status_code == 200, path

    denied = [
        register(user, "dataset", "known-ds", {"b.txt": b"nope\n"}),
        user.delete("/api/assets/known-ds"),
        user.post("/api/assets/known-ds:1/alias", json={"alias": "prod"}),
        user.post("/api/keys", json={"name": "sneaky", "role": "admin"}),
        user.delete("/api/keys/root-admin"),
        user.patch("/api/keys/reader-1", json={"role": "admin"}),
        user.post("/api/keys/root-admin/rotate"),
        user.post("/api/gc", json={"grace_s": 0}),
        user.get("/api/keys"),
        user.get("/api/audit"),
    ]
    for r in denied:
        err = assert_error(r, 403, "reader-1", "admin")
        assert err["type"] == "permission_error"
        assert "www-authenticate" not in r.headers
    # Nothing changed: still one version, no alias, and the admin key still works.
    asset = admin.get("/api/assets/known-ds").json()
    assert [v["version"] for v in asset["versions"]] == [1]
    assert asset["aliases"] == {}
    assert "sneaky" not in {k["name"] for k in admin.get("/api/keys").json()}
    assert {k["name"]: k["role"] for k in admin.get("/api/keys").json()}["reader-1"] == "user"


# -- assets -------------------------------------------------------------------------------------
def test_register_single_file(server: Server, admin: httpx.Client) -> None:
    body = b"one,two\n1,2\n"
    r = register(
        admin,
        "dataset",
        "up-file",
        {"table.csv": body},
        metadata={"rows": 1, "source": "test"},
        description="a tiny table",
    )
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["asset"] == "up-file" and v["version"] == 1 and v["kind"] == "dataset"
    assert v["status"] == "READY"
    assert v["layout"] == "file"
    assert v["digest"] == sha256(body)
    assert v["size"] == len(body) and v["files"] == 1
    assert v["metadata"] == {"rows": 1, "source": "test"}
    assert v["created_by"] == "root-admin"
    # The bytes really are in the server's content-addressed store.
    assert server.blob(sha256(body)).read_bytes() == body
    # ... and the same registry sees them under the original file name.
    path = server.store.assets.path("up-file:1")  # type: ignore[attr-defined]
    assert path.name == "table.csv" and path.read_bytes() == body


def test_register_directory_with_relative_paths(server: Server, admin: httpx.Client) -> None:
    files = {
        "config.json": b'{"layers": 2}',
        "weights/part-0.bin": b"\x00\x01\x02" * 10,
        "weights/part-1.bin": b"\x03\x04" * 7,
        "tokenizer/vocab.txt": b"a\nb\nc\n",
    }
    r = register(admin, "model", "up-dir", files)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["layout"] == "dir"
    assert v["files"] == len(files)
    assert v["size"] == sum(len(b) for b in files.values())
    assert v["digest"] == manifest_digest(files)
    root = server.store.assets.path("up-dir:1")  # type: ignore[attr-defined]
    got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == files


def test_list_show_alias_and_refs(admin: httpx.Client) -> None:
    assert register(admin, "prompt", "refs-p", {"p.txt": b"v1"}).status_code == 201
    assert register(admin, "prompt", "refs-p", {"p.txt": b"v2"}).status_code == 201

    listed = {a["name"]: a for a in admin.get("/api/assets").json()}
    assert listed["refs-p"]["kind"] == "prompt"
    assert listed["refs-p"]["latest"] == 2
    only_prompts = admin.get("/api/assets", params={"kind": "prompt"}).json()
    assert {a["kind"] for a in only_prompts} == {"prompt"}
    assert "refs-p" in {a["name"] for a in only_prompts}

    shown = admin.get("/api/assets/refs-p").json()
    assert [(v["version"], v["status"], v["digest"]) for v in shown["versions"]] == [
        (1, "READY", sha256(b"v1")),
        (2, "READY", sha256(b"v2")),
    ]
    one = admin.get("/api/assets/refs-p:1").json()
    assert "versions" not in one
    assert (one["asset"], one["version"], one["digest"]) == ("refs-p", 1, sha256(b"v1"))

    r = admin.post("/api/assets/refs-p:1/alias", json={"alias": "prod"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["aliases"] == ["prod"]
    assert admin.get("/api/assets/refs-p@prod").json()["version"] == 1

    # Moving the alias: prod now names version 2, version 1 lost it.
    assert admin.post("/api/assets/refs-p:2/alias", json={"alias": "prod"}).json()["version"] == 2
    assert admin.get("/api/assets/refs-p@prod").json()["version"] == 2
    shown = admin.get("/api/assets/refs-p").json()
    assert shown["aliases"] == {"prod": 2}
    assert [v["aliases"] for v in shown["versions"]] == [[], ["prod"]]
    assert {a["name"]: a for a in admin.get("/api/assets").json()}["refs-p"]["aliases"] == {
        "prod": 2
    }


def test_lineage_of_inputs(admin: httpx.Client) -> None:
    assert register(admin, "dataset", "lin-raw", {"raw.txt": b"raw"}).status_code == 201
    assert admin.post("/api/assets/lin-raw:1/alias", json={"alias": "gold"}).status_code == 200
    r = register(admin, "dataset", "lin-clean", {"clean.txt": b"clean"}, inputs=["lin-raw@gold"])
    assert r.status_code == 201, r.text
    r = register(
        admin, "model", "lin-model", {"m.bin": b"model"}, inputs=["lin-clean:1", "lin-raw"]
    )
    assert r.status_code == 201, r.text

    g = admin.get("/api/assets/lin-model:1/lineage").json()
    assert g["root"] == "lin-model:1"
    up = {(e["child"], e["parent"], e["role"]) for e in g["upstream"]}
    assert up == {
        ("lin-model:1", "lin-clean:1", "input"),
        ("lin-model:1", "lin-raw:1", "input"),
        ("lin-clean:1", "lin-raw:1", "input"),
    }
    assert g["downstream"] == []
    assert set(g["nodes"]) == {"lin-model:1", "lin-clean:1", "lin-raw:1"}
    assert g["nodes"]["lin-raw:1"]["kind"] == "dataset"

    shallow = admin.get("/api/assets/lin-model:1/lineage", params={"depth": 1}).json()
    assert {(e["child"], e["parent"]) for e in shallow["upstream"]} == {
        ("lin-model:1", "lin-clean:1"),
        ("lin-model:1", "lin-raw:1"),
    }

    down = admin.get("/api/assets/lin-raw:1/lineage").json()
    assert down["upstream"] == []
    assert {(e["child"], e["parent"]) for e in down["downstream"]} == {
        ("lin-clean:1", "lin-raw:1"),
        ("lin-model:1", "lin-raw:1"),
        ("lin-model:1", "lin-clean:1"),
    }


def test_verify_reports_tampered_blob(server: Server, admin: httpx.Client) -> None:
    body = b"verify me through the API\n"
    assert register(admin, "dataset", "ver-ds", {"v.txt": body}).status_code == 201
    r = admin.get("/api/assets/ver-ds/verify")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "versions": {"ver-ds:1": []}, "changed": {}}

    blob = server.blob(sha256(body))
    os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(b"tampered" + body[8:])
    rep = admin.get("/api/assets/ver-ds:1/verify").json()
    assert rep["ok"] is False
    (problem,) = rep["versions"]["ver-ds:1"]
    assert "corrupt" in problem and "v.txt" in problem


def test_delete_and_gc_free_the_blob(server: Server, admin: httpx.Client) -> None:
    keep, drop = b"gc keep\n", b"gc drop, only in version 1\n"
    assert register(admin, "dataset", "gc-ds", {"x.txt": drop}).status_code == 201
    assert register(admin, "dataset", "gc-ds", {"x.txt": keep}).status_code == 201

    r = admin.delete("/api/assets/gc-ds:1")
    assert r.status_code == 200
    assert r.json() == {"deleted": ["gc-ds:1"]}
    statuses = [v["status"] for v in admin.get("/api/assets/gc-ds").json()["versions"]]
    assert statuses == ["DELETED", "READY"]
    assert_error(admin.delete("/api/assets/gc-ds:1"), 404, "already deleted")

    # Within the grace period nothing goes.
    assert admin.post("/api/gc").json()["blobs_removed"] == 0
    assert server.blob(sha256(drop)).exists()
    rep = admin.post("/api/gc", json={"grace_s": 0}).json()
    assert rep["blobs_removed"] >= 1 and rep["bytes_freed"] >= len(drop)
    assert not server.blob(sha256(drop)).exists()
    assert server.blob(sha256(keep)).read_bytes() == keep
    assert admin.get("/api/assets/gc-ds:2/verify").json()["ok"] is True

    assert admin.delete("/api/assets/gc-ds").json() == {"deleted": ["gc-ds:2"]}
    assert admin.get("/api/assets/gc-ds").json()["latest"] is None


# -- runs ---------------------------------------------------------------------------------------
def test_runs_list_and_show(server: Server, user: httpx.Client) -> None:
    runs = server.store.runs  # type: ignore[attr-defined]
    with runs.track("train", name="api-tiny", config={"lr": 0.001}) as run:
        runs.log_metrics(run.id, {"loss": 2.5, "acc": 0.25}, step=1)
        runs.log_metrics(run.id, {"loss": 1.25}, step=2)

    listed = {r["id"]: r for r in user.get("/api/runs", params={"kind": "train"}).json()}
    got = listed[run.id]
    assert got["status"] == "SUCCEEDED"
    assert got["name"] == "api-tiny"
    assert got["summary"] == {"loss": 1.25, "acc": 0.25}
    assert user.get("/api/runs", params={"kind": "no-such-kind"}).json() == []

    shown = user.get(f"/api/runs/{run.id}").json()
    assert shown["config"] == {"lr": 0.001}
    assert [(m["step"], m["value"]) for m in shown["metrics"]["loss"]] == [(1, 2.5), (2, 1.25)]
    assert shown["ended_at"] is not None

    assert_error(user.get("/api/runs/0000deadbeef0000"), 404, "0000deadbeef0000")


# -- keys ---------------------------------------------------------------------------------------
def test_key_create_use_and_revoke(server: Server, admin: httpx.Client) -> None:
    r = admin.post(
        "/api/keys",
        json={"name": "svc-1", "role": "user", "rpm": 60, "tpm": 5000, "scopes": ["chat"]},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["key"]
    assert secret.startswith("lmk-")
    rec = created["record"]
    assert rec["name"] == "svc-1" and rec["role"] == "user"
    assert (rec["rpm"], rec["tpm"], rec["scopes"]) == (60, 5000, ["chat"])
    assert rec["prefix"] == secret[:12]
    assert rec["created_by"] == "root-admin"

    listing = admin.get("/api/keys")
    assert listing.status_code == 200
    assert secret not in listing.text
    assert "secret_hash" not in listing.text
    assert "svc-1" in {k["name"] for k in listing.json()}

    with server.client(secret) as svc:
        assert svc.get("/api/assets").status_code == 200
        revoked = admin.delete("/api/keys/svc-1")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        # Refused on the very next request.
        assert_error(svc.get("/api/assets"), 401, "revoked")

    assert_error(admin.delete("/api/keys/no-such-key"), 404, "no-such-key")
    assert_error(admin.post("/api/keys", json={"name": "root-admin"}), 409, "root-admin")


def test_key_update_changes_limits_and_keeps_the_secret(
    server: Server, admin: httpx.Client
) -> None:
    secret = admin.post("/api/keys", json={"name": "svc-up", "rpm": 60, "scopes": ["chat"]}).json()[
        "key"
    ]
    later = "2099-01-31T00:00:00Z"
    r = admin.patch("/api/keys/svc-up", json={"rpm": 1, "tpm": 900, "expires_at": later})
    assert r.status_code == 200, r.text
    rec = r.json()
    assert (rec["rpm"], rec["tpm"], rec["scopes"], rec["role"]) == (1, 900, ["chat"], "user")
    assert datetime.fromisoformat(rec["expires_at"]) == datetime(2099, 1, 31, tzinfo=UTC)
    assert rec["prefix"] == secret[:12] and secret not in r.text
    # null removes a limit; what is left out stays
    r = admin.patch("/api/keys/svc-up", json={"rpm": None, "scopes": None, "expires_at": None})
    rec = r.json()
    assert (rec["rpm"], rec["tpm"], rec["scopes"], rec["expires_at"]) == (None, 900, None, None)
    with server.client(secret) as svc:
        assert svc.get("/api/assets").status_code == 200  # the same secret works
        assert_error(svc.get("/api/keys"), 403, "svc-up", "admin")
        assert admin.patch("/api/keys/svc-up", json={"role": "admin"}).status_code == 200
        assert svc.get("/api/keys").status_code == 200  # the new role, on the next request
    [event, *_] = admin.get("/api/audit", params={"action": "key.update"}).json()
    assert (event["target"], event["actor"], event["origin"]) == ("svc-up", "root-admin", "api")
    assert event["details"] == {"role": ["user", "admin"]}

    # the store's checks and messages, as the CLI shows them
    for body, needle in [
        ({"rpm": 0}, "--rpm must be a positive integer"),
        ({"role": "root"}, "invalid role 'root'"),
        ({"role": None}, "invalid role None"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "in the past"),
        ({}, "nothing to change for key 'svc-up'"),
        ({"rmp": 5}, "rmp"),
        ({"scopes": "chat"}, "scopes"),
        ({"scopes": []}, "give at least one deployment name"),
    ]:
        assert_error(admin.patch("/api/keys/svc-up", json=body), 400, needle)
    assert_error(admin.patch("/api/keys/svc-upp", json={"rpm": 1}), 404, "did you mean 'svc-up'?")
    admin.delete("/api/keys/svc-up")
    assert_error(admin.patch("/api/keys/svc-up", json={"rpm": 1}), 409, "revoked")


def test_key_rotate_gives_a_new_secret_for_the_same_key(
    server: Server, admin: httpx.Client
) -> None:
    created = admin.post("/api/keys", json={"name": "svc-rot", "tpm": 70})
    assert created.headers["cache-control"] == "no-store"  # the secret is in this answer only
    assert_error(admin.post("/api/keys", json={"name": "none-at-all", "scopes": []}), 400,
                 "give at least one deployment name")  # fmt: skip
    old = created.json()["key"]
    with server.client(old) as svc:
        assert svc.get("/api/info").status_code == 200
        r = admin.post("/api/keys/svc-rot/rotate")
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        new, rec = r.json()["key"], r.json()["record"]
        assert new.startswith("lmk-") and new != old and rec["prefix"] == new[:12]
        assert (rec["name"], rec["tpm"], rec["revoked_at"]) == ("svc-rot", 70, None)
        assert_error(svc.get("/api/info"), 401, "invalid API key")  # at once on /api
    with server.client(new) as svc:
        assert svc.get("/api/info").status_code == 200
    [event, *_] = admin.get("/api/audit", params={"action": "key.rotate"}).json()
    assert event["target"] == "svc-rot" and old not in json.dumps(event)
    assert new not in json.dumps(event)
    assert_error(admin.post("/api/keys/svc-rott/rotate"), 404, "did you mean 'svc-rot'?")
    admin.delete("/api/keys/svc-rot")
    assert_error(admin.post("/api/keys/svc-rot/rotate"), 409, "cannot rotate")


def test_expired_key_is_refused(server: Server) -> None:
    from sqlalchemy import update

    from lmops.store.models import ApiKeyRow

    secret = make_key(server, "short-lived", "user")
    with server.client(secret) as c:
        assert c.get("/api/assets").status_code == 200
        past = datetime.now(UTC) - timedelta(minutes=1)
        server.store.db.write(  # type: ignore[attr-defined]
            lambda s: s.execute(
                update(ApiKeyRow).where(ApiKeyRow.name == "short-lived").values(expires_at=past)
            )
        )
        assert_error(c.get("/api/assets"), 401, "expired")


def test_key_created_to_expire_soon_works_until_then(admin: httpx.Client, server: Server) -> None:
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = admin.post("/api/keys", json={"name": "tomorrow", "expires_at": later})
    assert r.status_code == 201, r.text
    assert datetime.fromisoformat(r.json()["record"]["expires_at"]) > datetime.now(UTC)
    with server.client(r.json()["key"]) as c:
        assert c.get("/api/info").status_code == 200


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/api/assets/never-registered", "never-registered"),
        ("/api/assets/never-registered:1", "never-registered"),
        ("/api/assets/known-ds:99", "known-ds:99"),
        ("/api/assets/known-ds@nowhere", "nowhere"),
        ("/api/assets/never-registered/lineage", "never-registered"),
        ("/api/assets/never-registered/verify", "never-registered"),
    ],
)
def test_unknown_ref_is_404(admin: httpx.Client, known: str, path: str, needle: str) -> None:
    err = assert_error(admin.get(path), 404, needle)
    assert err["type"] == "not_found_error"


def test_unknown_ref_on_delete_and_alias_is_404(admin: httpx.Client) -> None:
    assert_error(admin.delete("/api/assets/never-registered"), 404, "never-registered")
    r = admin.post("/api/assets/never-registered:1/alias", json={"alias": "prod"})
    assert_error(r, 404, "never-registered")
    r = register(admin, "model", "needs-input", {"m": b"m"}, inputs=["never-registered:3"])
    assert_error(r, 404, "never-registered")
    assert admin.get("/api/assets/needs-input").status_code == 404


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "content", "needle"),
    [
        ("POST", "/api/keys", b"{not json", "JSON"),
        ("POST", "/api/keys", b"[1, 2]", ""),
        ("POST", "/api/keys", b'{"role": "user"}', "name"),
        ("POST", "/api/keys", b'{"name": 5}', "name"),
        ("POST", "/api/keys", b'{"name": "k-bad-rpm", "rpm": "many"}', "rpm"),
        ("POST", "/api/keys", b'{"name": "k-neg-rpm", "rpm": -1}', "rpm"),
        ("POST", "/api/keys", b'{"name": "k-bad-date", "expires_at": "soon"}', "expires_at"),
        ("POST", "/api/keys", b'{"name": "k-past", "expires_at": "2001-01-01T00:00:00Z"}', "past"),
        ("POST", "/api/keys", b'{"name": "k-role", "role": "root"}', "role"),
        ("POST", "/api/keys", b'{"name": "bad name"}', "bad name"),
        ("POST", "/api/keys", b'{"name": "k-scopes", "scopes": "chat"}', "scopes"),
        ("POST", "/api/gc", b'{"grace_s": "later"}', "grace_s"),
        ("POST", "/api/gc", b'{"grace_s": -5}', "grace_s"),
        ("POST", "/api/gc", b"not json", "JSON"),
        ("POST", "/api/assets/known-ds:1/alias", b'{"alias": 5}', "alias"),
        ("POST", "/api/assets/known-ds:1/alias", b"{}", "alias"),
        ("POST", "/api/assets/known-ds:1/alias", b'{"alias": "latest"}', "latest"),
        ("POST", "/api/assets/known-ds:1/alias", b'{"alias": "has space"}', "has space"),
        ("GET", "/api/runs?limit=0", b"", "limit"),
        ("GET", "/api/runs?limit=lots", b"", "limit"),
        ("GET", "/api/assets/known-ds:1/lineage?depth=0", b"", "depth"),
        ("GET", "/api/assets/known-ds:0", b"", "known-ds:0"),
        ("GET", "/api/assets/bad%20name", b"", "bad name"),
        ("GET", "/api/audit?limit=-1", b"", "limit"),
    ],
)
def test_bad_input_is_400_never_500(
    admin: httpx.Client, known: str, method: str, path: str, content: bytes, needle: str
) -> None:
    r = admin.request(method, path, content=content or None, headers=JSON if content else None)
    err = assert_error(r, 400, needle)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("fields", "files", "status", "needle"),
    [
        (
            {"kind": "dataset", "name": "bad-meta", "metadata": "{oops"},
            {"a": b"a"},
            400,
            "metadata",
        ),
        ({"kind": "dataset", "name": "bad-meta", "metadata": "[1]"}, {"a": b"a"}, 400, "metadata"),
        ({"kind": "widget", "name": "bad-kind"}, {"a": b"a"}, 400, "widget"),
        ({"kind": "dataset", "name": "bad name"}, {"a": b"a"}, 400, "bad name"),
        ({"kind": "dataset"}, {"a": b"a"}, 400, "name"),
        ({"kind": "dataset", "name": "no-files"}, {}, 400, "files"),
        ({"kind": "dataset", "name": "escape"}, {"../etc/passwd": b"x"}, 400, "unsafe"),
        ({"kind": "dataset", "name": "escape"}, {"/etc/passwd": b"x", "b": b"y"}, 400, "unsafe"),
        ({"kind": "model", "name": "known-ds"}, {"a": b"a"}, 409, "known-ds"),
    ],
)
def test_bad_upload_is_4xx(
    admin: httpx.Client,
    known: str,
    fields: dict[str, str],
    files: dict[str, bytes],
    status: int,
    needle: str,
) -> None:
    parts = [("files", (p, b, "application/octet-stream")) for p, b in files.items()]
    r = admin.post("/api/assets", data=fields, files=parts or None)
    assert_error(r, status, needle)
    if fields.get("name") not in (None, "known-ds", "bad name"):
        assert admin.get(f"/api/assets/{fields['name']}").status_code == 404


@pytest.mark.parametrize(
    "files",
    [{"sub": b"file", "sub/x.txt": b"inner"}, {".": b"dot"}],
    ids=["file-and-dir-same-name", "dot"],
)
def test_ill_formed_upload_paths_are_400(admin: httpx.Client, files: dict[str, bytes]) -> None:
    parts = [("files", (p, b, "application/octet-stream")) for p, b in files.items()]
    r = admin.post("/api/assets", data={"kind": "dataset", "name": "clash"}, files=parts)
    assert_error(r, 400)


def test_unknown_route_uses_error_shape(admin: httpx.Client) -> None:
    assert_error(admin.get("/api/no-such-route"), 404)


# -- audit --------------------------------------------------------------------------------------
def test_audit_names_the_key_and_origin(admin: httpx.Client) -> None:
    assert register(admin, "dataset", "audited", {"a.txt": b"audit"}).status_code == 201
    assert admin.post("/api/assets/audited:1/alias", json={"alias": "seen"}).status_code == 200

    events = admin.get("/api/audit", params={"action": "asset."}).json()
    assert {e["action"] for e in events} <= {
        "asset.register",
        "asset.alias",
        "asset.delete",
        "asset.unalias",
        "asset.register_failed",
    }
    reg = next(e for e in events if e["action"] == "asset.register" and e["target"] == "audited:1")
    assert (reg["actor"], reg["origin"]) == ("root-admin", "api")
    assert reg["details"]["digest"] == sha256(b"audit")
    alias = next(
        e for e in events if e["action"] == "asset.alias" and e["target"] == "audited@seen"
    )
    assert (alias["actor"], alias["origin"]) == ("root-admin", "api")
    assert alias["details"]["to"] == "audited:1"

    setup = admin.get("/api/audit", params={"action": "key.create"}).json()
    root = next(e for e in setup if e["target"] == "root-admin")
    assert (root["actor"], root["origin"]) == ("test-setup", "lib")
    assert len(admin.get("/api/audit", params={"limit": 1}).json()) == 1


# -- shutdown (keep last: it stops the module's server) -----------------------------------------
def test_serve_exits_cleanly_on_sigterm(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=10)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why.
    assert code in (0, -signal.SIGTERM), code
    shutdown = server.output().split("Shutting down", 1)[-1]
    assert "Application shutdown complete" in shutdown
    assert "Traceback" not in shutdown
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=1.0)
