"""docs/errors.md is the corpus as it is: one row per case with the case's input, command and pattern, the line
it records matching that pattern. Regenerate it with `.venv/bin/python tests/bad_inputs/make_doc.py`."""

from __future__ import annotations

import re

from .cases import CASES
from .make_doc import DOC, parse, render
from .runner import LIMIT


def test_docs_errors_md_lists_every_case_as_the_corpus_has_it() -> None:
    text = DOC.read_text()
    rows = parse(text)
    assert sorted(rows) == sorted(case.name for case in CASES), "regenerate docs/errors.md (make_doc.py)"
    # Rendered again from the cases with the lines the file records: every other word of it is the corpus's.
    assert render({name: (row["printed"], int(row["exit"])) for name, row in rows.items()}) == text, \
        "regenerate docs/errors.md (make_doc.py)"
    for case in CASES:
        if case.xfail:
            continue
        printed = rows[case.name]["printed"]
        assert rows[case.name]["exit"] == "2" and len(printed) < LIMIT, case.name
        assert re.search(case.expect, printed), (case.name, printed)
