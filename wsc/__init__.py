"""wsc: a compiler from PyTorch to wafer-scale dataflow machines.

    import wsc
    compiled = wsc.compile(model, example_inputs, target="cs2-sim")   # a wsc.CompiledModel
    options = wsc.CompileOptions(strategy="greedy", verify=False)       # every option, checked once
    outputs = compiled(*example_inputs)                                # runs on the simulated target
    backend = wsc.backend.make_backend("mesh-16x16", verify=True)      # for torch.compile(backend=...)
"""

import importlib
from typing import Any

__all__ = ["compile", "CompiledModel", "CompileOptions", "backend"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import wsc.targets` and the CLI's quick commands need not load torch.
    if name == "backend":
        return importlib.import_module("wsc.backend")
    if name == "CompileOptions":
        from wsc.options import CompileOptions

        return CompileOptions
    if name in __all__:
        from wsc import api

        return getattr(api, name)
    raise AttributeError(f"module 'wsc' has no attribute {name!r}")
