"""Every bad input of the corpus (cases.py) is refused as the README promises: exit code 2, a first line under
160 characters naming the problem and the fix, no traceback, and nothing written or changed."""

from __future__ import annotations

import pytest

from .cases import CASES, Case
from .runner import compile_tiny, prepare, problems, run_in_a_process, run_in_process, snapshot


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> object:
    return compile_tiny(tmp_path_factory.mktemp("bad_inputs_source"))


def marked(case: Case, **kwargs) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks, **kwargs)


@pytest.mark.parametrize("case", [marked(c) for c in CASES])
def test_a_bad_input_is_refused_in_one_line(case: Case, tmp_path, compiled) -> None:
    prepare(case, tmp_path, compiled)
    before = snapshot(tmp_path / case.out) if case.out is not None else None
    result = run_in_process(case, tmp_path)
    assert problems(case, result, before, tmp_path) == [], result.stderr


@pytest.mark.parametrize("case", [marked(c) for c in CASES if c.process])
def test_a_bad_input_is_refused_by_the_wsc_command(case: Case, tmp_path, compiled) -> None:
    prepare(case, tmp_path, compiled)
    before = snapshot(tmp_path / case.out) if case.out is not None else None
    result = run_in_a_process(case, tmp_path)
    assert problems(case, result, before, tmp_path) == [], result.stderr


def test_the_case_names_are_distinct_and_every_category_is_covered() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert {c.category for c in CASES} == {"model", "target", "weights", "artifacts", "cli"}
    assert len(CASES) >= 40
