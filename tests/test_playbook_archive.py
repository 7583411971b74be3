"""archive.yml end to end: real ansible-playbook runs against real Orthanc servers on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers_playbook import ArchiveSite, patient_names, study_ids, wait_until_stable

# Small demo sets without pydicom's test files keep each run short; the reclaim test loads them.
FAST_DEMO: dict[str, Any] = {"include_testdata": False}


@pytest.fixture
def site(tmp_path: Path) -> ArchiveSite:
    return ArchiveSite(tmp_path / "site")


@pytest.fixture
def loaded_orthanc(orthanc_factory: Callable[..., Any]) -> Any:
    """A test Orthanc holding the small demo set, every study stable."""
    handle = orthanc_factory()
    handle.load_demo(**FAST_DEMO)
    wait_until_stable(handle.url)
    return handle


def assert_succeeded(run: Any) -> None:
    assert run.returncode == 0, run.output[-6000:]


def test_archive_run_then_second_run_changes_nothing(site: ArchiveSite, loaded_orthanc: Any) -> None:
    site.add_server("pacs-a", loaded_orthanc.url)
    before = study_ids(loaded_orthanc.url)

    first = site.run()
    assert_succeeded(first)
    entry = first.server("pacs-a")
    assert entry["status"] == "ok"
    assert entry["selected"] > 0
    assert entry["archived"] == entry["selected"]
    assert entry["verified"] == entry["archived"]
    assert entry["archived_bytes"] > 0
    assert entry["deleted"] == 0
    assert entry["reclaim"] == "off"
    assert entry["failures"] == []
    assert first.changed() > 0

    containers = site.containers("pacs-a")
    assert len(containers) == entry["archived"]
    for container in containers:
        assert container.with_suffix(".json").is_file(), f"manifest missing beside {container}"
    assert site.catalog_states("pacs-a") == {"verified": entry["archived"]}
    assert study_ids(loaded_orthanc.url) == before

    second = site.run()
    assert_succeeded(second)
    assert second.changed() == 0, second.output[-6000:]
    again = second.server("pacs-a")
    assert again["selected"] == 0
    assert again["archived"] == 0
    assert again["deleted"] == 0
    assert len(site.containers("pacs-a")) == entry["archived"]


def test_reclaim_deletes_archived_studies(site: ArchiveSite, orthanc_factory: Callable[..., Any]) -> None:
    orthanc = orthanc_factory()
    orthanc.load_demo(include_testdata=True)
    wait_until_stable(orthanc.url)
    names = patient_names(orthanc.url)
    site.add_server("pacs-a", orthanc.url)
    before = study_ids(orthanc.url)

    first = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert_succeeded(first)
    entry = first.server("pacs-a")
    assert entry["status"] == "ok"
    assert entry["archived"] > 0
    assert entry["verified"] == entry["archived"]
    assert entry["deleted"] == entry["archived"]
    assert entry["bytes_freed"] > 0
    assert entry["reclaim"] == "ok"
    assert first.summary["totals"]["deleted"] == entry["deleted"]
    assert first.summary["ok"] is True

    remaining = study_ids(orthanc.url)
    assert len(before - remaining) == entry["deleted"]
    deleted_id = sorted(before - remaining)[0]
    assert requests.get(f"{orthanc.url}/studies/{deleted_id}", timeout=30).status_code == 404
    assert len(site.containers("pacs-a")) == entry["archived"]

    second = site.run("archive.yml", "-e", "archive_reclaim=true")
    assert_succeeded(second)
    assert second.changed() == 0, second.output[-6000:]
    again = second.server("pacs-a")
    assert again["archived"] == 0
    assert again["deleted"] == 0
    assert study_ids(orthanc.url) == remaining

    # Patient names must stay out of the printed output and of the JSON report. Only names with a
    # DICOM component separator are checked, because short ones such as "PLA" match ordinary words.
    names = {name for name in names if "^" in name and len(name) >= 5}
    assert names, "the demo set should contain named patients"
    report_text = json.dumps(first.summary, ensure_ascii=False)
    for name in names:
        assert name not in first.output
        assert name not in report_text


def test_check_mode_writes_and_deletes_nothing(site: ArchiveSite, loaded_orthanc: Any) -> None:
    site.add_server("pacs-a", loaded_orthanc.url)
    before = study_ids(loaded_orthanc.url)

    fresh = site.run("archive.yml", "--check", "-e", "archive_reclaim=true")
    assert_succeeded(fresh)
    entry = fresh.server("pacs-a")
    assert fresh.summary["check_mode"] is True
    assert entry["would_archive"] == entry["selected"] > 0
    assert entry["archived"] == 0
    assert not site.volume.exists()
    assert not site.catalog.exists()
    assert study_ids(loaded_orthanc.url) == before

    archived = site.run()
    assert_succeeded(archived)
    archived_count = archived.server("pacs-a")["archived"]
    assert archived_count == entry["would_archive"]

    checked = site.run("archive.yml", "--check", "-e", "archive_reclaim=true")
    assert_succeeded(checked)
    check_entry = checked.server("pacs-a")
    assert check_entry["would_delete"] == archived_count
    assert check_entry["bytes_to_free"] > 0
    assert check_entry["deleted"] == 0
    assert study_ids(loaded_orthanc.url) == before
    assert site.catalog_states("pacs-a") == {"verified": archived_count}


def test_down_server_fails_others_archive(site: ArchiveSite, loaded_orthanc: Any,
                                          orthanc_factory: Callable[..., Any]) -> None:
    stopped = orthanc_factory()
    down_url = stopped.url
    stopped.server.stop()
    site.add_server("pacs-up", loaded_orthanc.url)
    site.add_server("pacs-down", down_url)

    run = site.run()
    assert run.returncode != 0, "a run with a failed server must exit non-zero"
    assert run.summary is not None, run.output[-6000:]
    assert run.summary["failed_servers"] == ["pacs-down"]
    assert run.summary["ok"] is False

    down = run.server("pacs-down")
    assert down["status"] == "failed"
    assert down["archived"] == 0
    assert len(down["failures"]) == 1
    assert "Select the studies" in down["failures"][0]

    up = run.server("pacs-up")
    assert up["status"] == "ok"
    assert up["archived"] > 0
    assert up["verified"] == up["archived"]
    assert len(site.containers("pacs-up")) == up["archived"]
    assert "servers failed: pacs-down" in run.output


def test_missing_url_names_the_variable(site: ArchiveSite) -> None:
    site.add_server("pacs-unset", "")

    run = site.run()
    assert run.returncode != 0
    entry = run.server("pacs-unset")
    assert entry["status"] == "failed"
    assert "orthanc_archive_url" in entry["failures"][0]


def test_oldest_lists_studies_per_server(site: ArchiveSite, loaded_orthanc: Any) -> None:
    site.add_server("pacs-a", loaded_orthanc.url)

    run = site.run("playbooks/oldest.yml", "-e", "oldest_count=3")
    assert_succeeded(run)
    assert "Oldest studies of pacs-a by StudyDate" in run.output
    assert "Oldest studies of pacs-a by reception" in run.output
    assert run.changed() == 0
