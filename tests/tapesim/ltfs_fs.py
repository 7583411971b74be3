"""FUSE operations of the simulated ltfs daemon (mfusepy on libfuse3).

The daemon keeps the index in memory and writes it to the cartridge on sync (the
``user.ltfs.sync`` extended attribute, the sync_type timer or file close) and at
unmount, as LTFS does. File data goes to the cartridge at once: the first data write
after an index marks the volume inconsistent on disk, so a process killed before its
next index leaves a volume that ltfs refuses to mount until ltfsck has run.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import mfusepy

from . import state as st
from . import volume as vol
from .state import JsonDict
from .state import ltfs_message as msg

MIB = 1024 * 1024

# Virtual extended attributes on the root directory that this simulator answers
# (names from _xattr_is_virtual() in libltfs xattr.c).
ROOT_VIRTUAL = ("ltfs.volumeSerial", "ltfs.volumeName", "ltfs.volumeUUID", "ltfs.indexGeneration",
                "ltfs.indexTime", "ltfs.volumeBlocksize", "ltfs.volumeFormatTime",
                "ltfs.volumeCompression", "ltfs.partitionMap", "ltfs.labelVersion",
                "ltfs.indexVersion", "ltfs.mediaDataPartitionTotalCapacity",
                "ltfs.mediaDataPartitionAvailableSpace", "ltfs.mediaStorageAlert", "ltfs.sync",
                "ltfs.softwareProduct", "ltfs.softwareVersion", "ltfs.softwareVendor",
                "ltfs.softwareFormatSpec", "ltfs.mamBarcode")


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class LtfsOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, settings: JsonDict, ready_fd: int | None) -> None:
        self.state: Path = Path(settings["state"])
        self.settings = settings
        self.ready_fd = ready_fd
        self.barcode: str = settings["barcode"]
        self.read_only: bool = settings["read_only"]
        self.mutex = threading.RLock()
        self.stop_sync = threading.Event()
        self.sync_thread: threading.Thread | None = None
        self.written_handles: set[int] = set()
        self.next_handle = 1

        cartridge = st.load_cartridge(self.state, self.barcode)
        self.volume: JsonDict = cartridge["volume"]
        self.capacity: int = cartridge["capacity_bytes"]
        library = st.load_library(self.state)
        self.reserve: int = library["index_reserve_bytes"]
        self.index_write_seconds: float = library["index_write_seconds"]
        self.sync_write_seconds: float = library["sync_write_seconds"]

        index = vol.load_index(self.state, self.barcode, self.volume["generation"])
        self.nodes: dict[str, JsonDict] = index["nodes"]
        self.next_uid: int = index["next_uid"]
        self.volume_name: str | None = index["volume_name"]
        self.generation: int = index["generation"]
        self.index_time: str = index["time"]
        self.used_bytes: int = index["used_bytes"]
        # Blobs referenced by an index on tape are never changed again; writes go to new blobs.
        self.frozen = {node["blob"] for node in self.nodes.values() if node.get("blob")}
        self.dirty = False
        self.data_after_index = False

    # Registry, index writes and lifecycle

    def write_registry(self, phase: str) -> None:
        st.write_json_atomic(st.mount_record_path(self.state, self.settings["drive_index"]), {
            "pid": os.getpid(),
            "phase": phase,
            "mountpoint": self.settings["mountpoint"],
            "device": self.settings["device"],
            "barcode": self.barcode,
            "read_only": self.read_only,
        })

    def medium_still_loaded(self) -> bool:
        library = st.load_library(self.state)
        drive = library["drives"][self.settings["drive_index"]]
        return drive["cartridge"] == self.barcode and drive["threaded"]

    def write_index(self, reason: str, delay: float, final: bool = False) -> bool:
        """Write the in-memory index to the cartridge if it changed; return False on failure."""
        with self.mutex:
            if not self.dirty or self.read_only:
                return True

            self.write_registry("writing_index")
            msg("11338I", f"Syncing index of {self.volume['serial']} {self.settings['device']}.")
            msg("17068I", f"Forced index write ({self.volume['serial']}, {reason}).")
            time.sleep(delay)

            with st.locked(self.state):
                cartridge = st.load_cartridge(self.state, self.barcode)
                if not self.medium_still_loaded() or cartridge["volume"]["index_damaged"]:
                    msg("11279E", "Cannot write index to partition b (-20210).")
                    st.record_event(self.state, "index_write_failed", barcode=self.barcode,
                                    reason=reason, drive=self.settings["drive_index"])
                    if not final:
                        self.write_registry("mounted")
                    return False

                cartridge["volume"]["used_bytes"] = self.used_bytes
                self.generation = vol.commit_index(self.state, cartridge, self.nodes,
                                                   self.next_uid, self.volume_name)
                self.volume = cartridge["volume"]
                self.used_bytes = self.volume["used_bytes"]
                self.index_time = st.now_iso()

            self.frozen |= {node["blob"] for node in self.nodes.values() if node.get("blob")}
            self.dirty = False
            self.data_after_index = False
            msg("11278I", "Writing index to partition b.")
            msg("11278I", "Writing index to partition a.")
            st.record_event(self.state, "index_written", barcode=self.barcode,
                            generation=self.generation, reason=reason)
            if not final:
                self.write_registry("mounted")
            return True

    def periodic_sync(self, seconds: float) -> None:
        while not self.stop_sync.wait(seconds):
            self.write_index("Periodic", self.sync_write_seconds)

    def init(self, path: str) -> None:
        self.write_registry("mounted")
        st.record_event(self.state, "ltfs_mounted", barcode=self.barcode, pid=os.getpid(),
                        mountpoint=self.settings["mountpoint"], drive=self.settings["drive_index"])
        if self.settings["sync_kind"] == "time":
            self.sync_thread = threading.Thread(target=self.periodic_sync,
                                                args=(self.settings["sync_seconds"],), daemon=True)
            self.sync_thread.start()
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
            self.ready_fd = None

    def destroy(self, path: str) -> None:
        """Unmount: write the final index, taking the configured time, then release the drive."""
        self.stop_sync.set()
        start = time.monotonic()
        self.write_registry("writing_index" if self.dirty else "unmounting")
        if self.dirty and not self.read_only:
            self.write_index("Unmount", self.index_write_seconds, final=True)
        remaining = self.index_write_seconds - (time.monotonic() - start)
        if remaining > 0:
            time.sleep(remaining)  # rewind and unload also take time on a real drive

        if self.settings["eject"]:
            msg("11289I", "Ejecting cartridge.")
            with st.locked(self.state):
                library = st.load_library(self.state)
                drive = library["drives"][self.settings["drive_index"]]
                if drive["cartridge"] == self.barcode:
                    drive["threaded"] = False
                    st.save_library(self.state, library)
            msg("11291I", "Eject successful.")

        msg("11034I", "Volume unmounted successfully.")
        st.record_event(self.state, "ltfs_unmounted", barcode=self.barcode, pid=os.getpid(),
                        drive=self.settings["drive_index"])
        try:
            st.mount_record_path(self.state, self.settings["drive_index"]).unlink()
        except FileNotFoundError:
            pass

    # Helpers

    def node(self, path: str) -> JsonDict:
        found = self.nodes.get(path)
        if found is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return found

    def check_writable(self) -> None:
        if self.read_only:
            raise mfusepy.FuseOSError(errno.EROFS)

    def parent_dir(self, path: str) -> JsonDict:
        parent = self.node(os.path.dirname(path) or "/")
        if parent["type"] != "dir":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return parent

    def touch(self, node: JsonDict) -> None:
        now = time.time()
        node["mtime"] = now
        node["ctime"] = now
        self.dirty = True

    def new_node(self, path: str, kind: str) -> JsonDict:
        self.check_writable()
        if path in self.nodes:
            raise mfusepy.FuseOSError(errno.EEXIST)
        self.touch(self.parent_dir(path))
        now = time.time()
        node: JsonDict = {"type": kind, "uid": self.next_uid, "ctime": now, "mtime": now, "atime": now,
                          "xattrs": {}}
        if kind == "file":
            node.update(size=0, blob=None, startblock=None)
        self.next_uid += 1
        self.nodes[path] = node
        self.dirty = True
        return node

    def blob_path(self, name: str) -> Path:
        return st.cartridge_dir(self.state, self.barcode) / "data" / name

    def current_block(self) -> int:
        return vol.FIRST_INDEX_BLOCK + (self.used_bytes + vol.LTFS_BLOCKSIZE - 1) // vol.LTFS_BLOCKSIZE

    def writable_blob(self, node: JsonDict, keep_bytes: int) -> Path:
        """Return a blob of ``node`` that may be changed, copying ``keep_bytes`` from a frozen one."""
        if node["blob"] is not None and node["blob"] not in self.frozen:
            return self.blob_path(node["blob"])

        name = uuid.uuid4().hex
        new_path = self.blob_path(name)
        with open(new_path, "wb") as target:
            if node["blob"] is not None and keep_bytes > 0:
                with open(self.blob_path(node["blob"]), "rb") as source:
                    target.write(source.read(keep_bytes))
        node["blob"] = name
        node["startblock"] = self.current_block()
        return new_path

    def mark_data_after_index(self) -> None:
        """Persist that data blocks now follow the last index, as the tape itself would show."""
        if self.data_after_index:
            return
        with st.locked(self.state):
            cartridge = st.load_cartridge(self.state, self.barcode)
            cartridge["volume"]["extra_blocks"] = True
            st.save_cartridge(self.state, cartridge)
        self.data_after_index = True

    # File system operations

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            node = self.node(path)
            if node["type"] == "dir":
                mode = stat.S_IFDIR | 0o777
                size = 0
                links = 2 + sum(1 for other, entry in self.nodes.items()
                                if entry["type"] == "dir" and other != "/" and os.path.dirname(other) == path)
            else:
                mode = stat.S_IFREG | 0o777
                size = node["size"]
                links = 1
            if self.read_only:
                mode &= ~0o222
            return {"st_mode": mode, "st_nlink": links, "st_size": size, "st_ino": node["uid"],
                    "st_uid": os.getuid(), "st_gid": os.getgid(), "st_blksize": vol.LTFS_BLOCKSIZE,
                    "st_blocks": (size + 511) // 512, "st_atime": _ns(node["atime"]),
                    "st_mtime": _ns(node["mtime"]), "st_ctime": _ns(node["ctime"])}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self.mutex:
            if self.node(path)["type"] != "dir":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            prefix = path.rstrip("/") + "/"
            names = [other[len(prefix):] for other in self.nodes
                     if other != "/" and other.startswith(prefix) and "/" not in other[len(prefix):]]
            return [".", "..", *sorted(names)]

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self.new_node(path, "dir")
            return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(path)
            if node["type"] != "dir":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            if path == "/":
                raise mfusepy.FuseOSError(errno.EBUSY)
            if any(other.startswith(path + "/") for other in self.nodes):
                raise mfusepy.FuseOSError(errno.ENOTEMPTY)
            del self.nodes[path]
            self.touch(self.parent_dir(path))
            return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self.mutex:
            self.new_node(path, "file")
            return self.open_handle()

    def open_handle(self) -> int:
        handle = self.next_handle
        self.next_handle += 1
        return handle

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            node = self.node(path)
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
                self.check_writable()
            if node["type"] == "dir":
                raise mfusepy.FuseOSError(errno.EISDIR)
            if flags & os.O_TRUNC and node["size"]:
                self.truncate(path, 0)
            return self.open_handle()

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            node = self.node(path)
            if node["blob"] is None or offset >= node["size"]:
                return b""
            length = min(size, node["size"] - offset)
            with open(self.blob_path(node["blob"]), "rb") as handle:
                handle.seek(offset)
                data = handle.read(length)
            return data + bytes(length - len(data))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(path)
            room = self.capacity - self.reserve - self.used_bytes
            if room <= 0:
                raise mfusepy.FuseOSError(errno.ENOSPC)

            # A short count makes write(2) return what fits; the next call gets ENOSPC.
            chunk = data[:room]
            blob = self.writable_blob(node, node["size"])
            self.mark_data_after_index()
            with open(blob, "r+b") as handle:
                handle.seek(offset)
                handle.write(chunk)

            self.used_bytes += len(chunk)
            node["size"] = max(node["size"], offset + len(chunk))
            self.touch(node)
            self.written_handles.add(fh)
            return len(chunk)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(path)
            if node["type"] != "file":
                raise mfusepy.FuseOSError(errno.EISDIR)
            if length == node["size"]:
                return 0
            if length == 0:
                node["blob"] = None
                node["startblock"] = None
            else:
                blob = self.writable_blob(node, min(length, node["size"]))
                with open(blob, "r+b") as handle:
                    handle.truncate(length)
            node["size"] = length
            self.touch(node)
            return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(path)
            if node["type"] == "dir":
                raise mfusepy.FuseOSError(errno.EISDIR)
            # Space on tape is not returned: the blocks stay where they were written.
            del self.nodes[path]
            self.touch(self.parent_dir(path))
            return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(old)
            self.parent_dir(new)
            if new in self.nodes:
                target = self.nodes[new]
                if target["type"] == "dir":
                    if any(other.startswith(new + "/") for other in self.nodes):
                        raise mfusepy.FuseOSError(errno.ENOTEMPTY)
                    if node["type"] != "dir":
                        raise mfusepy.FuseOSError(errno.EISDIR)
                elif node["type"] == "dir":
                    raise mfusepy.FuseOSError(errno.ENOTDIR)
            moved = {new: node}
            for other in list(self.nodes):
                if other.startswith(old + "/"):
                    moved[new + other[len(old):]] = self.nodes.pop(other)
            del self.nodes[old]
            self.nodes.update(moved)
            self.touch(self.parent_dir(old))
            self.touch(self.parent_dir(new))
            return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(path)
            if times is None:
                now = time.time()
                node["atime"] = node["mtime"] = now
            else:
                node["atime"] = times[0] / 1e9
                node["mtime"] = times[1] / 1e9
            self.dirty = True
            return 0

    def chmod(self, path: str, mode: int) -> int:
        with self.mutex:
            self.check_writable()
            self.node(path)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self.mutex:
            self.node(path)
            return 0

    def release(self, path: str, fh: int) -> int:
        written = fh in self.written_handles
        self.written_handles.discard(fh)
        if written and self.settings["sync_kind"] == "close":
            self.write_index("Close", self.sync_write_seconds)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        with self.mutex:
            block = vol.LTFS_BLOCKSIZE
            free = max(self.capacity - self.used_bytes, 0) // block
            files = sum(1 for node in self.nodes.values() if node["type"] == "file")
            return {"f_bsize": block, "f_frsize": block, "f_blocks": self.capacity // block,
                    "f_bfree": free, "f_bavail": free, "f_files": files,
                    "f_ffree": 0xFFFFFFFF - files, "f_favail": 0xFFFFFFFF - files, "f_namemax": 255}

    # Extended attributes

    def virtual_value(self, path: str, node: JsonDict, name: str) -> bytes | None:
        """Return the value of a virtual xattr, or None if ``name`` is not one here."""
        if node["type"] == "file" and name in ("ltfs.startblock", "ltfs.partition"):
            if node["blob"] is None:
                return None
            return str(node["startblock"]).encode() if name == "ltfs.startblock" else b"b"
        if name == "ltfs.fileUID":
            return str(node["uid"]).encode()
        if path != "/" or name not in ROOT_VIRTUAL:
            return None

        if name == "ltfs.sync":
            self.write_index("Sync by EA", self.sync_write_seconds)
            return b""
        values = {
            "ltfs.volumeSerial": self.volume["serial"],
            "ltfs.volumeName": self.volume_name,
            "ltfs.volumeUUID": self.volume["uuid"],
            "ltfs.indexGeneration": str(self.generation),
            "ltfs.indexTime": self.index_time,
            "ltfs.volumeBlocksize": str(self.volume["blocksize"]),
            "ltfs.volumeFormatTime": self.volume["format_time"],
            "ltfs.volumeCompression": "true",
            "ltfs.partitionMap": "I:a,D:b",
            "ltfs.labelVersion": "2.4.0",
            "ltfs.indexVersion": "2.4.0",
            # libltfs reports capacities in MiB: blocks * (blocksize / 1048576), truncated.
            "ltfs.mediaDataPartitionTotalCapacity": str(self.capacity // MIB),
            "ltfs.mediaDataPartitionAvailableSpace": str(max(self.capacity - self.used_bytes, 0) // MIB),
            "ltfs.mediaStorageAlert": "0x0000000000000000",
            "ltfs.softwareProduct": "LTFS LE",
            "ltfs.softwareVersion": st.LTFS_VERSION,
            "ltfs.softwareVendor": "IBM",
            "ltfs.softwareFormatSpec": st.LTFS_FORMAT_SPEC,
            "ltfs.mamBarcode": self.barcode,
        }
        value = values[name]
        return None if value is None else value.encode()

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        with self.mutex:
            node = self.node(path)
            if not name.startswith("user."):
                raise mfusepy.FuseOSError(errno.ENODATA)
            short = name[len("user."):]
            if short.startswith("ltfs."):
                value = self.virtual_value(path, node, short)
                if value is None:
                    raise mfusepy.FuseOSError(errno.ENODATA)
                return value
            if short not in node["xattrs"]:
                raise mfusepy.FuseOSError(errno.ENODATA)
            return node["xattrs"][short].encode("latin-1")

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        with self.mutex:
            node = self.node(path)
            if not name.startswith("user."):
                raise mfusepy.FuseOSError(errno.ENOTSUP)
            short = name[len("user."):]
            if short == "ltfs.sync" and path == "/":
                if not self.write_index("Sync by EA", self.sync_write_seconds):
                    raise mfusepy.FuseOSError(errno.EIO)
                return 0
            if short.startswith("ltfs."):
                raise mfusepy.FuseOSError(errno.EACCES)
            self.check_writable()
            node["xattrs"][short] = bytes(value).decode("latin-1")
            self.dirty = True
            return 0

    def listxattr(self, path: str) -> list[str]:
        with self.mutex:
            return ["user." + key for key in self.node(path)["xattrs"]]

    def removexattr(self, path: str, name: str) -> int:
        with self.mutex:
            self.check_writable()
            node = self.node(path)
            short = name[len("user."):] if name.startswith("user.") else name
            if short not in node["xattrs"]:
                raise mfusepy.FuseOSError(errno.ENODATA)
            del node["xattrs"][short]
            self.dirty = True
            return 0


def run_filesystem(settings: JsonDict, ready_fd: int | None) -> int:
    """Mount and serve until unmounted; return the process exit code."""
    operations = LtfsOperations(settings, ready_fd)
    options: dict[str, Any] = {"fsname": f"ltfs:{settings['device']}", "foreground": True}
    if settings["read_only"]:
        options["ro"] = True
    for extra in settings["extra_options"]:
        options[extra] = True
    try:
        mfusepy.FUSE(operations, settings["mountpoint"], **options)
    except RuntimeError as error:
        msg("14123E", f"The main function of FUSE returned ({error}) errno (0).")
        return 1
    return 0

