"""ltfs_volume and tape_changer run through ansible-playbook against the simulated tape library.

Covers the failure cases an operator meets: a cartridge that is missing from the library or is
not the one expected, a write-protected cartridge, a volume left inconsistent by a crashed ltfs,
and the order of unmount and drive commands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tapesim.fixture import TapeLibrary, build_library

REPO = Path(__file__).resolve().parents[1]
CHANGER = "/dev/sg2"
DRIVE = "/dev/sg0"


@pytest.fixture
def library(tmp_path: Path) -> TapeLibrary:
    tape = build_library(tmp_path / "tapesim", drives=2, capacity_bytes=8 * 1024 * 1024,
                         index_write_seconds=1.0)
    try:
        yield tape
    finally:
        tape.cleanup()


def run_task(library: TapeLibrary, module: str, args: dict[str, Any], tmp_path: Path,
             check_mode: bool = False) -> dict[str, Any]:
    """Run one module task on localhost and return its registered result."""
    output = tmp_path / f"result-{time.monotonic_ns()}.json"
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [
            {"name": "Run the module", module: args, "register": "outcome", "ignore_errors": True,
             "check_mode": check_mode},
            {"name": "Save the result", "ansible.builtin.copy": {"content": "{{ outcome | to_json }}",
                                                                 "dest": str(output)}},
        ],
    }]))
    env = dict(library.env, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    completed = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert output.exists(), completed.stdout + completed.stderr
    return json.loads(output.read_text())


def load_and_format(library: TapeLibrary, barcode: str, tmp_path: Path) -> None:
    loaded = run_task(library, "tape_changer", {"changer": CHANGER, "state": "loaded", "barcode": barcode,
                                                "drive": 0, "drive_device": DRIVE}, tmp_path)
    assert not loaded.get("failed"), loaded["msg"] if "msg" in loaded else loaded
    formatted = run_task(library, "ltfs_volume", {"state": "formatted", "device": DRIVE, "barcode": barcode},
                         tmp_path)
    assert not formatted.get("failed"), formatted.get("msg")


def tool_names(library: TapeLibrary) -> list[str]:
    return [record["argv"][0] for record in library.commands()]


def test_load_missing_cartridge_names_barcode(library, tmp_path):
    result = run_task(library, "tape_changer", {"changer": CHANGER, "state": "loaded", "barcode": "NOPE09L8"},
                      tmp_path)
    assert result["failed"]
    assert "cartridge NOPE09L8 is not in the library" in result["msg"]
    assert "TAPE01L8" in result["msg"]


def test_load_is_idempotent(library, tmp_path):
    args = {"changer": CHANGER, "state": "loaded", "barcode": "TAPE02L8", "drive": 1}
    first = run_task(library, "tape_changer", args, tmp_path)
    second = run_task(library, "tape_changer", args, tmp_path)
    assert first["changed"]
    assert not second["changed"]
    assert second["barcode"] == "TAPE02L8"


def test_load_check_mode_moves_nothing(library, tmp_path):
    result = run_task(library, "tape_changer", {"changer": CHANGER, "state": "loaded", "barcode": "TAPE03L8",
                                                "drive": 0}, tmp_path, check_mode=True)
    assert result["changed"]
    assert result["moves"] == ["load TAPE03L8 from slot 3 into drive 0"]
    assert "load" not in [word for record in library.commands() for word in record["argv"]]


def test_unload_returns_to_home_slot(library, tmp_path):
    run_task(library, "tape_changer", {"changer": CHANGER, "state": "loaded", "barcode": "TAPE03L8"}, tmp_path)
    result = run_task(library, "tape_changer", {"changer": CHANGER, "state": "unloaded"}, tmp_path)
    assert result["moves"] == ["unload TAPE03L8 from drive 0 to slot 3"]
    slots = {slot["number"]: slot["barcode"] for slot in result["inventory"]["slots"]}
    assert slots[3] == "TAPE03L8"


def test_mount_wrong_cartridge_names_barcode(library, tmp_path):
    load_and_format(library, "TAPE01L8", tmp_path)
    result = run_task(library, "ltfs_volume", {"device": DRIVE, "mount_point": str(tmp_path / "mnt"),
                                               "barcode": "TAPE02L8"}, tmp_path)
    assert result["failed"]
    assert "wrong cartridge" in result["msg"]
    assert "TAPE02L8" in result["msg"]
    assert "TAPE01" in result["msg"]
    assert library.ltfs_pid(0) is None


def test_mount_write_protected_is_refused(library, tmp_path):
    load_and_format(library, "TAPE01L8", tmp_path)
    library.set_write_protected("TAPE01L8")
    result = run_task(library, "ltfs_volume", {"device": DRIVE, "mount_point": str(tmp_path / "mnt"),
                                               "barcode": "TAPE01L8"}, tmp_path)
    assert result["failed"]
    assert "cartridge TAPE01L8" in result["msg"]
    assert "write-protected" in result["msg"]
    assert library.ltfs_pid(0) is None


def test_format_write_protected_blank_is_refused(library, tmp_path):
    run_task(library, "tape_changer", {"changer": CHANGER, "state": "loaded", "barcode": "TAPE02L8"}, tmp_path)
    library.set_write_protected("TAPE02L8")
    result = run_task(library, "ltfs_volume", {"state": "formatted", "device": DRIVE, "barcode": "TAPE02L8"},
                      tmp_path)
    assert result["failed"]
    assert "write-protected" in result["msg"]
    assert library.cartridge("TAPE02L8")["volume"] is None


def test_format_never_touches_data_cartridge(library, tmp_path):
    load_and_format(library, "TAPE01L8", tmp_path)
    generation = library.cartridge("TAPE01L8")["volume"]["uuid"]
    again = run_task(library, "ltfs_volume", {"state": "formatted", "device": DRIVE, "barcode": "TAPE01L8"},
                     tmp_path)
    assert not again["changed"]
    named_other = run_task(library, "ltfs_volume", {"state": "formatted", "device": DRIVE,
                                                    "reformat_volume_serial": "TAPE09"}, tmp_path)
    assert named_other["failed"]
    assert "TAPE09" in named_other["msg"]
    assert library.cartridge("TAPE01L8")["volume"]["uuid"] == generation
    assert "-f" not in [word for record in library.commands() if record["argv"][0] == "mkltfs"
                        for word in record["argv"]]


def crash_ltfs_after_write(library: TapeLibrary, mount_point: Path, tmp_path: Path) -> None:
    """Mount, write a file, then kill ltfs before it writes an index: the volume is left inconsistent."""
    mounted = run_task(library, "ltfs_volume", {"device": DRIVE, "mount_point": str(mount_point),
                                                "sync_type": "unmount"}, tmp_path)
    assert not mounted.get("failed"), mounted.get("msg")
    (mount_point / "study.tar").write_bytes(os.urandom(256 * 1024))
    pid = library.ltfs_pid(0)
    os.kill(pid, signal.SIGKILL)
    library.wait_for_ltfs_exit(0)
    subprocess.run(["fusermount3", "-u", "-z", str(mount_point)], capture_output=True)


def test_unclean_volume_not_recovered_by_default(library, tmp_path):
    load_and_format(library, "TAPE01L8", tmp_path)
    mount_point = tmp_path / "mnt"
    crash_ltfs_after_write(library, mount_point, tmp_path)
    result = run_task(library, "ltfs_volume", {"device": DRIVE, "mount_point": str(mount_point)}, tmp_path)
    assert result["failed"]
    assert "inconsistent" in result["msg"]
    assert "recover=true" in result["msg"]
    assert "ltfsck" not in tool_names(library)


def test_unclean_volume_recovered_when_allowed(library, tmp_path):
    load_and_format(library, "TAPE01L8", tmp_path)
    mount_point = tmp_path / "mnt"
    crash_ltfs_after_write(library, mount_point, tmp_path)
    result = run_task(library, "ltfs_volume", {"device": DRIVE, "mount_point": str(mount_point),
                                               "recover": True}, tmp_path)
    assert not result.get("failed"), result.get("msg")
    assert result["recovered"]
    assert result["volume"]["serial"] == "TAPE01"
    assert "ltfsck" in tool_names(library)
    run_task(library, "ltfs_volume", {"state": "unmounted", "mount_point": str(mount_point)}, tmp_path)


def test_unmount_waits_before_unload(library, tmp_path):
    load_and_format(library, "TAPE01L8", tmp_path)
    mount_point = tmp_path / "mnt"
    run_task(library, "ltfs_volume", {"device": DRIVE, "mount_point": str(mount_point)}, tmp_path)
    (mount_point / "study.tar").write_bytes(os.urandom(128 * 1024))
    pid = library.ltfs_pid(0)

    unmounted = run_task(library, "ltfs_volume", {"state": "unmounted", "mount_point": str(mount_point)}, tmp_path)
    unloaded_at = time.monotonic()
    unloaded = run_task(library, "tape_changer", {"changer": CHANGER, "state": "unloaded",
                                                  "drive_device": DRIVE}, tmp_path)

    assert unmounted["ltfs_pid"] == pid
    assert unmounted["waited_seconds"] >= 0.5
    assert unloaded["moves"] == ["unload TAPE01L8 from drive 0 to slot 1"]
    assert library.events("drive_touched_while_ltfs_active") == []
    written = [event for event in library.events("index_written") if event.get("barcode") == "TAPE01L8"]
    assert written, "ltfs wrote no index at unmount"
    unload_commands = [record for record in library.commands() if "unload" in record["argv"]]
    assert unload_commands[0]["monotonic"] > written[-1]["monotonic"]
    assert unload_commands[0]["monotonic"] >= unloaded_at - 0.001
