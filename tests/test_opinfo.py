"""OpInfo conformance: a seeded handful of torch's own sample inputs for each op wsc covers, compiled, run and
held to eager PyTorch (tests/opinfo_harness.py; benchmarks/opinfo.py runs every sample).

A wrong number or an internal error fails; a refusal passes when it is a WscError that names the unsupported
case in one line (one line per op it refuses, for a sample whose graph holds several ops).
"""

from __future__ import annotations

import random
import re

import pytest
from opinfo_harness import SampleModule, covered_ops, describe, run_sample, samples, unexpressible

from wsc.core.errors import WscError
from wsc.core.ir import SOURCE_OPS
from wsc.frontend.capture import capture

PER_OP = 3
PICK_SEED = 0


def picked() -> list:
    """PER_OP samples of each covered op, drawn from those wsc can be given by a generator seeded with the op's
    name: the same every run."""
    cases = []
    for key, op in covered_ops().items():
        every = samples(op)
        usable = [i for i, sample in enumerate(every) if unexpressible(op, sample) is None] or range(len(every))
        for index in sorted(random.Random(f"{PICK_SEED}:{key}").sample(usable, min(PER_OP, len(usable)))):
            cases.append(pytest.param(op, every[index], id=f"{key}-{index}"))
    return cases


# A refusal line of legalize: "unsupported op aten.x.y ..." or "unsupported use of aten.x.y ...: why".
REFUSED_OP = re.compile(r"unsupported (?:op|use of) (aten\.[\w.]+)")


def refusal_problem(module: SampleModule, error: BaseException) -> str | None:
    """What is wrong with a refusal, or None: it must be a WscError naming the unsupported case, in one line
    unless the sample's graph holds several ops (then each line names one of them)."""
    if not isinstance(error, WscError):
        return f"{type(error).__name__} is not a WscError"
    lines = str(error).splitlines()
    if not lines or not lines[0].strip():
        return "the refusal says nothing"
    try:
        graph = capture(module, module.example_inputs()).graph
    except WscError:  # the capture itself refused: that refusal is the whole message
        return None if len(lines) == 1 else f"a capture refusal of {len(lines)} lines"
    ops = {node.op for node in graph if node.op not in SOURCE_OPS}
    if len(lines) > 1 and (len(ops) == 1 or not REFUSED_OP.search(lines[0])):
        return f"{len(lines)} lines for a graph of {len(ops)} op(s): {sorted(ops)}"
    for line in lines:
        named = REFUSED_OP.search(line)
        if named and named.group(1) not in ops:
            return f"names {named.group(1)}, which the graph ({sorted(ops)}) does not hold"
    return None


@pytest.mark.parametrize("op,sample", picked())
def test_sample(op, sample):
    outcome = run_sample(op, sample)
    where = describe(sample)
    if outcome.status == "skipped":
        pytest.skip(outcome.message)
    assert outcome.status != "failed", f"{outcome.message}\n  sample: {where}"
    if outcome.status == "refused":
        problem = refusal_problem(SampleModule(op.op, sample), outcome.error)
        assert problem is None, f"{problem}\n  refusal: {outcome.error}\n  sample: {where}"
    else:
        assert outcome.status == "matched"
