"""Content-addressed bytes: dedup, read-only blobs, verify, gc, fsspec roots."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from lmops.core.config import Settings
from lmops.core.errors import IntegrityError
from lmops.store import Store
from lmops.store.artifacts import ArtifactStore, Entry, manifest_digest


def blob_path(store: Store, digest: str) -> Path:
    return Path(store.settings.artifacts) / "blobs" / digest[:2] / digest


def test_identical_content_is_stored_once_and_read_only(store: Store, tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("same bytes")
    b.write_text("same bytes")
    va = store.assets.register("dataset", "a", a)
    vb = store.assets.register("dataset", "b", b)
    assert va.digest == vb.digest == hashlib.sha256(b"same bytes").hexdigest()
    blobs = list((Path(store.settings.artifacts) / "blobs").rglob("*"))
    assert len([p for p in blobs if p.is_file()]) == 1
    mode = blob_path(store, va.digest or "").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_manifest_digest_is_canonical() -> None:
    e1, e2 = Entry("b.txt", "1" * 64, 1), Entry("a.txt", "2" * 64, 2)
    assert manifest_digest([e1, e2]) == manifest_digest([e2, e1])
    assert manifest_digest([e1]) != manifest_digest([Entry("c.txt", "1" * 64, 1)])


def test_tampered_blob_is_reported_by_verify(store: Store, tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "w.bin").write_bytes(b"weights")
    (d / "c.json").write_text("{}")
    v = store.assets.register("model", "m", d)
    store.assets.register("dataset", "other", tmp_path / "m" / "c.json")
    assert store.assets.verify() == {"m:1": [], "other:1": []}
    target = blob_path(store, hashlib.sha256(b"weights").hexdigest())
    os.chmod(target, 0o644)
    target.write_bytes(b"weightz")
    report = store.assets.verify()
    assert report["other:1"] == []
    assert len(report["m:1"]) == 1 and "w.bin" in report["m:1"][0] and "corrupt" in report["m:1"][0]
    with pytest.raises(IntegrityError, match=r"m:1: w\.bin"):
        store.assets.check(v.ref)
    target.unlink()
    assert "missing" in store.assets.verify("m:1")["m:1"][0]


def test_gc_removes_only_unreferenced_blobs(store: Store, tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    drop = tmp_path / "drop.txt"
    keep.write_text("keep")
    drop.write_text("drop")
    vk = store.assets.register("dataset", "keep", keep)
    vd = store.assets.register("dataset", "drop", drop)
    view = store.assets.path("drop")
    assert store.gc(grace_s=0).blobs_removed == 0  # everything referenced
    store.assets.delete("drop")
    rep = store.gc(grace_s=3600)
    assert rep.blobs_removed == 0  # still inside the grace period
    rep = store.gc(grace_s=0)
    assert rep.blobs_removed == 1 and rep.bytes_freed == 4
    assert not blob_path(store, vd.digest or "").exists()
    assert not view.exists()  # its materialised view went too
    assert blob_path(store, vk.digest or "").exists()
    assert store.assets.path("keep").read_text() == "keep"


def test_fsspec_root_stores_and_materialises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMOPS_ARTIFACTS", "memory://lmops-test-artifacts")
    s = Store(Settings.from_env())
    assert s.artifacts.remote
    d = tmp_path / "tree"
    (d / "x").mkdir(parents=True)
    (d / "x" / "f.txt").write_text("remote bytes")
    v = s.assets.register("dataset", "remote", d)
    assert v.layout == "dir"
    assert s.artifacts.blobs.has(hashlib.sha256(b"remote bytes").hexdigest())
    local = s.assets.path("remote")
    assert (local / "x" / "f.txt").read_text() == "remote bytes"
    assert str(local).startswith(str(s.settings.home / "cache"))
    assert s.assets.verify("remote") == {"remote:1": []}


def test_staging_leftovers_are_collected(tmp_path: Path) -> None:
    art = ArtifactStore(str(tmp_path / "art"), tmp_path / "cache")
    art.staging.mkdir(parents=True)
    (art.staging / "dead.part").write_bytes(b"half a file")
    art.gc(lambda: (set(), set()), grace_s=3600)
    assert (art.staging / "dead.part").exists()
    art.gc(lambda: (set(), set()), grace_s=0)
    assert not (art.staging / "dead.part").exists()
