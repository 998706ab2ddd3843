"""Are two compiles' artifacts the same? Compares report.json and placement.json of two output folders.

A refactoring that keeps behaviour must leave both files identical, except for the keys that measure the run
itself (how long it took, how much memory it used, how many kernels the on-disk cache already held:
`wsc.artifacts.report.MEASURED`, the list tests/test_reproducible.py holds two compiles to) and where the
model file lay (`LOCATION`: origin.model_file, which differs between the worktree of the commit before and this
checkout).
Everything else, every PE, route, byte and second of the estimate and the verification's measured error
(each kernel's elements are computed by one thread, so the error does not depend on the thread split), must
match exactly.

    python benchmarks/same_artifacts.py BEFORE_DIR AFTER_DIR     # exit 0 when the same, 1 with each difference

Typical use: compile the demo and 1.3B (`--no-verify`) at the commit before a change and at the change, then
compare the folders. The commit before runs from a worktree with a virtual environment of its own:

    git worktree add /tmp/before REV
    python3 -m venv /tmp/before-venv && /tmp/before-venv/bin/pip install -q torch==2.13.0 && \
        /tmp/before-venv/bin/pip install -q -e /tmp/before
    (cd /tmp/before && /tmp/before-venv/bin/wsc compile examples/cerebras_gpt.py --target cs2-sim --out /tmp/a)
    .venv/bin/wsc compile examples/cerebras_gpt.py --target cs2-sim --out /tmp/b
    python benchmarks/same_artifacts.py /tmp/a /tmp/b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from wsc.artifacts.report import LOCATION, MEASURED, is_under

# Keys left out of the comparison, as paths from the document's root; a prefix matches everything under it.
IGNORED = MEASURED + LOCATION
FILES = ("report.json", "placement.json")


def measured(path: tuple[str, ...]) -> bool:
    return is_under(path, IGNORED)


def differences(before: Any, after: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every place the two documents differ, outside the measured keys, one line each."""
    if measured(path):
        return []
    where = ".".join(path) or "(root)"
    if isinstance(before, dict) and isinstance(after, dict):
        lines = []
        for key in sorted(set(before) | set(after)):
            if measured((*path, key)):
                continue
            if key not in after:
                lines.append(f"{where}.{key}: removed")
            elif key not in before:
                lines.append(f"{where}.{key}: added")
            else:
                lines += differences(before[key], after[key], (*path, key))
        return lines
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} items before, {len(after)} after"]
        return [line for i, (b, a) in enumerate(zip(before, after, strict=True))
                for line in differences(b, a, (*path, str(i)))]
    if before != after:
        return [f"{where}: {before!r} before, {after!r} after"]
    return []


def compare(before_dir: Path, after_dir: Path) -> list[str]:
    lines = []
    for name in FILES:
        before = json.loads((before_dir / name).read_text())
        after = json.loads((after_dir / name).read_text())
        lines += [f"{name}: {line}" for line in differences(before, after)]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/same_artifacts.py BEFORE_DIR AFTER_DIR", file=sys.stderr)
        return 2
    lines = compare(Path(argv[0]), Path(argv[1]))
    for line in lines[:50]:
        print(line)
    if len(lines) > 50:
        print(f"... and {len(lines) - 50} more")
    print(f"same: {', '.join(FILES)} match outside the measured keys" if not lines
          else f"different: {len(lines)} differences")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
