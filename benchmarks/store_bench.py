"""Registration and gc timings of the store on SQLite, printed as a table.

    python benchmarks/store_bench.py [--files 2000] [--singles 200]

What it measures, each in a fresh ``LMOPS_HOME`` under a temp folder:

* ``singles``: ``--singles`` one-file registrations of 1 KiB each (per-registration cost:
  three write transactions plus the digest claim);
* ``tree``: one registration of a folder of ``--files`` files of 1 KiB (claims are written
  once per batch of 64 files);
* ``gc``: ``store.gc(grace_s=0)`` after deleting the tree (moves each blob aside, re-reads
  the references, deletes).

Run it against another checkout with ``PYTHONPATH=<checkout>/src`` to compare.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--singles", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmops-store-bench-") as tmp:
        os.environ["LMOPS_HOME"] = str(Path(tmp) / "home")
        for var in ("LMOPS_DATABASE_URL", "LMOPS_ARTIFACTS"):
            os.environ.pop(var, None)
        import lmops.store
        from lmops.store import Store

        store = Store()
        src = Path(tmp) / "src"
        src.mkdir()
        singles = []
        for i in range(args.singles):
            f = src / f"single-{i}.bin"
            f.write_bytes(os.urandom(1024))
            singles.append(f)
        tree = src / "tree"
        for i in range(args.files):
            f = tree / f"d{i % 20}" / f"{i}.bin"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(os.urandom(1024))

        t = time.perf_counter()
        for f in singles:
            store.assets.register("dataset", "single", f)
        singles_s = time.perf_counter() - t
        t = time.perf_counter()
        store.assets.register("dataset", "tree", tree)
        tree_s = time.perf_counter() - t
        store.assets.delete("tree")
        t = time.perf_counter()
        rep = store.gc(grace_s=0)
        gc_s = time.perf_counter() - t
        store.close()

    print(f"lmops store from {Path(lmops.store.__file__).parent}")
    print(f"{'what':<8} {'count':>6} {'total s':>8} {'ms each':>8}")
    for what, n, secs in [
        ("singles", args.singles, singles_s),
        ("tree", args.files, tree_s),
        ("gc", rep.blobs_removed, gc_s),
    ]:
        print(f"{what:<8} {n:>6} {secs:>8.2f} {1000 * secs / max(n, 1):>8.2f}")


if __name__ == "__main__":
    main()
