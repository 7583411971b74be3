# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The archive catalog: which study is on which volume, in which state.

One interface, two backends: embedded SQLite (the default) and PostgreSQL (psycopg 3). Both use
the same SQL, written with '?' placeholders and translated for psycopg. Every state change is one
transaction. The schema carries its version; opening a catalog migrates it forward and refuses a
catalog written by a newer version of this project.

States of a copy (one container of one study content on one volume):
  writing   the container is being written; a crash leaves this row and a dead temporary file
  written   the container is complete and fsynced (and was read back right after writing when the
            export's read_back option is on)
  verified  the container was read back from the volume after a remount (or, for a plain folder,
            after its pages were dropped from the cache) and every checksum matched
  failed    writing or verification failed; the copy counts for nothing
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Iterable

import contextlib
import sqlite3

try:
    import psycopg
except ImportError:  # reported by PostgresCatalog when the PostgreSQL backend is chosen
    psycopg = None

SCHEMA_VERSION = 1

# Statements that bring a catalog from version N - 1 to version N, keyed by N. migrate() applies
# every step above the stored version, in order, in the same transaction as the version update.
MIGRATIONS: dict[int, list[str]] = {}

COPY_STATES = ("writing", "written", "verified", "failed")

CATALOG_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "catalog_backend": {"type": "str", "default": "sqlite", "choices": ["sqlite", "postgresql"]},
    "catalog_path": {"type": "path", "default": "/var/lib/orthanc-archive/catalog.sqlite"},
    "catalog_dsn": {"type": "str", "no_log": True},
}

# The columns of a copy row, in the order of the CREATE TABLE statement.
COPY_COLUMNS = (
    "id", "server", "orthanc_study_id", "study_instance_uid", "patient_id", "accession_number",
    "study_date", "instance_count", "study_bytes", "last_update", "content_key", "volume_serial",
    "path", "manifest_path", "container_bytes", "container_sha256", "state", "started_at",
    "written_at", "verified_at", "failed_at", "failure",
)

_SCHEMA = {
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS copies (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            {copy_columns})""",
        """CREATE TABLE IF NOT EXISTS copy_instances (
            copy_id INTEGER NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
            {instance_columns})""",
        """CREATE TABLE IF NOT EXISTS deletions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            {deletion_columns})""",
        """CREATE TABLE IF NOT EXISTS restores (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            {restore_columns})""",
        """CREATE TABLE IF NOT EXISTS volumes (
            {volume_columns})""",
    ],
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS copies (
            id BIGSERIAL PRIMARY KEY,
            {copy_columns})""",
        """CREATE TABLE IF NOT EXISTS copy_instances (
            copy_id BIGINT NOT NULL REFERENCES copies(id) ON DELETE CASCADE,
            {instance_columns})""",
        """CREATE TABLE IF NOT EXISTS deletions (
            id BIGSERIAL PRIMARY KEY,
            {deletion_columns})""",
        """CREATE TABLE IF NOT EXISTS restores (
            id BIGSERIAL PRIMARY KEY,
            {restore_columns})""",
        """CREATE TABLE IF NOT EXISTS volumes (
            {volume_columns})""",
    ],
}

