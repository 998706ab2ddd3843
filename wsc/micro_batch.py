"""Micro-batching: a step's batch run as several passes of one smaller graph, as Cerebras runs a training batch
too big for the wafer's SRAM (each micro-batch goes through every layer; gradients would accumulate).

The batch is the first dimension of the inputs that carry it (a language model's [batch, seq] token ids). A
micro-batch is a whole number of sequences that divides each system's share of the batch evenly, so every pass
has the same shapes and one compiled graph serves them all. `choose` first finds the largest micro-batch that
fits (what grows with it is the activation store each layer holds for its pass; a refusal says by how much),
then looks at every smaller divisor: a size whose floor (the step's schedule with every layer's compute at the
whole wafer's peak) is already no faster than the largest's step cannot win and is skipped, and the rest are
ranked from the largest's terms; the fastest is compiled and kept if it beats the largest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Tried:
    """One pass size the search looked at, and what became of it (report.json `micro_batch_search`)."""

    sequences: int
    outcome: str  # chosen, fits, does not fit, cannot win, ranked, compiled, not batched or does not place
    step_seconds: float | None = None  # its training step: as compiled, or as ranked from the largest's terms
    floor_seconds: float | None = None  # the floor under its step (`floor`), when one was asked for


def choose(per_system: int, requested: int | None, attempt: Callable[[int], T],
           seconds: Callable[[T], float], *, rank: Callable[[T, int], float] | None = None,
           floor: Callable[[T, int], float] | None = None, cramped: Callable[[T], bool] | None = None,
           log: list[Tried] | None = None) -> T:
    """Run `attempt(micro_batch)` with the requested micro-batch (sequences per pass, dividing `per_system`),
    or else with the fastest of those that fit by `seconds`.

    1. The largest that fits, by attempts: the whole share first, then smaller sizes scaled by each
       refusal's needed / offered (the activation store grows with the tokens of a pass).
    2. Every smaller divisor of the share: one whose `floor(largest, size)` (a floor under its step worked
       from the compiled largest: passes/estimate.py `training_floor`) is no faster than the largest's step
       cannot win and is skipped; the others are ranked by `rank(largest, size)` (its step predicted from
       the largest's terms: `scaled_training_step`), or when no `rank` is given, by attempting them.
    3. The fastest by rank, if it is not the largest, is attempted and kept if it beats the largest; so is the
       half of the largest when `cramped(largest)` says its cuts may have been squeezed in a way the ranking
       cannot see (a fabric-bound pass may owe its fabric to lanes the partitioner gave up for room).
    A refusal at one sequence per pass is the model's own: it is passed on. `requested` is a valid
    micro-batch (at least 1: see wsc.options); whether it divides the batch is checked here. Each size looked
    at is appended to `log`."""
    log = [] if log is None else log
    if requested is not None:
        if per_system % requested:
            raise WscError(f"--micro-batch {requested} does not divide the {per_system} sequences each system "
                           "runs per step; give a divisor of it")
        chosen = attempt(requested)
        log.append(Tried(requested, "chosen", seconds(chosen)))
        return chosen
    size = per_system
    while True:
        try:
            largest = attempt(size)
            break
        except DoesNotFit as refusal:
            log.append(Tried(size, "does not fit"))
            if size == 1:
                raise
            ratio = refusal.offered / refusal.needed if refusal.needed else 0.5
            size = divisors_below(per_system, min(size - 1, size * min(ratio, 0.9)))
    best_seconds = seconds(largest)
    entries = {size: Tried(size, "fits", best_seconds)}
    ranked: dict[int, float] = {size: best_seconds}
    attempted: dict[int, T] = {}
    for candidate in [d for d in range(size - 1, 0, -1) if per_system % d == 0]:
        bound = floor(largest, candidate) if floor is not None else None
        if bound is not None and bound >= best_seconds:
            entries[candidate] = Tried(candidate, "cannot win", None, bound)
            continue
        if rank is not None:
            ranked[candidate] = rank(largest, candidate)
        else:
            try:
                attempted[candidate] = attempt(candidate)
            except (DoesNotFit, NotBatched):  # does not place, or its outputs cannot be stacked: not a choice
                entries[candidate] = Tried(candidate, "not batched or does not place", None, bound)
                continue
            ranked[candidate] = seconds(attempted[candidate])
        entries[candidate] = Tried(candidate, "ranked", ranked[candidate], bound)
    best = largest
    fastest = min(ranked, key=lambda d: (ranked[d], -d))
    tries = [fastest] if fastest != size else []
    half = divisors_below(per_system, size / 2)
    if cramped is not None and cramped(largest) and half < size and half not in tries \
            and entries[half].outcome != "cannot win":
        tries.append(half)  # its cuts may have given up lanes for room, which a ranking at the same cuts cannot see
    for candidate in tries:
        try:
            compiled: T | None = attempted.get(candidate) or attempt(candidate)
        except (DoesNotFit, NotBatched):
            compiled = None
        if compiled is not None:
            entries[candidate] = replace(entries[candidate], outcome="compiled", step_seconds=seconds(compiled))
            if seconds(compiled) < seconds(best):
                best, size = compiled, candidate
    entries[size] = replace(entries[size], outcome="chosen")
    log.extend(entries[d] for d in sorted(entries, reverse=True))
    return best
