"""The archive_summary role's filters: totals, failed servers and the printed table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location(
    "archive_summary_filters", REPO / "roles" / "archive_summary" / "filter_plugins" / "archive_summary.py"
)
assert _SPEC is not None and _SPEC.loader is not None
summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(summary)


def archive_result(**fields: Any) -> dict[str, Any]:
    result = {"server": "pacs-a", "endpoint": "http://127.0.0.1:8042", "status": "ok", "stopped_at": None,
              "selected": 3, "selected_bytes": 3000, "archived": 3, "archived_bytes": 3500, "verified": 3,
              "verified_bytes": 3500, "failures": []}
    result.update(fields)
    return result


def reclaim_result(**fields: Any) -> dict[str, Any]:
    result = {"enabled": True, "status": "ok", "deleted": 3, "bytes_freed": 2900, "would_delete": 0,
              "bytes_to_free": 0, "left_in_orthanc": 0, "failures": []}
    result.update(fields)
    return result


def test_report_totals_two_servers() -> None:
    report = summary.archive_summary_report({
        "pacs-a": {"archive": archive_result(), "reclaim": reclaim_result()},
        "pacs-b": {"archive": archive_result(server="pacs-b", archived=2, archived_bytes=100), "reclaim": None},
    }, check_mode=False, generated_at="2026-01-01T00:00:00Z")

    assert report["ok"] is True
    assert report["failed_servers"] == []
    assert report["totals"]["archived"] == 5
    assert report["totals"]["archived_bytes"] == 3600
    assert report["totals"]["deleted"] == 3
    assert report["totals"]["bytes_freed"] == 2900
    assert [entry["reclaim"] for entry in report["servers"]] == ["ok", "off"]


def test_report_server_without_result_failed() -> None:
    report = summary.archive_summary_report({"pacs-gone": {"archive": None, "reclaim": None}})

    assert report["ok"] is False
    assert report["failed_servers"] == ["pacs-gone"]
    assert "unreachable" in report["servers"][0]["failures"][0]


def test_report_unfinished_archive_failed() -> None:
    report = summary.archive_summary_report({"pacs-a": {"archive": archive_result(status="running"), "reclaim": None}})

    entry = report["servers"][0]
    assert entry["status"] == "failed"
    assert "stopped before it finished" in entry["failures"][0]


def test_report_unfinished_reclaim_failed() -> None:
    reclaim = reclaim_result(status="running")
    report = summary.archive_summary_report({"pacs-a": {"archive": archive_result(), "reclaim": reclaim}})

    assert report["failed_servers"] == ["pacs-a"]
    assert "reclaim stopped" in report["servers"][0]["failures"][0]


def test_report_failed_step_skips_reclaim() -> None:
    archive = archive_result(status="failed", stopped_at="Select the studies",
                             failures=["Select the studies: connection refused"], archived=0)
    report = summary.archive_summary_report({"pacs-a": {"archive": archive, "reclaim": None}})

    entry = report["servers"][0]
    assert entry["status"] == "failed"
    assert entry["reclaim"] == "skipped after the failed archive step"
    assert entry["failures"] == ["Select the studies: connection refused"]


def test_report_study_failure_marks_server_failed() -> None:
    reclaim = reclaim_result(status="failed", failures=["reclaim: lock timed out"], deleted=0)
    report = summary.archive_summary_report({"pacs-a": {"archive": archive_result(), "reclaim": reclaim}})

    assert report["failed_servers"] == ["pacs-a"]
    assert report["servers"][0]["failures"] == ["reclaim: lock timed out"]


def test_text_lists_servers_and_failures() -> None:
    report = summary.archive_summary_report({
        "pacs-a": {"archive": archive_result(), "reclaim": reclaim_result()},
        "pacs-down": {"archive": archive_result(server="pacs-down", status="failed", stopped_at="Select",
                                                failures=["Select: refused"], archived=0), "reclaim": None},
    }, generated_at="2026-01-01T00:00:00Z")

    text = summary.archive_summary_text(report, "/reports/latest.json")
    lines = text.splitlines()
    assert lines[0] == "Orthanc archive summary (archive run) at 2026-01-01T00:00:00Z"
    assert lines[1].split()[:4] == ["server", "status", "selected", "archived"]
    assert any(line.startswith("pacs-a") and "3.5 kB" in line for line in lines)
    assert any(line.startswith("total") and "FAILED" in line for line in lines)
    assert "pacs-down: FAILED Select: refused" in lines
    assert lines[-1] == "Report: /reports/latest.json"


def test_text_check_mode_columns() -> None:
    report = summary.archive_summary_report({
        "pacs-a": {"archive": archive_result(archived=0, would_archive=3, would_archive_bytes=3000),
                   "reclaim": reclaim_result(deleted=0, would_delete=2, bytes_to_free=2000)},
    }, check_mode=True)

    header = summary.archive_summary_text(report).splitlines()[1]
    assert "would archive" in header
    assert "would delete" in header


def test_human_bytes_units() -> None:
    assert summary.human_bytes(0) == "0 B"
    assert summary.human_bytes(999) == "999 B"
    assert summary.human_bytes(1500) == "1.5 kB"
    assert summary.human_bytes(66_188_372) == "66.2 MB"
    assert summary.human_bytes(12 * 10**12) == "12.0 TB"
