"""Verification where eager PyTorch gives NaN or an infinity: the compiled program must give the same there, and
the error and the output scale are taken over the finite values."""

from __future__ import annotations

import numpy as np
import torch

from wsc import pipeline
from wsc.targets import load_target


class Log(torch.nn.Module):
    def forward(self, x):
        return torch.log(x)  # log(-1) = nan, log(0) = -inf


X = (torch.tensor([[-1.0, 0.0, 2.0, 1000.0]]),)
PROGRAM = pipeline.compile_model(Log(), X, load_target("mesh-16x16"), time_limit=0.3).program


def verify(model, inputs, outputs):
    return pipeline.verify(model, inputs, outputs, PROGRAM)
with np.errstate(divide="ignore", invalid="ignore"):
    EAGER = np.log(np.array([[-1.0, 0.0, 2.0, 1000.0]], np.float32))


def test_the_same_nan_and_inf_pass_and_the_finite_values_set_the_scale():
    check = verify(Log(), X, [EAGER.copy()])
    assert check["status"] == "pass" and check["max_abs_err"] == 0.0
    assert check["output_scale"] == np.float32(np.log(1000.0))


def test_a_finite_error_is_measured_beside_them():
    got = EAGER.copy()
    got[0, 2] += 1e-2
    check = verify(Log(), X, [got])
    assert check["status"] == "fail" and np.isclose(check["max_abs_err"], 1e-2, rtol=1e-3)


def test_nan_or_inf_where_eager_has_another_value_fails():
    for position, value in [(0, 0.0), (1, np.inf), (2, np.nan), (1, np.nan)]:
        got = EAGER.copy()
        got[0, position] = value
        assert verify(Log(), X, [got])["status"] == "fail", (position, value)
