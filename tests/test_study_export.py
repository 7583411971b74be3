"""Study export against a real Orthanc: byte-identical members, safe paths, reruns, changes and full volumes."""

from __future__ import annotations

import json
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
from ansible.module_utils import study_export
from ansible.module_utils.archive_container import verify_container
from ansible.module_utils.archive_volume import Volume
from ansible.module_utils.study_export import ExportError, StudyExporter, _Download
from tools import demo_data


@pytest.fixture(scope="module")
def export_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An Orthanc with a three-series CT study, the hostile-tag studies and a mixed-size study."""
    h.require_orthanc_binary()
    server = h.start_module_orthanc(tmp_path_factory)
    ids = {"ct": h.put_study(server, "ct", study_date="20050505", seed=4001, n_instances=6, n_series=3,
                             rows=64, columns=64)}
    with demo_data.Uploader(server.url, auth=server.auth, threads=2) as uploader:
        for name, study in demo_data.generate_hostile_studies(seed=4002).items():
            ids["hostile_" + name] = demo_data.upload_study(uploader, study)[0].study_id

        # Small instances that are prefetched and large ones that must be streamed, in one study.
        small = demo_data.generate_study("tiny", n_instances=6, study_date="20060606", seed=4003, rows=512, columns=512)
        large = demo_data.generate_study("mr", n_instances=2, study_date="20060606", seed=4004, patient=small.patient,
                                         rows=1024, columns=1024,
                                         overrides={"StudyInstanceUID": small.study_instance_uid})
        results = demo_data.upload_study(uploader, small) + demo_data.upload_study(uploader, large)
    assert len({result.study_id for result in results}) == 1
    ids["mixed"] = results[0].study_id
    h.wait_stable(server, list(ids.values()))
    yield {"handle": server, "ids": ids, "client": h.client_for(server)}
    h.stop_module_orthanc(server)


@pytest.fixture
def bench(export_server: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A fresh catalog and volume folder for one test, on the module's Orthanc."""
    catalog = h.open_sqlite_catalog(tmp_path / "catalog")
    volume = h.make_volume(tmp_path / "volume")
    yield {"catalog": catalog, "volume": volume, "root": tmp_path, **export_server}
    catalog.close()


def container_paths(bench: dict[str, Any], result: dict[str, Any]) -> tuple[Path, Path]:
    tar_path = Path(bench["volume"].absolute(result["path"]))
    return tar_path, tar_path.with_suffix(".json")


def test_members_match_orthanc_files(bench: dict[str, Any]) -> None:
    study_id = bench["ids"]["ct"]
    exporter = h.make_exporter(bench["client"], bench["catalog"], bench["volume"])
    result = exporter.export(study_id)
    tar_path, _ = container_paths(bench, result)
    session, url = bench["handle"].session, bench["handle"].url

    assert result["status"] == "archived"
    assert result["instances"] == 6
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        for item in bench["handle"].get_json(f"/studies/{study_id}/instances"):
            member = f"{study_id}/{item['ParentSeries']}/{item['ID']}.dcm"
            original = session.get(f"{url}/instances/{item['ID']}/file", timeout=60).content
            assert tar.extractfile(member).read() == original
    assert names[-1] == f"{study_id}/manifest.json"
    assert len(names) == 7


def test_stock_tar_reads_export(bench: dict[str, Any]) -> None:
    exporter = h.make_exporter(bench["client"], bench["catalog"], bench["volume"])
    result = exporter.export(bench["ids"]["ct"])
    tar_path, _ = container_paths(bench, result)

    listing = subprocess.run(["tar", "-tvf", str(tar_path)], capture_output=True, text=True, check=False)

    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.splitlines()) == 7


def test_manifest_beside_equals_inside(bench: dict[str, Any]) -> None:
    study_id = bench["ids"]["ct"]
    result = h.make_exporter(bench["client"], bench["catalog"], bench["volume"]).export(study_id)
    tar_path, manifest_path = container_paths(bench, result)

    beside = manifest_path.read_bytes()
    with tarfile.open(tar_path) as tar:
        inside = tar.extractfile(f"{study_id}/manifest.json").read()
    manifest = json.loads(beside)

    assert beside == inside
    assert manifest["orthanc_study_id"] == study_id
    assert manifest["instance_count"] == 6
    assert len(manifest["series"]) == 3
    assert manifest["volume_serial"] == bench["volume"].serial()
    assert {item["member_name"] for item in manifest["instances"]} == set(names_in(tar_path)) - {
        f"{study_id}/manifest.json"}


