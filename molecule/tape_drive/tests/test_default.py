"""Check what the tape_drive role installed and discovered on the simulated library."""

import json
import os
from pathlib import Path

import pytest

FACTS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "tape_drive_facts.json"


@pytest.mark.parametrize("name", ["mt-st", "mtx", "lsscsi", "sg3-utils"])
def test_tape_tool_installed(host, name):
    assert host.package(name).is_installed


def test_facts_list_both_drives():
    facts = json.loads(FACTS.read_text())
    nodes = [drive["devices"]["nst"] for drive in facts["drives"]]
    assert nodes == ["/dev/nst0", "/dev/nst1"]
    assert all(drive["answered"] for drive in facts["drives"])


def test_facts_select_configured_drive():
    facts = json.loads(FACTS.read_text())
    assert facts["selected"]["devices"] == {"st": "/dev/st1", "nst": "/dev/nst1", "sg": "/dev/sg1"}
    assert facts["selected"]["vendor"] == "IBM"


def test_facts_list_changer():
    facts = json.loads(FACTS.read_text())
    assert [changer["devices"]["sg"] for changer in facts["changers"]] == ["/dev/sg2"]
