"""The batches of a run, step after step: made in the loop, or ahead of it by worker processes.

``PairSampler.batch(step)`` is a pure function of the seed and the step, so a batch does not
depend on the process that makes it: workers change *when* a batch is ready, never what it
holds, and a resumed run sees the same batches. On an accelerator the loop would otherwise
wait on numpy: the sensor mixture's patch degradations (Gaussian PSF, block means, bicubic)
took 0.69 s per batch of 64 x 144^2 HR patches on one CPU core (2026-11-30, Zen 3, under
load), far more than a GPU step of the same batch. ``torch.utils.data.DataLoader`` runs
``runtime.data_workers`` processes that make batches ahead of the loop, in step order.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lgun.data import PairSampler

#: Batches each worker keeps ready ahead of the loop.
PREFETCH_PER_WORKER = 4


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is the (LR, HR) batch of that step (float32 tensors in [0, 1])."""

    def __init__(self, sampler: PairSampler, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.sampler.batch(step, self.batch_size)
        return torch.from_numpy(lr), torch.from_numpy(hr)


class BatchStream:
    """The batches of steps ``start``, ``start + 1``, ... ``stop - 1``, in order.

    Args:
        sampler: The run's sampler.
        batch_size: Patches per batch.
        start: The first step (the resumed step).
        stop: One past the last step the run may take.
        workers: Processes making batches ahead (0: each batch is made when asked for).
        pin_memory: Page-locked batches, for asynchronous copies to a CUDA device.

    Attributes:
        wait_s: Seconds ``next`` spent waiting for batches so far (with workers, the time the
            loop was starved; without, the time spent making batches).
    """

    def __init__(self, sampler: PairSampler, batch_size: int, start: int, stop: int, *,
                 workers: int = 0, pin_memory: bool = False) -> None:
        self.wait_s = 0.0
        self._step = start
        self._stop = stop
        self._make = _StepBatches(sampler, batch_size)
        self._iter: Any = None
        if workers > 0:
            # The sampler reaches the workers by fork (Linux), not by pickling its images.
            loader = torch.utils.data.DataLoader(
                self._make, batch_size=None, sampler=range(start, stop), num_workers=workers,
                pin_memory=pin_memory, prefetch_factor=PREFETCH_PER_WORKER)
            self._iter = iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._step >= self._stop:
            raise StopIteration
        t0 = time.perf_counter()
        batch = next(self._iter) if self._iter is not None else self._make[self._step]
        self.wait_s += time.perf_counter() - t0
        self._step += 1
        return batch

    def close(self) -> None:
        """Stop the workers (the batches made ahead are dropped)."""
        self._iter = None  # the last reference: the iterator shuts its workers down

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
