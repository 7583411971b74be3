"""The archive catalog on SQLite and, when the PostgreSQL server binaries are installed, on PostgreSQL.

A missing PostgreSQL skips the PostgreSQL cases on a workstation but fails them when CI=true.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import helpers_archive as h  # noqa: F401  (extends ansible.module_utils to the repository's module_utils)
from ansible.module_utils.archive_catalog import SCHEMA_VERSION, Catalog, CatalogError, open_catalog

PG_BIN = Path("/usr/lib/postgresql/15/bin")
IN_CI = os.environ.get("CI", "").lower() == "true"

# What a constraint violation raises: sqlite3 errors from SQLite, CatalogError or psycopg errors from PostgreSQL.
DATABASE_ERRORS = (sqlite3.IntegrityError, CatalogError, psycopg.Error)


def study(study_id: str = "s1", content: str = "key-1", server: str = "pacs1", instances: int = 2) -> dict[str, Any]:
    return {
        "server": server,
        "orthanc_study_id": study_id,
        "study_instance_uid": "1.2.826.0.1." + study_id,
        "patient_id": "P-" + study_id,
        "accession_number": "A-" + study_id,
        "study_date": "20150301",
        "instance_count": instances,
        "study_bytes": 1000 * instances,
        "last_update": "20260101T000000",
        "content_key": content,
    }


def instance_rows(count: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "orthanc_instance_id": f"i{index}",
            "orthanc_series_id": "series-1",
            "sop_instance_uid": f"1.2.3.{index}",
            "series_instance_uid": "1.2.3",
            "member_name": f"s1/series-1/i{index}.dcm",
            "size": 1000,
            "md5": "0" * 32,
            "sha256": "1" * 64,
        }
        for index in range(count)
    ]


def write_copy(catalog: Catalog, volume: str, state: str = "verified", **study_args: Any) -> int:
    """Record a copy of a study on volume and move it to state."""
    row = study(**study_args)
    copy_id = catalog.start_copy(row, volume, f"orthanc-archive/pacs1/2015/{row['orthanc_study_id']}.tar",
                                 f"orthanc-archive/pacs1/2015/{row['orthanc_study_id']}.json")
    if state == "writing":
        return copy_id
    if state == "failed":
        catalog.mark_failed(copy_id, "test failure")
        return copy_id
    catalog.finish_copy(copy_id, 5000, "c" * 64, instance_rows(row["instance_count"]))
    if state == "verified":
        catalog.mark_verified(copy_id)
    return copy_id


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL server for this module, or a skip (a failure when CI=true) when none is installed."""
    if not (PG_BIN / "initdb").exists():
        message = f"PostgreSQL server binaries are missing at {PG_BIN}: run `apt-get install postgresql`"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from tests.pg_fixture import PostgresCluster

    cluster = PostgresCluster()
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def catalog_params(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Module parameters that open an empty catalog of each backend."""
    if request.param == "sqlite":
        return {"catalog_backend": "sqlite", "catalog_path": str(tmp_path / "catalog" / "catalog.sqlite")}
    cluster = request.getfixturevalue("pg_cluster")
    return {"catalog_backend": "postgresql", "catalog_dsn": cluster.dsn(cluster.create_database())}


@pytest.fixture
def catalog(catalog_params: dict[str, Any]) -> Iterator[Catalog]:
    opened = open_catalog(catalog_params)
    yield opened
    opened.close()


def test_schema_version_row(catalog: Catalog) -> None:
    rows = catalog._rows("SELECT version FROM schema_version")

    assert rows == [{"version": SCHEMA_VERSION}]


def test_reopen_keeps_one_version_row(catalog_params: dict[str, Any]) -> None:
    open_catalog(catalog_params).close()
    reopened = open_catalog(catalog_params)
    rows = reopened._rows("SELECT version FROM schema_version")
    reopened.close()

    assert rows == [{"version": SCHEMA_VERSION}]


def test_newer_schema_rejected(catalog_params: dict[str, Any]) -> None:
    first = open_catalog(catalog_params)
    with first._transaction():
        first._execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 98,))
    first.close()

    with pytest.raises(CatalogError) as raised:
        open_catalog(catalog_params)

    assert f"version {SCHEMA_VERSION + 98} is newer" in str(raised.value)


def test_same_content_twice_on_volume_rejected(catalog: Catalog) -> None:
    write_copy(catalog, "LTO001", "written")

    with pytest.raises(CatalogError, match="already has a written copy on volume LTO001"):
        catalog.start_copy(study(), "LTO001", "other.tar", "other.json")
    assert len(catalog.copies_of_study("pacs1", "s1")) == 1


def test_unique_index_blocks_duplicate_row(catalog: Catalog) -> None:
    write_copy(catalog, "LTO001", "written")
    row = study()

    with pytest.raises(DATABASE_ERRORS) as raised:
        with catalog._transaction():
            catalog._execute(
                "INSERT INTO copies (server, orthanc_study_id, study_instance_uid, instance_count, study_bytes, "
                "last_update, content_key, volume_serial, path, manifest_path, state, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'written', ?)",
                (row["server"], row["orthanc_study_id"], row["study_instance_uid"], 2, 2000, row["last_update"],
                 row["content_key"], "LTO001", "dup.tar", "dup.json", "2026-01-01T00:00:00Z"),
            )

    assert "unique" in str(raised.value).lower() or "another run recorded" in str(raised.value)
    assert len(catalog.copies_of_study("pacs1", "s1")) == 1


def test_same_content_on_two_volumes_allowed(catalog: Catalog) -> None:
    write_copy(catalog, "LTO001", "verified")
    write_copy(catalog, "LTO002", "verified")

    volumes = sorted(row["volume_serial"] for row in catalog.copies_of_study("pacs1", "s1"))
    assert volumes == ["LTO001", "LTO002"]


def test_copy_state_transitions(catalog: Catalog) -> None:
    copy_id = catalog.start_copy(study(), "LTO001", "a.tar", "a.json")
    assert catalog.copy(copy_id)["state"] == "writing"

    catalog.mark_verified(copy_id)
    assert catalog.copy(copy_id)["state"] == "writing"

    catalog.finish_copy(copy_id, 5000, "c" * 64, instance_rows())
    written = catalog.copy(copy_id)
    assert written["state"] == "written"
    assert written["container_bytes"] == 5000
    assert written["written_at"]
    assert len(catalog.copy_instances(copy_id)) == 2

    catalog.mark_verified(copy_id)
    verified = catalog.copy(copy_id)
    assert verified["state"] == "verified"
    assert verified["verified_at"]


def test_failed_copy_cannot_become_verified(catalog: Catalog) -> None:
    copy_id = write_copy(catalog, "LTO001", "written")
    catalog.mark_failed(copy_id, "verification failed: member x is missing")

    catalog.mark_verified(copy_id)
    catalog.finish_copy(copy_id, 1, "d" * 64, instance_rows())

    row = catalog.copy(copy_id)
    assert row["state"] == "failed"
    assert row["failure"] == "verification failed: member x is missing"


def test_failed_copy_row_reused(catalog: Catalog) -> None:
    failed_id = write_copy(catalog, "LTO001", "failed")

    again = catalog.start_copy(study(), "LTO001", "again.tar", "again.json")

    assert again == failed_id
    row = catalog.copy(again)
    assert row["state"] == "writing"
    assert row["failure"] is None
    assert row["path"] == "again.tar"


def test_invalid_state_rejected(catalog: Catalog) -> None:
    copy_id = write_copy(catalog, "LTO001", "written")

    with pytest.raises(DATABASE_ERRORS) as raised:
        with catalog._transaction():
            catalog._execute("UPDATE copies SET state = 'deleted' WHERE id = ?", (copy_id,))

    assert "check" in str(raised.value).lower()
    assert catalog.copy(copy_id)["state"] == "written"


def test_reclaim_candidates_need_required_copies(catalog: Catalog) -> None:
    write_copy(catalog, "LTO001", "verified", study_id="s1")
    write_copy(catalog, "LTO001", "verified", study_id="s2")
    write_copy(catalog, "LTO002", "verified", study_id="s2")
    write_copy(catalog, "LTO002", "written", study_id="s3")

    one = sorted(row["orthanc_study_id"] for row in catalog.reclaim_candidates("pacs1", 1))
    two = sorted(row["orthanc_study_id"] for row in catalog.reclaim_candidates("pacs1", 2))

    assert one == ["s1", "s2"]
    assert two == ["s2"]
    assert catalog.reclaim_candidates("other-server", 1) == []


def test_reclaim_candidates_exclude_deleted_content(catalog: Catalog) -> None:
    write_copy(catalog, "LTO001", "verified", study_id="s1", content="old")
    write_copy(catalog, "LTO001", "verified", study_id="s1", content="new")
    catalog.record_deletion("pacs1", "s1", "1.2.826.0.1.s1", "old", 2)

    candidates = catalog.reclaim_candidates("pacs1", 1)

    assert [(row["orthanc_study_id"], row["content_key"]) for row in candidates] == [("s1", "new")]
    assert len(catalog.deletions_of_study("pacs1", "s1")) == 1


def test_find_copies_by_date_range(catalog: Catalog) -> None:
    write_copy(catalog, "LTO001", "verified", study_id="s1")

    assert len(catalog.find_copies({"study_date_from": "20150101", "study_date_to": "20151231"})) == 1
    assert catalog.find_copies({"study_date_from": "20160101"}) == []
    with pytest.raises(CatalogError, match="unknown catalog column 'password'"):
        catalog.find_copies({"password": "x"})


def test_volume_upsert_keeps_first_seen(catalog: Catalog) -> None:
    catalog.upsert_volume("LTO001", "ltfs", name="pool-a", capacity_bytes=100)
    first = catalog.volumes()[0]
    catalog.upsert_volume("LTO001", "ltfs", available_bytes=40)
    [row] = catalog.volumes()

    assert row["name"] == "pool-a"
    assert row["capacity_bytes"] == 100
    assert row["available_bytes"] == 40
    assert row["first_seen_at"] == first["first_seen_at"]


def test_sqlite_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "new" / "catalog.sqlite"
    open_catalog({"catalog_backend": "sqlite", "catalog_path": str(path)}).close()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_sqlite_unwritable_folder_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(CatalogError) as raised:
        open_catalog({"catalog_backend": "sqlite", "catalog_path": str(blocker / "catalog.sqlite")})

    assert str(blocker / "catalog.sqlite") in str(raised.value)


def test_postgresql_without_dsn_rejected() -> None:
    with pytest.raises(CatalogError, match="catalog_dsn is empty"):
        open_catalog({"catalog_backend": "postgresql", "catalog_dsn": ""})


@pytest.mark.postgresql
def test_postgresql_error_hides_password(pg_cluster: Any) -> None:
    dsn = pg_cluster.dsn("postgres").replace(pg_cluster.password, "Wrong-Secret-123")

    with pytest.raises(CatalogError) as raised:
        open_catalog({"catalog_backend": "postgresql", "catalog_dsn": dsn})

    assert "Wrong-Secret-123" not in str(raised.value)
    assert pg_cluster.password not in str(raised.value)
