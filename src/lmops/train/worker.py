"""Entry point of each process of ``lmops train --nproc N`` (started by torchrun).

The launcher records the run and passes its id; rank 0 logs metrics, writes checkpoints
and registers the output, the other ranks only compute.

With ``--report-dir DIR`` (the launcher's), a worker prints no error of its own: each rank
that fails writes ``error-rank{R}.json`` there (its one-line message, exit code and when),
and rank 0 writes ``result.json`` (the :class:`~lmops.train.run.TrainResult`) when it is
done, so the launcher prints one line for the whole job, as one process would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmops.core.atomic import write_atomic

RESULT = "result.json"
ERROR_GLOB = "error-rank*.json"


def error_file(report_dir: Path, rank: int) -> Path:
    return report_dir / f"error-rank{rank}.json"


def _report(report_dir: Path | None, rank: int, message: str, exit_code: int) -> None:
    if report_dir is None:
        print(f"error: {message}", file=sys.stderr)
        return
    message = " ".join(message.split())  # one line, as the launcher prints it
    record = {"rank": rank, "message": message, "exit_code": exit_code, "time": time.time()}
    _write_json(error_file(report_dir, rank), record)


def _write_json(path: Path, data: Any) -> None:
    # the launcher reads it once every worker has exited; atomic all the same
    write_atomic(path, lambda fh: fh.write(json.dumps(data, default=str).encode()))


def write_result(report_dir: Path, result: Any) -> None:
    _write_json(report_dir / RESULT, asdict(result))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmops.train.worker")
    ap.add_argument("config", type=Path)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--report-dir", type=Path, default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)

    from lmops.core.errors import LmopsError
    from lmops.store import Store
    from lmops.train.loop import Dist
    from lmops.train.run import run_training
    from lmops.train.spec import load_spec

    dist = Dist.from_env()
    try:
        spec = load_spec(args.config, args.overrides)
        store = Store(origin="cli")
        result = run_training(
            spec,
            store,
            resume=args.resume,
            progress=dist.main and args.progress,
            run_id=args.run_id,
            dist=dist,
        )
        if dist.main and args.report_dir is not None:
            write_result(args.report_dir, result)
    except LmopsError as e:
        _report(args.report_dir, dist.rank, str(e), e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:  # the launcher reports where the checkpoint is
        return 130
    except Exception as e:  # a bug: one line, the traceback with LMOPS_DEBUG (and in run.log)
        if os.environ.get("LMOPS_DEBUG") or args.report_dir is None:
            traceback.print_exc()
        _report(args.report_dir, dist.rank, f"{type(e).__name__}: {e}", 70)
        return 70
    finally:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
