"""Containment at the edges: every channel out of a sandbox is named by its
policy or closed, no sandbox outlives its supervisor, a request cannot
loosen a limit, and a start that fails leaves nothing behind. Each attack is
checked to be stopped, with its denial, its alert and the audit record."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.guarded import GuardedRun, GuardedSandboxes
from common.verdicts import Verdict
from ebpf.sensor import Sensor
from guard import audit
from guard.alerts import Alert
from guard.audit import AuditLog
from sandbox.cgroup import Cgroup, bastion_root
from sandbox.manager import SandboxError, SandboxManager
from sandbox.policy import Limits, Network, Policy, PolicyError, parse_policy
from sandbox.result import STOPPED_EXIT
from tests.attacks import HERE, command
from tests.waiting import until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def guarded(sensor: Sensor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedSandboxes]:
    """Sandboxes under the guard's rules (no profile: these are policy cases)."""
    log = AuditLog(tmp_path_factory.mktemp("audit") / "audit.jsonl")
    with GuardedSandboxes(sensor, log, workdirs=tmp_path_factory.mktemp("workdirs")) as g:
        yield g
    log.close()


def _rule_alerts(guarded: GuardedSandboxes, run: GuardedRun) -> list[Alert]:
    """The run's rule alerts, each checked to be in the audit log."""
    alerts = [a for a in run.alerts if a.detector == "rule"]
    logged = {b["id"] for b in audit.read(guarded.audit.path, "alert")}
    assert alerts and all(a.id in logged for a in alerts), alerts
    return alerts


class UnixSinks:
    """Host services on unix sockets (stream, datagram, abstract) that record
    what reaches them."""

    def __init__(self, directory: Path) -> None:
        directory.chmod(0o755)
        self.dir = directory
        self.received: list[bytes] = []
        self.stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.stream.bind(str(directory / "stream.sock"))
        self.stream.listen(4)
        self.dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dgram.bind(str(directory / "dgram.sock"))
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.name = f"bastion-sink-{uuid.uuid4().hex[:8]}"
        self.abstract.bind("\0" + self.name)
        self.abstract.listen(4)
        for path in ("stream.sock", "dgram.sock"):
            (directory / path).chmod(0o777)  # only the kernel's hooks may keep the tool out
        for sock in (self.stream, self.dgram, self.abstract):
            sock.settimeout(0.2)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                if sock.type == socket.SOCK_DGRAM:
                    self.received.append(sock.recv(4096))
                    continue
                conn, _ = sock.accept()
                with conn:
                    conn.settimeout(1)
                    data = conn.recv(4096)
                    self.received.append(data)
                    conn.sendall(b"pong:" + data)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        for sock in (self.stream, self.dgram, self.abstract):
            sock.close()


@pytest.fixture
def unix_sinks() -> Iterator[UnixSinks]:
    # under /tmp itself: the sandbox's user must be able to reach the sockets by path
    with tempfile.TemporaryDirectory(prefix="bastion-sinks-", dir="/tmp") as directory:
        sinks = UnixSinks(Path(directory))
        yield sinks
        sinks.close()


NETWORKS = {"network none": "none", "network allowed": Network(allow=[{"host": "127.0.0.1", "ports": [80]}])}


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_unix_socket_exfiltration_is_refused_and_killed(network: str, guarded: GuardedSandboxes,
                                                         unix_sinks: UnixSinks) -> None:
    policy = Policy(network=NETWORKS[network])
    run = guarded.run(command(HERE / "unix_exfil.py", [str(unix_sinks.dir), unix_sinks.name]), policy)
    result = run.result

    time.sleep(0.3)
    assert unix_sinks.received == [], "a record reached a host service"
    assert result.exit_status == STOPPED_EXIT and run.verdict is Verdict.KILL
    refused = [d.detail for d in result.denials if d.kind == "egress"]
    assert any(f"{unix_sinks.dir}/stream.sock via unix_connect" in d for d in refused), refused
    assert any("stream.sock" in a.rule and "unix_connect" in a.rule for a in _rule_alerts(guarded, run))


