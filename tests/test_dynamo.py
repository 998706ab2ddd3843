"""torch.compile(backend=wsc) on a second input shape, and the backend reached from `import wsc`. Issue 12:
Dynamo's dynamic graph (its sizes passed as SymInts beside the tensors) crashed the backend, and
`wsc.backend` was not an attribute of the package."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import ROOT, tiny_gpt

from wsc.backend import make_backend

# Compiled against eager on the tiny GPT: about 1e-6 apart when right; a wrong tile, mask or scale moves
# them by far more.
CLOSE = 1e-4
# Where the kernels sit changes nothing they compute: the greedy placer, and no CP-SAT search per shape.
FAST = {"time_limit": 0.3, "strategy": "greedy"}


def test_a_second_sequence_length_compiles_per_shape_and_matches_eager():
    model, _ = tiny_gpt(layers=1)
    graphs = []
    inner = make_backend("mesh-16x16", verify=True, **FAST)

    def counting(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    compiled = torch.compile(model, backend=counting)
    with torch.no_grad():
        for seq in (12, 7, 9, 7):
            ids = torch.randint(0, 97, (1, seq), generator=torch.Generator().manual_seed(seq))
            out, expected = compiled(ids), model(ids)
            assert out.shape == expected.shape == (1, seq, 97)
            assert (out - expected).abs().max() < CLOSE
            assert not torch.equal(out, expected)  # computed by wsc's kernels
    assert len(graphs) <= 2  # the static graph, then at most one dynamic graph for every other length


def test_dynamic_from_the_first_call():
    model, (ids,) = tiny_gpt(layers=1, seq=10)
    backend = make_backend("mesh-16x16", **FAST)
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        for seq in (10, 6):
            ids = torch.randint(0, 97, (1, seq), generator=torch.Generator().manual_seed(seq))
            assert (compiled(ids) - model(ids)).abs().max() < CLOSE


def test_backend_is_an_attribute_of_the_package_and_import_wsc_stays_light():
    code = ("import sys, wsc\n"
            "assert 'torch' not in sys.modules, 'import wsc loaded torch'\n"
            "backend = wsc.backend.make_backend('mesh-16x16', verify=True)\n"
            "assert callable(backend)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
