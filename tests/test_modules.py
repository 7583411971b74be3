"""The four modules through real ansible-playbook runs against a real Orthanc with authentication."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import helpers_archive as h
from tools.demo_data import Patient

PASSWORD = "Tape-Secret-93f1c7"
WRONG_PASSWORD = "Not-The-Password-5521"
USER = "archiver"
SEEDS = (6001, 6002, 6003)
# A 2015 study that the full run (before_date 2010-01-01) never selects, so reclaim leaves it for the identifier case.
LATER_SEED = 6004
MODULES = ("orthanc_study_info", "orthanc_study_archive", "archive_volume_verify", "orthanc_study_reclaim")


def ansible_env() -> dict[str, str]:
    env = h.python_env()
    env.update({
        "ANSIBLE_CONFIG": str(h.REPO / "ansible.cfg"),
        "ANSIBLE_LIBRARY": str(h.REPO / "library"),
        "ANSIBLE_MODULE_UTILS": str(h.REPO / "module_utils"),
        "ANSIBLE_DOC_FRAGMENT_PLUGINS": str(h.REPO / "plugins" / "doc_fragments"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_LOCAL_TEMP": "/tmp/ansible-local-tests",
    })
    return env


def run_playbook(folder: Path, tasks: str, *extra: str) -> tuple[Any, dict[str, Any]]:
    """Write a playbook of tasks that register results, run it, and return the process and the results."""
    out = folder / "results.json"
    playbook = folder / "playbook.yml"
    playbook.write_text(f"""
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: {sys.executable}
  tasks:
{tasks}
    - name: Save the registered results
      ansible.builtin.copy:
        content: "{{{{ results_to_save | to_json }}}}"
        dest: {out}
        mode: "0600"
      check_mode: false
""")
    process = h.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook), *extra],
                    env=ansible_env(), cwd=str(folder))
    results = json.loads(out.read_text()) if out.exists() else {}
    return process, results


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An Orthanc that requires a password, with three old stable studies."""
    h.require_orthanc_binary()
    server = h.start_module_orthanc(tmp_path_factory, users={USER: PASSWORD})
    ids = [h.put_study(server, "tiny", study_date=f"200{index}0303", seed=seed)
           for index, seed in enumerate(SEEDS)]
    later = h.put_study(server, "tiny", study_date="20150303", seed=LATER_SEED)
    h.wait_stable(server, [*ids, later])
    yield {"handle": server, "ids": ids, "later": later}
    h.stop_module_orthanc(server)


def connection(url: str, password: str = PASSWORD) -> str:
    return f"""url: {url}
        username: {USER}
        password: {password}
        retries: 0"""


