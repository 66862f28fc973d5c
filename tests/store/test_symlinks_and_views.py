"""Registering trees with symlinks, and views that refuse corrupt blobs.

A symlink inside a registered folder that points outside it is refused (it would copy
whatever it points to, ``/etc/shadow`` included, into the store) unless the caller asks
to follow links; one that points inside the tree is stored as what it points to. A view
(``assets path``) is checked against the recorded digests once, when it is built.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lmops.core.errors import IntegrityError, UserError
from lmops.store import Store, VersionStatus
from lmops.store import artifacts as artifacts_mod


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``tree/`` with a plain file, a sub-folder, and ``outside/secret.txt`` beside it."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not for the store")
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    return root


def test_symlink_out_of_the_tree_is_refused(store: Store, tree: Path) -> None:
    link = tree / "leak.txt"
    link.symlink_to(tree.parent / "outside" / "secret.txt")
    with pytest.raises(UserError) as e:
        store.assets.register("dataset", "leaky", tree)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(link) in msg and str(tree.parent / "outside" / "secret.txt") in msg
    assert "--follow-symlinks" in msg
    # refused before anything was recorded
    with pytest.raises(UserError):
        store.assets.show("leaky")
    assert not list((Path(store.settings.artifacts) / "blobs").rglob("*.txt"))


def test_symlinked_folder_out_of_the_tree_is_refused(store: Store, tree: Path) -> None:
    (tree / "ext").symlink_to(tree.parent / "outside", target_is_directory=True)
    with pytest.raises(UserError, match="points outside"):
        store.assets.register("dataset", "leaky-dir", tree)


def test_follow_symlinks_stores_what_they_point_to(store: Store, tree: Path) -> None:
    (tree / "leak.txt").symlink_to(tree.parent / "outside" / "secret.txt")
    (tree / "ext").symlink_to(tree.parent / "outside", target_is_directory=True)
    v = store.assets.register("dataset", "followed", tree, follow_symlinks=True)
    view = store.assets.path(v.ref)
    assert (view / "leak.txt").read_text() == "not for the store"
    assert (view / "ext" / "secret.txt").read_text() == "not for the store"
    assert not (view / "leak.txt").is_symlink()


def test_symlinks_inside_the_tree_are_stored_as_their_targets(store: Store, tree: Path) -> None:
    (tree / "alias.txt").symlink_to("a.txt")
    (tree / "again").symlink_to("sub", target_is_directory=True)
    v = store.assets.register("dataset", "inner-links", tree)
    assert v.status is VersionStatus.READY
    view = store.assets.path(v.ref)
    assert sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()) == [
        "a.txt",
        "again/b.txt",
        "alias.txt",
        "sub/b.txt",
    ]
    assert (view / "alias.txt").read_text() == "a"


@pytest.mark.parametrize("target", ["..", "nowhere"], ids=["loop", "dangling"])
def test_loops_and_dangling_links_are_refused(store: Store, tree: Path, target: str) -> None:
    link = tree / "sub" / "link"
    link.symlink_to(target)
    with pytest.raises(UserError, match=str(link)):
        store.assets.register("dataset", "bad-links", tree, follow_symlinks=True)


def test_a_symlink_named_as_the_path_is_followed(store: Store, tree: Path) -> None:
    """The user named the link itself: store what it points to (as ``cp`` would)."""
    link = tree.parent / "named-link.txt"
    link.symlink_to(tree.parent / "outside" / "secret.txt")
    v = store.assets.register("dataset", "named", link)
    assert v.digest == hashlib.sha256(b"not for the store").hexdigest()


def _blob(store: Store, digest: str) -> Path:
    return Path(store.settings.artifacts) / "blobs" / digest[:2] / digest


def test_corrupt_blob_is_refused_when_its_view_is_built(store: Store, tree: Path) -> None:
    v = store.assets.register("model", "m", tree)
    blob = _blob(store, hashlib.sha256(b"b").hexdigest())
    os.chmod(blob, 0o644)
    blob.write_bytes(b"B")  # bit rot, or someone editing the store by hand
    with pytest.raises(IntegrityError) as e:
        store.assets.path(v.ref)
    msg = str(e.value)
    assert "\n" not in msg
    assert "m:1" in msg and "sub/b.txt" in msg and "lmops assets verify" in msg
    assert not (store.artifacts.views).exists() or not [
        p for p in store.artifacts.views.iterdir() if not p.name.startswith(".")
    ]  # no view was left behind for the next call to hand out


def test_a_view_is_hashed_once_not_on_every_path_call(
    store: Store, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = store.assets.register("model", "cheap", tree)
    hashed: list[Path] = []
    real = artifacts_mod.hash_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(artifacts_mod, "hash_file", counting)
    first = store.assets.path(v.ref)
    assert len(hashed) == 2  # a.txt and sub/b.txt, when the view was built
    for _ in range(3):
        assert store.assets.path(v.ref) == first
    assert len(hashed) == 2
