"""The import contracts of pyproject.toml hold, are checked on every source file, and break on a forbidden import.

The check is tests/lint_imports.py, the one `make lint` runs: lint-imports on a copy of the package laid out as
installed, made once per session."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from lint_imports import PYPROJECT, build_copy, run_contracts

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONTRACTS = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
LAYERS = next(c for c in CONTRACTS if c["type"] == "layers")
TARGETS = next(c for c in CONTRACTS if c.get("source_modules") == ["wsc.targets"])
CHECK = next(c for c in CONTRACTS if c.get("source_modules") == ["wsc.artifacts.check"])


def words(text: str) -> str:
    """`text` with its whitespace runs made one space: lint-imports wraps long lines at the terminal's width."""
    return " ".join(text.split())


def broken(output: str) -> dict[str, str]:
    """Each broken contract's name and what lint-imports says of it (its chains), from lint-imports' output."""
    _, _, tail = words(output).partition("Broken contracts")
    starts = sorted((tail.find(f" {words(c['name'])} -"), words(c["name"])) for c in CONTRACTS)
    starts = [(at, name) for at, name in starts if at >= 0]
    bounds = [at for at, _ in starts] + [len(tail)]
    return {name: tail[at : bounds[i + 1]] for i, (at, name) in enumerate(starts)}


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_copy(tmp_path_factory.mktemp("site"))


def test_the_import_contracts_hold(site: Path) -> None:
    result = run_contracts(site)
    assert result.returncode == 0 and not broken(result.stdout), result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout
    # Every source file is analysed: a folder of modules without an __init__.py would escape the contracts.
    analysed = re.search(r"Analyzed (\d+) files", result.stdout)
    assert analysed and int(analysed.group(1)) == len(list(site.rglob("*.py"))), result.stdout


def test_every_core_module_is_forbidden_to_the_target_loader_and_the_checker_but_those_they_may_use(
    site: Path,
) -> None:
    # The two forbidden contracts list the core modules one by one (import-linter has no "only these"); a core
    # module added without being listed there would be open to them.
    core = {"wsc.core." + ".".join(p.relative_to(site / "wsc/core").with_suffix("").parts)
            for p in (site / "wsc/core").rglob("*.py") if p.name != "__init__.py"}
    assert core - set(TARGETS["forbidden_modules"]) == {"wsc.core.errors"}
    assert core - set(CHECK["forbidden_modules"]) == {"wsc.core.errors", "wsc.core.mesh"}


# A forbidden import added to a copy of one module, the contract it breaks, and the import it names.
FORBIDDEN = [
    ("wsc/core/ir.py", "import wsc.pipeline", LAYERS, "wsc.core.ir -> wsc.pipeline"),
    ("wsc/passes/schedule.py", "from wsc.runtime import executor", LAYERS,
     "wsc.passes.schedule -> wsc.runtime.executor"),
    ("wsc/runtime/executor.py", "from wsc import progress", LAYERS, "wsc.runtime.executor -> wsc.progress"),
    ("wsc/targets/__init__.py", "from wsc.core import ir", TARGETS, "wsc.targets -> wsc.core.ir"),
    ("wsc/artifacts/check.py", "from wsc.artifacts import report", CHECK,
     "wsc.artifacts.check -> wsc.artifacts.report"),
    # Indirect: the checker imports the mesh geometry, which would now import the program.
    ("wsc/core/mesh.py", "from wsc.core import program", CHECK, "wsc.core.mesh -> wsc.core.program"),
]


@pytest.mark.parametrize(("module", "line", "contract", "chain"), FORBIDDEN, ids=[f[1] for f in FORBIDDEN])
def test_a_forbidden_import_breaks_its_contract(site: Path, tmp_path: Path, module: str, line: str,
                                                contract: dict, chain: str) -> None:
    copy = shutil.copytree(site, tmp_path / "site")
    with (copy / module).open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")
    result = run_contracts(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    said = broken(result.stdout)
    assert chain in said.get(words(contract["name"]), ""), result.stdout


def test_imports_for_type_checking_only_are_not_counted(site: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(site, tmp_path / "site")
    with (copy / "wsc/core/ir.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import wsc.pipeline\n")
    result = run_contracts(copy)
    assert "Contracts: " in result.stdout and "wsc.core.ir -> wsc.pipeline" not in result.stdout, result.stdout
