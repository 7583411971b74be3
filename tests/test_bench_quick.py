"""Smoke test of bench/run.py --quick: it runs end to end and reports every figure (no timing checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import require_orthanc

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_reports_all_figures(tmp_path: Path) -> None:
    require_orthanc()
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout

    for heading in ("## Three-way comparison", "## Export throughput by study size",
                    "## Connections and buffer sweep", "## Selection of the first batch", "## Targets"):
        assert heading in report
    for column in ("a tar MB/s", "b archive MB/s", "c export MB/s", "c/a", "c/b", "c peak RSS MB",
                   "CPU s/GB a", "CPU s/GB c (client + Orthanc)"):
        assert column in report
    for data_set in ("| ct |", "| radiography |", "| tiny |", "| big |"):
        assert data_set in report
    assert "Orthanc 1." in report
    assert "Python 3." in report
    assert report.count("\n- met: ") + report.count("\n- MISSED: ") == 4
    assert not (tmp_path / "work").exists(), "the work folder must be removed after the run"
