"""The step as a sequence of phases on one system, with weight streams double-buffered around them.

A phase is one layer's turn on the wafer (forward, or backward in a training step). Before a phase can run its
weights must be on the wafer; they stream in from the store during the phase before it. A backward phase
produces its layer's weight gradients, which stream out during the phase after it. The I/O link is full duplex
(12 x 100 GbE), so what streams in and what streams out in the same slot overlap. One phase's slot is

    slot(j) = max(compute(j), fabric(j), stream_in(j+1), stream_out(j-1))

and the step is the first phase's stream (nothing to hide it behind), every slot, and the last phase's
gradients streaming out (nothing after them to hide behind):

    step = stream_in(0) + sum_j slot(j) + stream_out(last)

Phases run back to back across micro-batches: the next pass's first layer streams in during this pass's last
layer, so passes add no exposed stream of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    layer: int
    pass_index: int
    backward: bool
    work: dict[str, float]  # the phase's own terms: compute, fabric
    stream_in: float  # seconds to stream the weights it needs
    stream_out: float = 0.0  # seconds to stream out the gradients it produces


@dataclass(frozen=True)
class Slot:
    phase: Phase
    start: float  # when the slot begins
    seconds: float  # how long it lasts
    bound: str  # the term that sets its length


def forward_phases(layers: list[dict], passes: int) -> list[Phase]:
    return [phase for p in range(passes) for phase in _forward(layers, p)]


def training_phases(layers: list[dict], passes: int) -> list[Phase]:
    """Forward through the layers, then backward in reverse: the weights stream in again (MemoryX keeps them,
    the wafer does not), and each layer's gradients (as many bytes as its weights) stream out. The output
    gradients retrace the forward flows in reverse (the same bytes over the same links). Gradients of
    successive micro-batches accumulate where the optimizer runs, off the wafer."""
    phases = []
    for p in range(passes):
        phases += _forward(layers, p)
        phases += [Phase(i, p, True, {"compute": layers[i]["backward_compute_seconds"],
                                      "fabric": layers[i]["fabric_seconds"]},
                         layers[i]["stream_seconds"], layers[i]["stream_seconds"])
                   for i in reversed(range(len(layers)))]
    return phases


def _forward(layers: list[dict], pass_index: int) -> list[Phase]:
    return [Phase(i, pass_index, False, {"compute": e["compute_seconds"], "fabric": e["fabric_seconds"]},
                  e["stream_seconds"]) for i, e in enumerate(layers)]


def run(phases: list[Phase]) -> tuple[float, list[Slot], dict[str, float]]:
    """The step's length, each phase's slot, and the time each term bounds (the exposed streams count as
    stream)."""
    if not phases:
        return 0.0, [], {}
    t = phases[0].stream_in
    by_term = {"stream": t}
    slots = []
    for j, phase in enumerate(phases):
        following = phases[j + 1].stream_in if j + 1 < len(phases) else 0.0
        preceding = phases[j - 1].stream_out if j > 0 else 0.0
        terms = {**phase.work, "stream": max(following, preceding)}
        bound = max(terms, key=terms.__getitem__)
        slots.append(Slot(phase, t, terms[bound], bound))
        by_term[bound] = by_term.get(bound, 0.0) + terms[bound]
        t += terms[bound]
    t += phases[-1].stream_out
    by_term["stream"] += phases[-1].stream_out
    return t, slots, by_term


def pipelined(layer_seconds: list[float], passes: int, pass_tokens: float) -> tuple[float, list[tuple[float, float]]]:
    """Pipelined mode: every layer resident, tokens flowing through them one after another. The slowest layer
    sets the pace of every pass, and the pipeline fills once per step: layer i starts when the first token
    reaches it (the earlier layers' share of one token) and runs for `passes` x the slowest layer's time plus
    its own share of one token. Returns the step and each layer's (start, duration)."""
    tokens = max(pass_tokens, 1)
    slowest = max(layer_seconds, default=0.0)
    spans, start = [], 0.0
    for seconds in layer_seconds:
        share = seconds / tokens
        spans.append((start, passes * slowest + share))
        start += share
    return passes * slowest + sum(layer_seconds) / tokens, spans