@pytest.fixture(scope="module")
def full_run(secured: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One -vvv run of select, archive (check mode, twice), verify (twice) and reclaim (check mode, twice)."""
    folder = tmp_path_factory.mktemp("playbook-full")
    common = f"""{connection(secured["handle"].url)}
        server_name: pacs1
        catalog_path: {folder}/catalog.sqlite"""
    volume = f"""volume_path: {folder}/volume
        lock_dir: {folder}/locks"""
    (folder / "volume").mkdir()
    tasks = f"""
    - name: Select old studies
      orthanc_study_info:
        {common}
        before_date: "2010-01-01"
      register: info
    - name: Archive in check mode
      orthanc_study_archive:
        {common}
        {volume}
        studies: "{{{{ info.study_ids }}}}"
      check_mode: true
      register: archive_check
    - name: Archive
      orthanc_study_archive:
        {common}
        {volume}
        studies: "{{{{ info.study_ids }}}}"
      register: archive_first
    - name: Archive again
      orthanc_study_archive:
        {common}
        {volume}
        studies: "{{{{ info.study_ids }}}}"
      register: archive_second
    - name: Verify
      archive_volume_verify:
        catalog_path: {folder}/catalog.sqlite
        {volume}
      register: verify_first
    - name: Verify again
      archive_volume_verify:
        catalog_path: {folder}/catalog.sqlite
        {volume}
      register: verify_second
    - name: Reclaim in check mode
      orthanc_study_reclaim:
        {common}
        lock_dir: {folder}/locks
      check_mode: true
      register: reclaim_check
    - name: Reclaim
      orthanc_study_reclaim:
        {common}
        lock_dir: {folder}/locks
      register: reclaim_first
    - name: Reclaim again
      orthanc_study_reclaim:
        {common}
        lock_dir: {folder}/locks
      register: reclaim_second
    - name: Collect
      ansible.builtin.set_fact:
        results_to_save:
          info: "{{{{ info }}}}"
          archive_check: "{{{{ archive_check }}}}"
          archive_first: "{{{{ archive_first }}}}"
          archive_second: "{{{{ archive_second }}}}"
          verify_first: "{{{{ verify_first }}}}"
          verify_second: "{{{{ verify_second }}}}"
          reclaim_check: "{{{{ reclaim_check }}}}"
          reclaim_first: "{{{{ reclaim_first }}}}"
          reclaim_second: "{{{{ reclaim_second }}}}"
"""
    process, results = run_playbook(folder, tasks, "-vvv")
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-2000:]
    return {"process": process, "results": results, "folder": folder, **secured}


def test_info_selects_without_change(full_run: dict[str, Any]) -> None:
    info = full_run["results"]["info"]

    assert info["changed"] is False
    assert info["study_ids"] == full_run["ids"]
    assert info["selected_count"] == 3
    assert "patient_id" not in info["studies"][0]
    assert "patient_name" not in info["studies"][0]


def test_archive_check_mode_writes_nothing(full_run: dict[str, Any]) -> None:
    check = full_run["results"]["archive_check"]

    assert check["changed"] is True
    assert [entry["status"] for entry in check["results"]] == ["would_archive"] * 3
    assert full_run["results"]["archive_first"]["archived_count"] == 3


def test_archive_changed_then_ok(full_run: dict[str, Any]) -> None:
    first = full_run["results"]["archive_first"]
    second = full_run["results"]["archive_second"]

    assert first["changed"] is True
    assert first["archived_count"] == 3
    assert first["archived_bytes"] > 0
    assert second["changed"] is False
    assert second["skipped_count"] == 3
    assert second["archived_count"] == 0


def test_verify_changed_then_ok(full_run: dict[str, Any]) -> None:
    first = full_run["results"]["verify_first"]
    second = full_run["results"]["verify_second"]

    assert first["changed"] is True
    assert first["verified_count"] == 3
    assert first["failed_count"] == 0
    assert second["changed"] is False
    assert second["verified_count"] == 0


def test_reclaim_check_then_delete_then_ok(full_run: dict[str, Any]) -> None:
    check = full_run["results"]["reclaim_check"]
    first = full_run["results"]["reclaim_first"]
    second = full_run["results"]["reclaim_second"]

    assert check["changed"] is True
    assert check["would_delete"] == 3
    assert check["deleted"] == 0
    assert check["bytes_to_free"] > 0
    assert first["changed"] is True
    assert first["deleted"] == 3
    assert first["bytes_freed"] > 0
    assert second["changed"] is False
    assert second["deleted"] == 0
    for study_id in full_run["ids"]:
        assert not h.study_exists(full_run["handle"], study_id)


def test_verbose_output_hides_password(full_run: dict[str, Any]) -> None:
    output = full_run["process"].stdout + full_run["process"].stderr

    assert "orthanc_study_archive" in output
    assert PASSWORD not in output


def test_output_hides_identifiers(full_run: dict[str, Any]) -> None:
    output = full_run["process"].stdout + full_run["process"].stderr

    for seed in SEEDS:
        patient = Patient.fake(seed)
        assert patient.patient_id not in output
        assert patient.name not in output


# -- failures and identifiers ------------------------------------------------------------------


class HtmlHandler(BaseHTTPRequestHandler):
    """Answer every request with a small HTML page, as a web server that is not Orthanc would."""

    def _answer(self) -> None:
        body = b"<html><body><h1>Welcome</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (BaseHTTPRequestHandler's name)
        return


@pytest.fixture(scope="module")
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def failure_run(secured: dict[str, Any], html_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("playbook-failures")
    url = secured["handle"].url
    closed_port = h.free_port()
    catalog = f"catalog_path: {folder}/catalog.sqlite"
    cases = {
        "bad_url": (connection("not-a-url"), "before_date: '2010-01-01'"),
        "wrong_password": (connection(url, WRONG_PASSWORD), "before_date: '2010-01-01'"),
        "not_orthanc": (connection(html_server), "before_date: '2010-01-01'"),
        "closed_port": (connection(f"http://127.0.0.1:{closed_port}"), "before_date: '2010-01-01'"),
        "negative_days": (connection(url), "older_than_days: -3"),
        "bad_before_date": (connection(url), "before_date: '2015-02-30'"),
        "identifiers": (connection(url), "before_date: '2016-01-01'\n        include_identifiers: true"),
    }
    tasks = ""
    for name, (conn, policy) in cases.items():
        tasks += f"""
    - name: Case {name}
      orthanc_study_info:
        {conn}
        server_name: pacs1
        {catalog}
        {policy}
      register: {name}
      ignore_errors: true
"""
    tasks += f"""
    - name: Case bad_study_id
      orthanc_study_archive:
        {connection(url)}
        server_name: pacs1
        {catalog}
        volume_path: {folder}
        lock_dir: {folder}/locks
        studies: ["../etc/passwd"]
      register: bad_study_id
      ignore_errors: true
    - name: Collect
      ansible.builtin.set_fact:
        results_to_save:
"""
    for name in [*cases, "bad_study_id"]:
        tasks += f"          {name}: \"{{{{ {name} }}}}\"\n"
    process, results = run_playbook(folder, tasks, "-vvv")
    assert results, process.stdout[-4000:] + process.stderr[-2000:]
    return {"process": process, "results": results, "closed_port": closed_port, "later": secured["later"]}


@pytest.mark.parametrize(("case", "expected"), [
    ("bad_url", "invalid Orthanc URL 'not-a-url'"),
    ("wrong_password", "HTTP 401: check the username and password"),
    ("not_orthanc", "did not return JSON"),
    ("closed_port", "Check that Orthanc is running"),
    ("negative_days", "invalid older_than_days -3"),
    ("bad_before_date", "invalid before_date '2015-02-30'"),
    ("bad_study_id", "invalid Orthanc study ID '../etc/passwd'"),
])
def test_failure_message_names_value(failure_run: dict[str, Any], case: str, expected: str) -> None:
    result = failure_run["results"][case]

    assert result["failed"] is True
    assert expected in result["msg"]


def test_closed_port_message_names_url(failure_run: dict[str, Any]) -> None:
    message = failure_run["results"]["closed_port"]["msg"]

    assert f"127.0.0.1:{failure_run['closed_port']}" in message


def test_failure_output_hides_passwords(failure_run: dict[str, Any]) -> None:
    output = failure_run["process"].stdout + failure_run["process"].stderr

    assert "Case wrong_password" in output
    assert PASSWORD not in output
    assert WRONG_PASSWORD not in output


def test_identifiers_only_on_request(failure_run: dict[str, Any]) -> None:
    studies = {study["orthanc_id"]: study for study in failure_run["results"]["identifiers"]["studies"]}
    later = studies[failure_run["later"]]

    assert later["patient_id"] == Patient.fake(LATER_SEED).patient_id
    assert later["patient_name"] == Patient.fake(LATER_SEED).name
    assert all("patient_id" in study for study in studies.values())


def test_ansible_doc_shows_modules() -> None:
    # One ansible-doc call for all modules, because each start of ansible-doc costs seconds.
    process = h.run([str(Path(sys.executable).parent / "ansible-doc"), "-M", "library", *MODULES],
                    env=ansible_env(), cwd=str(h.REPO))
    pages = process.stdout.split("> MODULE ")

    assert process.returncode == 0, process.stderr
    assert "ERROR" not in process.stderr, process.stderr
    assert len(pages) == len(MODULES) + 1, process.stdout[:2000]
    for module in MODULES:
        [page] = [page for page in pages if page.startswith(module)]
        assert "OPTIONS" in page, module
        assert "RETURN VALUES" in page, module
        assert "url" in page or module == "archive_volume_verify", module


def test_environment_points_at_repository() -> None:
    env = ansible_env()

    assert os.path.isdir(env["ANSIBLE_LIBRARY"])
    assert os.path.isdir(env["ANSIBLE_MODULE_UTILS"])
