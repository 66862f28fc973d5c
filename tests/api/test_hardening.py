"""``/api`` against what an attack run found: numbers too big for the database, very long
upload names (whose error showed a server temp path) and credentials in URLs. Each is a
one-line 4xx in the usual shape, and the keep-alive connection it came on keeps serving.

The server of this module keeps its artifacts behind a URL with credentials (an in-memory
fsspec root, standing in for ``s3://key:secret@bucket``).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Server
from tests.api.test_api import assert_error, register

SERVER_ENV = {"LMOPS_ARTIFACTS": "memory://AKIAKEY:s3cr@t@bucket/x"}
HUGE = "99999999999999999999"  # > 2**64
ENORMOUS = "9" * 5000  # more digits than Python converts to int by default


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def known(admin: httpx.Client) -> str:
    assert register(admin, "dataset", "hard-ds", {"a.txt": b"hard\n"}).status_code == 201
    return "hard-ds"


def _local_port(r: httpx.Response) -> int:
    """The client-side port of the connection ``r`` came on."""
    stream = r.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


def _then_good_on_same_connection(admin: httpx.Client, bad: httpx.Response, known: str) -> None:
    good = admin.get(f"/api/assets/{known}:1")
    assert good.status_code == 200, good.text
    assert _local_port(good) == _local_port(bad)  # the connection was kept, not closed


def test_info_masks_artifact_root_credentials(admin: httpx.Client) -> None:
    r = admin.get("/api/info")
    assert r.status_code == 200
    assert r.json()["artifacts"] == "memory://***@bucket/x"
    assert "AKIAKEY" not in r.text and "s3cr" not in r.text


@pytest.mark.parametrize("number", [HUGE, ENORMOUS, "9223372036854775808"], ids=len)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/assets/{ref}", None),
        ("GET", "/api/assets/{ref}/lineage", None),
        ("GET", "/api/assets/{ref}/verify", None),
        ("DELETE", "/api/assets/{ref}", None),
        ("POST", "/api/assets/{ref}/alias", {"alias": "prod"}),
    ],
)
def test_version_out_of_range_is_4xx_and_keeps_the_connection(
    admin: httpx.Client, known: str, number: str, method: str, path: str, body: object
) -> None:
    r = admin.request(method, path.format(ref=f"{known}:{number}"), json=body)
    err = assert_error(r, 400, "out of range")
    assert len(err["message"]) < 400  # the digits are not all echoed back
    _then_good_on_same_connection(admin, r, known)


def test_long_upload_name_is_400_without_server_paths(admin: httpx.Client, known: str) -> None:
    name = "n" * 304
    r = register(admin, "dataset", "long-name", {name: b"x"})
    err = assert_error(r, 400, "too long")
    assert "/tmp" not in err["message"] and "lmops-upload" not in err["message"]
    assert admin.get("/api/assets/long-name").status_code == 404
    _then_good_on_same_connection(admin, r, known)
    r = register(admin, "dataset", "long-path", {"/".join(["d" * 200] * 6) + "/f": b"x"})
    assert_error(r, 400, "too long")


@pytest.mark.parametrize(
    "body",
    [{"name": "k-huge-rpm", "rpm": int(HUGE)}, {"name": "k-int32-tpm", "tpm": 2**31}],
    ids=["rpm", "tpm"],
)
def test_key_limits_out_of_range_are_400(admin: httpx.Client, known: str, body: dict) -> None:  # type: ignore[type-arg]
    r = admin.post("/api/keys", json=body)
    assert_error(r, 400, "out of range")
    _then_good_on_same_connection(admin, r, known)


def test_gc_grace_must_be_a_finite_number(admin: httpx.Client) -> None:
    for bad in ("nan", "inf"):
        assert_error(admin.post("/api/gc", json={"grace_s": bad}), 400, "grace_s")
