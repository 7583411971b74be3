"""Retention policy against a real Orthanc: which studies are old, in which order, and which are left out."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import helpers_archive as h
from ansible.module_utils import retention_policy
from ansible.module_utils.retention_policy import Policy, PolicyError, Selector, oldest_studies
from tools.demo_data import Patient

TODAY = datetime.datetime.now(datetime.timezone.utc).date()

# Dates that are not a usable calendar date, or lie in the future: never old by StudyDate.
BAD_DATES = {
    "missing": None,
    "empty": "",
    "letters": "abcd",
    "month_13": "2019-13-45",
    "february_30": "19990230",
    "future": "20991231",
}


def select(client: Any, **params: Any) -> tuple[list[str], Selector]:
    selector = Selector(client, Policy(params))
    return [entry["orthanc_id"] for entry in selector.select()], selector


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One Orthanc holding a study per selection case, each case with its own patient."""
    h.require_orthanc_binary()
    server = h.start_module_orthanc(tmp_path_factory)
    ids: dict[str, str] = {}
    overrides_by_case: dict[str, dict[str, Any]] = {}
    dates = {f"bad_{name}": value for name, value in BAD_DATES.items()}
    dates.update({
        "boundary_day_before": "20100614",
        "boundary_cutoff_day": "20100615",
        "relative_day_before": (TODAY - datetime.timedelta(days=31)).strftime("%Y%m%d"),
        "relative_cutoff_day": (TODAY - datetime.timedelta(days=30)).strftime("%Y%m%d"),
        "order_1995": "19950707",
        "order_2003_march": "20030301",
        "order_2003_january": "20030102",
        "order_2008": "20080808",
        "excluded_patient": "20010101",
        "modality_mg": "20020202",
        "modality_missing": "20040404",
        "protected": "20050505",
    })
    overrides_by_case["excluded_patient"] = {"PatientID": "EXCLUDE-ME"}
    overrides_by_case["modality_missing"] = {"Modality": None}
    for index, (case, study_date) in enumerate(dates.items()):
        shape = "mg" if case == "modality_mg" else "tiny"
        ids[case] = h.put_study(server, shape, study_date=study_date, seed=1000 + index, n_instances=1,
                                overrides=overrides_by_case.get(case), rows=64, columns=64)
    h.wait_stable(server, list(ids.values()))
    h.protect_patient_of(server, ids["protected"])
    yield {"handle": server, "ids": ids, "client": h.client_for(server)}
    h.stop_module_orthanc(server)


@pytest.mark.parametrize("case", sorted(BAD_DATES))
def test_bad_study_date_never_selected(mixed_server: dict[str, Any], case: str) -> None:
    ids = mixed_server["ids"]
    selected, _ = select(mixed_server["client"], before_date="2100-01-01", max_studies=0)

    assert ids[f"bad_{case}"] not in selected
    assert ids["order_1995"] in selected


def test_future_date_not_selected_by_days(mixed_server: dict[str, Any]) -> None:
    selected, _ = select(mixed_server["client"], older_than_days=0, max_studies=0)

    assert mixed_server["ids"]["bad_future"] not in selected
    assert mixed_server["ids"]["order_2008"] in selected


