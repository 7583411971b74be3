"""A fleet of three real Orthanc servers archived by archive.yml into one PostgreSQL catalog.

Each Orthanc server and each tape host is its own inventory host in its own network namespace
(tests/fleet_netns.py), with sshd started inside. Ansible reaches the tape hosts over real SSH
connections, and the modules on the tape hosts reach Orthanc over real HTTP connections:

    tape-a  10.231.N.11  writes pacs1 and pacs2 (one volume, so their writers take turns)
    tape-b  10.231.N.12  writes pacs3, in parallel with tape-a
    pacs1   10.231.N.21  Orthanc 1.10.1, SQLite index
    pacs2   10.231.N.22  Orthanc 1.10.1, SQLite index
    pacs3   10.231.N.23  Orthanc 1.10.1 with Debian's orthanc-postgresql index plugin
    catalog 10.231.N.1   PostgreSQL 15 in the test's own namespace (the catalog and pacs3's index)

The inventory reuses the default policy of inventory/fleet-example. Volumes are plain folders.
Needs root (network namespaces), openssh-server, orthanc, orthanc-postgresql and postgresql.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.fleet_netns import SSHD, FleetNetwork, Node
from tests.pg_fixture import PostgresCluster
from tools import demo_data
from tools.orthanc_local import ORTHANC_BINARY, POSTGRESQL_INDEX_PLUGIN, LocalOrthanc

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
ORTHANC_USER = "archiver"
PLAYBOOK_TIMEOUT = 240

# Small studies, so that loading and archiving three servers stays within seconds.
FLEET_DEMO: dict[str, Any] = {
    "studies": 6,
    "include_testdata": False,
    "include_hostile": False,
    "year_from": 1998,
    "year_to": 2010,
    "instances": {"ct": (2, 3), "mr": (2, 3), "cr": (1, 1), "dx": (1, 1), "us": (1, 2), "mg": (1, 1)},
    "image_sizes": {"cr": (128, 128), "dx": (128, 128), "mg": (128, 96)},
}

TAPE_HOSTS = {"tape-a": 11, "tape-b": 12}
SERVERS = {"pacs1": (21, "tape-a"), "pacs2": (22, "tape-a"), "pacs3": (23, "tape-b")}


class NamespacedOrthanc(LocalOrthanc):
    """A LocalOrthanc started inside a node's network namespace and reached at the node's address."""

    def __init__(self, directory: Path, node: Node, **kwargs: Any):
        wrapper = directory.parent / f"orthanc-in-{node.name}"
        # ip netns exec replaces itself with Orthanc, so the pid that LocalOrthanc records is Orthanc's.
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {node.netns} {ORTHANC_BINARY} "$@"\n')
        wrapper.chmod(0o755)
        super().__init__(directory, binary=str(wrapper), **kwargs)
        self.node = node

    @property
    def url(self) -> str:
        return f"http://{self.node.address}:{self.http_port}"


def require_tools() -> None:
    missing = [path for path in (ORTHANC_BINARY, POSTGRESQL_INDEX_PLUGIN, SSHD, "/usr/lib/postgresql/15/bin/initdb")
               if not Path(path).exists()]
    if missing:
        pytest.fail(f"the fleet test needs {', '.join(missing)}: run "
                    "`apt-get install orthanc orthanc-postgresql postgresql openssh-server`", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the fleet test creates network namespaces and must run as root", pytrace=False)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start the network, sshd on every node, the catalog's PostgreSQL and three loaded Orthanc servers."""
    require_tools()
    network = FleetNetwork()
    cluster: PostgresCluster | None = None
    servers: dict[str, NamespacedOrthanc] = {}
    try:
        network.create()
        nodes = {name: network.add_node(name, number) for name, number in TAPE_HOSTS.items()}
        nodes.update({name: network.add_node(name, number) for name, (number, _) in SERVERS.items()})
        for node in nodes.values():
            network.start_sshd(node)

        cluster = PostgresCluster(host=network.root_address, client_networks=(f"{network.prefix}.0/24",)).start()
        index_database = cluster.create_database("pacs3_index")

        base = tmp_path_factory.mktemp("fleet-orthanc")
        for name in SERVERS:
            options: dict[str, Any] = {}
            if name == "pacs3":
                options["postgresql"] = {"ConnectionUri": cluster.uri(index_database), "Lock": False}
            server = NamespacedOrthanc(
                base / name, nodes[name], name=name, stable_age=1,
                users={ORTHANC_USER: secrets.token_urlsafe(12)},
                # Reached from the tape hosts' namespaces, so remote access must be on; it is
                # password protected, and the addresses exist only inside the test network.
                extra_config={"RemoteAccessAllowed": True},
                **options,
            )
            servers[name] = server.start()
            demo_data.load_demo(server.url, auth=server.auth, seed=SERVERS[name][0], **FLEET_DEMO)

        # Wait until every study is stable (StableAge 1 s) so that only_stable selects them.
        time.sleep(2.5)
        yield {"network": network, "cluster": cluster, "servers": servers, "nodes": nodes}
    finally:
        for server in servers.values():
            server.stop()
        if cluster is not None:
            cluster.stop()
        network.close()


