"""Compile options: one frozen CompileOptions, built once by the CLI, `wsc.compile` and the torch.compile backend
and handed down to the pipeline whole.

Every option is checked here and nowhere else (names and ranges), so a bad value is refused with one line
that names it and the fix before anything is captured.

    options = CompileOptions(strategy="greedy", weights_dtype="fp16")
    options.verify_tolerance        # 1: the bound wsc.verification derives (with fp16's rounding), unscaled
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from wsc.core.errors import WscError
from wsc.passes import placers, routers
from wsc.runtime.weight_store import STORE_DTYPES

# The factor verification's derived bound is scaled by (wsc.verification: the rounding of the sums on each
# output's path, and of the weights when the store holds them narrower than fp32): 1 holds a run to the bound
# itself, 2 allows twice it, 0 demands bit-equal outputs.
DEFAULT_TOLERANCE = 1.0

# weight-streaming: one layer on the wafer at a time, its weights streamed in; pipelined: every layer resident.
MODES: tuple[str, ...] = ("weight-streaming", "pipelined")
MAX_SEED = 2**31 - 1  # CP-SAT's random_seed is a 32-bit int; numpy's generators take no negative seed


@dataclass(frozen=True)
class CompileOptions:
    """What a compile may be told, with its defaults. Construction validates; `CompileOptions.of` builds one
    from keyword options (the API's and the backend's) on top of an optional base."""

    strategy: str = "cpsat"  # placement: a registered placer (wsc.passes.placers.names())
    router: str = "congestion"  # routing: a registered router (wsc.passes.routers.names())
    mode: str = "weight-streaming"  # one of MODES
    micro_batch: int | None = None  # sequences per pass; None: the fastest of those that fit
    systems: int = 1  # wafers working data parallel, each on 1/systems of the batch (SwarmX)
    verify: bool = True  # run the program and compare with eager PyTorch
    tolerance: float | None = None  # scales verification's derived bound; None: DEFAULT_TOLERANCE
    verify_layers: bool = False  # diff every layer and kernel with eager's values (always done on a failure)
    weights: Path | None = None  # a store to run from: a safetensors file, a sharded checkpoint folder or its index
    weights_dtype: str = "fp32"  # precision the weight store holds and streams: one of STORE_DTYPES
    # Run and verify on wsc's seeded weights (wsc.runtime.random_weights) instead of the model's own, which
    # `wsc run --random-weights` draws again from the program alone; None: the model's (or `weights`').
    random_weights: int | None = None
    seed: int = 0  # placement seed
    time_limit: float = 2.0  # CP-SAT deterministic seconds per distinct layer
    fused_attention: bool = True  # legalize attention into one kernel (else matmuls and a softmax)
    fill: float | None = None  # share of the mesh for each layer's kernels; None: the largest of FILLS that places

    def __post_init__(self) -> None:
        placers.get(self.strategy)  # the registries hold the one check of a name
        routers.get(self.router)
        _one_of("mode", self.mode, MODES)
        _one_of("weights dtype", self.weights_dtype, STORE_DTYPES)
        if self.micro_batch is not None and not (_whole(self.micro_batch) and self.micro_batch >= 1):
            raise WscError(f"--micro-batch {self.micro_batch} is not a number of sequences; give 1 or more, or "
                           "leave it out for the fastest that fits")
        if not (_whole(self.systems) and self.systems >= 1):
            raise WscError(f"--systems {self.systems} is not a number of wafers; give 1 or more")
        if self.tolerance is not None and not (_real(self.tolerance) and 0 <= self.tolerance < math.inf):
            raise WscError(f"--tolerance {self.tolerance} is not a factor of the derived error bound; give a "
                           f"number of 0 or more (default {DEFAULT_TOLERANCE:g})")
        if not (_real(self.time_limit) and 0 < self.time_limit < math.inf):
            raise WscError(f"--time-limit {self.time_limit} is not a time; give the placer's deterministic "
                           "seconds per distinct layer, more than 0 (default 2)")
        if not (_whole(self.seed) and 0 <= self.seed <= MAX_SEED):
            raise WscError(f"--seed {self.seed} is out of range; give a whole number from 0 to {MAX_SEED}")
        if self.fill is not None and not (_real(self.fill) and 0 < self.fill <= 1):
            raise WscError(f"fill {self.fill} is not a share of the mesh; give a number above 0 and at most 1")
        for name in ("verify", "verify_layers", "fused_attention"):
            if not isinstance(getattr(self, name), bool):
                raise WscError(f"{name}={getattr(self, name)!r} is not a bool; give True or False")
        if self.random_weights is not None:
            if not (_whole(self.random_weights) and 0 <= self.random_weights <= MAX_SEED):
                raise WscError(f"--random-weights {self.random_weights} is out of range; give a whole number from 0 "
                               f"to {MAX_SEED}")
            if self.weights is not None:
                raise WscError("--random-weights and --weights both name the weights to run on; give one of them")
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))  # a str from the CLI or the API
            if not self.weights.exists():
                raise WscError(f"--weights {self.weights} does not exist; give a safetensors file or checkpoint "
                               "folder")

    @property
    def verify_tolerance(self) -> float:
        """The factor of the derived bound the run is held to: the one given, else DEFAULT_TOLERANCE."""
        return self.tolerance if self.tolerance is not None else DEFAULT_TOLERANCE

    @classmethod
    def of(cls, options: CompileOptions | None = None, **keywords: Any) -> CompileOptions:
        """`options` (default: the defaults) with `keywords` changed, validated again. A keyword that names no
        option is a TypeError, as for any function."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"unknown compile option {unknown[0]!r}; the options are {', '.join(sorted(names))}")
        if options is None:
            return cls(**keywords)
        return replace(options, **keywords) if keywords else options


def _one_of(what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise WscError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
