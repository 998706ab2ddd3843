"""Write docs/errors.md from the bad-input corpus: every case run as the tests run it, one table row each (the bad
input, the command, the first line wsc prints, the exit code, the pattern that line must match).

    .venv/bin/python tests/bad_inputs/make_doc.py          # rewrites docs/errors.md (about 15 s)

tests/bad_inputs/test_errors_doc.py fails when the table no longer lists the corpus's cases as they are.
"""

from __future__ import annotations

import re
import shlex
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # run as a script: the corpus is the package bad_inputs beside this file
    sys.path.insert(0, str(TESTS))

from bad_inputs.cases import CASES, Case  # noqa: E402
from bad_inputs.runner import ROOT, compile_tiny, prepare, run_in_process  # noqa: E402

DOC = ROOT / "docs" / "errors.md"
CATEGORIES = {"model": "Model files", "target": "Targets", "weights": "Weights (`--weights`)",
              "artifacts": "Artifacts (`wsc check`, `wsc viz`)", "cli": "The command line"}
HEADER = "| case | the bad input | command | the first line wsc prints | exit | must match |"

INTRO = """\
# Bad input and what wsc says

Every input below is refused with exit code 2 and one line `error: ...` under 160 characters that names the
problem and what to do about it; where a problem has several parts (several unsupported ops) a short list
follows it. Nothing is written: the output folder is checked before anything is compiled, and written last,
all of it or none. `--debug` adds what stands behind a line (a tracer's own message, a model file's traceback).

The table is the bad-input corpus, `tests/bad_inputs/cases.py`, as `tests/bad_inputs/test_bad_inputs.py` runs
it: each command runs in a folder of its own holding the files the case makes (a model file `model.py`, a
target file `t.yaml`, a weight file, the output folder `compiled` of a real compile, edited). The last column
is the pattern (a regular expression) the first line must match. Regenerate this file with
`.venv/bin/python tests/bad_inputs/make_doc.py`; `tests/bad_inputs/test_errors_doc.py` checks that it lists the
corpus as it is.
"""


def code(text: str) -> str:
    """`text` as a code span in a table cell (its pipes escaped)."""
    text = text.replace("|", "\\|")
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall(r"`+", text)) + 1)
    return f"{fence} {text} {fence}"


def uncode(cell: str) -> str:
    cell = cell.strip()
    fence = re.match(r"`+", cell)
    if fence:
        n = len(fence.group(0))
        cell = cell[n:-n]
        if n > 1:
            cell = cell[1:-1]
    return cell.replace("\\|", "|")


def command(case: Case) -> str:
    return "wsc " + " ".join(shlex.quote(arg) for arg in case.argv)


def row(case: Case, printed: str, exit_code: int) -> str:
    return (f"| `{case.name}` | {case.what.replace('|', chr(92) + '|')} | {code(command(case))} | {code(printed)} "
            f"| {exit_code} | {code(case.expect)} |")


def parse(text: str) -> dict[str, dict[str, str]]:
    """The table's rows by case name: what each column says, unescaped."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        name, what, cmd, printed, exit_code, expect = cells
        rows[uncode(name)] = {"line": line, "what": what.replace("\\|", "|"), "command": uncode(cmd),
                              "printed": uncode(printed), "exit": exit_code, "expect": uncode(expect)}
    return rows


def render(results: dict[str, tuple[str, int]]) -> str:
    parts = [INTRO]
    for category, title in CATEGORIES.items():
        parts += [f"\n## {title}\n", HEADER, "|---|---|---|---|---|---|"]
        parts += [row(case, *results[case.name]) for case in CASES if case.category == category]
    known = [case for case in CASES if case.xfail]
    if known:
        parts.append("\n## Lines still too long\n")
        parts.append("These cases' lines do not yet keep the rule above (the corpus expects them to fail):\n")
        parts += [f"- `{case.name}`: {case.xfail}." for case in known]
    return "\n".join(parts) + "\n"


def main() -> int:
    results: dict[str, tuple[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="wsc-errors-doc-") as tmp:
        compiled = compile_tiny(Path(tmp) / "source")
        for case in CASES:
            folder = Path(tmp) / case.name
            folder.mkdir()
            prepare(case, folder, compiled)
            result = run_in_process(case, folder)
            results[case.name] = (result.first_line, result.code)
    DOC.write_text(render(results))
    print(f"wrote {DOC.relative_to(ROOT)}: {len(CASES)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
