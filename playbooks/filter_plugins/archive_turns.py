# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decide which servers of a run may use the tape drives of their tape host at the same time.

A tape run loads, mounts, writes, unmounts and remounts cartridges in its drives over many tasks,
so two servers must not do so in the same drives at once. archive.yml gives every server a turn:
the servers that write to tape (orthanc_archive_volume_kind ltfs) through the same tape host
(orthanc_archive_tape_host) get turns 0, 1, 2... in inventory order, and every other server gets
turn 0. archive.yml includes the role once per turn, with the servers of one turn in parallel, so
different tape hosts still work at the same time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The orthanc_archive role's defaults for the two variables (roles/orthanc_archive/defaults/main.yml).
DEFAULT_VOLUME_KIND = "folder"
DEFAULT_TAPE_HOST = "localhost"


def tape_turn(host: str, hostvars: Mapping[str, Mapping[str, Any]], hosts: Sequence[str]) -> int:
    """Return host's turn among hosts: its position among the tape servers of its tape host, else 0."""
    def tape_host_of(name: str) -> str | None:
        """Return the tape host that name writes to tape through, or None when it does not use tape."""
        variables = hostvars[name]
        if variables.get("orthanc_archive_volume_kind", DEFAULT_VOLUME_KIND) != "ltfs":
            return None
        return str(variables.get("orthanc_archive_tape_host", DEFAULT_TAPE_HOST))

    tape_host = tape_host_of(host)
    if tape_host is None:
        return 0
    peers = [name for name in hosts if tape_host_of(name) == tape_host]
    return peers.index(host) if host in peers else 0


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"archive_tape_turn": tape_turn}
