"""Bad input: each case fails with a message that names the value and the fix, and changes nothing.

The modules run in this process through the fault driver's run_module (patch_module_args), against
a real Orthanc with authentication. DICOM content is input too: the hostile studies of
tools/demo_data.py go through the whole pipeline.
"""

from __future__ import annotations

import datetime
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import invariant
from tests.faults.driver import run_module
from tools import demo_data

PASSWORD = "bad-input-Secret-7"
SERVER = "badinput"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tools.orthanc_local import LocalOrthanc

    orthanc = LocalOrthanc(tmp_path_factory.mktemp("orthanc-bad-input"), users={"archiver": PASSWORD},
                           stable_age=1, sync_storage=False).start()
    yield orthanc
    orthanc.stop()


def connection(server: Any, **overrides: Any) -> dict[str, Any]:
    return {"url": server.url, "username": "archiver", "password": PASSWORD, "retries": 0, "timeout": 10.0,
            **overrides}


def study_count(server: Any) -> int:
    return len(server.session().get(f"{server.url}/studies", timeout=30).json())


def files_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("policy, named", [
    ({"older_than_days": -5}, "-5"),
    ({"before_date": "2015-13-45"}, "2015-13-45"),
    ({"before_date": "last year"}, "last year"),
    ({"before_date": "2015-01-01", "exclude_labels": ["bad label/.."]}, "bad label/.."),
    ({"before_date": "2015-01-01", "max_studies": -1}, "-1"),
    ({"before_date": "2015-01-01", "page_size": 0}, "page_size"),
    ({"before_date": "2015-01-01", "oldest_year": 3000}, "3000"),
    ({}, "older_than_days"),
])
def test_invalid_policy_rejected(server: Any, tmp_path: Path, policy: dict[str, Any], named: str) -> None:
    catalog = tmp_path / "catalog" / "catalog.sqlite"
    result = run_module("orthanc_study_info", {**connection(server), **policy, "server_name": SERVER,
                                               "catalog_path": str(catalog)})
    assert result.get("failed") is True
    assert named in result["msg"]
    assert result["study_ids"] == []
    assert not catalog.exists()


def test_wrong_password_named(server: Any, tmp_path: Path) -> None:
    before = study_count(server)
    result = run_module("orthanc_study_reclaim", {**connection(server, password="Wrong-Pw-551"), "server_name": SERVER,
                                                  "catalog_path": str(tmp_path / "catalog.sqlite"),
                                                  "lock_dir": str(tmp_path / "lock")})
    assert result.get("failed") is True
    assert "401" in result["msg"]
    assert "username and password" in result["msg"]
    assert "Wrong-Pw-551" not in str(result)
    assert study_count(server) == before


