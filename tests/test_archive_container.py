"""The study container: a pax tar that any tar reads, with checksums that catch every damaged byte."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h  # noqa: F401  (extends ansible.module_utils to the repository's module_utils)
from ansible.module_utils.archive_container import (
    ContainerError,
    ContainerWriter,
    member_name,
    read_container,
    verify_container,
)

STUDY = "11111111-22222222-33333333-44444444-55555555"
SERIES = "aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee"
INSTANCES = ["0000000%d-11111111-22222222-33333333-44444444" % index for index in range(3)]


def payload(index: int, size: int) -> bytes:
    """Return size deterministic bytes, different for every index."""
    block = hashlib.sha256(str(index).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def chunked(data: bytes, chunk: int = 1000) -> list[bytes]:
    return [data[start:start + chunk] for start in range(0, len(data), chunk)]


def write_container(path: Path, sizes: tuple[int, ...] = (10, 70000, 3 * 1024 * 1024 + 7)) -> list[dict[str, Any]]:
    """Write a container with one member per size; return the expected instance rows for verify_container."""
    writer = ContainerWriter(str(path), STUDY)
    writer.open()
    expected = []
    for index, size in enumerate(sizes):
        data = payload(index, size)
        name = member_name(STUDY, SERIES, INSTANCES[index])
        sums = writer.add_instance(name, size, iter(chunked(data)))
        assert sums["md5"] == hashlib.md5(data).hexdigest()
        expected.append({"member_name": name, "size": size, "md5": sums["md5"], "sha256": sums["sha256"]})
    result = writer.close({"format": "test", "instances": expected, "created_epoch": 1700000000})
    expected.append({"container": result})
    return expected


def split_expected(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return rows[:-1], rows[-1]["container"]


def test_round_trip_checksums(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))
    content = read_container(str(path), with_md5=True)

    assert content["manifest"]["format"] == "test"
    assert content["bytes"] == path.stat().st_size == container["bytes"]
    assert content["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == container["sha256"]
    for item in instances:
        assert content["members"][item["member_name"]]["md5"] == item["md5"]
    assert verify_container(str(path), container["sha256"], instances) == []


def test_python_tarfile_reads_members(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, _ = split_expected(write_container(path))

    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert tar.pax_headers is not None
        for index, item in enumerate(instances):
            assert tar.extractfile(item["member_name"]).read() == payload(index, item["size"])
    assert names == [item["member_name"] for item in instances] + [f"{STUDY}/manifest.json"]


def test_stock_tar_extracts_members(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, _ = split_expected(write_container(path))
    target = tmp_path / "extracted"
    target.mkdir()

    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=False)
    extraction = subprocess.run(["tar", "-xf", str(path), "-C", str(target)], capture_output=True, text=True,
                                check=False)

    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == [item["member_name"] for item in instances] + [f"{STUDY}/manifest.json"]
    assert extraction.returncode == 0, extraction.stderr
    for index, item in enumerate(instances):
        assert (target / item["member_name"]).read_bytes() == payload(index, item["size"])


def test_final_file_mode_and_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "study.tar"
    write_container(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not Path(str(path) + ".partial").exists()
    assert sorted(os.listdir(path.parent)) == ["study.tar"]


def test_short_source_rejected(tmp_path: Path) -> None:
    writer = ContainerWriter(str(tmp_path / "study.tar"), STUDY)
    writer.open()

    with pytest.raises(ContainerError, match="expected 100 bytes, received 60"):
        writer.add_instance(member_name(STUDY, SERIES, INSTANCES[0]), 100, iter([b"x" * 60]))
    writer.abort()
    assert not (tmp_path / "study.tar").exists()


def test_long_source_rejected(tmp_path: Path) -> None:
    writer = ContainerWriter(str(tmp_path / "study.tar"), STUDY)
    writer.open()

    with pytest.raises(ContainerError, match="more than the announced 100 bytes"):
        writer.add_instance(member_name(STUDY, SERIES, INSTANCES[0]), 100, iter([b"x" * 60, b"y" * 60]))
    writer.abort()


@pytest.mark.parametrize("where", ["first_member", "last_member_end", "manifest"])
def test_flipped_byte_fails_verification(tmp_path: Path, where: str) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))
    data = bytearray(path.read_bytes())
    if where == "first_member":
        offset = data.index(payload(0, 10))
    elif where == "last_member_end":
        last = payload(2, instances[2]["size"])
        offset = data.index(last[:4096]) + len(last) - 1
    else:
        offset = data.index(b'"format"') + 2
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))

    try:
        problems = verify_container(str(path), container["sha256"], instances)
    except ContainerError as exc:
        problems = [str(exc)]

    assert problems
    assert any("SHA-256" in problem or "manifest" in problem or "cannot read" in problem for problem in problems)


def test_flipped_header_byte_fails(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))
    data = bytearray(path.read_bytes())
    # The checksum field of the first ustar header block sits at bytes 148..155.
    data[150] ^= 0x04
    path.write_bytes(bytes(data))

    with pytest.raises(ContainerError):
        verify_container(str(path), container["sha256"], instances)


def test_missing_and_extra_members_reported(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))
    renamed = [dict(item) for item in instances]
    renamed[1]["member_name"] = member_name(STUDY, SERIES, "99999999-11111111-22222222-33333333-44444444")

    problems = verify_container(str(path), container["sha256"], renamed)

    assert any("is missing" in problem for problem in problems)
    assert any("unexpected member" in problem for problem in problems)


def test_fewer_expected_instances_reported(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))

    problems = verify_container(str(path), container["sha256"], instances[:2])

    assert "3 instances in the container, expected 2" in problems


def test_wrong_expected_checksum_reported(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))
    changed = [dict(item) for item in instances]
    changed[0]["sha256"] = "0" * 64

    problems = verify_container(str(path), "f" * 64, changed)

    assert any(problem.startswith(f"instance member {instances[0]['member_name']}: sha256") for problem in problems)
    assert any("does not match the catalog's" in problem for problem in problems)


def test_truncated_container_rejected(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    instances, container = split_expected(write_container(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ContainerError, match="cannot read container|no manifest.json"):
        verify_container(str(path), container["sha256"], instances)


def test_container_without_manifest_rejected(tmp_path: Path) -> None:
    path = tmp_path / "plain.tar"
    source = tmp_path / "file.dcm"
    source.write_bytes(b"DICM")
    with tarfile.open(path, "w") as tar:
        tar.add(source, arcname=f"{STUDY}/{SERIES}/file.dcm")

    with pytest.raises(ContainerError, match="has no manifest.json member"):
        read_container(str(path))


def test_abort_keeps_final_name_free(tmp_path: Path) -> None:
    path = tmp_path / "study.tar"
    writer = ContainerWriter(str(path), STUDY)
    writer.open()
    writer.add_bytes(member_name(STUDY, SERIES, INSTANCES[0]), b"abc")
    writer.abort()

    assert not path.exists()
    assert Path(str(path) + ".partial").exists()
