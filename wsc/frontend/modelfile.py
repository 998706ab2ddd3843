"""Model files: a Python file defining `build_model(**kwargs)` and `example_inputs(**kwargs)`.

`wsc compile` passes every `--model-arg KEY=VALUE` to both functions; values that read as ints or floats are
passed as numbers, the rest as strings.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch

from wsc.core.errors import WscError
from wsc.frontend.capture import MESSAGE_CHARS, quote


def parse_model_args(pairs: list[str]) -> dict[str, object]:
    args: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise WscError(f"--model-arg {pair!r} is not KEY=VALUE; write e.g. --model-arg seq=128")
        value: object = raw
        for parse in (int, float):
            try:
                value = parse(raw)
                break
            except ValueError:
                continue
        args[key] = value
    return args


def load_model_file(path: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise WscError(f"model file {path} does not exist; give the path of a .py file")
    name = f"wsc_model_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise WscError(f"cannot import {path}; give a Python file ending in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise WscError(f"model file {path} has a syntax error at line {error.lineno}: {error.msg}; fix it",
                       details=traceback.format_exc()) from None
    except ModuleNotFoundError as error:
        raise WscError(f"model file {path} imports {error.name}, which is not installed; install it or fix the "
                       "import", details=traceback.format_exc()) from None
    except Exception as error:
        head, tail = f"model file {path} failed to import: ", "; fix it (--debug shows the traceback)"
        raise WscError(f"{head}{quote(error, MESSAGE_CHARS - len(head) - len(tail))}{tail}",
                       details=traceback.format_exc()) from None
    for fn in ("build_model", "example_inputs"):
        if not callable(getattr(module, fn, None)):
            raise WscError(f"model file {path} does not define {fn}(**kwargs); see the README's model files")
    return module


def effective_args(module: ModuleType, model_args: dict[str, object]) -> dict[str, object]:
    """The arguments build_model ran with: its defaults, overridden by the user's --model-arg values."""
    defaults = {
        name: p.default for name, p in inspect.signature(module.build_model).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **model_args}


def build(path: str, model_args: dict[str, object]) -> tuple[torch.nn.Module, tuple, dict[str, object]]:
    """Build the model and its example inputs; also return the arguments in effect, for the report."""
    module = load_model_file(path)
    model = _call(path, module.build_model, model_args)
    inputs = _call(path, module.example_inputs, model_args)
    if not isinstance(model, torch.nn.Module):
        raise WscError(f"{path}: build_model returned {type(model).__name__}, not a torch.nn.Module; return the "
                       "model")
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
        if isinstance(inputs, (tuple, list)):
            other = next(t for t in inputs if not isinstance(t, torch.Tensor))
            what = f"a {type(inputs).__name__} holding a {type(other).__name__}"
        else:
            what = type(inputs).__name__
        raise WscError(f"{path}: example_inputs returned {what}, not a tuple of tensors; return (tensor, ...)")
    return model.eval(), tuple(inputs), effective_args(module, model_args)


def _call(path: str, function, model_args: dict[str, object]):
    """`function(**model_args)`, a model file's build_model or example_inputs; what it raises is the file's
    problem, said in one line (the traceback behind --debug)."""
    try:
        return function(**model_args)
    except Exception as error:  # the model file's own code failed: its bug, not the compiler's
        details = traceback.format_exc()
        if isinstance(error, TypeError) and str(error).startswith(f"{function.__name__}()"):
            # The call itself: a keyword the function does not take (or lacks), i.e. a --model-arg.
            raise WscError(f"{path}: {error}; check the --model-arg names", details=details) from None
        head = f"{Path(path).name}: {function.__name__}() raised "  # the file's name: room for its message
        tail = "; fix the model file"
        raise WscError(f"{head}{quote(error, MESSAGE_CHARS - len(head) - len(tail))}{tail}", details=details) from None


def load_exported(path: str) -> tuple[torch.nn.Module, tuple]:
    """A program saved by `torch.export.save`: its module and the example inputs it was exported with."""
    file = Path(path)
    if not file.is_file():
        raise WscError(f"exported program {path} does not exist; give a file written by torch.export.save")
    try:
        exported = torch.export.load(file)
    except Exception as error:
        raise WscError(f"cannot load {path} as a torch.export program: {type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}") from None
    example = exported.example_inputs
    if example is None:
        raise WscError(f"{path} has no example inputs; export with example inputs (torch.export.export does)")
    args, kwargs = example
    if kwargs:
        raise WscError(f"{path} takes keyword inputs {sorted(kwargs)}; export with positional inputs only")
    return ExportedModule(exported), tuple(args)


class ExportedModule(torch.nn.Module):
    """An ExportedProgram as a module: capture takes its graph as it is; eager runs its module()."""

    def __init__(self, exported):
        super().__init__()
        self.exported = exported
        self.module_ = exported.module()

    def forward(self, *args):
        return self.module_(*args)
