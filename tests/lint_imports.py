"""Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter.

    .venv/bin/python tests/lint_imports.py      # what `make lint` runs; exit status 0 when every contract is kept

import-linter (through grimp) finds the root package with importlib and then walks its folder, so it cannot see
the editable install's package-dir mapping (wsc.passes is the top-level folder passes/, wsc.runtime is runtime/,
wsc.targets is targets/). It is therefore run on a copy of the sources laid out as the package is installed,
in a temporary folder, and in a fresh process whose only way to `wsc` is that copy:
- the copy is made here, from [tool.setuptools.package-dir], rather than by `pip install --no-deps --target`:
  pip builds in the source tree's build/lib, which keeps files deleted or moved since the last build (a moved
  pass would still be analysed at its old place) and writes build/ and wsc.egg-info into the working tree;
- lint-imports runs with the copy as its working directory and on PYTHONPATH (it puts the working directory
  first on sys.path, so run from the repository it would find the source folder wsc/, which lacks wsc.passes),
  and in a subprocess (importlib answers from sys.modules, so a process that has imported wsc, like pytest's,
  would point import-linter at the editable install); `package_root` checks which folder `wsc` resolves to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # import-linter brings tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def package_dirs(pyproject: Path = PYPROJECT) -> dict[str, Path]:
    """Each package of [tool.setuptools.package-dir] and the source folder it is built from."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {package: pyproject.parent / folder for package, folder in mapping.items()}


def build_copy(dest: Path, pyproject: Path = PYPROJECT) -> Path:
    """Copy the package's .py files into `dest` laid out as installed (dest/wsc/passes/... from passes/...)."""

    def not_source(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or (not n.endswith(".py") and not Path(folder, n).is_dir())}

    # Parents first, so a mapped subpackage (wsc.passes) lands inside its parent's copy (wsc).
    for package, folder in sorted(package_dirs(pyproject).items(), key=lambda item: item[0].count(".")):
        shutil.copytree(folder, dest / package.replace(".", "/"), ignore=not_source, dirs_exist_ok=True)
    return dest


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}


def package_root(site: Path, package: str = "wsc") -> Path:
    """The folder `package` resolves to in the environment run_contracts gives import-linter."""
    probe = f"import importlib.util; print(importlib.util.find_spec({package!r}).submodule_search_locations[0])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=site, env=_env(site), capture_output=True, text=True,
                         check=True)
    return Path(out.stdout.strip())


def run_contracts(site: Path, pyproject: Path = PYPROJECT) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the contracts of `pyproject` on the copy in `site` (see the module docstring)."""
    root = package_root(site)
    if not root.resolve().is_relative_to(site.resolve()):
        raise RuntimeError(f"wsc resolves to {root}, not to the copy in {site}: import-linter would analyse it")
    lint_imports = Path(sys.executable).parent / "lint-imports"
    command = [str(lint_imports) if lint_imports.exists() else "lint-imports"]
    return subprocess.run([*command, "--config", str(pyproject.resolve()), "--no-cache"], cwd=site,
                          env=_env(site), capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="wsc-import-contracts-") as tmp:
        result = run_contracts(build_copy(Path(tmp)))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
