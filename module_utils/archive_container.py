# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The study container: one uncompressed POSIX (pax) tar file per study, and its manifest.

Layout inside the tar, every name built from Orthanc IDs only (never from a DICOM tag):
    <study-id>/<series-id>/<instance-id>.dcm   one member per instance, in series order
    <study-id>/manifest.json                   the manifest, written last

Any tar (GNU tar, bsdtar, Windows tar.exe, 7-Zip) extracts it; each .dcm member is the file Orthanc
stored, byte for byte, so `curl -X POST --data-binary @FILE URL/instances` imports it back into any
Orthanc. The writer only appends and never seeks, which is what a tape wants.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import tarfile
from typing import Any, BinaryIO, Callable, Iterator

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "orthanc-archive-manifest/1"

# The container file is written through a buffer of this size, so LTFS and the kernel see large
# sequential writes.
TAR_BUFFER_SIZE = 1024 * 1024
READ_CHUNK_SIZE = 1024 * 1024
# Bytes between two writeback requests. The kernel then writes the finished part of the file while
# the next instances download, so the final fsync has little left to write.
WRITEBACK_STEP = 32 * 1024 * 1024


class ContainerError(Exception):
    """A container could not be written or failed verification."""


class HashingWriter:
    """A write-only file wrapper that hashes and counts every byte passed to the file below."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_written = 0
        self.aborted = False
        self._next_writeback = WRITEBACK_STEP

    def write(self, data: bytes) -> int:
        if self.aborted:
            return len(data)
        self.sha256.update(data)
        self.bytes_written += len(data)
        written = self.raw.write(data)
        if self.bytes_written >= self._next_writeback:
            self._start_writeback()
        return written

    def _start_writeback(self) -> None:
        """Start writing the bytes written so far to the medium, without waiting for it.

        On Linux, POSIX_FADV_DONTNEED starts an asynchronous writeback of the range's dirty pages and
        drops the pages already clean (mm/fadvise.c), so a long container neither waits for one large
        fsync nor fills the page cache. The final fsync still makes the whole file durable.
        """
        self.raw.flush()
        # The previous range may still have been under writeback at the last call, so it is covered
        # again and its pages are dropped once clean.
        start = max(0, self._next_writeback - 2 * WRITEBACK_STEP)
        try:
            os.posix_fadvise(self.raw.fileno(), start, self.bytes_written - start, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass
        self._next_writeback = self.bytes_written + WRITEBACK_STEP

    def flush(self) -> None:
        if not self.aborted:
            self.raw.flush()


def member_name(study_id: str, series_id: str, instance_id: str) -> str:
    return f"{study_id}/{series_id}/{instance_id}.dcm"


class ContainerWriter:
    """Write one study container sequentially under a temporary name, then rename it into place.

    Usage: open(), add_instance() for each instance, close(manifest) which writes the manifest
    member, fsyncs, renames and fsyncs the folder. abort() removes nothing from a tape (deleting
    does not free LTFS space) but leaves the temporary file, which the catalog records as failed.
    """

    def __init__(self, final_path: str, study_id: str):
        self.final_path = final_path
        self.temp_path = final_path + ".partial"
        self.study_id = study_id
        self._file: BinaryIO | None = None
        self._hashing: HashingWriter | None = None

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.final_path), mode=0o700, exist_ok=True)
        # O_TRUNC: a temporary file left by a crashed run is rewritten from the start.
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=TAR_BUFFER_SIZE)
        self._hashing = HashingWriter(self._file)

    def _header(self, name: str, size: int, mtime: float) -> bytes:
        # tarfile builds the ustar header and, for names over 100 bytes, the pax header before it.
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o600
        info.mtime = int(mtime)
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def add_instance(self, name: str, size: int, chunks: Iterator[bytes], mtime: float = 0) -> dict[str, Any]:
        """Append one member from an iterator of byte chunks; return its size, MD5 and SHA-256."""
        assert self._hashing is not None
        self._hashing.write(self._header(name, size, mtime))
        md5 = hashlib.md5()
        sha256 = hashlib.sha256()
        received = 0
        for chunk in chunks:
            if received + len(chunk) > size:
                raise ContainerError(f"member {name}: the source sent more than the announced {size} bytes")
            md5.update(chunk)
            sha256.update(chunk)
            self._hashing.write(chunk)
            received += len(chunk)
        if received != size:
            raise ContainerError(f"member {name}: expected {size} bytes, received {received}")
        self._pad(size)
        return {"size": size, "md5": md5.hexdigest(), "sha256": sha256.hexdigest()}

    def add_bytes(self, name: str, data: bytes, mtime: float = 0,
                  digests: dict[str, str] | None = None) -> dict[str, Any]:
        """Append one member from memory; return its size, MD5 and SHA-256.

        digests: {"md5": ..., "sha256": ...} that the caller already computed from these same bytes
        (an immutable bytes object), so the member is written without hashing it a second time.
        """
        if digests is None:
            return self.add_instance(name, len(data), iter([data]), mtime)
        assert self._hashing is not None
        self._hashing.write(self._header(name, len(data), mtime))
        self._hashing.write(data)
        self._pad(len(data))
        return {"size": len(data), "md5": digests["md5"], "sha256": digests["sha256"]}

    def _pad(self, size: int) -> None:
        assert self._hashing is not None
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self._hashing.write(bytes(tarfile.BLOCKSIZE - remainder))

    def close(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest member, finish the tar, fsync and rename; return the container's size and SHA-256."""
        assert self._hashing is not None and self._file is not None
        self.add_bytes(f"{self.study_id}/{MANIFEST_NAME}", encode_manifest(manifest), manifest.get("created_epoch", 0))
        # End of archive: two zero blocks, then zeros up to a whole record, as POSIX tar writes it.
        self._hashing.write(bytes(2 * tarfile.BLOCKSIZE))
        remainder = self._hashing.bytes_written % tarfile.RECORDSIZE
        if remainder:
            self._hashing.write(bytes(tarfile.RECORDSIZE - remainder))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.temp_path, self.final_path)
        fsync_folder(os.path.dirname(self.final_path))
        return {"bytes": self._hashing.bytes_written, "sha256": self._hashing.sha256.hexdigest()}

    def abort(self) -> None:
        if self._hashing is not None:
            self._hashing.aborted = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest_file(path: str, manifest: dict[str, Any]) -> None:
    """Write the manifest beside the container under a temporary name, fsync and rename."""
    temp_path = path + ".partial"
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(encode_manifest(manifest))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp_path, path)
    fsync_folder(os.path.dirname(path))


def fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        # Some FUSE filesystems do not implement fsync on folders; the file itself was fsynced.
        pass
    finally:
        os.close(fd)


def drop_cache(path: str) -> None:
    """Ask the kernel to forget cached pages of a file, so the next read comes from the medium."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass
    finally:
        os.close(fd)


class _TarScanner:
    """Read a tar file once, front to back, through two alternating buffers, without copying member data.

    A second thread reads the next buffer from the file and adds it to the whole-file SHA-256
    (hashlib releases the GIL on large buffers) while the calling thread hashes member data from
    the current one, so the disk and both hashes work at the same time.
    """

    def __init__(self, raw: BinaryIO, reader_pool: concurrent.futures.ThreadPoolExecutor):
        self.raw = raw
        self.pool = reader_pool
        self.whole = hashlib.sha256()
        self.buffers = [bytearray(READ_CHUNK_SIZE * 4), bytearray(READ_CHUNK_SIZE * 4)]
        self.views = [memoryview(buffer) for buffer in self.buffers]
        self.current = 1
        self.view = self.views[self.current]
        self.start = 0
        self.end = 0
        self.total = 0
        self._ended = False
        self._next: concurrent.futures.Future = self.pool.submit(self._read, 0)

    def _read(self, index: int) -> int:
        """Fill buffer index from the file and add what was read to the whole-file hash (reader thread)."""
        count = self.raw.readinto(self.buffers[index])
        if count:
            self.whole.update(self.views[index][:count])
        return count

    def _fill(self) -> bool:
        if self._ended:
            return False
        count = self._next.result()
        if not count:
            self._ended = True
            return False
        # The caller has consumed the current buffer, so the reader may refill it while the caller
        # works on the one just read.
        self.current ^= 1
        self.view = self.views[self.current]
        self.start, self.end = 0, count
        self.total += count
        self._next = self.pool.submit(self._read, self.current ^ 1)
        return True

    def _available(self) -> bool:
        if self.start < self.end:
            return True
        return self._fill()

    def read_exact(self, size: int) -> bytes:
        parts = []
        while size:
            if not self._available():
                raise ContainerError("the file ends in the middle of a tar record")
            take = min(size, self.end - self.start)
            parts.append(bytes(self.view[self.start:self.start + take]))
            self.start += take
            size -= take
        return b"".join(parts)

    def consume(self, size: int, sinks: list[Callable[[Any], None]]) -> None:
        while size:
            if not self._available():
                raise ContainerError("the file ends in the middle of a member")
            take = min(size, self.end - self.start)
            piece = self.view[self.start:self.start + take]
            for sink in sinks:
                sink(piece)
            self.start += take
            size -= take

    def drain(self) -> None:
        """Read to the end of the file, so the whole-file hash covers every byte."""
        self.start = self.end
        while self._available():
            self.start = self.end


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse pax extended header records ("LEN key=value\n")."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position:position + 1] not in (b"", b"\0"):
        space = data.index(b" ", position)
        length = int(data[position:space])
        key, _, value = data[space + 1:position + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _padded(size: int) -> int:
    return (size + 511) // 512 * 512


def read_container(path: str, with_md5: bool = False) -> dict[str, Any]:
    """Read a container sequentially; return its manifest, per-member checksums and whole-file SHA-256.

    Every member is read to the end and hashed with SHA-256, and with MD5 too when with_md5 is set.
    The SHA-256 alone proves that a member contains the bytes written, because the writer computed it
    from the same bytes whose MD5 it had checked against Orthanc's. Raises ContainerError if the tar is
    damaged or has no manifest. The tar headers are parsed with tarfile.TarInfo.frombuf, which
    checks each header's checksum.
    """
    members: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    try:
        with open(path, "rb", buffering=0) as raw, \
                concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            try:
                # Ask for a larger read-ahead: the file is read once, front to back.
                os.posix_fadvise(raw.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):
                pass
            scanner = _TarScanner(raw, pool)
            overrides: dict[str, str] = {}
            while True:
                block = scanner.read_exact(512)
                if block == bytes(512):
                    break
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
                    payload = scanner.read_exact(_padded(info.size))[:info.size]
                    if info.type == tarfile.XHDTYPE:
                        overrides = _pax_records(payload)
                    elif info.type == tarfile.GNUTYPE_LONGNAME:
                        overrides = {"path": payload.rstrip(b"\0").decode("utf-8", "surrogateescape")}
                    continue
                name = overrides.get("path", info.name)
                size = int(overrides.get("size", info.size))
                overrides = {}
                if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise ContainerError(f"unexpected non-file member {name!r}")

                md5 = hashlib.md5() if with_md5 else None
                sha256 = hashlib.sha256()
                sinks: list[Callable[[Any], None]] = [sha256.update] + ([md5.update] if md5 else [])
                manifest_data = bytearray() if name.endswith("/" + MANIFEST_NAME) else None
                if manifest_data is not None:
                    sinks.append(manifest_data.extend)
                scanner.consume(size, sinks)
                scanner.consume(_padded(size) - size, [])
                if manifest_data is not None:
                    manifest = json.loads(bytes(manifest_data).decode("utf-8"))
                    continue
                members[name] = {"size": size, "sha256": sha256.hexdigest()}
                if md5:
                    members[name]["md5"] = md5.hexdigest()
            # The end-of-archive blocks and the record padding count in the whole-file hash too.
            scanner.drain()
            total = scanner.total
            whole = scanner.whole.hexdigest()
    except (ContainerError, tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise ContainerError(f"cannot read container {path}: {exc}") from None
    if manifest is None:
        raise ContainerError(f"container {path} has no {MANIFEST_NAME} member: it is incomplete or not ours")
    return {"manifest": manifest, "members": members, "sha256": whole, "bytes": total}


def compare_members(members: dict[str, dict[str, Any]], instances: list[dict[str, Any]],
                    reference: str = "expected") -> list[str]:
    """Compare read-back members with an expected instance list; return the problems found.

    reference names the source of the expectations in messages, for example "the manifest's".
    """
    problems: list[str] = []
    expected = {item["member_name"]: item for item in instances}
    if len(members) != len(expected):
        problems.append(f"{len(members)} instances in the container, {reference} {len(expected)}")
    for name, item in expected.items():
        found = members.get(name)
        if found is None:
            problems.append(f"instance member {name} is missing")
            continue
        for field in ("size", "md5", "sha256"):
            if field in found and str(found[field]) != str(item[field]):
                problems.append(f"instance member {name}: {field} {found[field]} does not match {reference} {item[field]}")
    for name in members:
        if name not in expected:
            problems.append(f"unexpected member {name}")
    return problems


def verify_container(path: str, expected_sha256: str | None, instances: list[dict[str, Any]]) -> list[str]:
    """Read a container back and compare it with the expected instances; return a list of problems.

    instances: dicts with member_name, size and sha256 (other keys are ignored).
    An empty list means every instance is present once with matching size and SHA-256, there is
    no extra member, and the whole file matches expected_sha256 (when given).
    """
    drop_cache(path)
    content = read_container(path)
    problems = compare_members(content["members"], instances)
    if expected_sha256 and content["sha256"] != expected_sha256:
        problems.append(f"container SHA-256 {content['sha256']} does not match the catalog's {expected_sha256}")
    return problems