def test_a_unix_socket_the_policy_names_is_reachable(guarded: GuardedSandboxes, unix_sinks: UnixSinks) -> None:
    path = str(unix_sinks.dir / "stream.sock")
    client = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
              "s.sendall(b'ping')\nprint(s.recv(100).decode())\n")
    run = guarded.run(["/usr/bin/python3", "-c", client, path], Policy(unix_sockets=[path]))
    assert run.result.exit_status == 0, run.result.stderr
    assert run.result.stdout.strip() == "pong:ping" and run.verdict is Verdict.ALLOW
    # a name lookup still works: libc's nscd probe is refused without a violation
    lookup = guarded.run(["/usr/bin/python3", "-c", "import socket; socket.getaddrinfo('localhost', 80)"], Policy())
    assert lookup.result.exit_status == 0 and lookup.result.denials == [] and lookup.alerts == []


def test_socket_families_the_policy_does_not_need_are_refused(guarded: GuardedSandboxes) -> None:
    run = guarded.run(command(HERE / "socket_families.py"), Policy(network=NETWORKS["network allowed"]))
    result = run.result
    assert "OPENED" not in result.stdout or "OPENED []" in result.stdout, result.stdout
    assert result.exit_status == STOPPED_EXIT and run.verdict is Verdict.KILL
    assert [d for d in result.denials if d.kind == "syscall" and "socket" in d.detail], result.denials
    assert any("socket" in a.rule for a in _rule_alerts(guarded, run))


def test_a_syscall_through_the_32_bit_abi_is_killed(guarded: GuardedSandboxes) -> None:
    """The filter's rules are x86-64's; a packet socket asked for by its
    i386 number would pass them, so any syscall of another ABI kills."""
    run = guarded.run(command(HERE / "other_abi.py"), Policy(network=NETWORKS["network allowed"]))
    result = run.result
    # killed by seccomp (SIGSYS), or by the guard on its report first
    assert "OPENED" not in result.stdout and result.signal in (9, 31), (result.stdout, result.stderr, result.signal)
    assert run.verdict is Verdict.KILL
    assert [d for d in result.denials if d.kind == "syscall" and "another ABI" in d.detail], result.denials
    assert any("another ABI" in a.rule for a in _rule_alerts(guarded, run))


def test_the_workdir_has_a_quota_of_bytes_and_files(guarded: GuardedSandboxes) -> None:
    policy = Policy(limits=Limits(workdir_mb=8, workdir_files=64))
    result = guarded.run(command(HERE / "fill_workdir.py"), policy).result
    assert result.exit_status == 0, result.stderr
    megabytes, files = map(int, result.stdout.split())
    assert megabytes <= 8 and files <= 64, result.stdout
    assert "No space left" in result.stderr


def _node_script(tmp: Path) -> str:
    return (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from bastion.node import Node, NodeConfig\n"
        "from sandbox.policy import Policy\n"
        f"tmp = Path({str(tmp)!r})\n"
        "node = Node(NodeConfig(local=f'unix://{tmp}/node.sock', token_file=tmp / 'token', audit=tmp / 'audit.jsonl',"
        " signing_key=tmp / 'node.key'))\n"
        "sb = node.guarded.manager.start(sys.argv[1:], Policy())\n"
        "print(sb.name, sb.workdir, flush=True)\n"
        "time.sleep(120)\n"
    )


