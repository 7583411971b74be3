"""The PostgreSQL catalog against a real PostgreSQL 15 server, and its parity with SQLite.

Concurrency tests use separate processes, each with its own connection, as separate tape hosts do.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import ansible.module_utils
import psycopg
import pytest

# Worker processes import this module without conftest, so the package path is extended here too.
MODULE_UTILS = str(Path(__file__).resolve().parents[1] / "module_utils")
if MODULE_UTILS not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(MODULE_UTILS)

from ansible.module_utils import archive_catalog  # noqa: E402
from ansible.module_utils.archive_catalog import CatalogError, PostgresCatalog, open_catalog  # noqa: E402
from tests.pg_fixture import postgres_cluster, postgres_dsn  # noqa: E402,F401  (fixtures)

VOLUME = "LTO001"


def study_row(study: str, content: str = "key-1", server: str = "pacs1") -> dict[str, Any]:
    return {
        "server": server,
        "orthanc_study_id": study,
        "study_instance_uid": "1.2.3." + study[:8],
        "patient_id": "P1",
        "accession_number": "A1",
        "study_date": "20150301",
        "instance_count": 1,
        "study_bytes": 1000,
        "last_update": "20150301T101010",
        "content_key": content,
    }


def instance_row(number: int) -> dict[str, Any]:
    return {
        "orthanc_instance_id": f"inst-{number}",
        "orthanc_series_id": "series-1",
        "sop_instance_uid": f"1.2.3.4.{number}",
        "series_instance_uid": "1.2.3.4",
        "member_name": f"study/series-1/inst-{number}.dcm",
        "size": 1000,
        "md5": "0" * 32,
        "sha256": "0" * 64,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def open_params(request: pytest.FixtureRequest, tmp_path) -> dict[str, Any]:
    """Module parameters naming an empty catalog of each backend."""
    if request.param == "sqlite":
        return {"catalog_backend": "sqlite", "catalog_path": str(tmp_path / "catalog.sqlite")}
    return {"catalog_backend": "postgresql", "catalog_dsn": request.getfixturevalue("postgres_dsn")}


def schema_versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version").fetchall()]


# -- schema and migrations -----------------------------------------------------------------------


def test_migrate_empty_database(postgres_dsn: str) -> None:
    with PostgresCatalog(postgres_dsn):
        pass

    assert schema_versions(postgres_dsn) == [archive_catalog.SCHEMA_VERSION]
    with psycopg.connect(postgres_dsn) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()}
    assert {"schema_version", "copies", "copy_instances", "deletions", "restores", "volumes"} <= tables


def test_reopen_keeps_one_version_row(postgres_dsn: str) -> None:
    for _ in range(3):
        PostgresCatalog(postgres_dsn).close()

    assert schema_versions(postgres_dsn) == [archive_catalog.SCHEMA_VERSION]


def test_newer_schema_rejected(postgres_dsn: str) -> None:
    PostgresCatalog(postgres_dsn).close()
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (archive_catalog.SCHEMA_VERSION + 1,))

    with pytest.raises(CatalogError, match="newer than this project's"):
        PostgresCatalog(postgres_dsn)


def test_migration_step_applied_once(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    PostgresCatalog(postgres_dsn).close()
    next_version = archive_catalog.SCHEMA_VERSION + 1
    monkeypatch.setattr(archive_catalog, "SCHEMA_VERSION", next_version)
    monkeypatch.setattr(archive_catalog, "MIGRATIONS", {next_version: ["ALTER TABLE copies ADD COLUMN tape_host TEXT"]})

    PostgresCatalog(postgres_dsn).close()
    PostgresCatalog(postgres_dsn).close()

    assert schema_versions(postgres_dsn) == [next_version]
    with psycopg.connect(postgres_dsn) as conn:
        columns = [row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'copies' "
            "AND column_name = 'tape_host'").fetchall()]
    assert columns == ["tape_host"]


def _open_and_close(dsn: str) -> str:
    try:
        PostgresCatalog(dsn).close()
        return "ok"
    except CatalogError as exc:
        return f"error: {exc}"


def test_concurrent_first_open_creates_schema_once(postgres_dsn: str) -> None:
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        outcomes = pool.map(_open_and_close, [postgres_dsn] * 6)

    assert outcomes == ["ok"] * 6
    assert schema_versions(postgres_dsn) == [archive_catalog.SCHEMA_VERSION]


# -- errors --------------------------------------------------------------------------------------


def test_wrong_password_is_catalog_error(postgres_cluster) -> None:  # noqa: F811
    dsn = f"host=127.0.0.1 port={postgres_cluster.port} dbname=postgres user=postgres password=wrong"

    with pytest.raises(CatalogError, match="cannot connect to the PostgreSQL catalog") as caught:
        PostgresCatalog(dsn)
    assert "wrong" not in str(caught.value)


def test_missing_dsn_rejected() -> None:
    with pytest.raises(CatalogError, match="catalog_dsn is empty"):
        open_catalog({"catalog_backend": "postgresql", "catalog_dsn": ""})


# -- same interface as SQLite --------------------------------------------------------------------


def test_copy_life_cycle(open_params: dict[str, Any]) -> None:
    with open_catalog(open_params) as catalog:
        catalog.upsert_volume(VOLUME, "ltfs", "vol1", capacity_bytes=10, available_bytes=9)
        copy_id = catalog.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")
        catalog.finish_copy(copy_id, 2048, "f" * 64, [instance_row(1), instance_row(2)])
        catalog.mark_verified(copy_id)
        catalog.upsert_volume(VOLUME, "ltfs", available_bytes=5)

        row = catalog.copy(copy_id)
        assert row is not None
        assert row["state"] == "verified"
        assert row["container_bytes"] == 2048
        assert [item["orthanc_instance_id"] for item in catalog.copy_instances(copy_id)] == ["inst-1", "inst-2"]
        assert catalog.reclaim_candidates("pacs1", 1) == [
            {"orthanc_study_id": "s1", "content_key": "key-1", "volumes": 1}
        ]
        assert [row["id"] for row in catalog.find_copies({"study_date_from": "20150101", "server": "pacs1"})] == [copy_id]

        catalog.record_deletion("pacs1", "s1", "1.2.3.s1", "key-1", 2)
        assert catalog.reclaim_candidates("pacs1", 1) == []
        assert len(catalog.deletions_of_study("pacs1", "s1")) == 1

        volumes = catalog.volumes()
        assert [volume["serial"] for volume in volumes] == [VOLUME]
        assert volumes[0]["name"] == "vol1"
        assert volumes[0]["available_bytes"] == 5


def test_written_copy_not_started_again(open_params: dict[str, Any]) -> None:
    with open_catalog(open_params) as catalog:
        copy_id = catalog.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")
        catalog.finish_copy(copy_id, 2048, "f" * 64, [instance_row(1)])

        with pytest.raises(CatalogError, match="already has a written copy"):
            catalog.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")


def test_failed_copy_row_reused(open_params: dict[str, Any]) -> None:
    with open_catalog(open_params) as catalog:
        first = catalog.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")
        catalog.mark_failed(first, "drive error")
        second = catalog.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")

        assert second == first
        row = catalog.copy(second)
        assert row is not None
        assert row["state"] == "writing"
        assert row["failure"] is None


# -- concurrent writers --------------------------------------------------------------------------


def _write_studies(dsn: str, host: str, count: int) -> list[int]:
    """Archive count studies of one server to one volume, as one tape host would."""
    ids = []
    with PostgresCatalog(dsn) as catalog:
        catalog.upsert_volume("SHARED", "folder")
        catalog.upsert_volume(f"VOL-{host}", "ltfs")
        for number in range(count):
            copy_id = catalog.start_copy(study_row(f"{host}-{number}", server=host), f"VOL-{host}", "p", "m")
            catalog.finish_copy(copy_id, 100, "a" * 64, [instance_row(number)])
            catalog.mark_verified(copy_id)
            ids.append(copy_id)
    return ids


def test_many_tape_hosts_write_at_once(postgres_dsn: str) -> None:
    hosts = [f"tape{number}" for number in range(6)]

    with multiprocessing.get_context("spawn").Pool(len(hosts)) as pool:
        results = pool.starmap(_write_studies, [(postgres_dsn, host, 15) for host in hosts])

    all_ids = [copy_id for ids in results for copy_id in ids]
    assert len(all_ids) == 90
    assert len(set(all_ids)) == 90
    with PostgresCatalog(postgres_dsn) as catalog:
        assert len(catalog.find_copies({})) == 90
        assert sorted(volume["serial"] for volume in catalog.volumes()) == ["SHARED"] + [f"VOL-{host}" for host in hosts]
        for host in hosts:
            assert len(catalog.reclaim_candidates(host, 1)) == 15


def _wait_for_lock_wait(dsn: str, timeout: float = 20.0) -> None:
    """Wait until some session of this database waits on a lock (the second writer's INSERT)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0] > 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"no session waited on a lock within {timeout:.0f} s")


def test_same_copy_started_twice_one_wins(postgres_dsn: str) -> None:
    first = PostgresCatalog(postgres_dsn)
    second = PostgresCatalog(postgres_dsn)
    outcome: dict[str, Any] = {}

    def start_second() -> None:
        try:
            outcome["id"] = second.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")
        except CatalogError as exc:
            outcome["error"] = exc

    # The first writer's row stays uncommitted until its outer transaction ends, so the second
    # writer sees no row, inserts, and waits on the unique index: the race that two hosts can hit.
    with first.conn.transaction():
        first_id = first.start_copy(study_row("s1"), VOLUME, "a/s1.tar", "a/s1.json")
        racer = threading.Thread(target=start_second)
        racer.start()
        _wait_for_lock_wait(postgres_dsn)
    racer.join(20)

    assert not racer.is_alive()
    assert "id" not in outcome
    assert "another run recorded the same catalog row first" in str(outcome["error"])
    assert "s1" in str(outcome["error"])
    rows = first.copies_of_study("pacs1", "s1")
    assert [row["id"] for row in rows] == [first_id]
    first.close()
    second.close()


def _upsert_volume(dsn: str, number: int) -> str:
    with PostgresCatalog(dsn) as catalog:
        catalog.upsert_volume("NEWVOL", "ltfs", available_bytes=number)
    return "ok"


def test_new_volume_upserted_concurrently(postgres_dsn: str) -> None:
    PostgresCatalog(postgres_dsn).close()

    with multiprocessing.get_context("spawn").Pool(8) as pool:
        outcomes = pool.starmap(_upsert_volume, [(postgres_dsn, number) for number in range(8)])

    assert outcomes == ["ok"] * 8
    with PostgresCatalog(postgres_dsn) as catalog:
        assert [volume["serial"] for volume in catalog.volumes()] == ["NEWVOL"]


def test_open_catalog_selects_postgresql(postgres_dsn: str) -> None:
    with open_catalog({"catalog_backend": "postgresql", "catalog_dsn": postgres_dsn}) as opened:
        assert isinstance(opened, PostgresCatalog)
