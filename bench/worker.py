"""One measured pass of the benchmark, run in its own process so its peak RSS and CPU time are its own.

    python bench/worker.py export  --url URL --catalog FILE --volume DIR --connections N --buffer-bytes B ID...
    python bench/worker.py archive --url URL --target DIR ID...

Prints one JSON object: bytes written, seconds, peak RSS (ru_maxrss) and CPU seconds of this process.
`export` runs StudyExporter (download, write, read-back verification) for each study in turn;
`archive` downloads GET /studies/{id}/archive to a file while computing its SHA-256, then fsyncs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def use_project_module_utils() -> None:
    """Make `ansible.module_utils.NAME` import this repository's module_utils, as tests/conftest.py does."""
    import ansible.module_utils

    ansible.module_utils.__path__.append(str(REPO / "module_utils"))


def usage() -> dict[str, float]:
    """Return this process's peak RSS and CPU seconds.

    The peak comes from VmHWM in /proc/self/status: ru_maxrss can carry the parent's peak across
    the fork and exec that started this process.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text().split()
    peak_kib = int(status[status.index("VmHWM:") + 1])
    return {"peak_rss_bytes": peak_kib * 1024, "cpu_seconds": own.ru_utime + own.ru_stime}


def run_export(args: argparse.Namespace) -> dict:
    use_project_module_utils()
    from ansible.module_utils import study_export
    from ansible.module_utils.archive_catalog import SQLiteCatalog
    from ansible.module_utils.archive_volume import Volume
    from ansible.module_utils.orthanc_client import OrthancClient
    from ansible.module_utils.study_export import StudyExporter

    # The pool must hold one connection per download thread, plus one for the writer's own requests.
    client = OrthancClient(args.url, pool_size=args.connections + 2)
    catalog = SQLiteCatalog(args.catalog)
    volume = Volume(args.volume)
    exporter = StudyExporter(client, catalog, volume, "bench", args.connections, args.buffer_bytes)
    # Time the read-back apart from the rest, so the report can tell the two phases apart.
    read_back_seconds = [0.0]
    verify = study_export.verify_container

    def timed_verify(*verify_args: object) -> list[str]:
        started = time.monotonic()
        try:
            return verify(*verify_args)
        finally:
            read_back_seconds[0] += time.monotonic() - started

    study_export.verify_container = timed_verify
    per_study = []
    started = time.monotonic()
    for study_id in args.studies:
        study_started = time.monotonic()
        read_back_seconds[0] = 0.0
        result = exporter.export(study_id)
        if result["status"] != "archived":
            raise SystemExit(f"study {study_id} was not archived: {result['status']} {result.get('reason')}")
        per_study.append({"study": study_id, "container_bytes": result["bytes"], "instances": result["instances"],
                          "seconds": time.monotonic() - study_started, "read_back_seconds": read_back_seconds[0]})
    seconds = time.monotonic() - started
    catalog.close()
    client.close()
    return {"seconds": seconds, "container_bytes": sum(item["container_bytes"] for item in per_study),
            "studies": per_study, **usage()}


def run_archive(args: argparse.Namespace) -> dict:
    import requests

    session = requests.Session()
    session.trust_env = False
    # A hand-written script would not ask for gzip on a ZIP download either.
    session.headers["Accept-Encoding"] = "identity"
    per_study = []
    started = time.monotonic()
    for study_id in args.studies:
        study_started = time.monotonic()
        path = Path(args.target) / f"{study_id}.zip"
        digest = hashlib.sha256()
        size = 0
        with session.get(f"{args.url}/studies/{study_id}/archive", stream=True, timeout=600) as response:
            response.raise_for_status()
            with open(path, "wb") as handle:
                for chunk in response.iter_content(chunk_size=1024 * 1024):
                    digest.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        per_study.append({"study": study_id, "zip_bytes": size, "sha256": digest.hexdigest(),
                          "seconds": time.monotonic() - study_started})
    seconds = time.monotonic() - started
    session.close()
    return {"seconds": seconds, "zip_bytes": sum(item["zip_bytes"] for item in per_study), "studies": per_study,
            **usage()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export studies with StudyExporter")
    export.add_argument("--url", required=True)
    export.add_argument("--catalog", required=True, help="SQLite catalog file")
    export.add_argument("--volume", required=True, help="folder used as the archive volume")
    export.add_argument("--connections", type=int, required=True, help="parallel downloads")
    export.add_argument("--buffer-bytes", type=int, required=True, help="prefetch buffer in bytes")
    export.add_argument("studies", nargs="+", help="Orthanc study IDs")
    archive = commands.add_parser("archive", help="download /studies/{id}/archive ZIPs")
    archive.add_argument("--url", required=True)
    archive.add_argument("--target", required=True, help="folder for the ZIP files")
    archive.add_argument("studies", nargs="+", help="Orthanc study IDs")
    args = parser.parse_args()
    result = run_export(args) if args.command == "export" else run_archive(args)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
