"""Running the cells: in this process, a pool of worker processes or Ray tasks, with cells.csv as the checkpoint.

A runner takes the cells to run and yields (cell, row) as each finishes; `sweep` appends every row to cells.csv
as it comes (flushed), so a run that is stopped keeps what it finished and the next run skips it.
"""

from __future__ import annotations

import csv
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from . import cells as cell_module
from .cells import COLUMNS, KEY, Cell, error_row

Rows = Iterator[tuple[Cell, dict[str, Any]]]


def run_here(cells: list[Cell]) -> Rows:
    """The cells one after another in this process."""
    for cell in cells:
        yield cell, cell_module.evaluate(cell)


def run_in_pool(cells: list[Cell], jobs: int) -> Rows:
    """The cells `jobs` at a time in worker processes. A worker that dies (killed, out of memory) breaks the
    pool; the cells it had in flight then run again one at a time, so that only a cell that kills its worker
    gets an error row."""
    waiting = list(cells)
    while waiting:
        lost = yield from run_until_broken(waiting, jobs)
        for cell in lost:
            if (yield from run_until_broken([cell], 1)):
                yield cell, error_row(cell, "the worker process died (killed, or out of memory)")


def ignore_interrupts() -> None:
    """A worker leaves Ctrl-C to the sweep, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_until_broken(waiting: list[Cell], jobs: int):  # type: ignore[no-untyped-def]
    """Runs the cells of `waiting`, taking each off as it starts; returns the cells in flight if the pool breaks."""
    # spawn, not fork: the parent has torch and OR-Tools loaded, whose thread pools do not survive a fork.
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=ignore_interrupts)
    running: dict[Any, Cell] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:  # a window of `jobs`: a broken pool loses no more than those
                cell = waiting.pop(0)
                running[pool.submit(cell_module.evaluate, cell)] = cell
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                try:
                    row = future.result()
                except BrokenProcessPool:
                    return [cell, *running.values()]
                except Exception as error:  # the cell or its row could not cross the process boundary
                    row = error_row(cell, error)
                yield cell, row
        return []
    finally:
        if running:  # interrupted or broken: the executor has no public way to stop a worker mid-cell
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=not running, cancel_futures=True)


def run_on_ray(cells: list[Cell], address: str, jobs: int) -> Rows:
    """Each cell one Ray task: on a Ray started here with `jobs` CPUs (`address` "local"), or on the cluster at
    `address`. A Ray this process has already initialised is used as it is, and left running."""
    import ray

    started = not ray.is_initialized()
    if started and address == "local":
        ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
    elif started:
        ray.init(address=address, log_to_driver=False)
    # Ray's workers cannot import this package (it is not installed): its code travels with the tasks.
    ray.cloudpickle.register_pickle_by_value(cell_module)
    remote = ray.remote(num_cpus=1)(cell_module.evaluate)
    refs = {remote.remote(cell): cell for cell in cells}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                cell = refs.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as error:  # the task's worker died, or Ray could not run it
                    row = error_row(cell, error)
                yield cell, row
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


class SweepInterrupted(Exception):
    """Ctrl-C stopped the sweep after `done` of `total` cells (those run before included)."""

    def __init__(self, done: int, total: int):
        super().__init__(f"{done} of {total} cells done")
        self.done, self.total = done, total


def log_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def sweep(cells: list[Cell], out: Path, runner: Callable[[list[Cell]], Rows],
          log: Callable[[str], None] = log_line) -> None:
    """Run the cells cells.csv has no row for, appending each row as its cell finishes, and log one line per cell.
    Raises SweepInterrupted on Ctrl-C, with the finished rows kept."""
    path = out / "cells.csv"
    done = {key_of(row) for row in read_rows(path, repair=True)}
    pending = [cell for cell in cells if cell.key() not in done]
    count, total, start = len(cells) - len(pending), len(cells), time.perf_counter()
    if count:
        log(f"{count} of {total} cells already in {path}; running the other {len(pending)}")
    out.mkdir(parents=True, exist_ok=True)
    rows = runner(pending) if pending else run_here([])  # no Ray, no pool, for nothing to run
    try:
        with path.open("a", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore", lineterminator="\n")
            if file.tell() == 0:
                writer.writeheader()
            for cell, row in rows:
                writer.writerow({k: plain(v) for k, v in row.items()})
                file.flush()
                count += 1
                log(f"[{count}/{total}] {describe(cell)}: {outcome(row)}; {time.perf_counter() - start:.0f} s elapsed")
    except KeyboardInterrupt:
        raise SweepInterrupted(count, total) from None
    finally:
        rows.close()  # a loop left early stops the runner's workers here


def describe(cell: Cell) -> str:
    return (f"{cell.strategy} {cell.model.name} {cell.target.name} {cell.mode} batch {cell.batch}/{cell.micro_batch} "
            f"seed {cell.seed}")


def outcome(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"step {duration(row['step_seconds'])} ({row['bottleneck']}), compiled in {row['compile_seconds']:.1f} s"


def duration(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def plain(value: Any) -> Any:
    """A CSV field: empty for nothing, one line for text."""
    if value is None:
        return ""
    return " ".join(value.split()) if isinstance(value, str) else value


def key_of(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row[k] for k in KEY)


def read_rows(path: Path, repair: bool = False) -> list[dict[str, str]]:
    """cells.csv's rows. A last line without its newline is a row a killed process left half written: it is
    ignored (and, with `repair`, cut off, so that the next row starts a line of its own)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if repair and whole != data:
        with path.open("r+b") as file:
            file.truncate(len(whole))
    lines = whole.decode("utf-8").splitlines()
    if not lines:
        return []
    header, *records = csv.reader(lines)
    if tuple(header) != COLUMNS:
        raise SystemExit(f"error: {path} has other columns than this version writes; give another --out")
    return [dict(zip(header, record, strict=True)) for record in records if len(record) == len(header)]
