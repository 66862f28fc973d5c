"""Assets: numbering, references, aliases, kinds, lineage, deletion, failure states."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.core.errors import ConflictError, NotFoundError, UserError
from lmops.store import Store, VersionStatus


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_versions_are_numbered_and_name_resolves_to_latest_ready(
    store: Store, tmp_path: Path
) -> None:
    for i in range(3):
        v = store.assets.register(
            "dataset", "corpus", write(tmp_path / f"d{i}.jsonl", f"row {i}\n")
        )
        assert v.version == i + 1 and v.status is VersionStatus.READY
    assert store.assets.resolve("corpus").version == 3
    assert store.assets.resolve("corpus:2").digest == store.assets.get("corpus:2").digest
    assert store.assets.path("corpus:1").read_text() == "row 0\n"
    assert store.assets.path("corpus:1").name == "d0.jsonl"
    assert [v.version for v in store.assets.show("corpus").versions] == [1, 2, 3]


def test_metadata_tags_description_are_kept(store: Store, tmp_path: Path) -> None:
    v = store.assets.register(
        "model",
        "m",
        write(tmp_path / "w.bin", "x"),
        metadata={"params": 1_000_000, "arch": "llama"},
        tags=["tiny", "cpu", "tiny"],
        description="a tiny model",
    )
    got = store.assets.get("m:1")
    assert got.metadata == {"params": 1_000_000, "arch": "llama"}
    assert got.tags == ["cpu", "tiny"]
    assert got.description == "a tiny model" == v.description


def test_nan_in_metadata_is_stored_as_null(store: Store, tmp_path: Path) -> None:
    # JSON has no NaN; stored as null, as on PostgreSQL (tests/store/test_postgres.py)
    meta = {"acc": 0.5, "acc_stderr": float("nan"), "n": [1, float("-inf")]}
    store.assets.register("eval_report", "r", write(tmp_path / "r.json", "{}"), metadata=meta)
    assert store.assets.get("r:1").metadata == {"acc": 0.5, "acc_stderr": None, "n": [1, None]}


def test_directory_version_keeps_tree_and_digest_ignores_mtime(
    store: Store, tmp_path: Path
) -> None:
    d = tmp_path / "model"
    write(d / "config.json", "{}")
    write(d / "sub" / "weights.bin", "0123")
    v1 = store.assets.register("model", "m", d)
    (d / "config.json").touch()  # same bytes, new mtime: same content digest
    v2 = store.assets.register("model", "m", d)
    assert v1.layout == "dir" and v1.files == 2 and v1.size == 6
    assert v1.digest == v2.digest and v1.version != v2.version
    view = store.assets.path("m:1")
    assert (view / "sub" / "weights.bin").read_text() == "0123"


def test_alias_moves_and_resolves(store: Store, tmp_path: Path) -> None:
    for i in range(2):
        store.assets.register("model", "chat", write(tmp_path / f"{i}.bin", str(i)))
    store.assets.alias("chat:1", "production")
    assert store.assets.resolve("chat@production").version == 1
    store.assets.alias("chat:2", "production")
    assert store.assets.resolve("chat@production").version == 2
    assert store.assets.show("chat").aliases == {"production": 2}
    assert store.assets.get("chat:2").aliases == ["production"]
    store.assets.unalias("chat", "production")
    with pytest.raises(NotFoundError, match="alias 'production'"):
        store.assets.resolve("chat@production")


def test_wrong_kind_and_bad_names_are_refused(store: Store, tmp_path: Path) -> None:
    f = write(tmp_path / "a.txt", "a")
    store.assets.register("dataset", "thing", f)
    with pytest.raises(ConflictError, match="asset 'thing' is a dataset, not a model"):
        store.assets.register("model", "thing", f)
    with pytest.raises(UserError, match="unknown asset kind 'weights'"):
        store.assets.register("weights", "w", f)
    with pytest.raises(UserError, match="invalid asset name"):
        store.assets.register("dataset", "bad name!", f)
    assert [v.version for v in store.assets.show("thing").versions] == [1]


def test_missing_file_registers_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        store.assets.register("dataset", "ghost", tmp_path / "nope.jsonl")
    with pytest.raises(NotFoundError, match="asset 'ghost' not found"):
        store.assets.show("ghost")


def test_unknown_references_name_the_thing(store: Store, tmp_path: Path) -> None:
    store.assets.register("dataset", "d", write(tmp_path / "a", "a"))
    with pytest.raises(NotFoundError, match=r"d:7 not found"):
        store.assets.resolve("d:7")
    with pytest.raises(NotFoundError, match="alias 'prod' of asset 'd' not found"):
        store.assets.resolve("d@prod")
    with pytest.raises(UserError, match="invalid version"):
        store.assets.resolve("d:x")


def test_a_misspelt_asset_name_is_offered_the_close_one(store: Store, tmp_path: Path) -> None:
    """``smoll`` for ``smol``: the error offers the name there is, in the CLI's words and the
    API's, and every job that reads a model or dataset ref keeps the store's reason (it only
    said "is neither an existing path nor a READY asset")."""
    from lmops.core.errors import api_message
    from lmops.models.loading import resolve_local

    store.assets.register("dataset", "smol-alpaca", write(tmp_path / "a", "a"))
    with pytest.raises(NotFoundError) as e:
        store.assets.resolve("smol-alpca")
    assert str(e.value) == "asset 'smol-alpca' not found; did you mean 'smol-alpaca'?"
    assert api_message(e.value) == str(e.value)
    with pytest.raises(NotFoundError, match=r"'zzz' not found; see `lmops assets list`$"):
        store.assets.resolve("zzz")  # nothing close: the command that lists them
    with pytest.raises(UserError) as e2:  # a path, which cannot be an asset name: as before
        resolve_local(str(tmp_path / "smol-alpca"), store)
    assert str(e2.value).endswith("smol-alpca' is neither an existing path nor a READY asset")
    with pytest.raises(UserError) as e2:
        resolve_local("smol-alpca", store)
    assert str(e2.value) == (
        "'smol-alpca' is neither an existing path nor a READY asset "
        "(asset 'smol-alpca' not found; did you mean 'smol-alpaca'?)"
    )
    with pytest.raises(UserError, match=r"\(smol-alpaca:4 not found; see `lmops assets show"):
        resolve_local("smol-alpaca:4", store)


def test_failed_copy_leaves_failed_version_and_next_registration_works(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "a.txt", "a")

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(store.artifacts, "add", boom)
        with pytest.raises(OSError, match="No space"):
            store.assets.register("dataset", "d", f)
    v1 = store.assets.get("d:1")
    assert v1.status is VersionStatus.FAILED and "No space" in (v1.error or "")
    with pytest.raises(NotFoundError, match="has no READY version"):
        store.assets.resolve("d")
    with pytest.raises(NotFoundError, match="FAILED, not READY"):
        store.assets.resolve("d:1")
    v2 = store.assets.register("dataset", "d", f)
    assert v2.version == 2 and store.assets.resolve("d").version == 2
    assert store.audit.list(action="asset.register_failed")[0].target == "d:1"


def test_lineage_upstream_and_downstream_with_roles_and_runs(store: Store, tmp_path: Path) -> None:
    raw = store.assets.register("dataset", "raw", write(tmp_path / "raw.jsonl", "r"))
    with store.runs.track("data", name="clean") as run:
        clean = store.assets.register(
            "dataset", "clean", write(tmp_path / "c.jsonl", "c"), inputs=["raw"], run_id=run.id
        )
    tok = store.assets.register(
        "tokenizer", "tok", write(tmp_path / "t.json", "t"), inputs=["clean:1"]
    )
    base = store.assets.register("model", "base", write(tmp_path / "b.bin", "b"))
    sft = store.assets.register(
        "model",
        "sft",
        write(tmp_path / "s.bin", "s"),
        inputs=[("base", "base_model"), ("clean", "dataset"), ("tok", "tokenizer")],
    )
    up = store.assets.lineage("sft")
    assert {(e.child, e.parent, e.role) for e in up.upstream} == {
        ("sft:1", "base:1", "base_model"),
        ("sft:1", "clean:1", "dataset"),
        ("sft:1", "tok:1", "tokenizer"),
        ("clean:1", "raw:1", "input"),
        ("tok:1", "clean:1", "input"),
    }
    assert up.runs["clean:1"] == run.id
    # nodes carry their aliases, as assets show does
    store.assets.alias("base:1", "production")
    assert store.assets.lineage("sft").nodes["base:1"].aliases == ["production"]
    down = store.assets.lineage(raw.ref)
    assert {e.child for e in down.downstream} == {"clean:1", "tok:1", "sft:1"}
    assert store.assets.lineage("sft", depth=1).upstream.__len__() == 3
    assert store.runs.get(run.id).outputs == ["clean:1"]
    assert clean.run_id == run.id and tok.version == base.version == sft.version == 1


def test_inputs_must_exist_and_be_ready(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="asset 'nobase' not found"):
        store.assets.register("model", "m", write(tmp_path / "m", "m"), inputs=["nobase"])
    assert not store.assets.exists("m")


def test_delete_version_keeps_numbers_and_lineage(store: Store, tmp_path: Path) -> None:
    for i in range(2):
        store.assets.register("dataset", "d", write(tmp_path / f"{i}", str(i)))
    store.assets.register("model", "m", write(tmp_path / "m", "m"), inputs=["d:2"])
    store.assets.alias("d:2", "best")
    # an alias points at it: refused unless forced (or deleted by that alias)
    with pytest.raises(ConflictError, match=r"d:2: aliases point at it \(d@best -> d:2\)"):
        store.assets.delete("d:2")
    with pytest.raises(ConflictError, match="d@best"):
        store.assets.delete("d")
    assert store.assets.get("d:2").status is VersionStatus.READY
    assert store.assets.delete("d:2", force=True) == ["d:2"]
    assert store.assets.get("d:2").status is VersionStatus.DELETED
    assert store.assets.resolve("d").version == 1
    with pytest.raises(NotFoundError):
        store.assets.resolve("d@best")
    # lineage of the consumer still names the deleted parent
    assert store.assets.lineage("m").upstream[0].parent == "d:2"
    v3 = store.assets.register("dataset", "d", write(tmp_path / "3", "3"))
    assert v3.version == 3
    assert store.assets.delete("d") == ["d:1", "d:3"]
    with pytest.raises(NotFoundError, match="already deleted"):
        store.assets.delete("d:1")


def test_locked_database_gives_a_clear_error_and_no_version(
    tmp_path: Path, lmops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from lmops.core.errors import StoreError

    monkeypatch.setenv("LMOPS_DB_BUSY_TIMEOUT", "0.3")
    store = Store()
    holder = sqlite3.connect(lmops_home / "lmops.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write, holding the lock
    try:
        with pytest.raises(StoreError, match=r"is locked .* LMOPS_DB_BUSY_TIMEOUT"):
            store.assets.register("dataset", "d", write(tmp_path / "a", "a"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(NotFoundError):
        store.assets.show("d")
    assert store.assets.register("dataset", "d", tmp_path / "a").version == 1
