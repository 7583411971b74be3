# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention policy: which studies of one Orthanc server are old enough to archive, oldest first.

The rule that matters here: a missing or malformed value never makes a study selected. A study
whose StudyDate is not a real calendar date is not old by StudyDate; a study whose modalities
cannot be read is not selected when modalities are excluded; a study whose patient protection
cannot be read is not selected.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Callable, Iterator

from ansible.module_utils.orthanc_client import LABEL_PATTERN, OrthancClient, OrthancError

POLICY_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "age_basis": {"type": "str", "default": "study_date", "choices": ["study_date", "received"]},
    "older_than_days": {"type": "int"},
    "before_date": {"type": "str"},
    "exclude_protected": {"type": "bool", "default": True},
    "exclude_labels": {"type": "list", "elements": "str", "default": []},
    "exclude_patient_ids": {"type": "list", "elements": "str", "default": []},
    "exclude_modalities": {"type": "list", "elements": "str", "default": []},
    "only_stable": {"type": "bool", "default": True},
    "max_studies": {"type": "int", "default": 100},
    "max_bytes": {"type": "int", "default": 0},
    "page_size": {"type": "int", "default": 500},
    "oldest_year": {"type": "int", "default": 1990},
}


class PolicyError(ValueError):
    """A policy value is invalid; the message names the option, the value and the fix."""


def parse_dicom_date(value: Any) -> datetime.date | None:
    """Parse a DICOM DA value (YYYYMMDD); return None for anything else, including empty values."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{8}", value.strip()):
        return None
    try:
        return datetime.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def parse_orthanc_timestamp(value: Any) -> datetime.datetime | None:
    """Parse Orthanc's metadata timestamps such as LastUpdate (UTC, YYYYMMDDTHHMMSS)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.strptime(value.strip(), "%Y%m%dT%H%M%S")
    except ValueError:
        return None


class Policy:
    """A validated retention policy."""

    def __init__(self, params: dict[str, Any], today: datetime.date | None = None):
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        self.today = today
        self.age_basis = params.get("age_basis") or "study_date"
        older_than_days = params.get("older_than_days")
        before_date = params.get("before_date")

        if (older_than_days is None) == (before_date in (None, "")):
            raise PolicyError("set exactly one of older_than_days and before_date to say which studies are old")
        if older_than_days is not None:
            if older_than_days < 0:
                raise PolicyError(f"invalid older_than_days {older_than_days}: expected 0 or more days")
            self.cutoff = today - datetime.timedelta(days=older_than_days)
        else:
            self.cutoff = self._parse_before_date(str(before_date))
        # A study is old when its date is strictly before the cutoff.

        self.exclude_protected = params.get("exclude_protected", True)
        self.only_stable = params.get("only_stable", True)
        self.exclude_patient_ids = {value.strip() for value in params.get("exclude_patient_ids") or []}
        self.exclude_modalities = {value.strip().upper() for value in params.get("exclude_modalities") or []}
        self.exclude_labels = set(params.get("exclude_labels") or [])
        for label in self.exclude_labels:
            if not LABEL_PATTERN.match(label):
                raise PolicyError(
                    f"invalid label {label!r} in exclude_labels: Orthanc labels use only letters, digits, '_' and '-'"
                )

        self.max_studies = params.get("max_studies", 100)
        self.max_bytes = params.get("max_bytes", 0)
        self.page_size = params.get("page_size", 500)
        self.oldest_year = params.get("oldest_year", 1990)
        for name in ("max_studies", "max_bytes"):
            if getattr(self, name) < 0:
                raise PolicyError(f"invalid {name} {getattr(self, name)}: expected 0 (no limit) or more")
        if not 1 <= self.page_size <= 10000:
            raise PolicyError(f"invalid page_size {self.page_size}: expected 1 to 10000")
        if not 1800 <= self.oldest_year <= today.year:
            raise PolicyError(f"invalid oldest_year {self.oldest_year}: expected a year between 1800 and {today.year}")

    @staticmethod
    def _parse_before_date(text: str) -> datetime.date:
        for pattern in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return datetime.datetime.strptime(text.strip(), pattern).date()
            except ValueError:
                continue
        raise PolicyError(f"invalid before_date {text!r}: expected a date as YYYY-MM-DD, for example 2015-01-01")

    def as_dict(self) -> dict[str, Any]:
        return {
            "age_basis": self.age_basis,
            "cutoff": self.cutoff.isoformat(),
            "exclude_protected": self.exclude_protected,
            "only_stable": self.only_stable,
            "exclude_patient_ids_count": len(self.exclude_patient_ids),
            "exclude_modalities": sorted(self.exclude_modalities),
            "exclude_labels": sorted(self.exclude_labels),
            "max_studies": self.max_studies,
            "max_bytes": self.max_bytes,
        }


# A date window that matches more studies than this is split (a year into months, a month into
# days) before its studies are read with their tags. A batch then reads about as many studies as it
# needs, however many the server contains.
SPLIT_WINDOW_ABOVE = 200


