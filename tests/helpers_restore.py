"""Helpers for the restore, locate, rebuild and report tests: run modules and playbooks, archive and reclaim.

Modules run in-process through ansible.module_utils.testing.patch_module_args, playbooks through
ansible-playbook in a subprocess, both against the real Orthanc servers that conftest starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

import helpers_archive as h
from ansible.module_utils.testing import patch_module_args

REPO = h.REPO
SERVER = h.SERVER


def run_module(name: str, args: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Run library/NAME.py's main() with args and return its JSON result (failed results included)."""
    spec = importlib.util.spec_from_file_location(f"library_{name}", REPO / "library" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = dict(args)
    if check_mode:
        arguments["_ansible_check_mode"] = True
    output = io.StringIO()
    with patch_module_args(arguments), contextlib.redirect_stdout(output):
        try:
            module.main()
        except SystemExit:
            pass
    return json.loads(output.getvalue())


def connection(handle: Any) -> dict[str, Any]:
    username, password = handle.auth if handle.auth else (None, None)
    return {"url": handle.url, "username": username, "password": password, "retries": 0}


def original_files(handle: Any, study_ids: list[str]) -> dict[str, bytes]:
    """Download every instance of the studies as Orthanc stores it, keyed by Orthanc instance ID."""
    files = {}
    for study_id in study_ids:
        for item in handle.get_json(f"/studies/{study_id}/instances"):
            response = handle.session.get(f"{handle.url}/instances/{item['ID']}/file", timeout=60)
            response.raise_for_status()
            files[item["ID"]] = response.content
    return files


def archive_verify_reclaim(handle: Any, folder: Path, study_ids: list[str], reclaim: bool = True) -> dict[str, Any]:
    """Archive studies with orthanc_study_archive, verify them, and delete them with orthanc_study_reclaim."""
    catalog_path = str(folder / "catalog.sqlite")
    volume_path = folder / "volume"
    volume_path.mkdir(parents=True, exist_ok=True)
    common = {"catalog_path": catalog_path, "lock_dir": str(folder / "locks")}
    archived = run_module("orthanc_study_archive", {
        **connection(handle), **common, "server_name": SERVER, "studies": study_ids,
        "volume_path": str(volume_path), "connections": 2, "buffer_bytes": 4 * 1024 * 1024,
    })
    assert not archived.get("failed"), archived.get("msg")
    verified = run_module("archive_volume_verify", {**common, "volume_path": str(volume_path)})
    assert verified["verified_count"] == len(study_ids), verified
    outcome = {"catalog_path": catalog_path, "volume_path": str(volume_path), "archived": archived,
               "verified": verified, "lock_dir": common["lock_dir"]}
    if reclaim:
        reclaimed = run_module("orthanc_study_reclaim", {**connection(handle), **common, "server_name": SERVER})
        assert reclaimed["deleted"] == len(study_ids), reclaimed
        outcome["reclaimed"] = reclaimed
    return outcome


def run_playbook(playbook: str, extra_vars: dict[str, Any], folder: Path, check: bool = False) -> Any:
    """Run a playbook of the repository for one local host in group orthanc_servers; return the finished process."""
    inventory = folder / "inventory.ini"
    inventory.write_text(f"[orthanc_servers]\n{SERVER} ansible_connection=local\n", encoding="utf-8")
    binary = str(Path(sys.executable).parent / "ansible-playbook")
    command = [binary, "-i", str(inventory), playbook, "-e", json.dumps(extra_vars)]
    if check:
        command.append("--check")
    env = h.python_env()
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env.pop("ANSIBLE_INVENTORY", None)
    return h.run(command, cwd=str(REPO), env=env)


def playbook_vars(handle: Any, outcome: dict[str, Any]) -> dict[str, Any]:
    """Return the inventory variables a playbook of this project needs for one test Orthanc."""
    return {
        "ansible_python_interpreter": sys.executable,
        "orthanc_archive_url": handle.url,
        "orthanc_archive_server_name": SERVER,
        "orthanc_archive_catalog_path": outcome["catalog_path"],
        "orthanc_archive_volume_path": outcome["volume_path"],
        "orthanc_archive_lock_dir": outcome["lock_dir"],
        "orthanc_archive_tape_host": "localhost",
    }