def test_no_sandboxed_process_outlives_a_killed_node(kernel: None, tmp_path: Path) -> None:
    """A tool that cleared its parent-death signal and double-forked dies with
    the node (SIGKILL); the next node removes what was left and audits it."""
    node = subprocess.Popen([sys.executable, "-c", _node_script(tmp_path), *command(HERE / "outlive_supervisor.py")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert node.stdout is not None
    name, workdir = node.stdout.readline().split()
    leaf = Cgroup(bastion_root() / name)
    until(lambda: len(leaf.pids()) >= 2, what="the attack did not get to detach")  # the tool and its grandchild
    pids = leaf.pids()
    node.kill()
    node.wait()
    time.sleep(1.0)
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    assert alive == [], f"processes of the sandbox outlived the node: {alive}"
    assert leaf.pids() == []

    from bastion.node import Node, NodeConfig

    again = Node(NodeConfig(local=f"unix://{tmp_path}/node2.sock", token_file=tmp_path / "token",
                            audit=tmp_path / "audit.jsonl", signing_key=tmp_path / "node.key"))
    again.close()
    assert not Path(workdir).exists() and not leaf.path.exists()
    (cleanup,) = audit.read(tmp_path / "audit.jsonl", "cleanup")
    assert f"cgroup {name}" in cleanup["orphans"] and f"workdir {workdir}" in cleanup["orphans"]


def test_a_sandbox_cannot_type_into_the_terminal_that_started_the_node(kernel: None, tmp_path: Path) -> None:
    """A tool in the node's session has the node's terminal, the shell's
    that started it, as /dev/tty: with TIOCSTI it could type commands there
    (bubblewrap's CVE-2017-5226). Landlock refuses it device ioctls (from
    kernel 6.10), but not the terminal itself: each sandbox is a session of
    its own, so even where the policy lets a tool read /dev/tty it has no
    terminal, and nothing is typed there."""
    master, slave = os.openpty()
    terminal = os.ttyname(slave)
    os.close(slave)
    policy = Policy(filesystem={"read_only": [*Policy().filesystem.read_only, "/dev/tty"]})
    script = (
        "import json, os, sys\n"
        f"tty = os.open({terminal!r}, os.O_RDWR)  # a session leader's first terminal: its controlling one\n"
        "from pathlib import Path\n"
        "from bastion.node import Node, NodeConfig\n"
        "from sandbox.policy import Policy\n"
        f"tmp = Path({str(tmp_path)!r})\n"
        "node = Node(NodeConfig(local=f'unix://{tmp}/node.sock', token_file=tmp / 'token', audit=tmp / 'audit.jsonl',"
        " signing_key=tmp / 'node.key'))\n"
        f"run = node.guarded.run(sys.argv[1:], Policy.model_validate_json({policy.model_dump_json()!r}))\n"
        "node.close()\n"
        "print(json.dumps([run.result.exit_status, run.result.stdout]), file=sys.stderr)\n"
    )
    node = subprocess.run([sys.executable, "-c", script, *command(HERE / "terminal_inject.py")], cwd=REPO,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, timeout=120)
    status, stdout = json.loads(node.stderr.strip().splitlines()[-1])
    os.set_blocking(master, False)
    typed = b""
    with contextlib.suppress(BlockingIOError, OSError):  # EIO: the node's end is closed, its output read
        while chunk := os.read(master, 4096):
            typed += chunk
    os.close(master)
    assert (status, stdout) == (0, "no terminal: ENXIO\n")
    assert b"pwned" not in typed


def test_a_request_cannot_loosen_the_wall_timeout(guarded: GuardedSandboxes) -> None:
    policy = Policy(limits=Limits(wall_timeout_s=1))
    started = time.monotonic()
    result = guarded.run(["/bin/sleep", "30"], policy, timeout=3600).result
    assert time.monotonic() - started < 10
    assert result.stopped_by == "wall timeout of 1s"
    for bad in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(SandboxError, match="timeout"):
            guarded.run(["/bin/true"], policy, timeout=bad)


@pytest.mark.parametrize(("text", "field"), [
    ("limits: {pids: 9223372036854775808}", "limits.pids"),
    ("user: {uid: 4294967295}", "user.uid"),
    ("limits: {wall_timeout_s: .nan}", "limits.wall_timeout_s"),
    ("limits: {wall_timeout_s: .inf}", "limits.wall_timeout_s"),
    ("unix_sockets: [/run/../etc/x.sock]", "unix_sockets"),
    ("unix_sockets: [relative.sock]", "unix_sockets"),
])
def test_values_the_kernel_would_refuse_fail_validation(text: str, field: str) -> None:
    with pytest.raises(PolicyError, match=f"^p.yaml: field {field}:"):
        parse_policy(text, "p.yaml")


def _leftovers(workdirs: Path) -> tuple[list[str], list[str]]:
    mine = f"sbx-{os.getpid()}-"
    return (sorted(p.name for p in bastion_root().glob(mine + "*")), sorted(p.name for p in workdirs.glob(mine + "*")))


FAILURES = {
    "unresolvable host": None,
    "limits": "sandbox.manager.Controllers.create",
    "workdir mount": "sandbox.manager.mount_tmpfs",
    "egress attach": "ebpf.sensor.Sensor.attach_egress",
    "unix rules": "ebpf.sensor.Sensor.set_unix_sockets",
    "exec": "subprocess.Popen",
}


@pytest.mark.parametrize("point", sorted(FAILURES))
def test_a_start_that_fails_leaves_nothing_behind(point: str, sensor: Sensor, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manager = SandboxManager(sensor, workdirs=tmp_path)
    try:
        before = _leftovers(tmp_path)
        watched = len(sensor.bpf["watched"])
        policy = Policy()
        if FAILURES[point] is None:
            policy = Policy(network=Network(allow=[{"host": "no-such-host.invalid", "ports": [443]}]))
        else:
            def fail(*args: object, **kwargs: object) -> None:
                raise OSError(5, f"injected failure at {point}")

            monkeypatch.setattr(FAILURES[point], fail)
        with pytest.raises((SandboxError, PolicyError), match="no-such-host|injected failure"):
            manager.run(["/bin/true"], policy)
        monkeypatch.undo()
        assert _leftovers(tmp_path) == before
        assert len(sensor.bpf["watched"]) == watched and manager.sandboxes() == []
        assert manager.run(["/bin/true"], Policy()).exit_status == 0  # and the next start works
    finally:
        manager.close()


def test_the_node_answers_a_bad_run_request_naming_the_field(kernel: None, tmp_path: Path) -> None:
    import grpc

    from bastion.node import Node, NodeConfig
    from console.client import NodeClient
    from console.proto import bastion_pb2 as pb

    node = Node(NodeConfig(local=f"unix://{tmp_path}/node.sock", token_file=tmp_path / "token",
                           audit=tmp_path / "audit.jsonl", signing_key=tmp_path / "node.key"))
    client = NodeClient(node.config.local, (tmp_path / "token").read_text().strip())
    try:
        for request, message in (
            (pb.RunRequest(command=["/bin/true"], timeout_s=float("nan")), "timeout"),
            (pb.RunRequest(command=["/bin/true"], timeout_s=float("inf")), "timeout"),
            (pb.RunRequest(command=["/bin/true"], policy_yaml="network: {allow: [{host: no-such-host.invalid}]}"),
             "no-such-host.invalid"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                client.run(request)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        reply = json.loads(client.run(pb.RunRequest(command=["/bin/sleep", "30"], timeout_s=99,
                                                    policy_yaml="limits: {wall_timeout_s: 1}")))
        assert reply["result"]["stopped_by"] == "wall timeout of 1s"
    finally:
        client.close()
        node.close()


PROBE_CPUS = """
import os, sys
print(sorted(os.sched_getaffinity(0)))
try:
    os.sched_setaffinity(0, {int(sys.argv[1])})
except PermissionError:
    print("refused")
"""


def test_with_a_node_cpu_sandboxes_run_on_the_others_and_cannot_move_onto_it(sensor: Sensor, tmp_path: Path) -> None:
    """The node may keep a CPU for its event pump and audit writer: a sandbox
    then runs on the other CPUs and may not move itself onto the node's,
    where it would delay every verdict."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: one for the node, one for the sandboxes")
    node_cpu = cpus[-1]
    log = AuditLog(tmp_path / "audit.jsonl")
    before = set(threading.enumerate())
    with GuardedSandboxes(sensor, log, workdirs=tmp_path, node_cpu=node_cpu) as g:
        started = {t.name: t.native_id for t in set(threading.enumerate()) - before}
        assert {"sandbox-pump", "audit-writer"} <= set(started)
        assert all(os.sched_getaffinity(tid) == {node_cpu} for tid in started.values() if tid is not None)
        run = g.run(["/usr/bin/python3", "-c", PROBE_CPUS, str(node_cpu)], Policy())
    log.close()
    assert run.result.stdout.splitlines() == [str(cpus[:-1]), "refused"], run.result.stderr
    assert sorted(os.sched_getaffinity(0)) == cpus  # the caller's own CPUs are as they were
    with pytest.raises(ValueError, match="node_cpu: 99"):
        GuardedSandboxes(sensor, log, node_cpu=99)
