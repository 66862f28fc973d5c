"""What recording a large local input costs a job, with and without the hash cache
(issue #13 item 3), printed as a table.

    python benchmarks/external_bench.py [--mb 200] [--files 50]

Generates a model-like folder of ``--mb`` MiB in a temp folder (one big weights file plus
``--files`` files of 1 MiB, mtimes moved a minute back as for files written before a job
starts) and times, in a fresh ``LMOPS_HOME``:

* ``sha256 only``: hashlib over every file, the floor any content reference pays once;
* ``first run``: ``store.assets.external(folder)``, nothing cached (walk, hash, record);
* ``re-run``: the same call again, as every later job over that folder makes it (stat
  each file, one query of the cache, same version found);
* ``one file edited``: after rewriting one 1 MiB file (a new version; only it is read);
* ``verify``: ``store.assets.verify`` of the reference (reads every file again).

Run it against another checkout with ``PYTHONPATH=<checkout>/src`` to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmops-external-bench-") as tmp:
        os.environ["LMOPS_HOME"] = str(Path(tmp) / "home")
        for var in ("LMOPS_DATABASE_URL", "LMOPS_ARTIFACTS", "LMOPS_COPY_INPUTS"):
            os.environ.pop(var, None)
        from lmops.store import Store

        folder = Path(tmp) / "model"
        folder.mkdir()
        mib = 1 << 20
        big = args.mb - args.files
        with open(folder / "model.safetensors", "wb") as fh:
            for _ in range(big):
                fh.write(os.urandom(mib))
        for i in range(args.files):
            (folder / f"shard-{i:03d}.bin").write_bytes(os.urandom(mib))
        past = time.time() - 60
        for p in folder.iterdir():
            os.utime(p, (past, past))
        store = Store()
        rows: list[tuple[str, float, str]] = []

        t = time.perf_counter()
        for p in sorted(folder.iterdir()):
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while chunk := fh.read(mib):
                    h.update(chunk)
        rows.append(("sha256 only", time.perf_counter() - t, ""))

        t = time.perf_counter()
        v = store.assets.external(folder)
        rows.append(("first run", time.perf_counter() - t, v.ref))

        t = time.perf_counter()
        again = store.assets.external(folder)
        rows.append(("re-run", time.perf_counter() - t, again.ref))

        (folder / "shard-000.bin").write_bytes(os.urandom(mib))
        os.utime(folder / "shard-000.bin", (past + 1, past + 1))
        t = time.perf_counter()
        edited = store.assets.external(folder)
        rows.append(("one file edited", time.perf_counter() - t, edited.ref))

        t = time.perf_counter()
        report = store.assets.verify(edited.ref)
        rows.append(("verify", time.perf_counter() - t, "ok" if not report[edited.ref] else "?"))

        n = len(list(folder.iterdir()))
        print(f"folder: {args.mb} MiB in {n} files")
        print(f"{'':<18}{'seconds':>9}  {'MiB/s':>8}  version")
        for name, secs, ref in rows:
            print(f"{name:<18}{secs:>9.3f}  {args.mb / secs:>8.0f}  {ref}")
        store.close()


if __name__ == "__main__":
    main()
