"""Run one archive pipeline (select, archive, [remount], verify, reclaim) with the real modules, in one process.

Usage: python tests/faults/driver.py CONFIG.json

The fault suite starts this script as a subprocess and kills it, so every step runs the code that
Ansible ships (library/*.py with module_utils), through ansible.module_utils.testing.patch_module_args.
Each step prints one JSON line `{"step": NAME, "result": {...}}` on stdout.

Kill points for the sweep are set by the environment, here in the test harness only, never in the
product: FAULT_KILL=KIND:K sends SIGKILL to this process at the K-th event of KIND:
  catalog_before  before the K-th catalog write (start_copy, finish_copy, mark_verified, mark_failed,
                  record_deletion, upsert_volume)
  catalog_after   right after the K-th catalog write returned (committed)
  write           before the K-th block written to a container
  rename          before the K-th os.replace of a container or manifest into place
  verify          at the start of the K-th container read-back
The HTTP kill points are external: the loopback proxy kills this process after forwarding a request.
FAULT_COUNTS=PATH writes the number of events of each kind at the end, for the calibration run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import ansible.module_utils

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(REPO / "module_utils"))

from ansible.module_utils import archive_catalog, archive_container  # noqa: E402
from ansible.module_utils.testing import patch_module_args  # noqa: E402

CATALOG_WRITES = ("start_copy", "finish_copy", "mark_verified", "mark_failed", "record_deletion", "upsert_volume")
COUNTS: dict[str, int] = {"catalog_before": 0, "catalog_after": 0, "write": 0, "rename": 0, "verify": 0}


def _kill_point() -> tuple[str, int] | None:
    value = os.environ.get("FAULT_KILL", "")
    if not value:
        return None
    kind, _, number = value.partition(":")
    return kind, int(number)


KILL = _kill_point()


def count(kind: str) -> None:
    COUNTS[kind] += 1
    if KILL is not None and KILL[0] == kind and KILL[1] == COUNTS[kind]:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def instrument() -> None:
    """Wrap the catalog writes, container writes, renames and read-backs with the kill counters."""

    def wrap_catalog(name: str) -> None:
        original = getattr(archive_catalog.Catalog, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            count("catalog_before")
            value = original(self, *args, **kwargs)
            count("catalog_after")
            return value

        setattr(archive_catalog.Catalog, name, wrapper)

    for name in CATALOG_WRITES:
        wrap_catalog(name)

    original_write = archive_container.HashingWriter.write

    def write(self: Any, data: bytes) -> int:
        count("write")
        return original_write(self, data)

    archive_container.HashingWriter.write = write  # type: ignore[method-assign]

    original_replace = os.replace

    def replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        count("rename")
        original_replace(source, target, *args, **kwargs)

    archive_container.os = _OsWithReplace(replace)  # type: ignore[attr-defined]

    original_drop = archive_container.drop_cache

    def drop_cache(path: str) -> None:
        count("verify")
        original_drop(path)

    archive_container.drop_cache = drop_cache  # type: ignore[assignment]


class _OsWithReplace:
    """The os module as archive_container sees it, with replace() counted."""

    def __init__(self, replace: Callable[..., None]):
        self.replace = replace

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def load_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"faults_{name}", REPO / "library" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def run_module(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run library/NAME.py's main() with args; return its result, with failed=True when it failed."""
    module = load_module(name)
    output = io.StringIO()
    with patch_module_args(args), contextlib.redirect_stdout(output):
        try:
            module.main()
        except SystemExit:
            pass
    text = output.getvalue().strip()
    try:
        return json.loads(text.splitlines()[-1]) if text else {"failed": True, "msg": "no output"}
    except ValueError:
        return {"failed": True, "msg": "output is not JSON: " + text[-500:]}


def emit(step: str, result: dict[str, Any]) -> None:
    print(json.dumps({"step": step, "result": result}, default=str), flush=True)


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    instrument()
    connection = config["connection"]
    catalog = config["catalog"]
    volume = config["volume"]
    common = {"log_path": config.get("log_path")}

    info = run_module("orthanc_study_info", {**connection, **catalog, **config["policy"],
                                             "server_name": config["server_name"]})
    emit("select", info)
    if info.get("failed"):
        return 2

    archive = {"failed": False, "results": []}
    if info["study_ids"]:
        archive = run_module("orthanc_study_archive", {
            **connection, **catalog, **volume, **common, "server_name": config["server_name"],
            "studies": info["study_ids"], "connections": 2, "buffer_bytes": 4 * 1024 * 1024,
            "required_copies": config.get("required_copies", 1),
        })
    emit("archive", archive)

    if config.get("ltfs"):
        ltfs = config["ltfs"]
        for state in ("unmounted", "mounted"):
            remount = run_module("ltfs_volume", {"state": state, "device": ltfs["device"],
                                                 "mount_point": volume["volume_path"], "recover": True})
            emit("remount_" + state, remount)
            if remount.get("failed"):
                return 2

    verify = run_module("archive_volume_verify", {**catalog, **volume, **common})
    emit("verify", verify)

    reclaim = run_module("orthanc_study_reclaim", {
        **connection, **catalog, **common, "server_name": config["server_name"],
        "required_copies": config.get("required_copies", 1), "lock_dir": volume["lock_dir"],
        "lock_timeout": volume.get("lock_timeout", 60.0),
    })
    emit("reclaim", reclaim)

    if os.environ.get("FAULT_COUNTS"):
        Path(os.environ["FAULT_COUNTS"]).write_text(json.dumps(COUNTS))
    failed = any(step.get("failed") for step in (archive, verify, reclaim))
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