def names_in(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()


def test_catalog_row_written(bench: dict[str, Any]) -> None:
    study_id = bench["ids"]["ct"]
    result = h.make_exporter(bench["client"], bench["catalog"], bench["volume"]).export(study_id)
    [row] = bench["catalog"].copies_of_study(h.SERVER, study_id)

    assert row["state"] == "written"
    assert row["container_sha256"] == result["container_sha256"]
    assert row["path"] == result["path"]
    assert len(bench["catalog"].copy_instances(row["id"])) == 6


@pytest.mark.parametrize("case", [name for name in
                                  ("patient_id_dot_dot", "patient_id_slash", "patient_id_backslash",
                                   "accession_dot_dot", "description_path", "control_characters", "long_values",
                                   "non_ascii_japanese", "date_malformed_dashes", "date_missing")])
def test_hostile_tags_stay_inside_volume(bench: dict[str, Any], case: str) -> None:
    study_id = bench["ids"]["hostile_" + case]
    root: Path = bench["root"]
    before_outside = h.files_under(root) - {path for path in h.files_under(root) if path.startswith("volume")}

    result = h.make_exporter(bench["client"], bench["catalog"], bench["volume"]).export(study_id)

    after = h.files_under(root)
    outside = {path for path in after if not path.startswith("volume")} - before_outside
    assert result["status"] == "archived"
    assert {path for path in outside if not path.startswith("catalog")} == set()
    inside = {path for path in after if path.startswith("volume/")}
    year = result["path"].split("/")[2]
    assert year == "undated" or year.isdigit()
    assert inside == {
        "volume/.orthanc-archive-volume.json",
        "volume/orthanc-archive",
        f"volume/orthanc-archive/{h.SERVER}",
        f"volume/orthanc-archive/{h.SERVER}/{year}",
        f"volume/orthanc-archive/{h.SERVER}/{year}/{study_id}.tar",
        f"volume/orthanc-archive/{h.SERVER}/{year}/{study_id}.json",
    }


def test_rerun_skips_without_rewriting(bench: dict[str, Any]) -> None:
    study_id = bench["ids"]["ct"]
    exporter = h.make_exporter(bench["client"], bench["catalog"], bench["volume"])
    first = exporter.export(study_id)
    tar_path, manifest_path = container_paths(bench, first)
    stamps = (tar_path.stat().st_mtime_ns, manifest_path.stat().st_mtime_ns, tar_path.stat().st_ino)

    second = h.make_exporter(bench["client"], bench["catalog"], bench["volume"]).export(study_id)

    assert second["status"] == "skipped"
    assert second["reason"] == "already archived"
    assert second["bytes"] == 0
    assert (tar_path.stat().st_mtime_ns, manifest_path.stat().st_mtime_ns, tar_path.stat().st_ino) == stamps
    assert len(bench["catalog"].copies_of_study(h.SERVER, study_id)) == 1


class ChangingExporter(StudyExporter):
    """Add an instance to the study in Orthanc while its second instance is downloaded."""

    def __init__(self, *args: Any, handle: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.handle = handle
        self.downloads = 0
        self.lock = threading.Lock()
        self.added: dict[str, str] | None = None

    def _download(self, item: dict[str, Any]) -> _Download:
        with self.lock:
            self.downloads += 1
            if self.downloads == 2 and self.added is None:
                study_id = self.handle.get_json(f"/instances/{item['ID']}/study")["ID"]
                self.added = demo_data.add_instance_to_study(self.handle.url, study_id, auth=self.handle.auth)
        return super()._download(item)


def test_change_during_export_fails_copy(orthanc: Any, tmp_path: Path) -> None:
    study_id = h.put_study(orthanc, "tiny", study_date="20070707", seed=4101, n_instances=3)
    h.wait_stable(orthanc, [study_id])
    catalog = h.open_sqlite_catalog(tmp_path)
    volume = h.make_volume(tmp_path / "volume")
    exporter = ChangingExporter(h.client_for(orthanc), catalog, volume, h.SERVER, connections=1,
                                buffer_bytes=1024 * 1024, handle=orthanc)

    result = exporter.export(study_id)

    assert exporter.added is not None
    assert result["status"] == "changed"
    [row] = catalog.copies_of_study(h.SERVER, study_id)
    assert row["state"] == "failed"
    assert "changed during export" in row["failure"]
    assert not Path(volume.absolute(result["path"])).exists()
    catalog.close()


class CountingExporter(StudyExporter):
    """Track the bytes of downloaded instances held in memory, and which instances were streamed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.buffered_bytes = 0
        self.peak_buffered_bytes = 0
        self.prefetched: list[str] = []
        self.streamed: list[str] = []

    def _download(self, item: dict[str, Any]) -> _Download:
        download = super()._download(item)
        with self.lock:
            self.buffered_bytes += len(download.data)
            self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
            self.prefetched.append(item["ID"])
        return download

    def _open_stream(self, item: dict[str, Any]) -> Any:
        self.streamed.append(item["ID"])
        return super()._open_stream(item)

    def _fetch_in_order(self, instances: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
        for item, fetched in super()._fetch_in_order(instances):
            yield item, fetched
            # The writer has added the member once it requests the next instance.
            if isinstance(fetched, _Download):
                with self.lock:
                    self.buffered_bytes -= len(fetched.data)


def test_memory_bounded_by_buffer(bench: dict[str, Any]) -> None:
    study_id = bench["ids"]["mixed"]
    buffer_bytes = 1024 * 1024
    exporter = CountingExporter(bench["client"], bench["catalog"], bench["volume"], h.SERVER, connections=4,
                                buffer_bytes=buffer_bytes)
    instances = bench["handle"].get_json(f"/studies/{study_id}/instances")
    large = {item["ID"] for item in instances if item["FileSize"] > buffer_bytes // 2}
    small = {item["ID"] for item in instances if item["FileSize"] <= buffer_bytes // 2}

    result = exporter.export(study_id)

    assert result["status"] == "archived"
    assert len(large) == 2
    assert len(small) == 6
    assert set(exporter.streamed) == large
    assert set(exporter.prefetched) == small
    assert exporter.peak_buffered_bytes <= buffer_bytes
    assert exporter.buffered_bytes == 0
    tar_path, _ = container_paths(bench, result)
    assert verify_container(str(tar_path), result["container_sha256"],
                            bench["catalog"].copy_instances(result["copy_id"])) == []


class SizedVolume(Volume):
    """A folder volume that reports a chosen capacity and free space."""

    def __init__(self, path: str, capacity: int, available: int):
        super().__init__(path)
        self.fake_capacity = capacity
        self.fake_available = available

    def capacity_bytes(self) -> int:
        return self.fake_capacity

    def available_bytes(self) -> int:
        return max(0, self.fake_available - self.reserve_bytes)


def test_volume_full_before_writing(bench: dict[str, Any]) -> None:
    volume = SizedVolume(str(bench["volume"].path), capacity=10 ** 9, available=10_000)
    exporter = h.make_exporter(bench["client"], bench["catalog"], volume)

    result = exporter.export(bench["ids"]["ct"])

    assert result["status"] == "volume_full"
    assert "available" in result["reason"]
    assert bench["catalog"].copies_of_study(h.SERVER, bench["ids"]["ct"]) == []
    assert not (Path(volume.path) / "orthanc-archive").exists()


def test_study_larger_than_volume_error(bench: dict[str, Any]) -> None:
    volume = SizedVolume(str(bench["volume"].path), capacity=50_000, available=50_000)
    exporter = h.make_exporter(bench["client"], bench["catalog"], volume)

    with pytest.raises(ExportError) as raised:
        exporter.export(bench["ids"]["mixed"])

    assert bench["ids"]["mixed"] in str(raised.value)
    assert "holds 50000" in str(raised.value)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for one test, so the kernel itself runs out of space."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_while_writing(bench: dict[str, Any], small_tmpfs: Path) -> None:
    # The volume claims plenty of space, so only the write itself meets ENOSPC.
    volume = SizedVolume(str(small_tmpfs), capacity=10 ** 9, available=10 ** 9)
    exporter = h.make_exporter(bench["client"], bench["catalog"], volume)
    study_id = bench["ids"]["mixed"]

    result = exporter.export(study_id)

    assert result["status"] == "volume_full"
    assert "no space left" in result["reason"]
    [row] = bench["catalog"].copies_of_study(h.SERVER, study_id)
    assert row["state"] == "failed"


def test_real_small_volume_reports_full(bench: dict[str, Any], small_tmpfs: Path) -> None:
    volume = Volume(str(small_tmpfs), reserve_bytes=1024 * 1024)
    exporter = h.make_exporter(bench["client"], bench["catalog"], volume)

    with pytest.raises(ExportError, match="cannot be archived on one cartridge"):
        exporter.export(bench["ids"]["mixed"])
    small = exporter.export(bench["ids"]["ct"])

    assert small["status"] == "archived"


def test_invalid_exporter_settings_rejected(bench: dict[str, Any]) -> None:
    with pytest.raises(ExportError, match="invalid connections 0"):
        h.make_exporter(bench["client"], bench["catalog"], bench["volume"], connections=0)
    with pytest.raises(ExportError, match="invalid buffer_bytes 1000"):
        h.make_exporter(bench["client"], bench["catalog"], bench["volume"], buffer_bytes=1000)


def test_invalid_study_id_rejected(bench: dict[str, Any]) -> None:
    exporter = h.make_exporter(bench["client"], bench["catalog"], bench["volume"])

    with pytest.raises(Exception, match=r"invalid Orthanc study ID '\.\./etc'"):
        exporter.export("../etc")


def test_export_without_stored_md5_fails(orthanc_factory: Callable[..., Any], tmp_path: Path) -> None:
    # With StoreMD5ForAttachments false the download's ETag carries no MD5 and neither does the attachment's info,
    # so nothing can prove that the copy matches what Orthanc stored.
    server = orthanc_factory(extra_config={"StoreMD5ForAttachments": False})
    study_id = h.put_study(server, "tiny", study_date="20070808", seed=4201, n_instances=2)
    h.wait_stable(server, [study_id])
    catalog = h.open_sqlite_catalog(tmp_path)
    exporter = StudyExporter(h.client_for(server), catalog, h.make_volume(tmp_path / "volume"), h.SERVER)

    with pytest.raises(ExportError, match="stores no MD5 for instance .*set StoreMD5ForAttachments to true"):
        exporter.export(study_id)

    [row] = catalog.copies_of_study(h.SERVER, study_id)
    assert row["state"] == "failed"
    catalog.close()


@pytest.mark.parametrize("read_back", [True, False])
def test_read_back_option(bench: dict[str, Any], monkeypatch: pytest.MonkeyPatch, read_back: bool) -> None:
    # Without read_back the copy is recorded as written without a read-back.
    # archive_volume_verify reads it later.
    read: list[str] = []
    original = study_export.verify_container

    def recording(path: str, *args: Any) -> list[str]:
        read.append(path)
        return original(path, *args)

    monkeypatch.setattr(study_export, "verify_container", recording)
    exporter = StudyExporter(bench["client"], bench["catalog"], bench["volume"], h.SERVER, read_back=read_back)

    result = exporter.export(bench["ids"]["ct"])

    assert result["status"] == "archived"
    tar_path, _ = container_paths(bench, result)
    assert read == ([str(tar_path)] if read_back else [])
    [row] = bench["catalog"].copies_of_study(h.SERVER, bench["ids"]["ct"])
    assert row["state"] == "written"
    assert original(str(tar_path), row["container_sha256"], bench["catalog"].copy_instances(row["id"])) == []


def test_export_from_compressed_storage(orthanc_factory: Callable[..., Any], tmp_path: Path) -> None:
    # With StorageCompression the stored files are zlib-compressed: the ETag, the instance list and
    # the download must all describe the uncompressed DICOM file.
    server = orthanc_factory(storage_compression=True)
    study_id = h.put_study(server, "ct", study_date="20070909", seed=4301, n_instances=3, rows=64, columns=64)
    h.wait_stable(server, [study_id])
    catalog = h.open_sqlite_catalog(tmp_path)
    exporter = StudyExporter(h.client_for(server), catalog, h.make_volume(tmp_path / "volume"), h.SERVER)

    result = exporter.export(study_id)

    assert result["status"] == "archived"
    with tarfile.open(exporter.volume.absolute(result["path"])) as tar:
        for item in server.get_json(f"/studies/{study_id}/instances"):
            member = tar.extractfile(f"{study_id}/{item['ParentSeries']}/{item['ID']}.dcm")
            assert member is not None
            original = server.session.get(f"{server.url}/instances/{item['ID']}/file", timeout=60).content
            assert member.read() == original
    catalog.close()