class _NotOrthanc(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        body = b"<html><body>a web server that is not Orthanc</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        pass


@pytest.mark.parametrize("answer", ["html", "json"])
def test_url_not_orthanc_named(tmp_path: Path, answer: str) -> None:
    handler = _NotOrthanc
    if answer == "json":
        class _JsonHandler(_NotOrthanc):
            def do_GET(self) -> None:  # noqa: N802
                body = b'{"status": "ok"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        handler = _JsonHandler
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        result = run_module("orthanc_study_info", {"url": url, "retries": 0, "server_name": SERVER,
                                                   "before_date": "2015-01-01",
                                                   "catalog_path": str(tmp_path / "catalog.sqlite")})
    finally:
        web.shutdown()
        web.server_close()
    assert result.get("failed") is True
    assert url in result["msg"]
    assert "Orthanc" in result["msg"]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8042", "127.0.0.1:8042", "http://"])
def test_malformed_url_named(tmp_path: Path, url: str) -> None:
    result = run_module("orthanc_study_info", {"url": url, "server_name": SERVER, "before_date": "2015-01-01",
                                               "catalog_path": str(tmp_path / "catalog.sqlite")})
    assert result.get("failed") is True
    assert repr(url) in result["msg"]
    assert "http://HOST:PORT" in result["msg"]


def test_unreachable_orthanc_named(tmp_path: Path) -> None:
    from tests.helpers_archive import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = run_module("orthanc_study_info", {"url": url, "retries": 0, "server_name": SERVER,
                                               "before_date": "2015-01-01",
                                               "catalog_path": str(tmp_path / "catalog.sqlite")})
    assert result.get("failed") is True
    assert url in result["msg"]
    assert "running and reachable" in result["msg"]


def test_sqlite_catalog_unreachable_named(server: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the catalog folder should be")
    catalog_path = blocker / "catalog.sqlite"
    before = study_count(server)
    result = run_module("orthanc_study_reclaim", {**connection(server), "server_name": SERVER,
                                                  "catalog_path": str(catalog_path),
                                                  "lock_dir": str(tmp_path / "lock")})
    assert result.get("failed") is True
    assert str(catalog_path) in result["msg"]
    assert "catalog_path" in result["msg"]
    assert study_count(server) == before


@pytest.mark.postgresql
def test_postgres_catalog_unreachable_named(server: Any, tmp_path: Path) -> None:
    from tests.helpers_archive import free_port

    port = free_port()
    dsn = f"host=127.0.0.1 port={port} dbname=catalog user=archiver password=PgSecret-42 connect_timeout=3"
    result = run_module("orthanc_study_reclaim", {**connection(server), "server_name": SERVER,
                                                  "catalog_backend": "postgresql", "catalog_dsn": dsn,
                                                  "lock_dir": str(tmp_path / "lock")})
    assert result.get("failed") is True
    assert "PostgreSQL catalog" in result["msg"]
    assert str(port) in result["msg"]
    assert "PgSecret-42" not in str(result)


def test_invalid_study_id_named(server: Any, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    result = run_module("orthanc_study_archive", {**connection(server), "server_name": SERVER,
                                                  "studies": ["../../etc/passwd"], "volume_path": str(volume),
                                                  "catalog_path": str(tmp_path / "catalog.sqlite"),
                                                  "lock_dir": str(tmp_path / "lock")})
    assert result.get("failed") is True
    assert "'../../etc/passwd'" in result["msg"]
    assert files_in(volume) == []


def test_hostile_tags_archived_safely(server: Any, tmp_path: Path) -> None:
    """Archive, verify and reclaim the hostile studies; nothing lands outside the archive folder."""
    hostile = demo_data.generate_hostile_studies(seed=3)
    originals = invariant.Originals()
    with demo_data.Uploader(server.url, auth=("archiver", PASSWORD), threads=2) as uploader:
        for study in hostile.values():
            for result in demo_data.upload_study(uploader, study):
                assert result.accepted, result.error
                originals.add(result.study_id, result.instance_id, "")
    session = server.session()
    for study_id in list(originals.studies):
        for instance_id in list(originals.studies[study_id]):
            info = session.get(f"{server.url}/instances/{instance_id}/attachments/dicom/info", timeout=30).json()
            originals.studies[study_id][instance_id] = info["UncompressedMD5"]
    dates = {study_id: session.get(f"{server.url}/studies/{study_id}", timeout=30).json()["MainDicomTags"]
             .get("StudyDate") for study_id in originals.studies}

    volume = tmp_path / "volume"
    volume.mkdir()
    catalog = {"catalog_path": str(tmp_path / "catalog" / "catalog.sqlite")}
    common = {**catalog, "lock_dir": str(tmp_path / "lock"), "log_path": str(tmp_path / "log" / "archive.log")}
    selected = run_module("orthanc_study_info", {**connection(server), **catalog, "server_name": SERVER,
                                                 "before_date": "2030-01-01", "only_stable": False,
                                                 "max_studies": 0})
    assert not selected.get("failed"), selected.get("msg")

    # Only real calendar dates before the cutoff select a study.
    for study_id in selected["study_ids"]:
        assert datetime.datetime.strptime(dates[study_id], "%Y%m%d") < datetime.datetime(2030, 1, 1)
    for study_id, study_date in dates.items():
        if study_date in (None, "", "2019-13-45", "abcd", "19990230", "20991231"):
            assert study_id not in selected["study_ids"]

    archived = run_module("orthanc_study_archive", {**connection(server), **common, "server_name": SERVER,
                                                    "studies": selected["study_ids"], "volume_path": str(volume)})
    assert archived["failed_count"] == 0, archived
    verified = run_module("archive_volume_verify", {**common, "volume_path": str(volume)})
    assert verified["failed_count"] == 0, verified
    reclaimed = run_module("orthanc_study_reclaim", {**connection(server), **common, "server_name": SERVER})
    assert reclaimed["deleted"] == len(selected["study_ids"]), reclaimed

    # Every path on the volume is the marker file or below orthanc-archive/, built from IDs and years.
    for path in files_in(volume):
        assert path == ".orthanc-archive-volume.json" or path.startswith("orthanc-archive"), path
        assert ".." not in Path(path).parts
    for path in (volume / "orthanc-archive").rglob("*"):
        assert path.resolve().is_relative_to(volume.resolve())
        assert all(part.isprintable() and part.isascii() for part in path.relative_to(volume).parts)
    assert not list(tmp_path.glob("**/DEMO-TRAVERSAL*"))

    lost = invariant.check(originals, server.url, ("archiver", PASSWORD), catalog, SERVER,
                           lambda serial, path: str(volume / path))
    assert lost == {}
    for study_id in set(originals.studies) - set(selected["study_ids"]):
        assert invariant.orthanc_instances(server.url, ("archiver", PASSWORD), study_id), study_id
    assert os.path.getsize(tmp_path / "log" / "archive.log") > 0
