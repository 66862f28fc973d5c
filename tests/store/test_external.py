"""External references: local files and folders recorded by path and content, no bytes copied.

Checked against an independent hash (hashlib over the file, the documented manifest JSON for
a folder): the same bytes reuse a version, changed bytes make the next one, a folder's digest
ignores mtimes and equals a stored copy's, the hash cache reads a file again only when its
stat changed, ``path``/``verify`` say when the file changed or is gone (CHANGED, not store
damage), and ``gc`` leaves the files alone. The same on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import lmops.store.external as external_mod
from lmops.core.errors import ConflictError, UserError
from lmops.store import Store


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_digest(files: dict[str, bytes]) -> str:
    """The documented folder digest: sha256 of the canonical manifest JSON."""
    rows = sorted(
        ({"path": p, "digest": sha256(b), "size": len(b)} for p, b in files.items()),
        key=lambda r: str(r["path"]),
    )
    return sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode())


def age(*paths: Path, seconds: float = 60) -> None:
    """Move mtimes into the past, as files written before the job started have them (a file
    written within the last 2 s is hashed again each time: see ``RACY_NS``)."""
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def model_folder(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"hidden_size": 64}',
        "model.safetensors": os.urandom(4096),
        "tokenizer/vocab.json": b'{"a": 0}',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the hash cache actually reads."""
    read: list[Path] = []
    real = external_mod.hash_file

    def counting(path: Path) -> str:
        read.append(Path(path))
        return real(path)

    monkeypatch.setattr(external_mod, "hash_file", counting)
    return read


def test_a_file_is_recorded_by_path_size_and_sha256_without_its_bytes(
    store: Store, tmp_path: Path
) -> None:
    f = tmp_path / "train.jsonl"
    f.write_bytes(b'{"text": "hello"}\n')
    v = store.assets.external(f)
    assert v.kind == "external" and v.layout == "external" and v.status.value == "READY"
    assert v.asset.startswith("local-train.jsonl-") and len(v.asset.rsplit("-", 1)[1]) == 8
    assert v.digest == sha256(f.read_bytes()) and v.size == f.stat().st_size and v.files == 1
    assert v.metadata["path"] == str(f) and v.metadata["size"] == v.size
    assert v.metadata["files"] == 1
    # nothing was copied into the artifact store
    blobs = Path(store.settings.artifacts) / "blobs"
    assert not blobs.exists() or not any(blobs.rglob("*"))
    assert store.assets.path(v.ref) == f
    # the same path given relatively, or again, is the same version
    os.chdir(tmp_path)
    assert store.assets.external("train.jsonl").ref == v.ref
    assert store.assets.external(f).ref == v.ref


def test_changed_bytes_make_the_next_version_and_old_bytes_find_theirs(
    store: Store, tmp_path: Path
) -> None:
    f = tmp_path / "data.jsonl"
    f.write_text("one\n")
    v1 = store.assets.external(f)
    f.write_text("two\n")
    v2 = store.assets.external(f)
    assert (v2.asset, v2.version) == (v1.asset, 2) and v2.digest == sha256(b"two\n")
    f.write_text("one\n")
    assert store.assets.external(f).ref == v1.ref  # re-reading the same bytes: same reference
    other = tmp_path / "sub" / "data.jsonl"
    other.parent.mkdir()
    other.write_text("one\n")
    assert store.assets.external(other).asset != v1.asset  # same name, another path


def test_a_folder_digest_is_the_manifest_digest_and_ignores_mtimes(
    store: Store, tmp_path: Path
) -> None:
    root = tmp_path / "tiny-model"
    files = model_folder(root)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: main")  # hidden: not part of the reference
    v = store.assets.external(root)
    assert v.digest == folder_digest(files)
    assert (v.files, v.size) == (3, sum(len(b) for b in files.values()))
    _, entries = store.assets.manifest(v.ref)
    assert {e.path: (e.size, e.digest) for e in entries} == {
        p: (len(b), sha256(b)) for p, b in files.items()
    }
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
    assert store.assets.external(root).ref == v.ref
    # the same content stored (hidden folder left out) has the same digest
    import shutil

    shutil.rmtree(root / ".git")
    assert store.assets.register("model", "copy", root).digest == v.digest
    (root / "config.json").write_bytes(b'{"hidden_size": 32}')
    assert store.assets.external(root).version == 2


