"""Entry point of each process of ``lmops train --nproc N`` (started by torchrun).

The launcher records the run and passes its id; rank 0 logs metrics, writes checkpoints
and registers the output, the other ranks only compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lmops.train.worker")
    ap.add_argument("config", type=Path)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
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
        run_training(
            spec, store, resume=args.resume, progress=dist.main, run_id=args.run_id, dist=dist
        )
    except LmopsError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # the launcher reports where the checkpoint is
        return 130
    finally:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