def test_before_date_cutoff_day_is_not_old(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    selected, _ = select(mixed_server["client"], before_date="2010-06-15", max_studies=0)

    assert ids["boundary_day_before"] in selected
    assert ids["boundary_cutoff_day"] not in selected


def test_older_than_days_cutoff_day_is_not_old(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    selected, selector = select(mixed_server["client"], older_than_days=30, max_studies=0)

    assert selector.policy.cutoff == TODAY - datetime.timedelta(days=30)
    assert ids["relative_day_before"] in selected
    assert ids["relative_cutoff_day"] not in selected


def test_before_date_matches_older_than_days(mixed_server: dict[str, Any]) -> None:
    cutoff = datetime.date(2010, 6, 15)
    by_date, _ = select(mixed_server["client"], before_date=cutoff.isoformat(), max_studies=0)
    by_days, _ = select(mixed_server["client"], older_than_days=(TODAY - cutoff).days, max_studies=0)

    assert by_date == by_days
    assert len(by_date) >= 5


def test_oldest_first_across_years(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    selector = Selector(mixed_server["client"], Policy({"before_date": "2010-06-15", "max_studies": 0}))
    selected = selector.select()
    order = [entry["orthanc_id"] for entry in selected]
    dates = [entry["study_date"] for entry in selected]

    assert dates == sorted(dates)
    expected = [ids["order_1995"], ids["order_2003_january"], ids["order_2003_march"], ids["order_2008"]]
    assert [study_id for study_id in order if study_id in expected] == expected


def test_max_studies_takes_oldest(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    selected, _ = select(mixed_server["client"], before_date="2010-06-15", max_studies=2)

    assert selected == [ids["order_1995"], ids["excluded_patient"]]


def test_excluded_patient_id_not_selected(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    excluded, selector = select(mixed_server["client"], before_date="2010-06-15", max_studies=0,
                                exclude_patient_ids=[" EXCLUDE-ME "])
    included, _ = select(mixed_server["client"], before_date="2010-06-15", max_studies=0)

    assert ids["excluded_patient"] not in excluded
    assert selector.skipped.get("excluded PatientID") == 1
    assert ids["excluded_patient"] in included


def test_excluded_modality_not_selected(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    selected, selector = select(mixed_server["client"], before_date="2010-06-15", max_studies=0,
                                exclude_modalities=["mg"])

    assert ids["modality_mg"] not in selected
    assert selector.skipped.get("excluded modality") == 1
    assert ids["order_1995"] in selected


def test_series_without_modality_not_selected_when_excluding(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    excluding, selector = select(mixed_server["client"], before_date="2010-06-15", max_studies=0,
                                 exclude_modalities=["MG"])
    not_excluding, _ = select(mixed_server["client"], before_date="2010-06-15", max_studies=0)

    assert ids["modality_missing"] not in excluding
    assert selector.skipped.get("modality missing while modalities are excluded") == 1
    assert ids["modality_missing"] in not_excluding


def test_protected_patient_not_selected(mixed_server: dict[str, Any]) -> None:
    ids = mixed_server["ids"]
    selected, selector = select(mixed_server["client"], before_date="2010-06-15", max_studies=0)
    unprotected, _ = select(mixed_server["client"], before_date="2010-06-15", max_studies=0, exclude_protected=False)

    assert ids["protected"] not in selected
    assert selector.skipped.get("protected patient") == 1
    assert ids["protected"] in unprotected


def test_labels_on_1_10_warn_and_exclude_nothing(mixed_server: dict[str, Any]) -> None:
    client = mixed_server["client"]
    assert client.features().has_labels is False
    with_labels, selector = select(client, before_date="2010-06-15", max_studies=0, exclude_labels=["keep", "legal-hold"])
    without_labels, _ = select(client, before_date="2010-06-15", max_studies=0)

    assert with_labels == without_labels
    assert len(selector.warnings) == 1
    assert "exclude_labels" in selector.warnings[0]
    assert "excluded label" not in selector.skipped


def test_selection_entry_fields(mixed_server: dict[str, Any]) -> None:
    selector = Selector(mixed_server["client"], Policy({"before_date": "1996-01-01"}))
    [entry] = selector.select()

    assert entry["orthanc_id"] == mixed_server["ids"]["order_1995"]
    assert entry["study_date"] == "19950707"
    assert entry["modalities"] == ["OT"]
    assert entry["instance_count"] == 1
    assert entry["uncompressed_bytes"] > 4096


# -- servers whose whole content a test controls -----------------------------------------------


@pytest.fixture(scope="module")
def seven_studies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Seven one-instance studies dated 2001-01-01 to 2001-01-07. The third is about 64 times larger."""
    h.require_orthanc_binary()
    server = h.start_module_orthanc(tmp_path_factory)
    ids = []
    for day in range(1, 8):
        size = 512 if day == 3 else 64
        ids.append(h.put_study(server, "tiny", study_date=f"200101{day:02d}", seed=2000 + day, rows=size, columns=size))
    h.wait_stable(server, ids)
    client = h.client_for(server)
    sizes = [int(client.study_statistics(study_id)["UncompressedSize"]) for study_id in ids]
    yield {"handle": server, "ids": ids, "sizes": sizes, "client": client}
    h.stop_module_orthanc(server)


def test_max_studies_limit(seven_studies: dict[str, Any]) -> None:
    selected, _ = select(seven_studies["client"], before_date="2002-01-01", max_studies=3)

    assert selected == seven_studies["ids"][:3]


def test_max_bytes_skips_large_study(seven_studies: dict[str, Any]) -> None:
    ids, sizes = seven_studies["ids"], seven_studies["sizes"]
    assert sizes[2] > sizes[0] + sizes[1] + sizes[3]
    limit = sizes[0] + sizes[1] + sizes[3]
    selected, selector = select(seven_studies["client"], before_date="2002-01-01", max_studies=0, max_bytes=limit)

    assert selected == [ids[0], ids[1], ids[3]]
    assert selector.skipped == {"larger than max_bytes": 1}


def test_max_bytes_stops_at_limit(seven_studies: dict[str, Any]) -> None:
    ids, sizes = seven_studies["ids"], seven_studies["sizes"]
    selected, _ = select(seven_studies["client"], before_date="2002-01-01", max_studies=0,
                         max_bytes=sizes[0] + sizes[1] - 1)

    assert selected == [ids[0]]


@pytest.mark.parametrize("age_basis", ["study_date", "received"])
def test_paging_returns_every_study_once(seven_studies: dict[str, Any], age_basis: str) -> None:
    client = seven_studies["client"]
    page_lengths: list[int] = []
    attribute = "post_json" if age_basis == "study_date" else "get_json"
    original = getattr(client, attribute)

    def recording(path: str, *args: Any, **kwargs: Any) -> Any:
        answer = original(path, *args, **kwargs)
        # Only pages of expanded studies count: the ID-only finds that size a date window are not pages.
        if path in ("/tools/find", "/studies") and answer and isinstance(answer[0], dict):
            page_lengths.append(len(answer))
        return answer

    setattr(client, attribute, recording)
    try:
        tomorrow = (TODAY + datetime.timedelta(days=1)).isoformat()
        selected, _ = select(client, before_date=tomorrow, age_basis=age_basis, max_studies=0, page_size=2)
    finally:
        delattr(client, attribute)

    assert sorted(selected) == sorted(seven_studies["ids"])
    assert len(selected) == len(set(selected))
    assert max(page_lengths) == 2
    assert sum(page_lengths) == 7


def test_crowded_window_split_reads_batch_only(seven_studies: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # With at most two studies per window, 2001 splits into months and January into days, so a batch
    # of three reads the tags of three studies, not of the whole year.
    monkeypatch.setattr(retention_policy, "SPLIT_WINDOW_ABOVE", 2)
    client = seven_studies["client"]
    expanded: list[str] = []
    original = client.post_json

    def recording(path: str, body: Any) -> Any:
        answer = original(path, body)
        if body.get("Expand"):
            expanded.extend(study["ID"] for study in answer)
        return answer

    monkeypatch.setattr(client, "post_json", recording)
    selected, _ = select(client, before_date="2002-01-01", max_studies=3)
    assert selected == seven_studies["ids"][:3]
    assert expanded == seven_studies["ids"][:3]

    expanded.clear()
    selected, _ = select(client, before_date="2002-01-01", max_studies=0)
    assert selected == seven_studies["ids"]
    assert sorted(expanded) == sorted(seven_studies["ids"])


def test_oldest_studies_returns_both_lists(seven_studies: dict[str, Any]) -> None:
    oldest = oldest_studies(seven_studies["client"], {"page_size": 2}, 3)

    assert [item["orthanc_id"] for item in oldest["by_study_date"]] == seven_studies["ids"][:3]
    assert [item["study_date"] for item in oldest["by_study_date"]] == ["20010101", "20010102", "20010103"]
    assert len(oldest["by_reception"]) == 3
    received = [item["last_update"] for item in oldest["by_reception"]]
    assert received == sorted(received)
    assert set(item["orthanc_id"] for item in oldest["by_reception"]) <= set(seven_studies["ids"])


def test_received_basis_orders_by_arrival(orthanc: Any) -> None:
    newer_date = h.put_study(orthanc, study_date="20200101", seed=3001)
    # LastUpdate has a resolution of one second, so the second study must arrive in a later second.
    time.sleep(1.1)
    undated = h.put_study(orthanc, study_date=None, seed=3002)
    h.wait_stable(orthanc, [newer_date, undated])
    client = h.client_for(orthanc)
    tomorrow = (TODAY + datetime.timedelta(days=1)).isoformat()

    received, _ = select(client, before_date=tomorrow, age_basis="received")
    nothing_yet, _ = select(client, older_than_days=1, age_basis="received")
    by_date, _ = select(client, before_date=tomorrow)
    oldest = oldest_studies(client, {}, 5)

    assert received == [newer_date, undated]
    assert nothing_yet == []
    assert by_date == [newer_date]
    assert [item["orthanc_id"] for item in oldest["by_reception"]] == [newer_date, undated]
    assert [item["orthanc_id"] for item in oldest["by_study_date"]] == [newer_date]


def test_unstable_study_skipped(orthanc_factory: Callable[..., Any]) -> None:
    server = orthanc_factory(stable_age=3600)
    study_id = h.put_study(server, study_date="20000101", seed=3101)
    client = h.client_for(server)

    stable_only, selector = select(client, before_date="2010-01-01")
    any_state, _ = select(client, before_date="2010-01-01", only_stable=False)

    assert stable_only == []
    assert selector.skipped == {"not stable yet": 1}
    assert any_state == [study_id]


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "named"), [
    ({"older_than_days": -1}, "-1"),
    ({"before_date": "2015-02-30"}, "2015-02-30"),
    ({"before_date": "yesterday"}, "yesterday"),
    ({"before_date": "01/02/2015"}, "01/02/2015"),
    ({"older_than_days": 10, "before_date": "2015-01-01"}, "exactly one"),
    ({}, "exactly one"),
    ({"before_date": ""}, "exactly one"),
    ({"older_than_days": 10, "exclude_labels": ["bad label"]}, "'bad label'"),
    ({"older_than_days": 10, "exclude_labels": ["ok", "sl/ash"]}, "'sl/ash'"),
    ({"older_than_days": 10, "max_studies": -5}, "-5"),
    ({"older_than_days": 10, "max_bytes": -1}, "max_bytes -1"),
    ({"older_than_days": 10, "page_size": 0}, "page_size 0"),
    ({"older_than_days": 10, "oldest_year": 1700}, "1700"),
])
def test_invalid_policy_rejected(params: dict[str, Any], named: str) -> None:
    with pytest.raises(PolicyError) as raised:
        Policy(params)

    assert named in str(raised.value)


def test_valid_policy_cutoff() -> None:
    policy = Policy({"older_than_days": 10}, today=datetime.date(2020, 3, 5))
    by_date = Policy({"before_date": "20200224"}, today=datetime.date(2020, 3, 5))

    assert policy.cutoff == datetime.date(2020, 2, 24)
    assert by_date.cutoff == policy.cutoff
    assert policy.as_dict()["cutoff"] == "2020-02-24"
    assert "exclude_patient_ids" not in Policy({"older_than_days": 1, "exclude_patient_ids": ["X"]}).as_dict()


def test_patient_fixture_is_distinct() -> None:
    # The module fixture relies on every seed giving its own patient, so protection stays per case.
    assert Patient.fake(1000).patient_id != Patient.fake(1001).patient_id
