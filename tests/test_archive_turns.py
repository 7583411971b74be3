"""Unit tests of the turns that archive.yml gives servers sharing a tape host (playbooks/filter_plugins/archive_turns.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("archive_turns", REPO / "playbooks/filter_plugins/archive_turns.py")
turns = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(turns)

TAPE = {"orthanc_archive_volume_kind": "ltfs"}


def all_turns(hostvars: dict[str, dict[str, str]]) -> dict[str, int]:
    hosts = list(hostvars)
    return {host: turns.tape_turn(host, hostvars, hosts) for host in hosts}


def test_tape_servers_of_one_host_take_turns() -> None:
    hostvars = {
        "north-1": {**TAPE, "orthanc_archive_tape_host": "tape-north"},
        "south-1": {**TAPE, "orthanc_archive_tape_host": "tape-south"},
        "north-2": {**TAPE, "orthanc_archive_tape_host": "tape-north"},
        "north-3": {**TAPE, "orthanc_archive_tape_host": "tape-north"},
    }
    assert all_turns(hostvars) == {"north-1": 0, "south-1": 0, "north-2": 1, "north-3": 2}


def test_folder_servers_share_first_turn() -> None:
    hostvars = {
        "disk-1": {"orthanc_archive_tape_host": "tape-north"},
        "tape-1": {**TAPE, "orthanc_archive_tape_host": "tape-north"},
        "disk-2": {"orthanc_archive_volume_kind": "folder", "orthanc_archive_tape_host": "tape-north"},
        "tape-2": {**TAPE, "orthanc_archive_tape_host": "tape-north"},
    }
    assert all_turns(hostvars) == {"disk-1": 0, "tape-1": 0, "disk-2": 0, "tape-2": 1}


def test_unset_tape_host_is_localhost() -> None:
    hostvars = {"a": dict(TAPE), "b": {**TAPE, "orthanc_archive_tape_host": "localhost"}, "c": dict(TAPE)}
    assert all_turns(hostvars) == {"a": 0, "b": 1, "c": 2}


def test_host_outside_the_play_gets_first_turn() -> None:
    hostvars = {"a": dict(TAPE), "b": dict(TAPE)}
    assert turns.tape_turn("b", hostvars, ["a"]) == 0
    assert turns.tape_turn("a", hostvars, ["b", "a"]) == 1


def test_defaults_match_the_role() -> None:
    import yaml

    defaults = yaml.safe_load((REPO / "roles/orthanc_archive/defaults/main.yml").read_text(encoding="utf-8"))
    assert defaults["orthanc_archive_volume_kind"] == turns.DEFAULT_VOLUME_KIND
    assert defaults["orthanc_archive_tape_host"] == turns.DEFAULT_TAPE_HOST
