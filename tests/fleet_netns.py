"""A private test network of Linux network namespaces, with sshd in each one that needs it.

FleetNetwork creates a namespace that contains a bridge (the "LAN") and, per node, a namespace
joined to that bridge by a veth pair. The root namespace joins the bridge too, so the test (the
Ansible controller) reaches every node. All addresses are in one /24 of 10.231.0.0/16 that exists
only on these interfaces; close() deletes the namespaces and with them every address and route.

Processes started in a node (Orthanc, sshd, PostgreSQL) share the file system with the test and
differ only in their network, which is what a fleet of hosts needs here: real TCP connections
over SSH and HTTP between separate network stacks.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed with exit status {result.returncode}: {result.stderr.strip()}")
    return result


@dataclass
class Node:
    """One host of the test network: a network namespace with one address on the LAN."""

    name: str
    netns: str
    address: str
    sshd: subprocess.Popen[bytes] | None = None

    def command(self, *argv: str) -> list[str]:
        """Return argv wrapped to run inside this node's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


class FleetNetwork:
    """Namespaces joined by a bridge; subnet is the third octet of 10.231.<subnet>.0/24."""

    def __init__(self, subnet: int | None = None):
        self.tag = f"oa{os.getpid() % 100000}"
        self.subnet = subnet if subnet is not None else self._unused_subnet(20 + os.getpid() % 200)
        self.prefix = f"10.231.{self.subnet}"
        self.lan = f"{self.tag}-lan"
        self.root_address = f"{self.prefix}.1"
        self.root_link = f"{self.tag}r"
        self.nodes: dict[str, Node] = {}
        self.directory = Path(tempfile.mkdtemp(prefix="orthanc-archive-fleet-"))
        self.client_key = self.directory / "id_ed25519"
        self.known_hosts = self.directory / "known_hosts"

    @staticmethod
    def _unused_subnet(first: int) -> int:
        """Return the first third octet from first on whose 10.231.x.0/24 no interface here uses."""
        for offset in range(230):
            subnet = 20 + (first - 20 + offset) % 230
            if not run("ip", "-4", "addr", "show", "to", f"10.231.{subnet}.0/24", check=False).stdout.strip():
                return subnet
        raise RuntimeError("every subnet 10.231.20.0/24 to 10.231.249.0/24 is in use: delete stale test namespaces")

    # -- network --------------------------------------------------------------------------------

    def create(self) -> "FleetNetwork":
        """Create the LAN namespace and bridge, and join the root namespace to it."""
        if run("ip", "-4", "addr", "show", "to", f"{self.prefix}.0/24", check=False).stdout.strip():
            raise RuntimeError(f"{self.prefix}.0/24 is already in use on this machine: pick another subnet")
        run("ip", "netns", "add", self.lan)
        run("ip", "netns", "exec", self.lan, "ip", "link", "add", "br0", "type", "bridge")
        run("ip", "netns", "exec", self.lan, "ip", "link", "set", "br0", "up")
        run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "lan0", "netns", self.lan)
        self._attach_lan_end("lan0")
        run("ip", "addr", "add", f"{self.root_address}/24", "dev", self.root_link)
        run("ip", "link", "set", self.root_link, "up")
        run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        return self

    def _attach_lan_end(self, link: str) -> None:
        run("ip", "netns", "exec", self.lan, "ip", "link", "set", link, "master", "br0")
        run("ip", "netns", "exec", self.lan, "ip", "link", "set", link, "up")

    def add_node(self, name: str, host_number: int) -> Node:
        """Create a namespace for one host, with address 10.231.<subnet>.<host_number> on the LAN."""
        netns = f"{self.tag}-{name}"
        lan_end = f"lan{len(self.nodes) + 1}"
        run("ip", "netns", "add", netns)
        run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", lan_end, "netns", self.lan, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._attach_lan_end(lan_end)
        address = f"{self.prefix}.{host_number}"
        run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up")
        node = Node(name, netns, address)
        self.nodes[name] = node
        return node

    # -- sshd -----------------------------------------------------------------------------------

    def start_sshd(self, node: Node, timeout: float = 15.0) -> None:
        """Start sshd on port 22 of the node with a throwaway host key; only the test's key may log in."""
        folder = self.directory / f"sshd-{node.name}"
        folder.mkdir()
        host_key = folder / "ssh_host_ed25519_key"
        run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))

        authorized = folder / "authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), authorized)
        config = folder / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {node.address}:22",
            f"HostKey {host_key}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The keys live in a temporary folder whose parents sshd's ownership checks would reject.
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "",
        ]))

        # sshd refuses to start without its privilege separation folder (Debian creates it at boot).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(folder / "sshd.log", "wb")  # noqa: SIM115  (closed with the process)
        node.sshd = subprocess.Popen(node.command(SSHD, "-D", "-e", "-f", str(config)), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        public_host_key = host_key.with_suffix(".pub").read_text().split()
        with open(self.known_hosts, "a", encoding="ascii") as handle:
            handle.write(f"{node.address} {public_host_key[0]} {public_host_key[1]}\n")
        self._wait_for_ssh(node, timeout)

    def ssh_args(self) -> str:
        """Return ansible_ssh_common_args that trust only the test's host keys."""
        return f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"

    def _wait_for_ssh(self, node: Node, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = run("ssh", "-i", str(self.client_key), *self.ssh_args().split(), "-o", "BatchMode=yes",
                         "-o", "ConnectTimeout=2", f"root@{node.address}", "true", check=False)
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            time.sleep(0.2)
        log = (self.directory / f"sshd-{node.name}" / "sshd.log").read_text(errors="replace")
        raise RuntimeError(f"sshd on {node.address} did not accept the test key within {timeout:.0f} s: {last}\n{log}")

    # -- clean up -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every sshd, then delete the namespaces (which removes their links and addresses)."""
        for node in self.nodes.values():
            if node.sshd is not None and node.sshd.poll() is None:
                node.sshd.terminate()
                try:
                    node.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    node.sshd.kill()
        for node in self.nodes.values():
            run("ip", "netns", "delete", node.netns, check=False)
        run("ip", "link", "delete", self.root_link, check=False)
        run("ip", "netns", "delete", self.lan, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
