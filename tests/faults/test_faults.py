"""The fault suite under pytest: the seeded CI subset, or every fault with FAULTS_FULL=1.

    pytest tests/faults/test_faults.py                 # CI subset, about 30 faults
    FAULTS_FULL=1 pytest tests/faults/test_faults.py   # more than 200 faults
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.run_all import DEFAULT_SEED, problems_of, run_suite, summary_table

FULL = os.environ.get("FAULTS_FULL") == "1"


@pytest.mark.faults
@pytest.mark.postgresql
def test_fault_suite_loses_no_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ.get("FAULTS_SEED", DEFAULT_SEED))
    outcomes = run_suite(FULL, seed, tmp_path)
    with capsys.disabled():
        print("\n" + summary_table(outcomes))

    injected = sum(outcome.injected for outcome in outcomes)
    lost = sum(outcome.lost for outcome in outcomes)
    problems = [f"{outcome.kind} {outcome.point}: {problem}" for outcome in outcomes
                for problem in problems_of(outcome)]
    assert lost == 0, "\n".join(problems)
    assert problems == [], "\n".join(problems)
    assert injected >= (200 if FULL else 25), f"only {injected} faults were injected"
