"""A torch.compile backend: `torch.compile(model, backend="wsc")` runs the model through wsc.

Dynamo hands the backend each captured graph with example inputs; wsc compiles it for the target (cs2-sim
unless told otherwise) and returns a function that runs the compiled program on the simulated target.
The backend is registered under the name "wsc" through the `torch_dynamo_backends` entry point, so no
import is needed; `make_backend(target=..., verify=...)` gives one with other options:

    torch.compile(model, backend=wsc.backend.make_backend(target="mesh-16x16", verify=True))

With `verify`, each graph's compiled outputs are compared with the graph run eagerly on its example inputs,
and a mismatch raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from wsc.core.errors import WscError
from wsc.options import CompileOptions


def make_backend(target: str = "cs2-sim", options: CompileOptions | None = None, **keywords: Any) -> Callable:
    """A backend compiling every graph for `target` with `options` (a CompileOptions), or the defaults changed
    by `keywords` (CompileOptions' field names). Unlike `wsc.compile`, the backend does not verify unless
    told to (`verify=True`, or options that say so). The options are checked here, once, not per graph."""
    if options is None:
        keywords.setdefault("verify", False)
    options = CompileOptions.of(options, **keywords)

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        from wsc import api

        inputs = tuple(example_inputs)
        compiled = api.compile(gm, inputs, target, options, model_name="torch.compile graph")
        if compiled.report["verification"]["status"] == "fail":
            v = compiled.report["verification"]
            raise WscError(f"compiled graph differs from eager by {v['max_abs_err']} (tolerance {v['tolerance']})")

        def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = compiled(*args)
            return out if isinstance(out, tuple) else (out,)

        run.wsc_compiled = compiled  # type: ignore[attr-defined]
        return run

    return backend


wsc = make_backend()
