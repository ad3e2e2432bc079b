"""Geometric self-ensemble: the mean (and spread) of a model over the 8 dihedral views.

A super-resolver trained with flips and 90-degree rotations should commute with them; it
only approximately does, so averaging its predictions on the 8 views (EDSR's "+" rows) gives
a better estimate, and their spread shows where the network is guessing.

View ``i`` (0..7) is "flip the width axis if ``i >= 4``, then rotate by ``i % 4`` quarter
turns" on the last two axes; ``inverse_view`` undoes it on the (scaled) prediction. Views with
an odd number of quarter turns swap height and width, so a non-square input gives two shape
groups of four views; each group is concatenated along the batch axis and run in chunks of at
most ``max_batch`` rows.

The mean and population standard deviation are accumulated with Welford's update in view order
0..7 (mean += (p - mean) / k): eight identical predictions give exactly that prediction and a
standard deviation of exactly 0, and the result does not depend on ``max_batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = [
    "NUM_VIEWS",
    "RunningMoments",
    "ensembled",
    "inverse_view",
    "iter_view_predictions",
    "self_ensemble",
    "view",
]

#: The dihedral group of the square has 8 elements.
NUM_VIEWS = 8

Model = Callable[[torch.Tensor], torch.Tensor]


def _check_index(index: int) -> None:
    if not 0 <= index < NUM_VIEWS:
        raise ValueError(f"view index must be in 0..{NUM_VIEWS - 1}, got {index}")


def view(x: torch.Tensor, index: int) -> torch.Tensor:
    """Dihedral view ``index`` of ``x`` (..., H, W): optional width flip, then quarter turns.

    Args:
        x: A tensor with at least two dimensions; the last two are height and width.
        index: 0..7; ``index >= 4`` flips, ``index % 4`` counter-clockwise quarter turns.

    Returns:
        A new tensor; (..., W, H) when ``index % 4`` is odd, else (..., H, W).
    """
    _check_index(index)
    y = torch.flip(x, dims=(-1,)) if index >= 4 else x
    return torch.rot90(y, index % 4, dims=(-2, -1))


def inverse_view(y: torch.Tensor, index: int) -> torch.Tensor:
    """Undo ``view(., index)``: ``inverse_view(view(x, i), i) == x`` for every ``i``."""
    _check_index(index)
    y = torch.rot90(y, -(index % 4), dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if index >= 4 else y


def iter_view_predictions(
    model: Model, x: torch.Tensor, *, max_batch: int = NUM_VIEWS
) -> Iterator[tuple[int, slice, torch.Tensor]]:
    """Run ``model`` on the 8 views of ``x`` and yield each prediction back in ``x``'s frame.

    Args:
        model: Any callable (B, C, h, w) -> (B, C', s*h, s*w), e.g. an ``lgun.LGUN`` or
            ``lgun.fast.optimize_for_inference``'s copy. Called under ``torch.no_grad``.
        x: Input batch (B, C, h, w).
        max_batch: Most rows per model call (>= 1). ``NUM_VIEWS`` puts the 8 views of a square
            tile (or the 4 of each shape group) in one call; 1 runs them one by one.

    Yields:
        ``(index, rows, prediction)``: view ``index`` of the inputs ``x[rows]``, with
        ``prediction`` (n, C', s*h, s*w) inverse-transformed. Views come in order 0..7 for
        each input (a chunk may hold several views, or part of one).

    Raises:
        ValueError: ``x`` is not 4-D or ``max_batch < 1``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, h, w) batch, got shape {tuple(x.shape)}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    b = x.shape[0]
    square = x.shape[-2] == x.shape[-1]
    # Views that share a shape run together: all 8 for a square input, else even/odd turns.
    groups = [list(range(NUM_VIEWS))] if square else [[0, 2, 4, 6], [1, 3, 5, 7]]
    for group in groups:
        # Rows are view-major: row r holds view group[r // b] of input r % b.
        stacked = torch.cat([view(x, i) for i in group])  # (len(group) * B, C, h|w, w|h)
        for start in range(0, stacked.shape[0], max_batch):
            with torch.no_grad():
                out = model(stacked[start : start + max_batch])
            # Split the chunk at view boundaries so each piece is inverted with its view.
            r = start
            while r < start + out.shape[0]:
                k, first = divmod(r, b)
                n = min(b - first, start + out.shape[0] - r)
                piece = out[r - start : r - start + n]
                yield group[k], slice(first, first + n), inverse_view(piece, group[k])
                r += n


class RunningMoments:
    """Per-pixel running mean and population std of a stream of views (Welford, float32).

    ``update`` takes the pieces ``iter_view_predictions`` yields; since each input sees its
    views in order, every row of a piece has seen the same number of views before it.
    """

    def __init__(self, batch_size: int) -> None:
        self.count = [0] * batch_size
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, rows: slice, p: torch.Tensor) -> None:
        """Add ``p`` (n, ...) as the next view of inputs ``rows`` (n of them)."""
        p = p.float()
        if self.mean is None or self._m2 is None:
            shape = (len(self.count), *p.shape[1:])
            self.mean = torch.zeros(shape, dtype=torch.float32, device=p.device)
            self._m2 = torch.zeros_like(self.mean)
        k = self.count[rows.start] + 1
        self.count[rows] = [k] * (rows.stop - rows.start)
        delta = p - self.mean[rows]
        self.mean[rows] += delta / k
        self._m2[rows] += delta * (p - self.mean[rows])

    def std(self) -> torch.Tensor:
        """Population standard deviation (divided by the count, not count - 1)."""
        if self._m2 is None:
            raise ValueError("no views were added")
        # Rounding can leave m2 a hair below 0 where the views agree.
        return self._m2.clamp(min=0).div_(max(self.count)).sqrt_()


def self_ensemble(
    model: Model,
    x: torch.Tensor,
    *,
    max_batch: int = NUM_VIEWS,
    return_std: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The mean (and population std) of ``model``'s predictions on the 8 dihedral views.

    Args:
        model: As ``iter_view_predictions``.
        x: Input batch (B, C, h, w).
        max_batch: Most rows per model call (see ``iter_view_predictions``).
        return_std: Also return the per-pixel standard deviation of the 8 predictions.

    Returns:
        The float32 mean (B, C', s*h, s*w), or ``(mean, std)`` with ``std`` the population
        standard deviation (divided by 8, not 7), float32, same shape.
    """
    acc = RunningMoments(x.shape[0])
    for _, rows, p in iter_view_predictions(model, x, max_batch=max_batch):
        acc.update(rows, p)
    assert acc.mean is not None
    return (acc.mean, acc.std()) if return_std else acc.mean


def ensembled(model: Model, *, max_batch: int = NUM_VIEWS) -> Model:
    """``model`` wrapped as a callable that returns its self-ensemble mean."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out = self_ensemble(model, x, max_batch=max_batch)
        assert isinstance(out, torch.Tensor)
        return out

    run.__name__ = f"{getattr(model, '__name__', type(model).__name__)}+ensemble"
    return run
