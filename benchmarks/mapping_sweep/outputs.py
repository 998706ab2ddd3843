"""The sweep's outputs, from cells.csv alone: its relative columns, table.md and two plots.

The relative columns need every row of a group (same model, target, mode, batch, micro-batch and seed), so they
are filled in here, when the table is written, and cells.csv is rewritten with them.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from statistics import mean

from wsc.artifacts.atomic import write_atomic
from wsc.passes import placers

from .cells import COLUMNS
from .run import duration, key_of, read_rows

TIE = 0.01  # strategies within 1% of the best tie
MARKERS = "osD^vP*X"
Row = dict[str, str]


def write_outputs(out: Path) -> list[Row]:
    """Fill in cells.csv's relative columns and write table.md, step_vs_size.png and solve_time_vs_quality.png."""
    path = out / "cells.csv"
    rows = with_relative_steps(read_rows(path))
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())
    write_atomic(out / "table.md", table(rows, path))
    ok = [row for row in rows if row["status"] == "ok"]
    if ok:
        plot_step_vs_size(ok, out / "step_vs_size.png")
        plot_solve_time(ok, out / "solve_time_vs_quality.png")
    return rows


def with_relative_steps(rows: list[Row]) -> list[Row]:
    """The rows with step_vs_best and training_vs_best: each step over the fastest of its group's."""
    fastest: dict[tuple[str, ...], dict[str, float]] = {}
    for row in rows:
        if row["status"] == "ok":
            group = fastest.setdefault(key_of(row)[1:], {})
            for column in ("step_seconds", "training_step_seconds"):
                if row[column]:
                    group[column] = min(group.get(column, math.inf), float(row[column]))
    for row in rows:
        group = fastest.get(key_of(row)[1:], {})
        for column, relative in (("step_seconds", "step_vs_best"), ("training_step_seconds", "training_vs_best")):
            best = group.get(column)
            ok = row["status"] == "ok" and row[column] and best
            row[relative] = repr(float(row[column]) / best) if ok else ""
    return rows


def group_of(row: Row) -> tuple[str, ...]:
    """A column of the table: the group's key but the seed, whose groups are averaged."""
    return key_of(row)[1:-1]


def workload(row: Row) -> str:
    if row["mode"] == "pipelined":
        return "pipelined"
    return "inference" if row["batch"] == "1" else "training"


def label(group: tuple[str, ...]) -> str:
    model, target, mode, batch, micro_batch = group
    how = "pipelined" if mode == "pipelined" else "streaming"
    passes = f"b{batch}" if batch == micro_batch else f"b{batch}/{micro_batch}"
    return f"{model}, {target}, {how} {passes}"


def strategies_of(rows: list[Row]) -> list[str]:
    seen = {row["strategy"] for row in rows}
    return [s for s in placers.names() if s in seen] + sorted(seen - set(placers.names()))