def _date_windows(policy: Policy) -> Iterator[tuple[datetime.date | None, datetime.date]]:
    """Yield (first day, last day) windows that cover every date before the cutoff, oldest first.

    The first window has no first day: it covers everything before oldest_year.
    """
    last_day = policy.cutoff - datetime.timedelta(days=1)
    first_window_end = datetime.date(policy.oldest_year - 1, 12, 31)
    if last_day <= first_window_end:
        yield None, last_day
        return
    yield None, first_window_end
    for year in range(policy.oldest_year, last_day.year + 1):
        yield datetime.date(year, 1, 1), min(datetime.date(year, 12, 31), last_day)


def _split_window(first: datetime.date, last: datetime.date) -> list[tuple[datetime.date, datetime.date]]:
    """Split a window of several months into months, and a window inside one month into days."""
    parts = []
    if (first.year, first.month) == (last.year, last.month):
        day = first
        while day <= last:
            parts.append((day, day))
            day += datetime.timedelta(days=1)
        return parts
    start = first
    while start <= last:
        next_month = (start.replace(day=1) + datetime.timedelta(days=32)).replace(day=1)
        parts.append((start, min(next_month - datetime.timedelta(days=1), last)))
        start = next_month
    return parts


def _window_studies(client: OrthancClient, policy: Policy, first: datetime.date | None,
                    last: datetime.date) -> Iterator[dict[str, Any]]:
    """Yield the expanded studies of one window, oldest first, splitting the window while it is crowded."""
    query = {"StudyDate": ("" if first is None else first.strftime("%Y%m%d")) + "-" + last.strftime("%Y%m%d")}
    if first is not None:
        # Counting returns an ID per study, which costs Orthanc far less than reading a study with its tags.
        matches = len(client.find_study_ids(query, limit=SPLIT_WINDOW_ABOVE + 1))
        if matches == 0:
            return
        if matches > SPLIT_WINDOW_ABOVE and first < last:
            for part_first, part_last in _split_window(first, last):
                yield from _window_studies(client, policy, part_first, part_last)
            return
    dated = []
    for study in client.find_studies(query, page_size=policy.page_size):
        study_date = parse_dicom_date((study.get("MainDicomTags") or {}).get("StudyDate"))
        # Orthanc's range match is textual, so only a real date before the cutoff counts. A date after
        # today is a wrong value, not an old study, even when before_date lies in the future.
        if study_date is not None and study_date < policy.cutoff and study_date <= policy.today:
            dated.append((study_date, study.get("ID", ""), study))
    dated.sort(key=lambda item: (item[0], item[1]))
    for _, _, study in dated:
        yield study


def candidates_by_study_date(client: OrthancClient, policy: Policy) -> Iterator[dict[str, Any]]:
    """Yield expanded studies older than the cutoff by StudyDate, oldest first.

    Orthanc before 1.12.5 cannot sort, so the range is read window by window (everything before
    oldest_year, then one year at a time, split into months and days where crowded) and each window
    is sorted here. Reading stops as soon as the caller stops iterating, so the cost follows the
    batch, not the size of the server.
    """
    for first, last in _date_windows(policy):
        yield from _window_studies(client, policy, first, last)


def candidates_by_reception(client: OrthancClient, policy: Policy) -> Iterator[dict[str, Any]]:
    """Yield expanded studies whose last instance arrived before the cutoff, oldest first.

    NOTE: Orthanc 1.10.1 cannot filter or sort by metadata, so this reads every study once
    (paged); the cost grows with the size of the server.
    """
    cutoff = datetime.datetime.combine(policy.cutoff, datetime.time())
    found = []
    for study in client.list_studies(page_size=policy.page_size):
        received = parse_orthanc_timestamp(study.get("LastUpdate"))
        if received is not None and received < cutoff:
            found.append((received, study.get("ID", ""), study))
    found.sort(key=lambda item: (item[0], item[1]))
    for _, _, study in found:
        yield study


def study_modalities(series: list[dict[str, Any]]) -> list[str] | None:
    """Return the sorted modalities of a study's series, or None when any series lacks one."""
    modalities = set()
    for item in series:
        modality = ((item.get("MainDicomTags") or {}).get("Modality") or "").strip().upper()
        if not modality:
            return None
        modalities.add(modality)
    return sorted(modalities)


def public_study(study: dict[str, Any], include_identifiers: bool) -> dict[str, Any]:
    """Return what task output may show of a selected study; identifying tags only when enabled."""
    shown = {key: value for key, value in study.items() if key not in ("patient_id", "patient_name", "patient_birth_date", "accession_number")}
    if include_identifiers:
        for key in ("patient_id", "patient_name", "patient_birth_date", "accession_number"):
            shown[key] = study.get(key)
    return shown


