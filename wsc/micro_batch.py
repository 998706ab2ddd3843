"""Micro-batching: a step's batch run as several passes of one smaller graph, as Cerebras runs a training batch
too big for the wafer's SRAM (each micro-batch goes through every layer; gradients would accumulate).

The batch is the first dimension of the inputs that carry it (a language model's [batch, seq] token ids). A
micro-batch is a whole number of sequences that divides each system's share of the batch evenly, so every pass
has the same shapes and one compiled graph serves them all. `choose` first finds the largest micro-batch that
fits (a refusal says how many PEs a layer needed against those it had, and the working set shrinks about in
proportion to the tokens per pass, so the next try is scaled by that ratio), then keeps the fastest of it and
its halvings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from wsc.core.errors import DoesNotFit, WscError

T = TypeVar("T")


class NotBatched(WscError):
    """A pass's outputs do not carry the batch, so passes of this micro-batch cannot be put together: the
    step must run this size whole (a search over micro-batches skips it)."""


def batch_size(example_inputs: Sequence[torch.Tensor]) -> int | None:
    """The batch dimension: the first input's first dimension, when it has a sequence dimension after it."""
    first = example_inputs[0] if example_inputs else None
    if not isinstance(first, torch.Tensor) or first.dim() < 2:
        return None
    return int(first.shape[0])


def batched(example_inputs: Sequence[torch.Tensor], batch: int) -> list[bool]:
    """Which inputs carry the batch: those whose first dimension is it."""
    return [isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == batch for t in example_inputs]


def first_rows(example_inputs: Sequence[torch.Tensor], batch: int, rows: int) -> tuple[torch.Tensor, ...]:
    """The first micro-batch of the inputs: `rows` of each input that carries the batch."""
    carried = batched(example_inputs, batch)
    return tuple(t[:rows] if c else t for t, c in zip(example_inputs, carried, strict=True))


def divisors_below(n: int, limit: float) -> int:
    """The largest divisor of `n` no larger than `limit` (at least 1)."""
    best = 1
    for d in range(1, n + 1):
        if n % d == 0 and d <= limit:
            best = d
    return best


def choose(per_system: int, requested: int | None, attempt: Callable[[int], T],
           seconds: Callable[[T], float]) -> T:
    """Run `attempt(micro_batch)` with the requested micro-batch (sequences per pass, dividing `per_system`),
    or else with the fastest of those that fit by `seconds`. The largest that fits is found first; each halving
    of it streams the weights twice as often but frees PEs that the largest kept at their SRAM minimum, and
    which wins is not monotonic, so every halving down to one sequence is tried (a log2 of the batch of
    compiles). A refusal at one sequence per pass is the model's own: it is passed on. `requested` is a valid
    micro-batch (at least 1: see wsc.options); whether it divides the batch is checked here."""
    if requested is not None:
        if per_system % requested:
            raise WscError(f"--micro-batch {requested} does not divide the {per_system} sequences each system "
                           "runs per step; give a divisor of it")
        return attempt(requested)
    size = per_system
    while True:
        try:
            best = attempt(size)
            break
        except DoesNotFit as refusal:
            if size == 1:
                raise
            ratio = refusal.offered / refusal.needed if refusal.needed else 0.5
            size = divisors_below(per_system, min(size - 1, size * min(ratio, 0.9)))
    while size > 1:
        size = divisors_below(per_system, size / 2)
        try:
            candidate = attempt(size)
        except (DoesNotFit, NotBatched):  # does not place, or its outputs cannot be stacked: try the next
            continue
        if seconds(candidate) < seconds(best):
            best = candidate
    return best
