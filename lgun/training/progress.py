"""Progress of the training loop: a tqdm bar when importable, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["ProgressBar"]

log = logging.getLogger("lgun.train")


class ProgressBar:
    """Steps done, loss, learning rate, speed and ETA.

    With tqdm, a bar on stderr (loss and learning rate as postfix; refreshed every 0.5 s on a
    terminal, every 30 s in a log file). Without it, an ``INFO`` line on the ``lgun.train``
    logger every ``every`` steps.
    """

    def __init__(self, start: int, total: int, every: int) -> None:
        self.total, self.every, self.t0, self.start = total, every, time.time(), start
        try:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(initial=start, total=total, dynamic_ncols=True,
                            mininterval=0.5 if tty else 30.0)
        except ImportError:
            self.bar = None

    def update(self, step: int, loss: float, lr: float) -> None:
        """Record optimiser step ``step`` (0-based) and its loss and learning rate."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)
        elif (step + 1) % self.every == 0:
            rate = (step + 1 - self.start) / max(1e-9, time.time() - self.t0)
            eta = (self.total - step - 1) / max(rate, 1e-9)
            log.info("step %d/%d loss %.4f lr %.2e %.2f it/s ETA %.1f min", step + 1,
                     self.total, loss, lr, rate, eta / 60)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
