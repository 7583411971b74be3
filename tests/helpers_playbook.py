"""Run the repository's playbooks against test Orthanc servers through a temporary inventory."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
PLAYBOOK_TIMEOUT = 900
RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass
class PlaybookRun:
    """Outcome of one ansible-playbook run: exit status, output, PLAY RECAP counters and the summary."""

    returncode: int
    output: str
    recap: dict[str, dict[str, int]]
    summary: dict[str, Any] | None

    def server(self, name: str) -> dict[str, Any]:
        """Return the summary entry of one server."""
        assert self.summary is not None, f"the run wrote no summary:\n{self.output[-4000:]}"
        for entry in self.summary["servers"]:
            if entry["server"] == name:
                return entry
        raise AssertionError(f"server {name} is not in the summary: {self.summary}")

    def changed(self) -> int:
        """Return the total of changed= over every host of the recap."""
        return sum(counters["changed"] for counters in self.recap.values())


@dataclass
class ArchiveSite:
    """A temporary inventory whose group orthanc_servers lists test Orthanc servers.

    Catalog, volume folder, locks, logs and reports all live under directory.
    """

    directory: Path
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def volume(self) -> Path:
        return self.directory / "volume"

    @property
    def catalog(self) -> Path:
        return self.directory / "catalog.sqlite"

    @property
    def reports(self) -> Path:
        return self.directory / "reports"

    def add_server(self, name: str, url: str, **variables: Any) -> None:
        self.servers[name] = {"orthanc_archive_url": url, **variables}

    def write_inventory(self) -> Path:
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        group_vars = {
            **local,
            "orthanc_archive_volume_path": str(self.volume),
            "orthanc_archive_catalog_path": str(self.catalog),
            "orthanc_archive_lock_dir": str(self.directory / "locks"),
            "orthanc_archive_log_path": str(self.directory / "logs" / "{{ inventory_hostname }}.log"),
            "archive_summary_report_dir": str(self.reports),
            "orthanc_archive_older_than_days": 3650,
            "orthanc_archive_max_studies": 0,
            "orthanc_archive_retries": 0,
            "orthanc_archive_timeout": 20,
            **self.settings,
        }
        inventory = {
            "all": {
                "hosts": {"localhost": local},
                "children": {"orthanc_servers": {"hosts": self.servers, "vars": group_vars}},
            }
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "inventory.yml"
        # JSON is valid YAML, and it keeps the test free of a YAML writer.
        path.write_text(json.dumps(inventory, indent=2), encoding="utf-8")
        return path

    def run(self, playbook: str = "archive.yml", *arguments: str) -> PlaybookRun:
        """Run ansible-playbook from the repository root, so that its ansible.cfg applies."""
        inventory = self.write_inventory()
        latest = self.reports / "latest.json"
        latest.unlink(missing_ok=True)
        environment = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }
        completed = subprocess.run(
            ["ansible-playbook", playbook, "-i", str(inventory), *arguments],
            cwd=REPO, env=environment, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False,
        )
        output = completed.stdout + completed.stderr
        recap = {
            match["host"]: {key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")}
            for match in RECAP_LINE.finditer(completed.stdout)
        }
        summary = json.loads(latest.read_text(encoding="utf-8")) if latest.exists() else None
        return PlaybookRun(completed.returncode, output, recap, summary)

    def catalog_states(self, server: str) -> dict[str, int]:
        """Count the catalog's copies of one server per state; empty when there is no catalog."""
        if not self.catalog.exists():
            return {}
        with sqlite3.connect(self.catalog) as connection:
            rows = connection.execute(
                "SELECT state, COUNT(*) FROM copies WHERE server = ? GROUP BY state", (server,)
            ).fetchall()
        return dict(rows)

    def containers(self, server: str) -> list[Path]:
        """List the tar containers of one server on the volume folder."""
        return sorted((self.volume / "orthanc-archive" / server).glob("*/*.tar"))


def wait_until_stable(url: str, timeout: float = 30.0) -> None:
    """Poll Orthanc until every study is stable, because the archive leaves unstable studies out."""
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        studies = requests.get(f"{url}/studies", params={"expand": ""}, timeout=30).json()
        pending = [study["ID"] for study in studies if not study.get("IsStable")]
        if not pending:
            return
        time.sleep(0.3)
    raise AssertionError(f"{len(pending)} studies on {url} did not become stable within {timeout} s")


def study_ids(url: str) -> set[str]:
    """Return the Orthanc IDs of every study on the server."""
    return set(requests.get(f"{url}/studies", timeout=30).json())


def patient_names(url: str) -> set[str]:
    """Return every non-empty PatientName stored on the server."""
    patients = requests.get(f"{url}/patients", params={"expand": ""}, timeout=30).json()
    names = {str(patient.get("MainDicomTags", {}).get("PatientName", "")).strip() for patient in patients}
    return {name for name in names if name}
