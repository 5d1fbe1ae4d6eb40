"""The bad-input matrix (tests/support/bad_input_cases.py) through the CLI: exit code 2, one
`semoe: error:` line naming the problem, no traceback, and the rows an earlier run left
in the store are still there (no bad input marks a run finished either)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bad_input_cases import CASES, error_message, prepare, run_case, stored_rows

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


REAL_MODEL = [pytest.mark.slow, pytest.mark.real_model]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=REAL_MODEL if c.real_model else ()) for c in CASES])
def test_bad_input_gives_one_clear_error_and_loses_nothing(case, tmp_path, request):
    if case.in_flow:
        request.getfixturevalue("prefect_api")
    args, before = prepare(case, tmp_path, request.getfixturevalue("tiny_lm_dir") if case.real_model else None)
    code, stderr = run_case(case, tmp_path, args)
    assert code == 2, stderr
    message = error_message(stderr)
    for part in case.expect:
        assert part in message
    assert stored_rows(tmp_path) == before


def test_matrix_is_large_enough_and_documented():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)
    doc = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"regenerate docs/bad-input.md (scripts/bad_input_matrix.py); missing {missing}"