class Selector:
    """Apply a policy to one server and return the selected studies with the reasons for the others."""

    def __init__(self, client: OrthancClient, policy: Policy,
                 already_archived: Callable[[dict[str, Any]], bool] | None = None,
                 recently_restored: Callable[[str], bool] | None = None):
        self.client = client
        self.policy = policy
        self.already_archived = already_archived or (lambda study: False)
        # Takes an Orthanc study ID; True keeps a study that was just restored out of the batch.
        self.recently_restored = recently_restored or (lambda study_id: False)
        self.skipped: dict[str, int] = {}
        self.warnings: list[str] = []
        self._protected_cache: dict[str, bool] = {}

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _is_protected(self, patient_id: str) -> bool:
        if patient_id not in self._protected_cache:
            self._protected_cache[patient_id] = self.client.patient_is_protected(patient_id)
        return self._protected_cache[patient_id]

    def select(self) -> list[dict[str, Any]]:
        features = self.client.features()
        policy = self.policy
        if policy.exclude_labels and not features.has_labels:
            self.warnings.append(
                f"exclude_labels is set but Orthanc {features.version_text} has no labels (added in 1.12.0); "
                "no study can carry a label there, so none is excluded by label"
            )

        candidates = (candidates_by_study_date if policy.age_basis == "study_date" else candidates_by_reception)(
            self.client, policy
        )
        selected: list[dict[str, Any]] = []
        total_bytes = 0
        for study in candidates:
            entry = self._evaluate(study, features.has_labels)
            if entry is None:
                continue
            size = entry["uncompressed_bytes"]
            if policy.max_bytes and size > policy.max_bytes:
                self._skip("larger than max_bytes")
                continue
            if policy.max_bytes and total_bytes + size > policy.max_bytes:
                break
            selected.append(entry)
            total_bytes += size
            # Stop before the next candidate is read: reading it may cost a whole date window.
            if policy.max_studies and len(selected) >= policy.max_studies:
                break
        return selected

    def _evaluate(self, study: dict[str, Any], has_labels: bool) -> dict[str, Any] | None:
        """Return the selection entry for one candidate, or None with the reason counted."""
        policy = self.policy
        study_id = study.get("ID")
        tags = study.get("MainDicomTags") or {}
        patient_tags = study.get("PatientMainDicomTags") or {}

        if policy.only_stable and study.get("IsStable") is not True:
            self._skip("not stable yet")
            return None
        if self.recently_restored(study_id):
            self._skip("restored recently")
            return None
        patient_id = patient_tags.get("PatientID")
        if patient_id is not None and patient_id.strip() in policy.exclude_patient_ids:
            self._skip("excluded PatientID")
            return None
        if policy.exclude_protected:
            parent = study.get("ParentPatient")
            try:
                protected = self._is_protected(parent)
            except OrthancError:
                self._skip("patient protection unreadable")
                return None
            if protected:
                self._skip("protected patient")
                return None
        if policy.exclude_labels and has_labels:
            labels = study.get("Labels")
            if labels is None:
                labels = self.client.study_labels(study_id)
            if set(labels) & policy.exclude_labels:
                self._skip("excluded label")
                return None

        modalities = study_modalities(self.client.study_series(study_id))
        if policy.exclude_modalities:
            if modalities is None:
                self._skip("modality missing while modalities are excluded")
                return None
            if set(modalities) & policy.exclude_modalities:
                self._skip("excluded modality")
                return None

        statistics = self.client.study_statistics(study_id)
        entry = {
            "orthanc_id": study_id,
            "study_instance_uid": tags.get("StudyInstanceUID"),
            "study_date": tags.get("StudyDate"),
            "last_update": study.get("LastUpdate"),
            "modalities": modalities or [],
            "instance_count": int(statistics.get("CountInstances", 0)),
            "disk_bytes": int(statistics.get("DiskSize", 0)),
            "uncompressed_bytes": int(statistics.get("UncompressedSize", statistics.get("DiskSize", 0))),
            "patient_orthanc_id": study.get("ParentPatient"),
            "patient_id": patient_id,
            "patient_name": patient_tags.get("PatientName"),
            "patient_birth_date": patient_tags.get("PatientBirthDate"),
            "accession_number": tags.get("AccessionNumber"),
        }
        if self.already_archived(entry):
            self._skip("already archived and unchanged")
            return None
        return entry


def oldest_studies(client: OrthancClient, policy_params: dict[str, Any], count: int) -> dict[str, list[dict[str, Any]]]:
    """Return the count oldest studies by StudyDate and by reception (LastUpdate), with no other filter."""
    today = datetime.datetime.now(datetime.timezone.utc).date()
    params = dict(policy_params, older_than_days=None, before_date=(today + datetime.timedelta(days=1)).isoformat())
    policy = Policy(params, today=today)

    def pick(candidates: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
        picked = []
        for study in candidates:
            if len(picked) >= count:
                break
            picked.append({
                "orthanc_id": study.get("ID"),
                "study_instance_uid": (study.get("MainDicomTags") or {}).get("StudyInstanceUID"),
                "study_date": (study.get("MainDicomTags") or {}).get("StudyDate"),
                "last_update": study.get("LastUpdate"),
            })
        return picked

    return {
        "by_study_date": pick(candidates_by_study_date(client, policy)),
        "by_reception": pick(candidates_by_reception(client, policy)),
    }