_COLUMN_SQL = {
    "copy_columns": """
            server TEXT NOT NULL,
            orthanc_study_id TEXT NOT NULL,
            study_instance_uid TEXT NOT NULL,
            patient_id TEXT,
            accession_number TEXT,
            study_date TEXT,
            instance_count INTEGER NOT NULL,
            study_bytes BIGINT NOT NULL,
            last_update TEXT NOT NULL,
            content_key TEXT NOT NULL,
            volume_serial TEXT NOT NULL,
            path TEXT NOT NULL,
            manifest_path TEXT NOT NULL,
            container_bytes BIGINT,
            container_sha256 TEXT,
            state TEXT NOT NULL CHECK (state IN ('writing', 'written', 'verified', 'failed')),
            started_at TEXT NOT NULL,
            written_at TEXT,
            verified_at TEXT,
            failed_at TEXT,
            failure TEXT""",
    "instance_columns": """
            orthanc_instance_id TEXT NOT NULL,
            orthanc_series_id TEXT NOT NULL,
            sop_instance_uid TEXT,
            series_instance_uid TEXT,
            member_name TEXT NOT NULL,
            size BIGINT NOT NULL,
            md5 TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (copy_id, orthanc_instance_id)""",
    "deletion_columns": """
            server TEXT NOT NULL,
            orthanc_study_id TEXT NOT NULL,
            study_instance_uid TEXT,
            content_key TEXT NOT NULL,
            instances_deleted INTEGER NOT NULL,
            deleted_at TEXT NOT NULL,
            note TEXT""",
    "restore_columns": """
            server TEXT NOT NULL,
            orthanc_study_id TEXT NOT NULL,
            study_instance_uid TEXT,
            copy_id BIGINT,
            target_server TEXT NOT NULL,
            instances_restored INTEGER NOT NULL,
            restored_at TEXT NOT NULL""",
    "volume_columns": """
            serial TEXT PRIMARY KEY,
            name TEXT,
            barcode TEXT,
            kind TEXT NOT NULL,
            capacity_bytes BIGINT,
            available_bytes BIGINT,
            first_seen_at TEXT NOT NULL,
            updated_at TEXT NOT NULL""",
}

_INDEXES = [
    # One row per study content per volume: a rerun finds the row instead of adding another.
    "CREATE UNIQUE INDEX IF NOT EXISTS copies_content_volume ON copies (server, orthanc_study_id, content_key, volume_serial)",
    "CREATE INDEX IF NOT EXISTS copies_study_uid ON copies (study_instance_uid)",
    "CREATE INDEX IF NOT EXISTS copies_patient ON copies (patient_id)",
    "CREATE INDEX IF NOT EXISTS copies_volume ON copies (volume_serial, state)",
    "CREATE INDEX IF NOT EXISTS deletions_study ON deletions (server, orthanc_study_id)",
]


class CatalogError(Exception):
    """The catalog could not be opened or updated."""


# Timestamps are stored as text in this format, so comparing the text compares the times.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now(days_ago: int = 0) -> str:
    """Return the current UTC time, or the time days_ago days earlier, as the catalog stores it."""
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    return moment.strftime(TIMESTAMP_FORMAT)


