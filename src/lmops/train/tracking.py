"""Where a trainer reports: one ``log(step, metrics)`` method, plus a folder for files.

``StoreTracker`` writes metrics to the run in the store (and to tensorboard / wandb /
mlflow when asked and installed); ``MemoryTracker`` keeps them in a dict, for tests and
library use. Both print nothing: progress bars belong to the caller, who wraps a tracker
in :func:`progress` where the trainer draws none of its own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "MemoryTracker",
    "ProgressTracker",
    "StoreTracker",
    "Tracker",
    "plot_loss_curve",
    "progress",
]


class Tracker(Protocol):
    run_dir: Path

    def log(self, step: int, metrics: dict[str, float]) -> None: ...


class MemoryTracker:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.history: dict[str, list[tuple[int, float]]] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.history.setdefault(k, []).append((step, float(v)))

    def last(self, name: str) -> float:
        return self.history[name][-1][1]


class StoreTracker:
    """Logs to the store run ``run_id`` (rank 0 only) and optional external trackers."""

    def __init__(self, store: Store, run_id: str, report_to: list[str] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.run_dir = Path(store.runs.dir(run_id))
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._external: list[Any] = []
        for name in report_to or []:
            self._external.append(_external_tracker(name, self.run_dir, run_id))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        }
        for k, v in clean.items():
            self.history.setdefault(k, []).append((step, v))
        if clean:
            self.store.runs.log_metrics(self.run_id, clean, step=step)
        for ext in self._external:
            ext(step, clean)


# what a progress bar shows of the last logged metrics, where a stage logs them
_SHOWN = ("loss", "accuracy", "margin", "reward", "kl")


class ProgressTracker:
    """Passes each log to ``inner`` and moves a progress bar to its step, showing the
    latest training metrics (:data:`_SHOWN`; eval metrics are not shown). The bar moves as
    the trainer logs: every step by default, every ``train.log_steps`` steps if set."""

    def __init__(self, inner: Tracker, bar: Any) -> None:
        self.inner, self.bar = inner, bar
        self.run_dir = inner.run_dir
        self.shown: dict[str, float] = {}
        self.step = 0  # the furthest step logged (an eval log may repeat one)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.log(step, metrics)
        for k in _SHOWN:
            v = metrics.get(k)
            if v is not None and math.isfinite(float(v)):
                self.shown[k] = float(v)
        self.bar.describe(", ".join(f"{k} {v:.4g}" for k, v in self.shown.items()))
        self.step = max(self.step, step)
        self.bar.update(self.step)


@contextlib.contextmanager
def progress(
    tracker: Tracker, title: str, total: int, *, start: int = 0, enabled: bool = True
) -> Iterator[Any]:
    """``tracker`` wrapped in a :class:`ProgressTracker` whose bar (``title``, ``start`` of
    ``total`` steps done, elapsed and remaining time) is shown while the block runs;
    ``tracker`` itself when not ``enabled`` (``--json``, ranks other than 0)."""
    if not enabled:
        yield tracker
        return
    from lmops.core.progress import Progress

    # a bar on a terminal, a plain line every 30 s otherwise (a log file, nohup, CI)
    with Progress(total, label=title, unit="steps", start=start) as bar:
        yield ProgressTracker(tracker, bar)


def _external_tracker(name: str, run_dir: Path, run_id: str) -> Any:
    from lmops.core.errors import UserError

    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("report_to: tensorboard needs `pip install tensorboard`") from None
        writer = SummaryWriter(str(run_dir / "tensorboard"))

        def tb(step: int, m: dict[str, float]) -> None:
            for k, v in m.items():
                writer.add_scalar(k, v, step)
            writer.flush()

        return tb
    if name == "wandb":
        try:
            import wandb
        except ImportError:
            raise UserError("report_to: wandb needs `pip install wandb`") from None
        run = wandb.init(id=run_id, resume="allow", dir=str(run_dir))
        return lambda step, m: run.log(m, step=step)
    if name == "mlflow":
        try:
            import mlflow
        except ImportError:
            raise UserError("report_to: mlflow needs `pip install mlflow`") from None
        mlflow.start_run(run_name=run_id)
        return lambda step, m: mlflow.log_metrics(m, step=step)
    raise UserError(f"report_to: unknown tracker {name!r}")


def plot_loss_curve(
    history: dict[str, list[tuple[int, float]]], path: Path, title: str
) -> Path | None:
    """A PNG of loss (and eval loss) against step; None if there is nothing to plot."""
    series = {
        k: v for k, v in history.items() if k in ("loss", "eval_loss", "reward", "margin") and v
    }
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, points in series.items():
        ax.plot(
            [s for s, _ in points],
            [v for _, v in points],
            label=k,
            marker="o" if len(points) < 30 else None,
        )
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
