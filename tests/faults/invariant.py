"""The invariant of the archive, checked from outside the product.

Every study that existed before a run is, at every moment, either
  - complete in Orthanc: each of its original instances is there with the original MD5, or
  - verified on at least required_copies volumes: every instance missing from Orthanc is, with the
    original MD5, in `verified` copies of the study on that many distinct volumes. Containers are
    read back here with tarfile, not with the product's reader.
A study for which neither holds is lost. The check is per instance because a study that changed
after it was archived (an instance arrived during reclaim) ends up in two copies, one per content.
The checker reads the catalog with plain SQL.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

# Maps (volume serial, container path relative to the volume root) to a readable local file, or None.
ContainerLocator = Callable[[str, str], "str | None"]


@dataclass
class Originals:
    """The instances and MD5s of every study, recorded before the run: {study ID: {instance ID: MD5}}."""

    studies: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, study_id: str, instance_id: str, md5: str) -> None:
        self.studies.setdefault(study_id, {})[instance_id] = md5


def orthanc_instances(url: str, auth: tuple[str, str] | None, study_id: str) -> dict[str, str]:
    """Return {instance ID: stored MD5} of a study as Orthanc holds it now ({} when the study is gone)."""
    with requests.Session() as session:
        session.auth = auth
        response = session.get(f"{url}/studies/{study_id}/instances", timeout=30)
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        found = {}
        for item in response.json():
            info = session.get(f"{url}/instances/{item['ID']}/attachments/dicom/info", timeout=30)
            info.raise_for_status()
            found[item["ID"]] = info.json()["UncompressedMD5"]
        return found


def verified_copies(catalog: dict[str, Any], server: str, study_id: str) -> list[dict[str, Any]]:
    """Return the verified copies of a study, read from the catalog with plain SQL."""
    query = ("SELECT id, volume_serial, path FROM copies WHERE server = {0} AND orthanc_study_id = {0} "
             "AND state = 'verified'")
    if catalog.get("catalog_backend", "sqlite") == "postgresql":
        import psycopg

        with psycopg.connect(catalog["catalog_dsn"], connect_timeout=10) as conn:
            rows = conn.execute(query.format("%s"), (server, study_id)).fetchall()
    else:
        if not os.path.exists(catalog["catalog_path"]):
            return []
        conn = sqlite3.connect(f"file:{catalog['catalog_path']}?mode=ro", uri=True, timeout=60)
        try:
            rows = conn.execute(query.format("?"), (server, study_id)).fetchall()
        finally:
            conn.close()
    return [{"id": row[0], "volume_serial": row[1], "path": row[2]} for row in rows]


def container_md5s(path: str) -> dict[str, str]:
    """Read a container with tarfile and return {instance ID: MD5} of its .dcm members."""
    found = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".dcm"):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            found[os.path.basename(member.name)[: -len(".dcm")]] = hashlib.md5(handle.read()).hexdigest()
    return found


def check(originals: Originals, url: str, auth: tuple[str, str] | None, catalog: dict[str, Any], server: str,
          locate: ContainerLocator, required_copies: int = 1) -> dict[str, str]:
    """Return {study ID: reason} for every lost study; an empty dict means the invariant holds."""
    lost = {}
    for study_id, expected in originals.studies.items():
        present = orthanc_instances(url, auth, study_id)
        missing = {instance: md5 for instance, md5 in expected.items() if present.get(instance) != md5}
        if not missing:
            continue

        volumes_of: dict[str, set[str]] = {instance: set() for instance in missing}
        problems = []
        for copy in verified_copies(catalog, server, study_id):
            path = locate(copy["volume_serial"], copy["path"])
            if path is None or not os.path.exists(path):
                problems.append(f"copy {copy['id']}: container {copy['path']} not found on {copy['volume_serial']}")
                continue
            try:
                stored = container_md5s(path)
            except (tarfile.TarError, OSError) as exc:
                problems.append(f"copy {copy['id']}: {exc}")
                continue
            for instance, md5 in missing.items():
                if stored.get(instance) == md5:
                    volumes_of[instance].add(copy["volume_serial"])
        short = [instance for instance, volumes in volumes_of.items() if len(volumes) < required_copies]
        if short:
            lost[study_id] = (f"{len(missing)} of {len(expected)} instances gone from Orthanc, {len(short)} of them "
                              f"verified on fewer than {required_copies} volumes: {', '.join(sorted(short))}; "
                              + "; ".join(problems))
    return lost
