"""Create a simulated library and change it from tests (insert, write-protect, corrupt)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from . import STATE_ENV
from . import state as st
from .state import JsonDict

MIB = 1024 * 1024

# Element addresses as an IBM TS3100/TS4300-style library reports them: the robot at 1,
# import/export elements from 16, drives from 256 and storage slots from 4096.
TRANSPORT_ADDRESS = 1
IMPORT_EXPORT_BASE = 16
DRIVE_BASE = 256
SLOT_BASE = 4096

BIN_DIR = Path(__file__).resolve().parent / "bin"


def environment_for(state: Path) -> dict[str, str]:
    """Return os.environ plus TAPESIM_STATE and a PATH with the simulator and this python3 first."""
    env = dict(os.environ)
    python_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([str(BIN_DIR), python_dir, env.get("PATH", "")])
    env[STATE_ENV] = str(state)
    return env


def create_library(
    state: Path,
    drives: int = 2,
    slots: int = 8,
    import_export: int = 1,
    changer: bool = True,
    cartridges: list[str] | None = None,
    capacity_bytes: int = 64 * MIB,
    index_write_seconds: float = 1.0,
    sync_write_seconds: float = 0.05,
    index_reserve_bytes: int | None = None,
) -> JsonDict:
    """Write library.json and one folder per cartridge; return the library description.

    Cartridges fill slots 1, 2, ... in the order given. Without a changer, the slots list
    stays empty and tests put cartridges into drives with ``insert_cartridge``.
    ``index_write_seconds`` is how long ltfs spends writing its index at unmount;
    ``index_reserve_bytes`` is the space kept free for indexes before writes fail with
    ENOSPC (by default 1/64 of the capacity, at least 256 KiB).
    """
    state.mkdir(parents=True, exist_ok=True)
    cartridges = list(cartridges or [])
    if changer and len(cartridges) > slots:
        raise ValueError(f"{len(cartridges)} cartridges do not fit into {slots} slots")

    drive_list = []
    for index in range(drives):
        drive_list.append({
            "index": index,
            "vendor": "IBM",
            "model": "ULTRIUM-HH8",
            "revision": "N9M1",
            "serial": f"10WT{index:06d}",
            "density_code": 0x5E,
            "st": f"/dev/st{index}",
            "nst": f"/dev/nst{index}",
            "sg": f"/dev/sg{index}",
            "hctl": f"0:0:{index}:0",
            "element_address": DRIVE_BASE + index,
            "cartridge": None,
            "source_slot": None,
            "threaded": False,
        })

    changer_info = None
    slot_list: list[JsonDict] = []
    if changer:
        changer_info = {
            "vendor": "IBM",
            "model": "3573-TL",
            "revision": "F.11",
            "serial": "00L4U78A1234_LL0",
            "sg": f"/dev/sg{drives}",
            "hctl": f"0:0:{drives}:0",
        }
        for number in range(1, slots + 1):
            slot_list.append({"number": number, "address": SLOT_BASE + number - 1,
                              "import_export": False, "cartridge": None})
        for offset in range(import_export):
            slot_list.append({"number": slots + offset + 1, "address": IMPORT_EXPORT_BASE + offset,
                              "import_export": True, "cartridge": None})

    if index_reserve_bytes is None:
        index_reserve_bytes = max(capacity_bytes // 64, 256 * 1024)

    library = {
        "version": 1,
        "drives": drive_list,
        "changer": changer_info,
        "slots": slot_list,
        "index_write_seconds": index_write_seconds,
        "sync_write_seconds": sync_write_seconds,
        "index_reserve_bytes": index_reserve_bytes,
    }

    with st.locked(state):
        for position, barcode in enumerate(cartridges):
            add_cartridge(state, barcode, capacity_bytes)
            if changer:
                slot_list[position]["cartridge"] = barcode
        st.save_library(state, library)

    return library


def add_cartridge(state: Path, barcode: str, capacity_bytes: int, write_protected: bool = False) -> None:
    """Create a blank (unformatted) cartridge; the caller holds the lock."""
    folder = st.cartridge_dir(state, barcode)
    if folder.exists():
        raise ValueError(f"cartridge {barcode} already exists in {state}")

    (folder / "data").mkdir(parents=True)
    (folder / "indexes").mkdir()
    st.save_cartridge(state, {
        "barcode": barcode,
        "capacity_bytes": capacity_bytes,
        "write_protected": write_protected,
        "volume": None,
    })


def _locate(library: JsonDict, barcode: str) -> str | None:
    for slot in library["slots"]:
        if slot["cartridge"] == barcode:
            return f"slot {slot['number']}"
    for drive in library["drives"]:
        if drive["cartridge"] == barcode:
            return f"drive {drive['index']}"
    return None


def insert_cartridge(state: Path, barcode: str, drive_index: int, capacity_bytes: int = 64 * MIB) -> None:
    """Put a cartridge into a drive by hand, as an operator does with a standalone drive.

    The cartridge is created blank if it does not exist yet, and the drive threads it.
    """
    with st.locked(state):
        library = st.load_library(state)
        if not st.cartridge_dir(state, barcode).exists():
            add_cartridge(state, barcode, capacity_bytes)

        where = _locate(library, barcode)
        if where is not None:
            raise ValueError(f"cartridge {barcode} is already in {where}")

        drive = library["drives"][drive_index]
        if drive["cartridge"] is not None:
            raise ValueError(f"drive {drive_index} already holds cartridge {drive['cartridge']}")

        drive.update(cartridge=barcode, source_slot=None, threaded=True)
        st.save_library(state, library)


def remove_cartridge(state: Path, drive_index: int) -> str:
    """Take the cartridge out of a drive by hand; return its barcode."""
    with st.locked(state):
        library = st.load_library(state)
        drive = library["drives"][drive_index]
        barcode = drive["cartridge"]
        if barcode is None:
            raise ValueError(f"drive {drive_index} is empty")

        drive.update(cartridge=None, source_slot=None, threaded=False)
        st.save_library(state, library)
        return barcode


def set_write_protected(state: Path, barcode: str, protected: bool = True) -> None:
    """Slide the write-protect tab of a cartridge."""
    with st.locked(state):
        cartridge = st.load_cartridge(state, barcode)
        cartridge["write_protected"] = protected
        st.save_cartridge(state, cartridge)


def _latest_index(state: Path, barcode: str) -> JsonDict:
    cartridge = st.load_cartridge(state, barcode)
    volume = cartridge["volume"]
    if volume is None:
        raise ValueError(f"cartridge {barcode} holds no LTFS volume")
    return st.read_json(st.cartridge_dir(state, barcode) / "indexes" / f"{volume['generation']}.json")


def stored_file_path(state: Path, barcode: str, path: str) -> Path:
    """Return the host file that holds the data of ``path`` as of the last index on tape."""
    index = _latest_index(state, barcode)
    node = index["nodes"].get("/" + path.strip("/"))
    if node is None or node["type"] != "file":
        raise FileNotFoundError(f"{path} is not a file in the last index of cartridge {barcode}")
    if node["blob"] is None:
        raise ValueError(f"{path} on cartridge {barcode} is empty")
    return st.cartridge_dir(state, barcode) / "data" / node["blob"]


def flip_byte(state: Path, barcode: str, path: str, offset: int = 0) -> None:
    """Invert one byte of a file as stored on tape, to simulate a medium error that reads back wrong."""
    blob = stored_file_path(state, barcode, path)
    with open(blob, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        if not value:
            raise ValueError(f"offset {offset} is past the end of {path} on cartridge {barcode}")
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0xFF]))


def delete_library(state: Path) -> None:
    shutil.rmtree(state, ignore_errors=True)
