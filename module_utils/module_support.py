# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers every module of this project shares: argument specs, the progress log, error text."""

from __future__ import annotations

import os
import time
from typing import Any, Callable


def merge_specs(*specs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for name, option in spec.items():
            merged[name] = dict(option)
    return merged


def transfer_settings_problem(connections: int, buffer_bytes: int) -> str | None:
    """Return why a connections or buffer_bytes value is invalid, or None when both are valid."""
    if connections < 1:
        return f"invalid connections {connections}: expected 1 or more"
    if buffer_bytes < 1024 * 1024:
        return f"invalid buffer_bytes {buffer_bytes}: expected at least 1048576 (1 MiB)"
    return None


def progress_logger(path: str | None, host: str) -> Callable[[str], None]:
    """Return a function that appends timestamped lines to the module's log file (no-op without a path).

    Modules cannot stream output to ansible-playbook, so long runs write one line per study here;
    `tail -f` on the file follows a run. Lines name studies by Orthanc ID, never by patient.
    """
    if not path:
        return lambda line: None
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)

    def log(line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {host} {line}\n")

    return log
