"""Reclaim against a real Orthanc: only verified, unchanged studies leave it, and nothing that arrives late."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
from ansible.module_utils.study_reclaim import Reclaimer, ReclaimError
from tools import demo_data


STUDIES_PER_TEST = 3
PRELOADED_STUDIES = 45


@pytest.fixture(scope="module")
def reclaim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One Orthanc with enough stable two-instance studies that every test gets its own, each of its own patient.

    Tests run one after another, so each can compare /statistics before and after its own deletions.
    """
    h.require_orthanc_binary()
    server = h.start_module_orthanc(tmp_path_factory)
    ids = [h.put_study(server, "tiny", study_date=f"{2000 + index % 20}0101", seed=5000 + index, n_instances=2)
           for index in range(PRELOADED_STUDIES)]
    h.wait_stable(server, ids)
    yield {"handle": server, "unused": ids}
    h.stop_module_orthanc(server)


@pytest.fixture
def site(reclaim_server: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three studies no other test touches, a fresh catalog and one volume."""
    unused = reclaim_server["unused"]
    assert len(unused) >= STUDIES_PER_TEST, "raise PRELOADED_STUDIES: every test takes studies of its own"
    ids = [unused.pop(0) for _ in range(STUDIES_PER_TEST)]
    orthanc = reclaim_server["handle"]
    client = h.client_for(orthanc)
    catalog = h.open_sqlite_catalog(tmp_path / "catalog")
    volume = h.make_volume(tmp_path / "volume-1")
    yield {"handle": orthanc, "ids": ids, "client": client, "catalog": catalog, "volume": volume, "root": tmp_path}
    catalog.close()
    client.close()


def archive(site: dict[str, Any], study_ids: list[str], volume: Any = None, required_copies: int = 1) -> None:
    exporter = h.make_exporter(site["client"], site["catalog"], volume or site["volume"],
                               required_copies=required_copies)
    for study_id in study_ids:
        assert exporter.export(study_id)["status"] == "archived"


def reclaimer(site: dict[str, Any], required_copies: int = 1) -> Reclaimer:
    return Reclaimer(site["client"], site["catalog"], h.SERVER, required_copies)


def test_only_verified_studies_deleted(site: dict[str, Any]) -> None:
    verified, written, untouched = site["ids"]
    archive(site, [verified])
    assert h.verify_volume(site["catalog"], site["volume"])["verified"] == [verified]
    archive(site, [written])

    result = reclaimer(site).reclaim()

    assert result["deleted"] == 1
    assert [entry["orthanc_id"] for entry in result["studies"]] == [verified]
    assert not h.study_exists(site["handle"], verified)
    assert h.study_exists(site["handle"], written)
    assert h.study_exists(site["handle"], untouched)
    [deletion] = site["catalog"].deletions_of_study(h.SERVER, verified)
    assert deletion["instances_deleted"] == 2


def test_failed_verification_not_deleted(site: dict[str, Any]) -> None:
    study_id = site["ids"][0]
    archive(site, [study_id])
    [row] = site["catalog"].copies_of_study(h.SERVER, study_id)
    tar_path = Path(site["volume"].absolute(row["path"]))
    data = bytearray(tar_path.read_bytes())
    data[2000] ^= 0xFF
    tar_path.write_bytes(bytes(data))

    outcome = h.verify_volume(site["catalog"], site["volume"])
    result = reclaimer(site).reclaim()

    assert outcome["failed"] == [study_id]
    assert result["deleted"] == 0
    assert h.study_exists(site["handle"], study_id)


def test_changed_study_kept_and_archived_again(site: dict[str, Any]) -> None:
    study_id = site["ids"][0]
    archive(site, [study_id])
    h.verify_volume(site["catalog"], site["volume"])
    added = demo_data.add_instance_to_study(site["handle"].url, study_id, auth=site["handle"].auth)
    h.wait_stable(site["handle"], [study_id])

    first = reclaimer(site).reclaim()

    assert first["deleted"] == 0
    assert first["studies"][0]["decision"] == "skip"
    assert "changed since it was archived" in first["studies"][0]["reason"]
    assert len(h.instance_ids(site["handle"], study_id)) == 3

    again = h.make_exporter(site["client"], site["catalog"], site["volume"]).export(study_id)
    assert again["status"] == "archived"
    assert again["instances"] == 3
    h.verify_volume(site["catalog"], site["volume"])
    second = reclaimer(site).reclaim()

    assert second["deleted"] == 1
    assert not h.study_exists(site["handle"], study_id)
    assert added["instance_id"] not in h.instance_ids(site["handle"], site["ids"][1])


def test_protected_patient_not_deleted(site: dict[str, Any]) -> None:
    protected, free = site["ids"][:2]
    archive(site, [protected, free])
    h.verify_volume(site["catalog"], site["volume"])
    h.protect_patient_of(site["handle"], protected)

    result = reclaimer(site).reclaim()

    decisions = {entry["orthanc_id"]: entry for entry in result["studies"]}
    assert decisions[protected]["decision"] == "skip"
    assert decisions[protected]["reason"] == "patient is protected"
    assert decisions[free]["decision"] == "deleted"
    assert h.study_exists(site["handle"], protected)
    assert not h.study_exists(site["handle"], free)


def test_two_required_copies_need_two_volumes(site: dict[str, Any]) -> None:
    study_id = site["ids"][0]
    archive(site, [study_id], required_copies=2)
    h.verify_volume(site["catalog"], site["volume"])

    one_volume = reclaimer(site, required_copies=2).reclaim()

    assert one_volume["deleted"] == 0
    assert h.study_exists(site["handle"], study_id)

    second_volume = h.make_volume(site["root"] / "volume-2")
    archive(site, [study_id], volume=second_volume, required_copies=2)
    h.verify_volume(site["catalog"], second_volume)
    two_volumes = reclaimer(site, required_copies=2).reclaim()

    assert two_volumes["deleted"] == 1
    assert not h.study_exists(site["handle"], study_id)


def test_check_mode_deletes_nothing(site: dict[str, Any]) -> None:
    archive(site, site["ids"][:2])
    h.verify_volume(site["catalog"], site["volume"])
    before = site["handle"].get_json("/statistics")

    result = reclaimer(site).reclaim(check_mode=True)

    assert result["would_delete"] == 2
    assert result["deleted"] == 0
    assert result["bytes_freed"] == 0
    copies = [site["catalog"].copies_of_study(h.SERVER, study_id)[0] for study_id in site["ids"][:2]]
    assert result["bytes_to_free"] == sum(row["study_bytes"] for row in copies)
    assert result["bytes_to_free"] > 0
    assert site["handle"].get_json("/statistics") == before
    assert all(h.study_exists(site["handle"], study_id) for study_id in site["ids"])
    assert site["catalog"].deletions_of_study(h.SERVER, site["ids"][0]) == []


def test_bytes_freed_match_statistics(site: dict[str, Any]) -> None:
    archive(site, site["ids"][:2])
    h.verify_volume(site["catalog"], site["volume"])
    before = int(site["handle"].get_json("/statistics")["TotalDiskSize"])

    result = reclaimer(site).reclaim()

    after = int(site["handle"].get_json("/statistics")["TotalDiskSize"])
    assert result["bytes_freed"] > 0
    assert result["bytes_freed"] == before - after
    assert result["disk_bytes_before"] == before
    assert result["disk_bytes_after"] == after


def test_rerun_deletes_nothing_more(site: dict[str, Any]) -> None:
    archive(site, site["ids"][:1])
    h.verify_volume(site["catalog"], site["volume"])
    reclaimer(site).reclaim()

    again = reclaimer(site).reclaim()

    assert again["deleted"] == 0
    assert again["studies"] == []
    assert len(site["catalog"].deletions_of_study(h.SERVER, site["ids"][0])) == 1


def test_late_instance_stays_in_orthanc(site: dict[str, Any]) -> None:
    study_id = site["ids"][0]
    archive(site, [study_id])
    h.verify_volume(site["catalog"], site["volume"])
    client = site["client"]
    original_delete = client.delete_instance
    late: dict[str, str] = {}

    def delete_after_late_arrival(instance_id: str) -> bool:
        # The new instance arrives after the last check, right before the first DELETE.
        if not late:
            late.update(demo_data.add_instance_to_study(site["handle"].url, study_id, auth=site["handle"].auth))
        return original_delete(instance_id)

    client.delete_instance = delete_after_late_arrival
    result = reclaimer(site).reclaim()

    assert late
    assert result["studies"][0]["decision"] == "deleted"
    assert result["studies"][0]["instances_deleted"] == 2
    assert "1 instances arrived during deletion" in result["studies"][0]["note"]
    assert h.instance_ids(site["handle"], study_id) == [late["instance_id"]]

    h.wait_stable(site["handle"], [study_id])
    again = h.make_exporter(client, site["catalog"], site["volume"]).export(study_id)
    assert again["status"] == "archived"
    assert again["instances"] == 1


def test_study_gone_recorded_not_counted(site: dict[str, Any]) -> None:
    study_id = site["ids"][0]
    archive(site, [study_id])
    h.verify_volume(site["catalog"], site["volume"])
    site["handle"].session.delete(f"{site['handle'].url}/studies/{study_id}", timeout=30).raise_for_status()

    result = reclaimer(site).reclaim()

    assert result["deleted"] == 0
    assert result["studies"] == []
    [deletion] = site["catalog"].deletions_of_study(h.SERVER, study_id)
    assert deletion["instances_deleted"] == 0


def test_max_studies_limits_deletions(site: dict[str, Any]) -> None:
    archive(site, site["ids"])
    h.verify_volume(site["catalog"], site["volume"])

    result = reclaimer(site).reclaim(max_studies=2)

    assert result["deleted"] == 2
    assert sum(h.study_exists(site["handle"], study_id) for study_id in site["ids"]) == 1


def test_invalid_required_copies_rejected(site: dict[str, Any]) -> None:
    with pytest.raises(ReclaimError, match="invalid required_copies 0"):
        reclaimer(site, required_copies=0)
