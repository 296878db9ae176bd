"""Real hosts on this machine: network namespaces with a veth pair each (root only).

Each host gets its own /24 (10.O.X.0/24, O from the pid): the root namespace is .1, the host is .2. Only
namespaces and links this helper made are touched, and all of them are deleted afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def why_not() -> str | None:
    """None when namespaces can be made here; else the reason (for pytest.skip)."""
    if shutil.which("ip") is None:
        return "iproute2 is missing (apt-get install -y iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"rlhprobe{os.getpid() % 100000}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    ns: str
    veth: str  # the root namespace's end of the pair
    ip: str  # the host's address
    root_ip: str
    agent: subprocess.Popen[bytes] | None = None
    port: int = 7700
    log: Path | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def start_agent(self, keys: str, name: str, slots: int = 2, timeout_s: float = 5.0) -> None:
        assert self.log is not None
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "rlhfless.runtime.agent",
             "--listen", f"tcp://{self.ip}:{self.port}", "--keys", keys, "--slots", str(slots),
             "--node", name, "--controller-timeout", str(timeout_s)],
            cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)
        self.agent = None

    def link(self, up: bool) -> None:
        _ip("link", "set", self.veth, "up" if up else "down")


def make_hosts(n: int, tmp: Path, base: int = 0) -> list[Host]:
    tag = os.getpid() % 10000
    # The second octet depends on the pid too: two test runs on one machine (or a namespace
    # leaked by a killed run) never share a subnet, which would misroute one run's traffic.
    octet = 64 + os.getpid() % 128
    hosts: list[Host] = []
    try:
        for i in range(n):
            net = 10 + base + i
            h = Host(ns=f"rlh{tag}n{i}", veth=f"rlh{tag}r{i}", ip=f"10.{octet}.{net}.2",
                     root_ip=f"10.{octet}.{net}.1", log=tmp / f"agent{i}.log")  # fmt: skip
            hosts.append(h)
            peer = f"rlh{tag}p{i}"
            _ip("netns", "add", h.ns)
            _ip("link", "add", h.veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", h.ns)
            _ip("addr", "add", f"{h.root_ip}/24", "dev", h.veth)
            _ip("link", "set", h.veth, "up")
            _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", peer)
            _ip("-n", h.ns, "link", "set", peer, "up")
            _ip("-n", h.ns, "link", "set", "lo", "up")
    except BaseException:
        remove_hosts(hosts)
        raise
    return hosts


def remove_hosts(hosts: list[Host]) -> None:
    for h in hosts:
        h.stop_agent()
        _remove_weight_caches(h)
        _ip("netns", "del", h.ns, check=False)  # takes its end of the pair, and so the pair
        _ip("link", "del", h.veth, check=False)


IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@contextmanager
def routed_hosts(tmp: Path, keys: str, slots: list[int]) -> Iterator[list[Host]]:
    """One host per entry of ``slots`` (an agent with that many slots each), routed to each
    other through the root namespace (a gang's ranks talk host to host, not only to the
    controller); forwarding and the hosts are put back as they were afterwards."""
    hs = make_hosts(len(slots), tmp)
    forward = IP_FORWARD.read_text().strip()
    try:
        IP_FORWARD.write_text("1")
        for h in hs:
            subnet = h.ip.rsplit(".", 2)[0] + ".0.0/16"
            _ip("-n", h.ns, "route", "add", subnet, "via", h.root_ip)
        for i, (h, n) in enumerate(zip(hs, slots, strict=True)):
            h.start_agent(keys, f"host{i}", slots=n)
        yield hs
    finally:
        remove_hosts(hs)
        IP_FORWARD.write_text(forward)


def _remove_weight_caches(h: Host) -> None:
    """An agent killed with -9 leaves its /dev/shm weight cache: its log names the place."""
    if h.log is None or not h.log.exists():
        return
    for m in re.finditer(r"weight cache (\S+)", h.log.read_text(errors="replace")):
        if "rlhfless-weights-" in m.group(1):
            shutil.rmtree(m.group(1), ignore_errors=True)


def wait_for(pred: object, timeout: float, what: str) -> float:
    """Poll ``pred()`` until true; returns the seconds it took; AssertionError at the deadline."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")