class Catalog:
    """Backend-neutral catalog operations; subclasses provide the connection and the SQL dialect."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.conn: Any = None

    # -- plumbing -------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement

    def _execute(self, statement: str, params: Iterable[Any] = ()) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(self._sql(statement), tuple(params))
        return cursor

    def _rows(self, statement: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._execute(statement, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _transaction(self) -> Any:
        """Return a context manager that commits on success and rolls back on an exception."""
        return self.conn

    def _insert_returning_id(self, statement: str, params: Iterable[Any]) -> int:
        cursor = self._execute(statement + " RETURNING id", params)
        return int(cursor.fetchone()[0])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _lock_schema(self) -> None:
        """Keep two processes from creating or migrating the schema at once (SQLite locks the file itself)."""

    def migrate(self) -> None:
        """Create the schema or bring an older one up to SCHEMA_VERSION, in one transaction."""
        with self._transaction():
            self._lock_schema()
            for statement in _SCHEMA[self.dialect]:
                self._execute(statement.format(**_COLUMN_SQL))
            for statement in _INDEXES:
                self._execute(statement)
            rows = self._rows("SELECT version FROM schema_version")
            if not rows:
                self._execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            found = max(row["version"] for row in rows)
            if found > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog schema version {found} is newer than this project's {SCHEMA_VERSION}: "
                    "upgrade the project on this host before using this catalog"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(version, []):
                    self._execute(statement)
            if found < SCHEMA_VERSION:
                self._execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # -- copies ---------------------------------------------------------------------------------

    def start_copy(self, study: dict[str, Any], volume_serial: str, path: str, manifest_path: str) -> int:
        """Record that a container is about to be written; reuse a failed or writing row of the same content."""
        now = utc_now()
        with self._transaction():
            existing = self._rows(
                "SELECT id, state FROM copies WHERE server = ? AND orthanc_study_id = ? AND content_key = ? "
                "AND volume_serial = ?",
                (study["server"], study["orthanc_study_id"], study["content_key"], volume_serial),
            )
            if existing:
                row = existing[0]
                if row["state"] in ("written", "verified"):
                    raise CatalogError(
                        f"study {study['orthanc_study_id']} already has a {row['state']} copy on volume "
                        f"{volume_serial}; it must not be written again"
                    )
                self._execute("DELETE FROM copy_instances WHERE copy_id = ?", (row["id"],))
                self._execute(
                    "UPDATE copies SET state = 'writing', path = ?, manifest_path = ?, started_at = ?, "
                    "written_at = NULL, verified_at = NULL, failed_at = NULL, failure = NULL, "
                    "container_bytes = NULL, container_sha256 = NULL WHERE id = ?",
                    (path, manifest_path, now, row["id"]),
                )
                return int(row["id"])
            return self._insert_returning_id(
                "INSERT INTO copies (server, orthanc_study_id, study_instance_uid, patient_id, accession_number, "
                "study_date, instance_count, study_bytes, last_update, content_key, volume_serial, path, "
                "manifest_path, state, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'writing', ?)",
                (
                    study["server"], study["orthanc_study_id"], study["study_instance_uid"],
                    study.get("patient_id"), study.get("accession_number"), study.get("study_date"),
                    study["instance_count"], study["study_bytes"], study["last_update"], study["content_key"],
                    volume_serial, path, manifest_path, now,
                ),
            )

    def finish_copy(self, copy_id: int, container_bytes: int, container_sha256: str,
                    instances: list[dict[str, Any]]) -> None:
        """Mark a copy written, with its container checksum and every instance's checksums."""
        with self._transaction():
            self._execute("DELETE FROM copy_instances WHERE copy_id = ?", (copy_id,))
            cursor = self.conn.cursor()
            cursor.executemany(
                self._sql(
                    "INSERT INTO copy_instances (copy_id, orthanc_instance_id, orthanc_series_id, sop_instance_uid, "
                    "series_instance_uid, member_name, size, md5, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                [
                    (
                        copy_id, item["orthanc_instance_id"], item["orthanc_series_id"], item.get("sop_instance_uid"),
                        item.get("series_instance_uid"), item["member_name"], item["size"], item["md5"],
                        item["sha256"],
                    )
                    for item in instances
                ],
            )
            self._execute(
                "UPDATE copies SET state = 'written', container_bytes = ?, container_sha256 = ?, written_at = ? "
                "WHERE id = ? AND state = 'writing'",
                (container_bytes, container_sha256, utc_now(), copy_id),
            )

    def mark_verified(self, copy_id: int) -> None:
        with self._transaction():
            self._execute(
                "UPDATE copies SET state = 'verified', verified_at = ? WHERE id = ? AND state IN ('written', 'verified')",
                (utc_now(), copy_id),
            )

    def mark_failed(self, copy_id: int, failure: str) -> None:
        with self._transaction():
            self._execute(
                "UPDATE copies SET state = 'failed', failed_at = ?, failure = ? WHERE id = ?",
                (utc_now(), failure[:2000], copy_id),
            )

    def copy(self, copy_id: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM copies WHERE id = ?", (copy_id,))
        return rows[0] if rows else None

    def copies_of_study(self, server: str, orthanc_study_id: str, states: Iterable[str] = COPY_STATES) -> list[dict[str, Any]]:
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        return self._rows(
            f"SELECT * FROM copies WHERE server = ? AND orthanc_study_id = ? AND state IN ({marks}) ORDER BY id",
            (server, orthanc_study_id, *states),
        )

    def copies_on_volume(self, volume_serial: str, states: Iterable[str] = COPY_STATES) -> list[dict[str, Any]]:
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        return self._rows(
            f"SELECT * FROM copies WHERE volume_serial = ? AND state IN ({marks}) ORDER BY id",
            (volume_serial, *states),
        )

    def copy_instances(self, copy_id: int) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM copy_instances WHERE copy_id = ? ORDER BY member_name", (copy_id,))

    def find_copies(self, where: dict[str, Any], states: Iterable[str] = ("verified",)) -> list[dict[str, Any]]:
        """Return copies matching exact column values and, with study_date_from/to, a StudyDate range."""
        clauses = []
        params: list[Any] = []
        for column, value in where.items():
            if column == "study_date_from":
                clauses.append("study_date >= ?")
            elif column == "study_date_to":
                clauses.append("study_date <= ?")
            elif column in COPY_COLUMNS:
                clauses.append(f"{column} = ?")
            else:
                raise CatalogError(f"unknown catalog column {column!r}")
            params.append(value)
        states = tuple(states)
        clauses.append("state IN (" + ", ".join("?" for _ in states) + ")")
        params.extend(states)
        return self._rows("SELECT * FROM copies WHERE " + " AND ".join(clauses) + " ORDER BY id", params)

    # -- deletions and restores -----------------------------------------------------------------

    def record_deletion(self, server: str, orthanc_study_id: str, study_instance_uid: str | None,
                        content_key: str, instances_deleted: int, note: str = "") -> None:
        with self._transaction():
            self._execute(
                "INSERT INTO deletions (server, orthanc_study_id, study_instance_uid, content_key, instances_deleted, "
                "deleted_at, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (server, orthanc_study_id, study_instance_uid, content_key, instances_deleted, utc_now(), note),
            )

    def deletions_of_study(self, server: str, orthanc_study_id: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM deletions WHERE server = ? AND orthanc_study_id = ? ORDER BY id", (server, orthanc_study_id)
        )

    def deletions(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return every recorded deletion, or those of one server, oldest first."""
        if server is None:
            return self._rows("SELECT * FROM deletions ORDER BY id")
        return self._rows("SELECT * FROM deletions WHERE server = ? ORDER BY id", (server,))

    def record_restore(self, copy_row: dict[str, Any], target_server: str, instances_restored: int) -> None:
        with self._transaction():
            self._execute(
                "INSERT INTO restores (server, orthanc_study_id, study_instance_uid, copy_id, target_server, "
                "instances_restored, restored_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (copy_row["server"], copy_row["orthanc_study_id"], copy_row["study_instance_uid"], copy_row["id"],
                 target_server, instances_restored, utc_now()),
            )

    def restored_within(self, target_server: str, orthanc_study_id: str, days: int) -> bool:
        """Return whether the study was restored into target_server in the last days days."""
        rows = self._rows("SELECT 1 AS found FROM restores WHERE target_server = ? AND orthanc_study_id = ? "
                          "AND restored_at >= ? LIMIT 1", (target_server, orthanc_study_id, utc_now(days)))
        return bool(rows)

    def reclaim_candidates(self, server: str, required_copies: int) -> list[dict[str, Any]]:
        """Return, per study content, the verified copies of studies that have enough of them.

        A candidate is a (study, content_key) pair verified on at least required_copies distinct
        volumes. Whether the study in Orthanc still has that content is checked by the caller.
        """
        rows = self._rows(
            "SELECT orthanc_study_id, content_key, COUNT(DISTINCT volume_serial) AS volumes FROM copies "
            "WHERE server = ? AND state = 'verified' AND NOT EXISTS (SELECT 1 FROM deletions "
            "WHERE deletions.server = copies.server AND deletions.orthanc_study_id = copies.orthanc_study_id "
            "AND deletions.content_key = copies.content_key) GROUP BY orthanc_study_id, content_key",
            (server,),
        )
        return [row for row in rows if int(row["volumes"]) >= required_copies]

    # -- volumes --------------------------------------------------------------------------------

    def upsert_volume(self, serial: str, kind: str, name: str | None = None, barcode: str | None = None,
                      capacity_bytes: int | None = None, available_bytes: int | None = None) -> None:
        now = utc_now()
        # One statement, so two runs that see a new volume at the same moment cannot both insert it.
        with self._transaction():
            self._execute(
                "INSERT INTO volumes (serial, name, barcode, kind, capacity_bytes, available_bytes, first_seen_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET kind = excluded.kind, "
                "name = COALESCE(excluded.name, volumes.name), barcode = COALESCE(excluded.barcode, volumes.barcode), "
                "capacity_bytes = COALESCE(excluded.capacity_bytes, volumes.capacity_bytes), "
                "available_bytes = COALESCE(excluded.available_bytes, volumes.available_bytes), "
                "updated_at = excluded.updated_at",
                (serial, name, barcode, kind, capacity_bytes, available_bytes, now, now),
            )

    def volumes(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM volumes ORDER BY serial")


class SQLiteCatalog(Catalog):
    """Catalog in one SQLite file, readable only by its owner."""

    dialect = "sqlite"

    def __init__(self, path: str, busy_timeout: float = 60.0):
        super().__init__()
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"cannot open the SQLite catalog {path}: {exc}. Check catalog_path and its folder's permissions") from None
        self.conn.isolation_level = "DEFERRED"
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.migrate()
        except sqlite3.Error as exc:
            self.close()
            raise CatalogError(f"cannot use the SQLite catalog {path}: {exc}") from None


class PostgresCatalog(Catalog):
    """Catalog in a PostgreSQL database, shared by several tape hosts."""

    dialect = "postgresql"

    def __init__(self, dsn: str, connect_timeout: int = 15):
        super().__init__()
        if psycopg is None:
            raise CatalogError("the PostgreSQL catalog needs the Python package 'psycopg' on the tape host")
        try:
            # Autocommit outside explicit transaction blocks, so each block is one real transaction.
            self.conn = psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=True)
        except psycopg.Error as exc:
            # psycopg messages name host and database but never the password.
            raise CatalogError(f"cannot connect to the PostgreSQL catalog: {str(exc).strip()}") from None
        self.migrate()

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        # Errors raised at COMMIT (and by executemany) surface here, not in _execute.
        try:
            with self.conn.transaction():
                yield
        except psycopg.Error as exc:
            raise self._catalog_error(exc) from None

    def _execute(self, statement: str, params: Iterable[Any] = ()) -> Any:
        try:
            return super()._execute(statement, params)
        except psycopg.Error as exc:
            raise self._catalog_error(exc) from None

    @staticmethod
    def _catalog_error(exc: Exception) -> CatalogError:
        if isinstance(exc, psycopg.errors.UniqueViolation):
            # Two tape hosts (or two runs) recorded the same row at the same moment; the first one won.
            detail = exc.diag.message_detail or ""
            return CatalogError(f"another run recorded the same catalog row first ({detail.strip()}): "
                                "nothing of this change was kept; run again to see the recorded state")
        return CatalogError(f"PostgreSQL catalog error: {str(exc).strip()}")

    def _lock_schema(self) -> None:
        # Held until the migration's transaction ends, so two tape hosts never run the DDL together.
        self._execute("SELECT pg_advisory_xact_lock(7317001)")

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")


def open_catalog(params: dict[str, Any]) -> Catalog:
    """Open the catalog named by module parameters catalog_backend, catalog_path and catalog_dsn."""
    backend = params.get("catalog_backend") or "sqlite"
    if backend == "sqlite":
        return SQLiteCatalog(params["catalog_path"])
    if backend == "postgresql":
        if not params.get("catalog_dsn"):
            raise CatalogError("catalog_backend is postgresql but catalog_dsn is empty: set it to a libpq connection string")
        return PostgresCatalog(params["catalog_dsn"])
    raise CatalogError(f"unknown catalog_backend {backend!r}: use sqlite or postgresql")
