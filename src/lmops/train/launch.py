"""torchrun for ``lmops train --nproc N``, quiet about failures the workers report.

``python -m torch.distributed.run`` ends a failed job with a ``ChildFailedError`` traceback
(about 40 lines) and its agent logs each worker it stops; the workers write their own
one-line errors for the launcher (:mod:`lmops.train.worker`), so this runs the same
launcher and, when a worker fails, exits with that worker's exit code and nothing else
said. ``LMOPS_DEBUG=1`` keeps torchrun's own output.
"""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    debug = bool(os.environ.get("LMOPS_DEBUG"))
    if not debug:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        if debug:
            raise
        _rank, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:  # Ctrl-C forwarded by the launcher: it reports the checkpoint
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
