"""The Orthanc REST client against a real Orthanc 1.10.1 with authentication and HTTP compression on."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

import helpers_archive as h
from ansible.module_utils.orthanc_client import OrthancClient, OrthancError, OrthancNotFound, etag_md5

USER = "reader"
PASSWORD = "Client-Secret-7c21"
MISSING_STUDY = "00000000-00000000-00000000-00000000-00000000"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    h.require_orthanc_binary()
    handle = h.start_module_orthanc(tmp_path_factory, users={USER: PASSWORD}, http_compression=True)
    study_id = h.put_study(handle, "tiny", study_date="20110101", seed=7001, n_instances=3, rows=256, columns=256)
    others = [h.put_study(handle, "tiny", study_date="20110102", seed=7002 + index) for index in range(4)]
    h.wait_stable(handle, [study_id, *others])
    yield {"handle": handle, "study": study_id, "all": [study_id, *others], "client": h.client_for(handle)}
    h.stop_module_orthanc(handle)


def test_features_of_debian_orthanc(server: dict[str, Any]) -> None:
    features = server["client"].features()

    assert features.version >= (1, 10, 0)
    assert features.api_version >= 16
    assert features.has_labels is (features.version >= (1, 12, 0))
    assert features.has_find_order_by is False
    assert features.as_dict()["version"] == features.version_text


def test_answers_not_compressed(server: dict[str, Any]) -> None:
    response = server["client"].request("GET", "/studies", params={"expand": ""})

    assert "Content-Encoding" not in response.headers
    assert len(response.json()) == 5


def test_attachment_download_carries_stored_md5(server: dict[str, Any]) -> None:
    client = server["client"]
    [first, *_] = client.study_instances(server["study"])
    info = client.instance_attachment_info(first["ID"])

    response, md5 = client.open_instance_attachment(first["ID"])
    data = response.raw.read(decode_content=True)
    response.close()

    assert md5 == info["UncompressedMD5"] == hashlib.md5(data).hexdigest()
    assert len(data) == int(info["UncompressedSize"]) == int(first["FileSize"])
    # The attachment is the stored DICOM file itself, as /instances/{id}/file serves it.
    assert data == server["handle"].session.get(f"{server['handle'].url}/instances/{first['ID']}/file", timeout=30).content


@pytest.mark.parametrize(("etag", "expected"), [
    ('"0-7d5411eb01f192a41d4de500a3b6db47"', "7d5411eb01f192a41d4de500a3b6db47"),
    ('"12-7D5411EB01F192A41D4DE500A3B6DB47"', "7d5411eb01f192a41d4de500a3b6db47"),
    ('"0-"', None),
    ("7d5411eb01f192a41d4de500a3b6db47", None),
    ('"0-7d5411eb01f192a41d4de500a3b6db4"', None),
    ('"0-7d5411eb01f192a41d4de500a3b6db4z"', None),
    (None, None),
])
def test_etag_md5(etag: str | None, expected: str | None) -> None:
    assert etag_md5(etag) == expected


def test_study_reads(server: dict[str, Any]) -> None:
    client, study_id = server["client"], server["study"]

    assert client.study(study_id)["ID"] == study_id
    assert re.fullmatch(r"\d{8}T\d{6}", client.study_last_update(study_id))
    assert int(client.study_statistics(study_id)["CountInstances"]) == 3
    assert len(client.study_series(study_id)) == 1
    assert len(client.study_instances(study_id)) == 3
    assert client.patient_is_protected(client.study(study_id)["ParentPatient"]) is False


def test_find_pages_without_duplicates(server: dict[str, Any]) -> None:
    found = list(server["client"].find_studies({"StudyDate": "20110101-20110131"}, page_size=2))

    assert sorted(study["ID"] for study in found) == sorted(server["all"])


def test_list_pages_without_duplicates(server: dict[str, Any]) -> None:
    listed = [study["ID"] for study in server["client"].list_studies(page_size=2)]

    assert sorted(listed) == sorted(server["all"])


def test_missing_study_not_found(server: dict[str, Any]) -> None:
    with pytest.raises(OrthancNotFound) as raised:
        server["client"].study(MISSING_STUDY)

    assert raised.value.status == 404
    assert MISSING_STUDY in str(raised.value)


@pytest.mark.parametrize("value", ["../../system", "abc", "", "00000000-00000000-00000000-00000000-0000000G"])
def test_invalid_id_rejected_before_request(server: dict[str, Any], value: str) -> None:
    with pytest.raises(OrthancError, match="invalid Orthanc study ID"):
        server["client"].study(value)


def test_wrong_password_message(server: dict[str, Any]) -> None:
    client = OrthancClient(server["handle"].url, username=USER, password="Wrong-Client-Secret", retries=0)

    with pytest.raises(OrthancError) as raised:
        client.features()

    assert raised.value.status == 401
    assert "check the username and password" in str(raised.value)
    assert "Wrong-Client-Secret" not in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_connection_refused_retried(server: dict[str, Any]) -> None:
    pauses: list[float] = []
    client = OrthancClient(f"http://127.0.0.1:{h.free_port()}", retries=3, retry_backoff=0.5, sleep=pauses.append)

    with pytest.raises(OrthancError) as raised:
        client.features()

    assert pauses == [0.5, 1.0, 2.0]
    assert "failed after 4 attempts" in str(raised.value)


@pytest.mark.parametrize("url", ["not-a-url", "ftp://127.0.0.1:8042", "http://", ""])
def test_invalid_url_rejected(url: str) -> None:
    with pytest.raises(OrthancError, match="invalid Orthanc URL"):
        OrthancClient(url)


def test_negative_retries_rejected() -> None:
    with pytest.raises(OrthancError, match="invalid retries -1"):
        OrthancClient("http://127.0.0.1:1", retries=-1)


def test_upload_and_delete_instance(server: dict[str, Any]) -> None:
    client, handle = server["client"], server["handle"]
    [first, *_] = client.study_instances(server["study"])
    data = handle.session.get(f"{handle.url}/instances/{first['ID']}/file", timeout=30).content

    assert client.upload_instance(data)["Status"] == "AlreadyStored"
    assert client.delete_instance(first["ID"]) is True
    assert client.delete_instance(first["ID"]) is False
    assert client.upload_instance(data)["ID"] == first["ID"]