def build_inventory(fleet: dict[str, Any], folder: Path, overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a fleet inventory like inventory/fleet-example, for this test network, into folder."""
    network: FleetNetwork = fleet["network"]
    cluster: PostgresCluster = fleet["cluster"]
    servers: dict[str, NamespacedOrthanc] = fleet["servers"]
    database = cluster.create_database()
    inventory = folder / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "host_vars").mkdir()

    # The fleet's default policy, exactly as shipped in the example.
    shutil.copy(REPO / "inventory/fleet-example/group_vars/all/main.yml", inventory / "group_vars/all/main.yml")

    # What the vault contains in production; a plain file is fine for throwaway test secrets.
    vault = {
        "vault_orthanc_archive_catalog_dsn": cluster.dsn(database),
        "vault_orthanc_archive_passwords": {name: server.auth[1] for name, server in servers.items()},
    }
    (inventory / "group_vars/all/vault.yml").write_text(yaml.safe_dump(vault))

    ssh = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(network.client_key),
        "ansible_ssh_common_args": network.ssh_args(),
        "ansible_python_interpreter": sys.executable,
        "ansible_pipelining": True,
    }
    hosts: dict[str, Any] = {
        "all": {
            "children": {
                "orthanc_servers": {"children": {
                    "site_a": {"hosts": {"pacs1": None, "pacs2": None}},
                    "site_b": {"hosts": {"pacs3": None}},
                }},
                "tape_hosts": {"hosts": {name: None for name in TAPE_HOSTS}},
            },
            "vars": {
                **ssh,
                # Studies are from 1998 to 2010: everything older than 2012 is old.
                "orthanc_archive_before_date": "2012-01-01",
                # A stopped server should fail after one quick retry, not after the default backoff.
                "orthanc_archive_retries": 1,
                "orthanc_archive_retry_backoff": 0.2,
                "orthanc_archive_timeout": 10,
                "archive_summary_report_dir": str(folder / "reports"),
            },
        }
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))

    for tape_host in TAPE_HOSTS:
        node: Node = fleet["nodes"][tape_host]
        (inventory / "host_vars" / f"{tape_host}.yml").write_text(yaml.safe_dump({"ansible_host": node.address}))
    for site, tape_host in (("site_a", "tape-a"), ("site_b", "tape-b")):
        (inventory / "group_vars" / f"{site}.yml").write_text(yaml.safe_dump({
            "orthanc_archive_tape_host": tape_host,
            "orthanc_archive_volume_path": str(folder / tape_host / "volume"),
            "orthanc_archive_lock_dir": str(folder / tape_host / "locks"),
        }))
    for name, server in servers.items():
        host_vars = {
            "ansible_host": server.node.address,
            "orthanc_archive_url": server.url,
            "orthanc_archive_username": ORTHANC_USER,
            "orthanc_archive_password": "{{ vault_orthanc_archive_passwords[inventory_hostname] }}",
            "orthanc_archive_log_path": str(folder / "logs" / f"{name}.log"),
            # The optional server-side task runs over SSH into the server's own namespace.
            "orthanc_fleet_server_side": True,
            "orthanc_fleet_storage_dir": str(server.storage_dir),
            **(overrides or {}).get(name, {}),
        }
        (inventory / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(host_vars))
    return inventory


def run_playbook(playbook: str, inventory: Path, *extra: str,
                 awx_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ansible-playbook from the repository root; awx_env adds the variables an AWX job sets."""
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS="10",
               ANSIBLE_HOST_KEY_CHECKING="True")
    for name in ("AWX_HOST", "JOB_ID", "INVENTORY_ID"):
        env.pop(name, None)
    env.update(awx_env or {})
    return subprocess.run([ANSIBLE_PLAYBOOK, playbook, "-i", str(inventory), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False)


def latest_report(inventory: Path) -> dict[str, Any]:
    return json.loads((inventory.parent / "reports" / "latest.json").read_text())


def verified_servers(fleet: dict[str, Any], inventory: Path) -> dict[str, int]:
    """Return the number of verified copies per server in the run's catalog."""
    vault = yaml.safe_load((inventory / "group_vars/all/vault.yml").read_text())
    with psycopg.connect(vault["vault_orthanc_archive_catalog_dsn"]) as conn:
        rows = conn.execute("SELECT server, count(*) FROM copies WHERE state = 'verified' GROUP BY server").fetchall()
    return {server: count for server, count in rows}


def export_seconds(log_path: Path) -> tuple[str, str]:
    """Return the first and last time stamp of the 'archived study' lines of a progress log."""
    stamps = [line.split()[0] for line in log_path.read_text().splitlines() if " archived study " in line]
    assert stamps, f"no archived study in {log_path}"
    return min(stamps), max(stamps)


def test_pacs3_uses_postgresql_index(fleet: dict[str, Any]) -> None:
    system = fleet["servers"]["pacs3"].system()

    assert "libOrthancPostgreSQLIndex" in (system.get("DatabaseBackendPlugin") or "")


def test_plan_then_archive_three_servers(fleet: dict[str, Any], tmp_path: Path) -> None:
    inventory = build_inventory(fleet, tmp_path)

    plan = run_playbook("playbooks/retention_plan.yml", inventory, "--check")
    assert plan.returncode == 0, plan.stdout[-6000:] + plan.stderr[-3000:]
    for name in SERVERS:
        assert f"{name} via " in plan.stdout
    assert "would archive 0 studies" not in plan.stdout
    assert "storage_dir_bytes" in plan.stdout
    assert not (tmp_path / "tape-a" / "volume").exists()

    started = time.monotonic()
    archive = run_playbook("archive.yml", inventory)
    seconds = time.monotonic() - started
    assert archive.returncode == 0, archive.stdout[-8000:] + archive.stderr[-3000:]

    verified = verified_servers(fleet, inventory)
    assert sorted(verified) == sorted(SERVERS)
    assert all(count > 0 for count in verified.values())
    for name, (_, tape_host) in SERVERS.items():
        containers = list((tmp_path / tape_host / "volume" / "orthanc-archive" / name).rglob("*.tar"))
        assert len(containers) == verified[name]
    report = latest_report(inventory)
    assert report["failed_servers"] == []
    print(f"archive.yml on three servers took {seconds:.1f} s")

    # pacs1 and pacs2 share tape-a's volume, so one export ended before the other began
    # (the progress logs have one-second resolution, hence the inclusive comparison).
    first, second = (export_seconds(tmp_path / "logs" / f"{name}.log") for name in ("pacs1", "pacs2"))
    assert first[1] <= second[0] or second[1] <= first[0], (first, second)

    replan = run_playbook("playbooks/retention_plan.yml", inventory, "--check")
    assert replan.returncode == 0, replan.stdout[-6000:]
    assert replan.stdout.count("would archive 0 studies") == len(SERVERS)


def test_stopped_server_fails_alone(fleet: dict[str, Any], tmp_path: Path) -> None:
    inventory = build_inventory(fleet, tmp_path)
    stopped = fleet["servers"]["pacs2"]
    stopped.stop()
    try:
        archive = run_playbook("archive.yml", inventory)
    finally:
        stopped.restart()

    assert archive.returncode != 0, archive.stdout[-6000:]
    report = latest_report(inventory)
    assert report["failed_servers"] == ["pacs2"]
    verified = verified_servers(fleet, inventory)
    assert sorted(verified) == ["pacs1", "pacs3"]
    assert "pacs2" in archive.stdout


def test_wrong_password_fails_plan_alone(fleet: dict[str, Any], tmp_path: Path) -> None:
    inventory = build_inventory(fleet, tmp_path, {"pacs1": {"orthanc_archive_password": "not-the-password"}})

    plan = run_playbook("playbooks/retention_plan.yml", inventory, "--check")

    assert plan.returncode != 0
    assert "No plan for pacs1:" in plan.stdout
    for name in ("pacs2", "pacs3"):
        assert f"{name} via " in plan.stdout


def test_sqlite_catalog_under_awx_rejected(fleet: dict[str, Any], tmp_path: Path) -> None:
    inventory = build_inventory(fleet, tmp_path)
    local_inventory = tmp_path / "local.yml"
    local_inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    sqlite_on_job_disk = ("-i", str(local_inventory), "-e", "orthanc_archive_catalog_backend=sqlite",
                          "-e", "orthanc_archive_tape_host=localhost")

    plan = run_playbook("playbooks/retention_plan.yml", inventory, *sqlite_on_job_disk, "--check",
                        "-e", "awx_job_id=42")
    archive = run_playbook("archive.yml", inventory, *sqlite_on_job_disk,
                           awx_env={"AWX_HOST": "https://awx.invalid", "JOB_ID": "42", "INVENTORY_ID": "7"})

    assert plan.returncode != 0
    assert "deleted when the job ends" in plan.stdout
    assert archive.returncode != 0
    assert "deleted when the job ends" in archive.stdout
    assert not (tmp_path / "tape-a" / "volume").exists()
