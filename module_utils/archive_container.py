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
import io
import json
import os
import tarfile
from typing import Any, BinaryIO, Callable, Iterator

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "orthanc-archive-manifest/1"

# The container file is written through a buffer of this size, so LTFS and the kernel see large
# sequential writes.
TAR_BUFFER_SIZE = 1024 * 1024
# tarfile's own stream buffer ("r|", "w|"). It copies the whole buffer on every header it reads or
# writes, so a 1 MiB buffer costs about 1 MiB of copying per member; 64 KiB made a read-back of
# 400 instances of 512 kB two to three times faster (bench/run.py, Python 3.11).
TAR_STREAM_BUFFER_SIZE = 64 * 1024
READ_CHUNK_SIZE = 1024 * 1024


class ContainerError(Exception):
    """A container could not be written or failed verification."""


class HashingWriter:
    """A write-only file wrapper that hashes and counts every byte passed to the file below."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_written = 0
        self.aborted = False

    def write(self, data: bytes) -> int:
        if self.aborted:
            # tarfile flushes its buffer when the abandoned TarFile is collected; drop those bytes.
            return len(data)
        self.sha256.update(data)
        self.bytes_written += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        if not self.aborted:
            self.raw.flush()


class _MemberReader:
    """Feed tarfile a member's bytes from an iterator of chunks while hashing them."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._chunk = b""
        self._offset = 0
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        parts = []
        wanted = size
        while wanted != 0:
            if self._offset >= len(self._chunk):
                try:
                    self._chunk = next(self._chunks)
                except StopIteration:
                    break
                self._offset = 0
                continue
            end = len(self._chunk) if wanted < 0 else min(len(self._chunk), self._offset + wanted)
            parts.append(self._chunk[self._offset:end])
            if wanted > 0:
                wanted -= end - self._offset
            self._offset = end
        data = b"".join(parts)
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)
        return data


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
        self._tar: tarfile.TarFile | None = None

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.final_path), mode=0o700, exist_ok=True)
        # O_TRUNC: a temporary file left by a crashed run is rewritten from the start.
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=TAR_BUFFER_SIZE)
        self._hashing = HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.PAX_FORMAT,
                                 bufsize=TAR_STREAM_BUFFER_SIZE, copybufsize=TAR_BUFFER_SIZE)

    def add_instance(self, name: str, size: int, chunks: Iterator[bytes], mtime: float = 0) -> dict[str, Any]:
        """Append one member from an iterator of byte chunks; return its size, MD5 and SHA-256."""
        assert self._tar is not None
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o600
        info.mtime = int(mtime)
        reader = _MemberReader(chunks)
        try:
            self._tar.addfile(info, reader)  # type: ignore[arg-type]
        except OSError as exc:
            # tarfile raises a bare OSError, without errno, when the source ends early; disk errors carry one.
            if exc.errno is None and reader.size < size:
                raise ContainerError(f"member {name}: expected {size} bytes, received {reader.size}") from None
            raise
        if reader.size != size:
            raise ContainerError(f"member {name}: expected {size} bytes, received {reader.size}")
        # A source that yields more than announced is truncated by tarfile; detect it.
        leftover = reader.read(1)
        if leftover:
            raise ContainerError(f"member {name}: the source sent more than the announced {size} bytes")
        return {"size": reader.size, "md5": reader.md5.hexdigest(), "sha256": reader.sha256.hexdigest()}

    def add_bytes(self, name: str, data: bytes, mtime: float = 0,
                  digests: dict[str, str] | None = None) -> dict[str, Any]:
        """Append one member from memory; return its size, MD5 and SHA-256.

        digests: {"md5": ..., "sha256": ...} that the caller already computed from these same bytes
        (an immutable bytes object), so the member is written without hashing it a second time.
        """
        if digests is None:
            return self.add_instance(name, len(data), iter([data]), mtime)
        assert self._tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o600
        info.mtime = int(mtime)
        self._tar.addfile(info, io.BytesIO(data))
        return {"size": len(data), "md5": digests["md5"], "sha256": digests["sha256"]}

    def close(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest member, finish the tar, fsync and rename; return the container's size and SHA-256."""
        assert self._tar is not None and self._hashing is not None and self._file is not None
        self.add_bytes(f"{self.study_id}/{MANIFEST_NAME}", encode_manifest(manifest), manifest.get("created_epoch", 0))
        self._tar.close()
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


def read_container(path: str, on_member: Callable[[str, int, str, str], None] | None = None) -> dict[str, Any]:
    """Read a container sequentially; return its manifest, per-member checksums and whole-file SHA-256.

    Every member is read to the end and hashed; on_member(name, size, md5, sha256) is called for
    each instance member. Raises ContainerError if the tar is damaged or has no manifest.
    """
    whole = hashlib.sha256()
    members: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] | None = None
    total = 0

    class _Hashing(io.RawIOBase):
        def __init__(self, raw: BinaryIO):
            self.raw = raw

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            count = self.raw.readinto(buffer)
            if count:
                whole.update(memoryview(buffer)[:count])
            return count or 0

    try:
        with open(path, "rb", buffering=0) as raw, \
                concurrent.futures.ThreadPoolExecutor(max_workers=1) as md5_thread:
            stream = io.BufferedReader(_Hashing(raw), buffer_size=READ_CHUNK_SIZE)
            with tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_STREAM_BUFFER_SIZE) as tar:
                for info in tar:
                    if not info.isfile():
                        raise ContainerError(f"{path}: unexpected non-file member {info.name!r}")
                    handle = tar.extractfile(info)
                    assert handle is not None
                    md5 = hashlib.md5()
                    sha256 = hashlib.sha256()
                    data_for_manifest = bytearray() if info.name.endswith("/" + MANIFEST_NAME) else None
                    size = 0
                    # MD5 runs on a second thread (hashlib releases the GIL on large buffers), so
                    # read-back takes about as long as the SHA-256s alone. At most one chunk waits.
                    md5_update: concurrent.futures.Future | None = None
                    while True:
                        chunk = handle.read(READ_CHUNK_SIZE)
                        if not chunk:
                            break
                        if md5_update is not None:
                            md5_update.result()
                        md5_update = md5_thread.submit(md5.update, chunk)
                        sha256.update(chunk)
                        size += len(chunk)
                        if data_for_manifest is not None:
                            data_for_manifest.extend(chunk)
                    if md5_update is not None:
                        md5_update.result()
                    if data_for_manifest is not None:
                        manifest = json.loads(bytes(data_for_manifest).decode("utf-8"))
                        continue
                    members[info.name] = {"size": size, "md5": md5.hexdigest(), "sha256": sha256.hexdigest()}
                    if on_member:
                        on_member(info.name, size, md5.hexdigest(), sha256.hexdigest())
            # Drain what tarfile did not read (end-of-archive padding) so the whole-file hash is complete.
            while stream.read(READ_CHUNK_SIZE):
                pass
            total = raw.tell()
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise ContainerError(f"cannot read container {path}: {exc}") from None
    if manifest is None:
        raise ContainerError(f"container {path} has no {MANIFEST_NAME} member: it is incomplete or not ours")
    return {"manifest": manifest, "members": members, "sha256": whole.hexdigest(), "bytes": total}


def verify_container(path: str, expected_sha256: str | None, instances: list[dict[str, Any]]) -> list[str]:
    """Read a container back and compare it with the expected instances; return a list of problems.

    instances: dicts with member_name, size, md5 and sha256 (md5 as Orthanc reported it).
    An empty list means every instance is present once with matching size and checksums, there is
    no extra member, and the whole file matches expected_sha256 (when given).
    """
    problems: list[str] = []
    drop_cache(path)
    content = read_container(path)
    members = content["members"]
    expected = {item["member_name"]: item for item in instances}

    if len(members) != len(expected):
        problems.append(f"{len(members)} instances in the container, expected {len(expected)}")
    for name, item in expected.items():
        found = members.get(name)
        if found is None:
            problems.append(f"instance member {name} is missing")
            continue
        for field in ("size", "md5", "sha256"):
            if str(found[field]) != str(item[field]):
                problems.append(f"instance member {name}: {field} {found[field]} does not match expected {item[field]}")
    for name in members:
        if name not in expected:
            problems.append(f"unexpected member {name}")
    if expected_sha256 and content["sha256"] != expected_sha256:
        problems.append(f"container SHA-256 {content['sha256']} does not match the catalog's {expected_sha256}")
    return problems