def groups_of(rows: list[Row]) -> dict[tuple[str, ...], list[Row]]:
    """The table's columns in order: by model size, then model, target, mode and batch."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)

    def order(item: tuple[tuple[str, ...], list[Row]]) -> tuple:
        params = [float(r["params"]) for r in item[1] if r["params"]]
        model, target, mode, batch, _ = item[0]
        return (min(params, default=math.inf), model, target, mode, int(batch))

    return dict(sorted(groups.items(), key=order))


def entry(rows: list[Row], relative: str, bound: str) -> str:
    """One strategy in one group: its mean relative step over the seeds, with the term that binds it most."""
    ok = [r for r in rows if r["status"] == "ok" and r[relative]]
    failed = Counter("no fit" if r["status"] == "does not fit" else "error" for r in rows if r["status"] != "ok")
    parts = []
    if ok:
        binds = Counter(r[bound] for r in ok).most_common(1)[0][0]
        parts.append(f"{mean(float(r[relative]) for r in ok):.3f} ({binds})")
    parts += [what if count == len(rows) else f"{count} {what}" for what, count in failed.items()]
    return ", ".join(parts)


def grid(rows: list[Row], relative: str, bound: str, seconds: str) -> list[str]:
    """Strategies by groups, and a last row with each group's fastest step and its strategy."""
    groups = groups_of(rows)
    lines = ["| strategy | " + " | ".join(label(g) for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for strategy in strategies_of(rows):
        entries = [entry([r for r in members if r["strategy"] == strategy], relative, bound)
                   for members in groups.values()]
        lines.append(f"| {strategy} | " + " | ".join(entries) + " |")
    fastest = []
    for members in groups.values():
        ok = [r for r in members if r["status"] == "ok" and r[seconds]]
        best = min(ok, key=lambda r: float(r[seconds]), default=None)
        fastest.append("" if best is None else f"{duration(float(best[seconds]))} ({best['strategy']})")
    lines.append("| *fastest step* | " + " | ".join(fastest) + " |")
    return lines


def verdict(group: tuple[str, ...], members: list[Row]) -> str:
    """Whether placement matters in a group, and why not when every strategy ties."""
    ok = [r for r in members if r["status"] == "ok"]
    refused = sorted({(r["strategy"], r["status"].split(":")[0]) for r in members if r["status"] != "ok"})
    tail = f" ({', '.join(f'{strategy}: {status}' for strategy, status in refused)})" if refused else ""
    if not ok:
        return f"- {label(group)}: no strategy compiled{tail}: {next(r['reason'] for r in members)}"
    worst = max(ok, key=lambda r: float(r["step_vs_best"]))
    best = min(ok, key=lambda r: float(r["step_vs_best"]))
    binds = Counter(r["bottleneck"] for r in ok).most_common(1)[0][0]
    if float(worst["step_vs_best"]) > 1 + TIE:
        return (f"- {label(group)}: placement matters: {worst['strategy']} takes {float(worst['step_vs_best']):.3f}x "
                f"the step of {best['strategy']}; {binds} binds{tail}.")
    if binds == "fabric":
        return (f"- {label(group)}: every strategy within 1% (worst {worst['strategy']}, "
                f"{float(worst['step_vs_best']):.3f}): the fabric binds, and every placement loads it alike{tail}.")
    tightest = min(ok, key=lambda r: float(r["fabric_slack_share"] or 0))
    share = float(tightest["fabric_slack_share"] or 0)
    where = f"{tightest['fabric_slack_layer']}, {tightest['strategy']}"
    if share >= 0:
        margin = (f"the fabric {share:.1%} below it at the tightest layer ({where}), so placement cannot change the "
                  f"step until that layer's traffic grows {1 / (1 - share):.2f}x" if share < 1 else "no traffic")
    else:
        margin = (f"the fabric binding only layer {tightest['fabric_slack_layer']} ({tightest['strategy']}), by "
                  f"{-share:.1%} of its time, too small a part of the step")
    return (f"- {label(group)}: every strategy within 1% (worst {worst['strategy']}, "
            f"{float(worst['step_vs_best']):.3f}): {binds} binds, with {margin}{tail}.")


def table(rows: list[Row], source: Path) -> str:
    seeds = sorted({r["seed"] for r in rows}, key=int)
    lines = [
        "# Placement strategies: each step over the best strategy's",
        "",
        f"From {source} ({len(rows)} cells, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}). An entry is",
        "a strategy's step over the fastest strategy's of the same model, target, mode and batch (averaged over",
        "the seeds), with the term that binds it. *streaming*: weight streaming; `b120/15`: a batch of 120 run in",
        "passes of 15. *no fit*: the partition or the placement does not fit (the reason is in cells.csv); *error*:",
        "see the row's status.",
        "",
        "## Forward step (`simulation.step_seconds`)",
        "",
        *grid(rows, "step_vs_best", "bottleneck", "step_seconds"),
        "",
        "## Training step (`simulation.training.step_seconds`)",
        "",
        *grid(rows, "training_vs_best", "training_bottleneck", "training_step_seconds"),
        "",
        "## Where placement matters (forward step)",
        "",
        *(verdict(group, members) for group, members in groups_of(rows).items()),
        "",
    ]
    return "\n".join(lines)


def plot_step_vs_size(rows: list[Row], path: Path) -> None:
    """Step against parameters, a line per strategy, a panel per target and workload."""
    from matplotlib.figure import Figure

    panels = sorted({(r["target"], workload(r)) for r in rows})
    across = min(3, len(panels))
    down = math.ceil(len(panels) / across)
    figure = Figure(figsize=(5 * across, 4 * down), layout="constrained")
    axes = list(figure.subplots(down, across, squeeze=False).flat)
    for axis, (target, kind) in zip(axes, panels, strict=False):
        shown = [r for r in rows if r["target"] == target and workload(r) == kind]
        for strategy, marker in zip(strategies_of(rows), MARKERS, strict=False):
            points = sorted((float(r["params"]), float(r["step_seconds"])) for r in shown if r["strategy"] == strategy)
            if points:
                axis.plot(*zip(*points, strict=True), marker=marker, label=strategy, alpha=0.8)
        scale(axis, "x", [float(r["params"]) for r in shown], count)
        scale(axis, "y", [float(r["step_seconds"]) for r in shown], duration)
        axis.set(title=f"{target}, {kind}", xlabel="parameters", ylabel="step (s)")
        axis.legend(fontsize="small")
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    figure.savefig(path, dpi=100)


def plot_solve_time(rows: list[Row], path: Path) -> None:
    """Each cell's placement time against its step over the best strategy's."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), layout="constrained")
    axis = figure.subplots()
    shown = [r for r in rows if r["solve_seconds"] and r["step_vs_best"]]
    for strategy, marker in zip(strategies_of(rows), MARKERS, strict=False):
        points = [(float(r["solve_seconds"]), float(r["step_vs_best"])) for r in shown if r["strategy"] == strategy]
        if points:
            axis.scatter(*zip(*points, strict=True), marker=marker, label=strategy, alpha=0.7)
    scale(axis, "x", [float(r["solve_seconds"]) for r in shown], duration)
    axis.set(xlabel="placement solve time (s)", ylabel="step / best strategy's step",
             title="Solve time against step quality, every cell")
    axis.legend()
    figure.savefig(path, dpi=100)


def scale(axes, which: str, values: list[float], text) -> None:  # type: ignore[no-untyped-def]
    """A log `which` ("x" or "y") axis, its ticks labelled by `text`, when the values span a decade or more;
    else a linear one, as matplotlib labels it."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    positive = [v for v in values if v > 0]
    if positive and max(positive) >= 10 * min(positive):
        getattr(axes, f"set_{which}scale")("log")
        axis = getattr(axes, f"{which}axis")
        axis.set_major_formatter(FuncFormatter(lambda v, _: text(v)))
        axis.set_minor_formatter(NullFormatter())


def count(n: float) -> str:
    for unit, scale_ in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale_:
            return f"{n / scale_:.3g}{unit}"
    return f"{n:.3g}"