def test_the_hash_cache_reads_a_file_again_only_when_its_stat_changed(
    store: Store, tmp_path: Path, hashes: list[Path]
) -> None:
    root = tmp_path / "big"
    files = model_folder(root)
    age(*(root / p for p in files))
    v = store.assets.external(root)
    assert len(hashes) == 3
    hashes.clear()
    assert store.assets.external(root).ref == v.ref
    assert hashes == []  # every stat unchanged: nothing read
    (root / "config.json").write_bytes(b'{"hidden_size": 65}')  # same size, new mtime
    age(root / "config.json", seconds=30)
    v2 = store.assets.external(root)
    assert hashes == [root / "config.json"] and v2.version == 2
    hashes.clear()
    fresh = tmp_path / "fresh.txt"  # written just now: not remembered (racy), read each time
    fresh.write_text("x")
    store.assets.external(fresh)
    store.assets.external(fresh)
    assert hashes == [fresh, fresh]


def test_a_registered_copy_is_found_by_its_bytes_and_unread_when_no_size_matches(
    store: Store, tmp_path: Path, hashes: list[Path]
) -> None:
    """``lmops serve`` asks which registered version a model folder or package file named
    by its path is, to trace its answers. Hashed only when a version of its kinds has the
    same size, once (the hash cache); the whole tree counts, hidden names too, as a
    registration stores them; the oldest of equal versions wins (the one with lineage)."""
    from lmops.store.external import registered_copy

    root = tmp_path / "m"
    model_folder(root)
    (root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    first = store.assets.register("model", "m", root)
    store.assets.register("model", "m-again", root)
    store.assets.register("dataset", "not-a-model", root)
    pkg = tmp_path / "p.lmpkg"
    pkg.write_bytes(os.urandom(300))
    sealed = store.assets.register("package", "p", pkg)

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    age(*(p for p in copy.rglob("*") if p.is_file()))
    hashes.clear()
    found = registered_copy(store, copy, ["model", "adapter"])
    assert found is not None and found.ref == first.ref and len(hashes) == 4
    hashes.clear()
    assert registered_copy(store, copy, ["model"]) == found and hashes == []  # remembered
    assert registered_copy(store, copy, ["package"]) is None

    (copy / "config.json").write_bytes(b'{"hidden_size": 65}')  # same size, other bytes
    assert registered_copy(store, copy, ["model"]) is None
    (copy / "NOTES.md").write_text("a local edit")  # no model of this size: nothing read
    hashes.clear()
    assert registered_copy(store, copy, ["model"]) is None and hashes == []

    byte_copy = tmp_path / "pkgs dir" / "p copy.lmpkg"
    byte_copy.parent.mkdir()
    shutil.copyfile(pkg, byte_copy)
    assert registered_copy(store, byte_copy, ["package"]) == store.assets.resolve(sealed.ref)
    assert registered_copy(store, byte_copy, ["model"]) is None
    assert registered_copy(store, tmp_path / "nowhere", ["model"]) is None


def test_path_and_verify_say_when_the_file_changed_or_is_gone(
    store: Store, tmp_path: Path, cli: Any
) -> None:
    f = tmp_path / "eval.yaml"
    f.write_text("task: a\n")
    stored = store.assets.register("dataset", "d", f)
    v = store.assets.external(f)
    assert store.assets.verify() == {stored.ref: [], v.ref: []}
    f.write_text("task: b\n")
    with pytest.raises(UserError, match=r"changed since it was recorded .*store is intact"):
        store.assets.path(v.ref)
    report = store.assets.verify()
    assert report[stored.ref] == [] and "changed since it was recorded" in report[v.ref][0]
    res = cli("assets", "verify")
    assert res.code == 0, res.err  # the store is intact
    assert "CHANGED" in res.err and v.ref in res.err and "CORRUPT" not in res.err
    assert "1 external input(s) changed" in res.out
    data = json.loads(cli("assets", "verify", "--json").out)
    assert data["ok"] is True and list(data["changed"]) == [v.ref]
    res = cli("assets", "path", v.ref)
    assert res.code == 2 and str(f) in res.err and "changed" in res.err
    v2 = store.assets.external(f)  # a job read the new bytes: the old version says so
    assert f"its bytes now are {v2.ref}" in store.assets.verify(v.ref)[v.ref][0]
    assert store.assets.verify(v2.ref) == {v2.ref: []}
    f.unlink()
    res = cli("assets", "path", v.ref)
    assert res.code == 2 and f"{f} no longer exists" in res.err
    assert "no longer exists" in store.assets.verify(v.ref)[v.ref][0]


def test_a_changed_folder_names_the_files(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "m"
    model_folder(root)
    v = store.assets.external(root)
    (root / "model.safetensors").write_bytes(b"other")
    (root / "extra.txt").write_text("new")
    (problem,) = store.assets.verify(v.ref)[v.ref]
    assert "1 file(s) changed, 1 added, 0 removed (first: model.safetensors)" in problem


def test_gc_never_touches_external_files(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "raw.jsonl"
    f.write_text("raw\n")
    d = store.assets.register("dataset", "raw", f)
    v = store.assets.external(f)
    store.assets.delete(d.ref)
    rep = store.gc(grace_s=0)
    # the stored copy's blob is freed (an external manifest does not keep blobs) ...
    assert rep.blobs_removed == 1
    # ... and the local file, and its reference, are untouched
    assert f.read_text() == "raw\n" and store.assets.verify(v.ref) == {v.ref: []}


def test_record_inputs_gives_lineage_edges_and_notes_them_on_the_run(
    store: Store, tmp_path: Path, cli: Any
) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text('{"instruction": "1+1=", "output": "2"}\n')
    base = tmp_path / "base"
    model_folder(base)
    out = tmp_path / "out.txt"
    out.write_text("weights")
    with store.runs.track("train", name="m") as run:
        inputs = store.assets.record_inputs(
            [(base, "base_model"), (data, "dataset"), (data, "dataset")], run_id=run.id
        )
        store.assets.register("model", "m", out, inputs=inputs, run_id=run.id)
    assert [role for _, role in inputs] == ["base_model", "dataset"]
    g = store.assets.lineage("m")
    ups = {g.nodes[e.parent].metadata["path"]: e.role for e in g.upstream}
    assert ups == {str(base): "base_model", str(data): "dataset"}
    noted = store.runs.get(run.id).params["local_inputs"]
    assert [(n["path"], n["role"]) for n in noted] == [
        (str(base), "base_model"),
        (str(data), "dataset"),
    ]
    shown = cli("assets", "lineage", "m")
    # rich wraps a long path (and indents the rest under the tree): read it without blanks
    assert str(data) in "".join(shown.out.split()) and "dataset" in shown.out
    one = cli("assets", "show", inputs[1][0])
    text = one.out.replace("\n", "")  # rich wraps long lines
    assert f"path     {data} (not stored" in text


def test_bad_paths_are_one_line_errors_and_record_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file or folder"):
        store.assets.external(tmp_path / "nope.jsonl")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(UserError, match="points to nothing"):
        store.assets.external(tmp_path / "loop")
    assert store.assets.list() == []


def test_a_name_taken_by_another_path_or_kind(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.store.assets as assets_mod

    real = assets_mod.external_name
    monkeypatch.setattr(
        assets_mod,
        "external_name",
        lambda p, width=8: "local-x-00000000" if width == 8 else real(p, width),
    )
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    va, vb = store.assets.external(a), store.assets.external(b)
    assert (
        va.asset == "local-x-00000000"
        and vb.asset == real(b, 16) == f"local-b-{sha256(str(b).encode())[:16]}"
    )
    store.assets.register("dataset", real(tmp_path / "c", 8), a)
    (tmp_path / "c").write_text("c")
    monkeypatch.setattr(assets_mod, "external_name", real)
    with pytest.raises(ConflictError, match="is a dataset, not an external reference"):
        store.assets.external(tmp_path / "c")


def test_copy_inputs_stores_the_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMOPS_COPY_INPUTS", "1")
    s = Store()
    f = tmp_path / "data.jsonl"
    f.write_text("kept\n")
    v = s.assets.external(f)
    assert v.layout == "file" and v.kind == "external" and v.metadata["path"] == str(f)
    assert v.digest == sha256(b"kept\n") and s.assets.external(f).ref == v.ref
    f.write_text("edited\n")
    assert s.assets.path(v.ref).read_text() == "kept\n"  # the copy, not the edited file
    monkeypatch.setenv("LMOPS_COPY_INPUTS", "maybe")
    with pytest.raises(UserError, match="LMOPS_COPY_INPUTS='maybe': expected 1 or 0"):
        Store()
    s.close()


@pytest.mark.postgres
def test_external_references_on_postgresql(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashes: list[Path]
) -> None:
    monkeypatch.setenv("LMOPS_DATABASE_URL", pg_url)
    s = Store()
    root = tmp_path / "m"
    files = model_folder(root)
    age(*(root / p for p in files))
    v = s.assets.external(root)
    assert v.digest == folder_digest(files) and len(hashes) == 3
    assert s.assets.external(root).ref == v.ref and len(hashes) == 3  # from the cache
    (root / "config.json").write_text("{}")
    assert s.assets.external(root).version == 2
    with s.runs.track("eval") as run:
        refs = s.assets.record_inputs([(root, "model")], run_id=run.id)
    assert refs == [(f"{v.asset}:2", "model")]
    assert "changed since it was recorded" in s.assets.verify(v.ref)[v.ref][0]
    s.close()
