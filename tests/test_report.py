"""Reports against a real Orthanc: figures in JSON and CSV, and the HTML rendered by headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
import helpers_restore as r
from ansible.module_utils.report_render import human_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def reported(orthanc: Any, tmp_path: Path) -> dict[str, Any]:
    """Two studies of 2001 archived and deleted, one of 2019 archived and kept, one of 2020 never archived."""
    old = [h.put_study(orthanc, "tiny", study_date="20010101", seed=9101 + index) for index in range(2)]
    kept = h.put_study(orthanc, "tiny", study_date="20190101", seed=9103)
    live = h.put_study(orthanc, "tiny", study_date="20200101", seed=9104)
    h.wait_stable(orthanc, old + [kept, live])
    outcome = r.archive_verify_reclaim(orthanc, tmp_path, old)
    r.run_module("orthanc_study_archive", {**r.connection(orthanc), "catalog_path": outcome["catalog_path"],
                                           "lock_dir": outcome["lock_dir"], "server_name": r.SERVER,
                                           "studies": [kept], "volume_path": outcome["volume_path"]})
    return {"handle": orthanc, "old": old, "kept": kept, "live": live, "root": tmp_path,
            "dest": tmp_path / "reports", **outcome}


def report_args(reported: dict[str, Any], **options: Any) -> dict[str, Any]:
    args = {"catalog_path": reported["catalog_path"], "dest": str(reported["dest"]),
            "servers": [{"name": r.SERVER, "url": reported["handle"].url}]}
    args.update(options)
    return args


def render_dom(path: Path, profile: Path) -> str:
    """Return the DOM of a local HTML file as headless Chromium renders it."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `apt-get install chromium` (tools/apt-packages.txt lists it)",
                    pytrace=False)
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--dump-dom", path.as_uri()]
    process = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout


def test_fleet_json_figures(reported: dict[str, Any]) -> None:
    result = r.run_module("archive_report", report_args(reported))
    report = json.loads((reported["dest"] / "fleet.json").read_text(encoding="utf-8"))
    years = {row["year"]: row for row in report["studies_per_year"]}

    assert result["changed"] is True
    assert years["2001"] == {"year": "2001", "in_orthanc": 0, "archived": 2, "reclaimed": 2}
    assert years["2019"] == {"year": "2019", "in_orthanc": 1, "archived": 1, "reclaimed": 0}
    assert years["2020"] == {"year": "2020", "in_orthanc": 1, "archived": 0, "reclaimed": 0}
    assert [item["orthanc_id"] for item in report["pending"]] == [reported["kept"]]
    assert report["servers"][0]["orthanc"]["studies"] == 2
    assert report["runs"][0]["studies_deleted"] == 2
    assert report["runs"][0]["bytes_freed"] > 0
    assert report["cartridges"][0]["studies"] == 3


def test_html_renders_chart_in_chromium(reported: dict[str, Any]) -> None:
    r.run_module("archive_report", report_args(reported))
    html = (reported["dest"] / "fleet.html").read_text(encoding="utf-8")
    dom = render_dom(reported["dest"] / "fleet.html", reported["root"] / "chromium-profile")
    report = json.loads((reported["dest"] / "fleet.json").read_text(encoding="utf-8"))

    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    assert '<svg id="studies-per-year"' in dom
    assert 'data-year="2001" data-series="archived" data-value="2"' in dom
    assert 'data-year="2020" data-series="in_orthanc" data-value="1"' in dom
    assert human_bytes(report["totals"]["bytes_freed"]) in dom
    assert reported["kept"] in dom
    assert "Waiting for verification" in dom


def test_server_and_volume_reports(reported: dict[str, Any]) -> None:
    from ansible.module_utils.archive_volume import Volume

    serial = Volume(reported["volume_path"]).serial(create=False)
    result = r.run_module("archive_report", report_args(reported, volume_serials=[serial]))
    names = {Path(path).name for path in result["files"]}
    with open(reported["dest"] / f"volume-{serial}-contents.csv", encoding="utf-8") as handle:
        contents = list(csv.DictReader(handle))

    assert f"server-{r.SERVER}.html" in names
    assert f"volume-{serial}.html" in names
    assert "fleet-studies-per-year.csv" in names
    assert sorted(row["orthanc_id"] for row in contents) == sorted(reported["old"] + [reported["kept"]])


def test_unchanged_figures_keep_files(reported: dict[str, Any]) -> None:
    first = r.run_module("archive_report", report_args(reported))
    second = r.run_module("archive_report", report_args(reported))
    check = r.run_module("archive_report", report_args(reported), check_mode=True)

    assert first["changed"] is True
    assert second["changed"] is False
    assert second["written"] == []
    assert check["changed"] is False


def test_unreachable_server_still_reports(reported: dict[str, Any]) -> None:
    servers = [{"name": r.SERVER, "url": reported["handle"].url},
               {"name": "down", "url": f"http://127.0.0.1:{h.free_port()}", "timeout": 2}]
    result = r.run_module("archive_report", report_args(reported, servers=servers))
    html = (reported["dest"] / "fleet.html").read_text(encoding="utf-8")

    assert result.get("failed") is not True
    assert result["totals"]["unreachable"] == ["down"]
    assert "Not reachable: down" in html


def test_playbook_writes_fleet_report(reported: dict[str, Any]) -> None:
    extra = {**r.playbook_vars(reported["handle"], reported), "report_dir": str(reported["dest"])}
    process = r.run_playbook("report.yml", extra, reported["root"])

    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-2000:]
    assert (reported["dest"] / "fleet.html").is_file()
    assert (reported["dest"] / f"server-{r.SERVER}.json").is_file()
