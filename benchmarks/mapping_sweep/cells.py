"""A cell of the sweep and its evaluation: one `wsc.compile(..., verify=False)`, measured into one row.

A Cell carries everything a worker needs (the model file and its arguments, the target's YAML when it is not a
packaged one), so it runs the same in this process, a pool's worker or a Ray task on another node.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsc.artifacts.atomic import write_atomic
from wsc.core.errors import DoesNotFit

KEY = ("strategy", "model", "target", "mode", "batch", "micro_batch", "seed")
COLUMNS = (*KEY, "status", "reason", "params", "step_seconds", "training_step_seconds", "bound_seconds",
           "training_bound_seconds", "step_vs_best", "training_vs_best", "step_vs_bound", "tokens_per_second",
           "training_tokens_per_second", "compute_utilization", "bottleneck", "training_bottleneck",
           "fabric_slack_seconds", "fabric_slack_share", "fabric_slack_layer", "pes_used", "wirelength",
           "max_link_load", "longest_route_hops", "compile_seconds", "solve_seconds", "solver_status",
           "solver_gap", "time_limit")
TIMING_COLUMNS = ("compile_seconds", "solve_seconds")  # the columns that differ between two runs of a cell


@dataclass(frozen=True)
class Model:
    """A model file (`build_model(**args)` and `example_inputs(**args)`, as `wsc compile` takes) with its
    arguments but the batch, and the batch and micro-batch it trains at."""

    name: str
    file: str
    args: tuple[tuple[str, Any], ...]
    training: tuple[int, int]
    tiny: bool = False


@dataclass(frozen=True)
class SweepTarget:
    """A target by name and mesh size; `text` is its YAML when it is not a packaged one."""

    name: str
    pes: int
    text: str | None = None


@dataclass(frozen=True)
class Cell:
    """One compile of the sweep."""

    strategy: str
    model: Model
    target: SweepTarget
    mode: str  # wsc's mode: weight-streaming or pipelined
    batch: int
    micro_batch: int
    seed: int
    time_limit: float

    def key(self) -> tuple[str, ...]:
        """The cell's key columns as cells.csv holds them."""
        return tuple(str(v) for v in (self.strategy, self.model.name, self.target.name, self.mode, self.batch,
                                      self.micro_batch, self.seed))

    def columns(self) -> dict[str, Any]:
        return {**dict(zip(KEY, self.key(), strict=True)), "time_limit": self.time_limit}


def evaluate(cell: Cell) -> dict[str, Any]:
    """The cell's row. A compile that does not fit is a row saying why; any other failure is an error row."""
    row = {**cell.columns(), "status": "ok"}
    try:
        with progress_bars_off():
            compiled = compile_cell(cell)
    except DoesNotFit as refusal:
        return {**row, "status": "does not fit", "reason": one_line(refusal)}
    except Exception as error:  # one cell's failure is its row, never the end of the sweep
        return error_row(cell, error)
    return {**row, **measurements(compiled.report, compiled.program)}


def compile_cell(cell: Cell):  # type: ignore[no-untyped-def]
    import wsc
    from wsc.frontend.meta import empty_weights
    from wsc.frontend.modelfile import load_model_file

    module = load_model_file(cell.model.file)
    args = {**dict(cell.model.args), "batch": cell.batch}
    with empty_weights():  # placement needs only shapes, at any size
        model = module.build_model(**args)
    inputs = module.example_inputs(**args)
    return wsc.compile(model, inputs, target_file(cell.target), model_name=cell.model.name, strategy=cell.strategy,
                       seed=cell.seed, micro_batch=cell.micro_batch, mode=cell.mode, verify=False,
                       time_limit=cell.time_limit)


def measurements(report: dict[str, Any], program: Any) -> dict[str, Any]:
    """The row's numbers from a compile's report, and from its program what the report does not hold."""
    simulation, placement = report["simulation"], report["placement"]
    training = simulation.get("training") or {}
    solver = placement.get("solver") or {}
    hops = placement.get("longest_route_hops")
    if hops is None:
        hops = max((layer.routes.longest_route_hops for layer in program.layers if layer.routes is not None),
                   default=None)
    slack, share, layer = fabric_slack(simulation["layers"])
    step, bound = simulation["step_seconds"], simulation["bound_seconds"]
    return {
        "params": report["model"]["params"], "step_seconds": step, "bound_seconds": bound,
        "step_vs_bound": step / bound if bound > 0 else None,
        "training_step_seconds": training.get("step_seconds"), "training_bound_seconds": training.get("bound_seconds"),
        "tokens_per_second": simulation["tokens_per_second"],
        "training_tokens_per_second": training.get("tokens_per_second"),
        "compute_utilization": simulation["compute_utilization"], "bottleneck": simulation["bottleneck"],
        "training_bottleneck": training.get("bottleneck"),
        "fabric_slack_seconds": slack, "fabric_slack_share": share, "fabric_slack_layer": layer,
        "pes_used": placement["pes_used"], "wirelength": placement["wirelength"],
        "max_link_load": placement["max_link_load"], "longest_route_hops": hops,
        "compile_seconds": report["timings"]["total"], "solve_seconds": solver.get("seconds"),
        "solver_status": solver.get("status"), "solver_gap": solver.get("gap"),
    }


def fabric_slack(layers: list[dict[str, Any]]) -> tuple[float | None, float | None, str | None]:
    """How far the fabric is from binding: the smallest over layers of the largest other term's seconds less the
    fabric term's (the report's `fabric_slack_seconds` where it has it; negative where the fabric binds, by that
    much), that as a share of the layer's binding term, and the layer."""
    tightest: tuple[float, float, str] | None = None
    for layer in layers:
        others, fabric = max(layer["compute_seconds"], layer["stream_seconds"]), layer["fabric_seconds"]
        slack = layer.get("fabric_slack_seconds", others - fabric)
        if tightest is None or slack < tightest[0]:
            binding = max(others, fabric)
            tightest = (slack, slack / binding if binding > 0 else 0.0, layer["layer"])
    return tightest or (None, None, None)


def error_row(cell: Cell, error: BaseException | str) -> dict[str, Any]:
    line = error if isinstance(error, str) else one_line(error)
    return {**cell.columns(), "status": f"error: {line}", "reason": line}


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, DoesNotFit) else f"{type(error).__name__}: {text}"


@contextmanager
def progress_bars_off() -> Iterator[None]:
    """Workers share the terminal, so their compiles draw no progress bars."""
    before = os.environ.get("WSC_PROGRESS")
    os.environ["WSC_PROGRESS"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WSC_PROGRESS", None)
        else:
            os.environ["WSC_PROGRESS"] = before


def target_file(target: SweepTarget) -> str:
    """What wsc.compile takes for the target: its name, or its YAML written once into this machine's cache."""
    if target.text is None:
        return target.name
    digest = hashlib.sha256(target.text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "wsc-mapping-targets" / f"{target.name}-{digest}.yaml"
    if not path.exists():
        write_atomic(path, target.text)  # workers may race to write it: each writes it whole
    return str(path)
