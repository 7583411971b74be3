"""LTFS volume on a simulated cartridge: label, index generations and consistency.

Model of the data partition: ``used_bytes`` grows with every byte of file data and every
index written, and never shrinks while mounted, because tape is append-only. An index
is one JSON file per generation. A cartridge is inconsistent when data blocks follow
the last complete index (``extra_blocks``, set by the first data write after an index)
or when an index write was cut off (``index_damaged``); ltfs then refuses to mount it
and ltfsck rolls it back to the last complete index.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from . import state as st
from .state import JsonDict

LTFS_BLOCKSIZE = 524288
# VOL1 label, file mark, LTFS label, file mark: the index starts at block 4 of each partition.
FIRST_INDEX_BLOCK = 4
LABEL_BYTES = 2 * 80 + 2 * 1024


def empty_root(now: float) -> JsonDict:
    return {"type": "dir", "uid": 1, "ctime": now, "mtime": now, "atime": now, "xattrs": {}}


def index_path(state: Path, barcode: str, generation: int) -> Path:
    return st.cartridge_dir(state, barcode) / "indexes" / f"{generation}.json"


def is_consistent(volume: JsonDict) -> bool:
    return not volume["extra_blocks"] and not volume["index_damaged"]


def format_volume(state: Path, cartridge: JsonDict, serial: str, name: str | None) -> JsonDict:
    """Write labels and an empty generation-1 index; the caller holds the lock."""
    folder = st.cartridge_dir(state, cartridge["barcode"])
    for sub in ("indexes", "data"):
        for old in (folder / sub).iterdir():
            old.unlink()

    now = time.time()
    volume = {
        "uuid": str(uuid.uuid4()),
        "serial": serial,
        "name": name,
        "blocksize": LTFS_BLOCKSIZE,
        "compression": True,
        "format_time": st.now_iso(),
        "generation": 0,
        "used_bytes": LABEL_BYTES,
        "extra_blocks": False,
        "index_damaged": False,
    }
    cartridge["volume"] = volume
    commit_index(state, cartridge, {"/": empty_root(now)}, next_uid=2, volume_name=name)
    return volume


def unformat_volume(state: Path, cartridge: JsonDict) -> None:
    """Remove the LTFS partitions, as ``mkltfs --wipe`` does; the caller holds the lock."""
    folder = st.cartridge_dir(state, cartridge["barcode"])
    for sub in ("indexes", "data"):
        for old in (folder / sub).iterdir():
            old.unlink()
    cartridge["volume"] = None
    st.save_cartridge(state, cartridge)


def commit_index(state: Path, cartridge: JsonDict, nodes: dict[str, JsonDict],
                 next_uid: int, volume_name: str | None) -> int:
    """Write the next index generation and mark the volume consistent; return the generation.

    The caller holds the lock and passes the cartridge as last read from disk. The index
    costs its serialized size in data-partition space.
    """
    volume = cartridge["volume"]
    generation = volume["generation"] + 1
    body = {
        "generation": generation,
        "time": st.now_iso(),
        "volume_name": volume_name,
        "next_uid": next_uid,
        "nodes": nodes,
    }
    size = len(json.dumps(body))
    body["used_bytes"] = volume["used_bytes"] + size
    st.write_json_atomic(index_path(state, cartridge["barcode"], generation), body)

    volume.update(generation=generation, used_bytes=body["used_bytes"], name=volume_name,
                  extra_blocks=False, index_damaged=False)
    st.save_cartridge(state, cartridge)
    return generation


def load_index(state: Path, barcode: str, generation: int) -> JsonDict:
    return st.read_json(index_path(state, barcode, generation))


def recover_volume(state: Path, cartridge: JsonDict) -> int:
    """Roll an inconsistent volume back to its last complete index; return the new generation.

    As ltfsck does without --full-recovery (libltfs ltfs_check_medium with deep recovery):
    the append position goes back to the end of the last index, so the blocks written
    after it are overwritten by a fresh copy of that index and their space is free again.
    """
    barcode = cartridge["barcode"]
    volume = cartridge["volume"]
    last = load_index(state, barcode, volume["generation"])

    volume["used_bytes"] = last["used_bytes"]
    return commit_index(state, cartridge, last["nodes"], last["next_uid"], last["volume_name"])
