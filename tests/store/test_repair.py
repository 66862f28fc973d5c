"""Registering the same bytes again repairs a damaged blob.

Views are hard links to blobs, and root writes through the read-only bit, so a write into
a path ``assets path`` handed out damages the stored blob itself. A later registration of
the same bytes used to find the blob there and keep it; now it checks the blob (size, then
hash), puts the fresh copy in its place in one rename and drops every view that linked the
damaged inode, so no version hands the damage out again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lmops.core.config import Settings
from lmops.core.errors import IntegrityError
from lmops.store import Store

ROW = '{"text":"pristine row"}\n'


def _blob(store: Store, digest: str) -> Path:
    return Path(store.settings.artifacts) / "blobs" / digest[:2] / digest


def _write_into(path: Path, data: bytes, *, append: bool) -> None:
    """What ``echo ... >> $(lmops assets path x)`` does as root: the read-only bit is no
    obstacle (chmod stands in for root's privilege when the tests run as a user)."""
    os.chmod(path, 0o644)
    with open(path, "ab" if append else "r+b") as fh:
        fh.write(data)


def test_an_appended_view_is_repaired_by_registering_the_same_bytes(
    store: Store, tmp_path: Path
) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(ROW)
    store.assets.register("dataset", "pristine", src)
    _write_into(store.assets.path("pristine:1"), b'{"text":"x"}\n', append=True)
    assert store.assets.verify("pristine:1")["pristine:1"]  # the blob is damaged

    v2 = store.assets.register("dataset", "pristine", src)

    assert store.assets.verify() == {"pristine:1": [], "pristine:2": []}
    for ref in ("pristine:1", v2.ref):  # the view that held the damage was dropped
        assert store.assets.path(ref).read_text() == ROW


def test_same_size_damage_in_a_folder_is_found_by_the_hash_and_repaired(
    store: Store, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("bbbb")
    store.assets.register("model", "m", tree)
    view = store.assets.path("m:1")
    _write_into(view / "sub" / "b.txt", b"XXXX", append=False)  # in place: same size
    assert store.assets.verify("m:1")["m:1"]

    store.assets.register("model", "m", tree)

    assert store.assets.verify("m") == {"m:1": [], "m:2": []}
    assert (store.assets.path("m:1") / "sub" / "b.txt").read_text() == "bbbb"


def test_an_intact_blob_is_kept_not_rewritten(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(ROW)
    store.assets.register("dataset", "same", src)
    view = store.assets.path("same:1")
    blob = _blob(store, hashlib.sha256(ROW.encode()).hexdigest())
    inode = blob.stat().st_ino
    store.assets.register("dataset", "same", src)
    assert blob.stat().st_ino == inode
    assert store.assets.path("same:2") == view  # the view is still good: reused


def test_a_view_written_to_is_not_handed_out_again(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text(ROW)
    store.assets.register("dataset", "pristine", src)
    _write_into(store.assets.path("pristine:1"), b"more\n", append=True)
    with pytest.raises(IntegrityError) as e:
        store.assets.path("pristine:1")
    msg = str(e.value)
    assert "pristine:1" in msg and "corrupt" in msg
    assert "register the original files again" in msg  # which now repairs it


def test_a_remote_roots_damaged_view_copy_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMOPS_ARTIFACTS", "memory://lmops-test-repair")
    s = Store(Settings.from_env())
    src = tmp_path / "p.jsonl"
    src.write_text(ROW)
    s.assets.register("dataset", "remote", src)
    _write_into(s.assets.path("remote:1"), b"more\n", append=True)  # a local copy
    assert s.assets.path("remote:1").read_text() == ROW
    s.close()


def test_cli_verify_says_how_to_repair(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "p.jsonl"
    src.write_text(ROW)
    assert cli("assets", "register", "dataset", "pristine", str(src)).code == 0
    path = Path(cli("assets", "path", "pristine:1").out.strip())
    _write_into(path, b"x\n", append=True)
    r = cli("assets", "verify", "pristine:1")
    assert r.code == 1 and "register" in r.out and "repairs" in r.out
    assert cli("assets", "register", "dataset", "pristine", str(src)).code == 0
    r = cli("assets", "verify")
    assert r.code == 0 and "all intact" in r.out
