"""``gc`` never breaks a registration: with a grace of 0, running in a loop beside writers.

The writers store fresh bytes and bytes that already sit in the store unreferenced (left by
deleted versions), which is the case a plain "list the references, then delete the rest"
loses: the writer finds the blob, skips the copy, and gc deletes it before the version
is READY. Every registration must succeed and every READY version must verify.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lmops.core.config import Settings
from lmops.store import Store, VersionStatus
from lmops.store.artifacts import ArtifactStore

WRITERS = 3
PER_WRITER = 12
SHARED = 6  # contents registered, deleted, then registered again by the writers


def _content(i: int) -> bytes:
    return f"shared content {i}\n".encode() * 200


def _race(settings: Settings, tmp_path: Path) -> None:
    setup = Store(settings)
    for i in range(SHARED):  # leave SHARED unreferenced blobs behind
        f = tmp_path / f"old-{i}.txt"
        f.write_bytes(_content(i))
        setup.assets.register("dataset", f"old-{i}", f)
        setup.assets.delete(f"old-{i}")

    done = threading.Event()
    errors: list[BaseException] = []
    gc_runs = [0]

    def writer(w: int) -> None:
        store = Store(settings)
        try:
            for i in range(PER_WRITER):
                if i % 3 == 2:  # a small tree: one shared file, one fresh
                    src = tmp_path / f"w{w}-{i}"
                    (src / "sub").mkdir(parents=True)
                    (src / "sub" / "shared.txt").write_bytes(_content((w + i) % SHARED))
                    (src / "fresh.bin").write_bytes(os.urandom(4096))
                elif i % 3 == 1:
                    src = tmp_path / f"w{w}-{i}.txt"
                    src.write_bytes(_content((w * 7 + i) % SHARED))
                else:
                    src = tmp_path / f"w{w}-{i}.bin"
                    src.write_bytes(os.urandom(2048))
                v = store.assets.register("dataset", f"w{w}", src)
                assert v.status is VersionStatus.READY
        except BaseException as e:
            errors.append(e)
        finally:
            store.close()

    def collector() -> None:
        store = Store(settings)
        try:
            while not done.is_set():
                store.gc(grace_s=0)
                gc_runs[0] += 1
        except BaseException as e:
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    gc_thread.join()

    assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
    assert gc_runs[0] > 0
    store = Store(settings)
    for w in range(WRITERS):
        versions = store.assets.show(f"w{w}").versions
        assert [v.status for v in versions] == [VersionStatus.READY] * PER_WRITER
    report = store.assets.verify()
    assert len(report) == WRITERS * PER_WRITER
    assert {k: v for k, v in report.items() if v} == {}
    # and one last gc, with nothing in flight, keeps them intact and frees the old blobs
    store.gc(grace_s=0)
    assert {k: v for k, v in store.assets.verify().items() if v} == {}
    for w in range(WRITERS):
        assert store.assets.path(f"w{w}:{PER_WRITER}").exists()
    store.close()
    setup.close()


def test_gc_in_a_loop_never_breaks_concurrent_registrations(
    lmops_home: Path, tmp_path: Path
) -> None:
    _race(Settings.from_env(), tmp_path)


@pytest.mark.postgres
def test_gc_in_a_loop_never_breaks_concurrent_registrations_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMOPS_DATABASE_URL", pg_url)
    _race(Settings.from_env(), tmp_path)


def test_gc_skips_files_that_vanish_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob, staging file or view removed between gc's listing and its stat is skipped."""
    art = ArtifactStore(str(tmp_path / "art"), tmp_path / "cache")
    src = tmp_path / "f.txt"
    src.write_text("gone soon")
    digest, _ = art.add_file(src)
    art.staging.mkdir(parents=True, exist_ok=True)
    (art.staging / "x.part").write_text("half")
    (art.views / ".half-built").mkdir(parents=True)

    real_stat = Path.stat

    def vanishing_stat(self: Path, *a: object, **k: object) -> os.stat_result:
        # the file is gone by the time gc looks at it (another gc, or a writer renaming it)
        if self.name in (digest, "x.part", ".half-built"):
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", vanishing_stat)
    art.gc(lambda: (set(), set()), grace_s=0)  # no crash


def test_live_staging_files_survive_gc_with_grace_0(tmp_path: Path) -> None:
    """A staging file a live writer holds is never collected; a dead writer's is."""
    art = ArtifactStore(str(tmp_path / "art"), tmp_path / "cache")
    src = tmp_path / "f.txt"
    src.write_text("being written")
    with art.staged(src) as staged:
        art.gc(lambda: (set(), set()), grace_s=0)
        assert staged.path.exists()
    assert not staged.path.exists()
    art.staging.mkdir(parents=True, exist_ok=True)
    (art.staging / "dead.part").write_text("a crashed writer's")
    art.gc(lambda: (set(), set()), grace_s=0)
    assert not (art.staging / "dead.part").exists()


def test_blob_reused_right_after_gc_read_the_references_is_kept(
    store: Store, tmp_path: Path
) -> None:
    """The narrow case, made deterministic: gc has read the references (the old blob is
    unreferenced), then a registration of the same bytes claims it, finds it and turns
    READY, then gc goes on to delete what it found unreferenced."""
    f = tmp_path / "a.txt"
    f.write_text("bytes stored again")
    store.assets.register("dataset", "old", f)
    store.assets.delete("old")
    reads = []

    def references() -> tuple[set[str], set[str]]:
        refs = store.assets.referenced()
        if not reads:
            assert store.assets.register("dataset", "new", f).status is VersionStatus.READY
        reads.append(refs)
        return refs

    store.artifacts.gc(references, grace_s=0)
    assert len(reads) == 2  # gc looked again before deleting
    assert store.assets.verify("new") == {"new:1": []}
    assert store.assets.path("new").read_text() == "bytes stored again"
