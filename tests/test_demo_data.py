"""Tests of tools/demo_data.py: generated files, and uploads to a real Orthanc."""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pydicom
import pytest

from tools import demo_data

if TYPE_CHECKING:
    from conftest import OrthancHandle


def study_uids_in(handle: OrthancHandle) -> set[str]:
    studies = handle.get_json("/studies", params={"expand": ""})
    return {study["MainDicomTags"]["StudyInstanceUID"] for study in studies}


def read_instance(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


# Generation, without Orthanc


def test_generate_study_is_deterministic() -> None:
    first = demo_data.generate_study("ct", n_instances=3, study_date="20050101", seed=42)
    second = demo_data.generate_study("ct", n_instances=3, study_date="20050101", seed=42)
    other = demo_data.generate_study("ct", n_instances=3, study_date="20050101", seed=43)

    assert first.study_instance_uid == second.study_instance_uid
    assert list(first.iter_files()) == list(second.iter_files())
    assert other.study_instance_uid != first.study_instance_uid
    assert other.patient.patient_id != first.patient.patient_id


def test_ct_study_tags_and_pixels() -> None:
    study = demo_data.generate_study("ct", n_instances=32, study_date=datetime.date(2003, 4, 5), seed=1)
    datasets = [read_instance(data) for data in study.iter_files()]

    assert len(datasets) == 32
    assert {ds.StudyInstanceUID for ds in datasets} == {study.study_instance_uid}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 2
    assert len({ds.SOPInstanceUID for ds in datasets}) == 32
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 33))
    first = datasets[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.Modality == "CT"
    assert first.StudyDate == "20030405"
    assert (first.Rows, first.Columns, first.BitsAllocated) == (512, 512, 16)
    assert len(first.PixelData) == 512 * 512 * 2
    assert first.PixelData != datasets[1].PixelData
    assert str(first.PatientName).startswith("Demo")
    for keyword in ("PatientID", "PatientBirthDate", "AccessionNumber", "StudyDescription"):
        assert first.get(keyword), keyword


@pytest.mark.parametrize("shape", sorted(demo_data.SHAPES))
def test_every_shape_builds_valid_file(shape: str) -> None:
    spec = demo_data.SHAPES[shape]
    study = demo_data.generate_study(shape, seed=3)
    dataset = read_instance(study.build_file(0))

    assert spec.instances[0] <= study.n_instances <= spec.instances[1]
    assert dataset.Modality == spec.modality
    assert dataset.SOPClassUID == spec.sop_class_uid
    assert len(dataset.PixelData) == spec.rows * spec.columns * spec.bits_allocated // 8


def test_large_radiograph_size_override() -> None:
    study = demo_data.generate_study("dx", n_instances=1, rows=2048, columns=2500, seed=4)
    dataset = read_instance(study.build_file(0))

    assert (dataset.Rows, dataset.Columns) == (2048, 2500)
    assert len(dataset.PixelData) == 2048 * 2500 * 2


def test_study_dates_cover_every_year() -> None:
    dates = demo_data.study_dates(30, seed=9, year_from=1998, year_to=2020)
    years = {int(date[:4]) for date in dates}

    assert years == set(range(1998, 2021))
    for date in dates:
        datetime.datetime.strptime(date, "%Y%m%d")


def test_unknown_shape_rejected() -> None:
    with pytest.raises(ValueError, match="unknown study shape 'pet'"):
        demo_data.generate_study("pet")


# Uploads to Orthanc


def test_same_seed_same_orthanc_studies(orthanc_factory: Callable[..., OrthancHandle]) -> None:
    first = orthanc_factory()
    second = orthanc_factory()
    third = orthanc_factory()

    summary_first = first.load_demo(seed=5, studies=6, include_testdata=False)
    summary_second = second.load_demo(seed=5, studies=6, include_testdata=False)
    third.load_demo(seed=6, studies=6, include_testdata=False)

    assert study_uids_in(first) == study_uids_in(second)
    assert summary_first["generated"]["study_ids"] == summary_second["generated"]["study_ids"]
    assert summary_first["hostile"]["study_ids"] == summary_second["hostile"]["study_ids"]
    assert study_uids_in(first).isdisjoint(study_uids_in(third))


def test_load_demo_summary_and_years(orthanc: OrthancHandle) -> None:
    summary = orthanc.load_demo(seed=2, studies=12, year_from=2001, year_to=2012, include_hostile=False)

    generated = summary["generated"]
    assert generated["studies"] == 12
    assert sorted(generated["years"]) == [str(year) for year in range(2001, 2013)]
    assert set(generated["study_ids"]) == {"ct", "tiny", "mr", "cr", "dx", "us", "mg"}

    testdata = summary["testdata"]
    assert testdata["accepted"] > 100
    assert testdata["rejected"] > 0
    assert testdata["accepted"] + testdata["rejected"] == testdata["files"]

    orthanc_study_ids = set(orthanc.get_json("/studies"))
    for ids in generated["study_ids"].values():
        assert set(ids) <= orthanc_study_ids
    dates = {orthanc.get_json(f"/studies/{study_id}")["MainDicomTags"]["StudyDate"][:4]
             for ids in generated["study_ids"].values() for study_id in ids}
    assert dates == set(generated["years"])
    statistics = orthanc.get_json("/statistics")
    assert statistics["CountInstances"] == summary["total_instances"] - testdata["already_stored"]


# Expected MainDicomTags of each hostile case as Orthanc 1.10.1 stores them.
HOSTILE_EXPECTED: dict[str, dict[str, Any]] = {
    "date_missing": {"StudyDate": None},
    "date_empty": {"StudyDate": ""},
    "date_malformed_dashes": {"StudyDate": "2019-13-45"},
    "date_letters": {"StudyDate": "abcd"},
    "date_february_30": {"StudyDate": "19990230"},
    "date_future": {"StudyDate": "20991231"},
    "patient_id_dot_dot": {"PatientID": "../../DEMO-TRAVERSAL"},
    "patient_id_slash": {"PatientID": "DEMO/SLASH/01"},
    "patient_id_backslash": {"PatientID": "DEMO\\BACKSLASH"},
    "accession_dot_dot": {"AccessionNumber": "../ACC/.."},
    "description_path": {"StudyDescription": "/etc/../..\\share\\CT ../../x"},
    "control_characters": {
        "PatientID": "DEMO\x01CTRL",
        "StudyDescription": "tab\there bell\x07 escape\x1b[31m newline\nend",
        "AccessionNumber": "ACC\x7f1",
    },
    "long_values": {"PatientID": "DEMO" + "L" * 196, "AccessionNumber": "A" * 100, "StudyDescription": None},
    "non_ascii_japanese": {"PatientName": "試験^患者", "PatientID": "DEMO試験001", "StudyDescription": "胸部CT 検査"},
    "non_ascii_greek": {"PatientName": "Δοκιμή^Ασθενής", "StudyDescription": "Θώρακας ακτινογραφία"},
}


def test_hostile_cases_all_expected() -> None:
    assert set(HOSTILE_EXPECTED) == {case.name for case in demo_data.HOSTILE_CASES}


@pytest.fixture(scope="module")
def hostile_summary(orthanc_shared: OrthancHandle) -> dict[str, Any]:
    return orthanc_shared.load_demo(seed=77, studies=0, include_testdata=False)


@pytest.mark.parametrize("case", sorted(HOSTILE_EXPECTED))
def test_hostile_values_intact(orthanc_shared: OrthancHandle, hostile_summary: dict[str, Any], case: str) -> None:
    study_id = hostile_summary["hostile"]["study_ids"][case]
    study = orthanc_shared.get_json(f"/studies/{study_id}")
    tags = {**study["PatientMainDicomTags"], **study["MainDicomTags"]}

    for keyword, expected in HOSTILE_EXPECTED[case].items():
        assert tags.get(keyword) == expected, keyword


def test_long_description_kept_in_file(orthanc_shared: OrthancHandle, hostile_summary: dict[str, Any]) -> None:
    study_id = hostile_summary["hostile"]["study_ids"]["long_values"]
    instance_id = orthanc_shared.get_json(f"/studies/{study_id}/instances")[0]["ID"]

    tags = orthanc_shared.get_json(f"/instances/{instance_id}/tags")
    content = orthanc_shared.session.get(f"{orthanc_shared.url}/instances/{instance_id}/content/0008-1030", timeout=30)

    assert tags["0008,1030"]["Type"] == "TooLong"
    assert content.text.rstrip() == ("LONG " * 800).rstrip()


def test_add_instance_new_series(orthanc_shared: OrthancHandle) -> None:
    orthanc = orthanc_shared
    study = demo_data.generate_study("ct", n_instances=3, seed=2021)
    with demo_data.Uploader(orthanc.url, threads=2) as uploader:
        study_id = demo_data.upload_study(uploader, study)[0].study_id
    assert study_id is not None
    before = orthanc.get_json(f"/studies/{study_id}")

    added = demo_data.add_instance_to_study(orthanc.url, study_id, seed=1)

    after = orthanc.get_json(f"/studies/{study_id}")
    assert added["study_id"] == study_id
    assert len(after["Series"]) == len(before["Series"]) + 1
    assert added["series_id"] in after["Series"]
    assert orthanc.get_json(f"/studies/{study_id}/statistics")["CountInstances"] == 4
    assert after["MainDicomTags"]["StudyInstanceUID"] == study.study_instance_uid


def test_add_instance_same_series(orthanc_shared: OrthancHandle) -> None:
    orthanc = orthanc_shared
    study = demo_data.generate_study("mr", n_instances=2, n_series=1, seed=2022)
    with demo_data.Uploader(orthanc.url, threads=1) as uploader:
        study_id = demo_data.upload_study(uploader, study)[0].study_id
    assert study_id is not None

    added = demo_data.add_instance_to_study(orthanc.url, study_id, new_series=False, seed=2)

    assert added["series_instance_uid"] == study.series_instance_uids[0]
    assert len(orthanc.get_json(f"/studies/{study_id}")["Series"]) == 1
    assert orthanc.get_json(f"/studies/{study_id}/statistics")["CountInstances"] == 3


def test_uploader_results_in_order(orthanc_shared: OrthancHandle) -> None:
    studies = [demo_data.generate_study("tiny", seed=seed) for seed in range(3000, 3020)]

    with demo_data.Uploader(orthanc_shared.url, threads=4) as uploader:
        results = uploader.upload_many(study.build_file(0) for study in studies)
        again = uploader.upload(studies[0].build_file(0))

    assert [result.status for result in results] == ["Success"] * 20
    assert len({result.study_id for result in results}) == 20
    assert again.status == "AlreadyStored"
    assert again.study_id == results[0].study_id


def test_upload_rejects_non_dicom(orthanc_shared: OrthancHandle) -> None:
    with demo_data.Uploader(orthanc_shared.url, threads=1) as uploader:
        result = uploader.upload(b"not a DICOM file")

    assert not result.accepted
    assert result.http_status == 400
    assert result.error is not None
