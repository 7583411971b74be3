"""State folder of a simulated library: JSON files, a lock, logs and the mount registry.

Layout under ``$TAPESIM_STATE``::

    library.json                  drives, changer, slots, timing settings
    lock                          flock(2) target; hold it for every read-modify-write
    commands.log                  one JSON line per tool invocation (argv, time, pid)
    events.jsonl                  one JSON line per noteworthy event (see record_event)
    mounts/drive<N>.json          the live ltfs process that has drive N mounted
    cartridges/<BARCODE>/cartridge.json, indexes/<generation>.json, data/<blob>
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import STATE_ENV

JsonDict = dict[str, Any]

# LTFS 2.4 prints its version as "<major>.<minor>.<fix>.<patch> (<build>)"; a build from
# the git tree reports "(Prelim)".
LTFS_VERSION = "2.4.5.1 (Prelim)"
LTFS_FORMAT_SPEC = "2.4.0"


class StateError(Exception):
    """The state folder is missing or does not contain a simulated library."""


def state_dir_from_env() -> Path:
    """Return the state folder named by TAPESIM_STATE, or exit with a message."""
    value = os.environ.get(STATE_ENV)
    if not value:
        sys.stderr.write(f"tapesim: the {STATE_ENV} environment variable is not set; "
                         "create a library with 'python -m tests.tapesim init'\n")
        sys.exit(1)

    path = Path(value)
    if not (path / "library.json").is_file():
        sys.stderr.write(f"tapesim: no library.json in {path}; "
                         "create a library with 'python -m tests.tapesim init'\n")
        sys.exit(1)
    return path


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """Hold the library lock, which serializes every change to library.json and cartridges."""
    with open(state / "lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_library(state: Path) -> JsonDict:
    return read_json(state / "library.json")


def save_library(state: Path, library: JsonDict) -> None:
    write_json_atomic(state / "library.json", library)


def cartridge_dir(state: Path, barcode: str) -> Path:
    return state / "cartridges" / barcode


def load_cartridge(state: Path, barcode: str) -> JsonDict:
    return read_json(cartridge_dir(state, barcode) / "cartridge.json")


def save_cartridge(state: Path, cartridge: JsonDict) -> None:
    write_json_atomic(cartridge_dir(state, cartridge["barcode"]) / "cartridge.json", cartridge)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def _append_jsonl(path: Path, record: JsonDict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line)
        fcntl.flock(handle, fcntl.LOCK_UN)


def log_command(state: Path, argv: list[str]) -> None:
    """Append one invocation to commands.log; argv[0] is reduced to the tool name."""
    record = {
        "argv": [os.path.basename(argv[0]), *argv[1:]],
        "time": now_iso(),
        "monotonic": time.monotonic(),
        "pid": os.getpid(),
    }
    _append_jsonl(state / "commands.log", record)


def record_event(state: Path, event: str, **fields: Any) -> None:
    """Append an event to events.jsonl for tests to assert on.

    Event names in use: ``drive_touched_while_ltfs_active`` (mt or mtx acted on a drive
    whose ltfs process was mounted or writing its index), ``index_write_failed``,
    ``index_written``, ``ltfs_mounted``, ``ltfs_unmounted``.
    """
    record = {"event": event, "time": now_iso(), "monotonic": time.monotonic(), **fields}
    _append_jsonl(state / "events.jsonl", record)


def read_jsonl(path: Path) -> list[JsonDict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_drive(library: JsonDict, device: str) -> JsonDict | None:
    """Return the drive whose st, nst or sg node is ``device``."""
    for drive in library["drives"]:
        if device in (drive["st"], drive["nst"], drive["sg"]):
            return drive
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mount_record_path(state: Path, drive_index: int) -> Path:
    return state / "mounts" / f"drive{drive_index}.json"


def active_mount(state: Path, drive_index: int) -> JsonDict | None:
    """Return the registry record of the live ltfs process on a drive, if any."""
    path = mount_record_path(state, drive_index)
    try:
        record = read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None

    if not pid_alive(int(record["pid"])):
        return None
    return record


def ltfs_message(message_id: str, text: str) -> None:
    """Print a message the way libltfs does: thread id in hex, then LTFS<id>, to stderr."""
    thread_id = threading.get_native_id() & 0xFFFF
    sys.stderr.write(f"{thread_id:x} LTFS{message_id} {text}\n")
    sys.stderr.flush()
