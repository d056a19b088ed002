"""Sandbox lifecycle and policy: isolation facts, enforcement actions on a
running sandbox, fail-closed behaviour, and clear policy errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ebpf.sensor import Sensor
from sandbox.cgroup import Cgroup, bastion_root
from sandbox.launch import LaunchError, launcher_binary
from sandbox.manager import Sandbox, SandboxError, SandboxManager, kill_orphans
from common.verdicts import Verdict
from sandbox.policy import PolicyError, parse_policy
from sandbox.result import STOPPED_EXIT
from tests.waiting import until

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manager(sensor: Sensor) -> Iterator[SandboxManager]:
    m = SandboxManager(sensor)
    yield m
    m.close()


def test_isolation_facts(manager: SandboxManager) -> None:
    script = (
        "import os, socket; print(os.getuid(), os.getgid(), os.getpid(), socket.gethostname());"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0]);"
        "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0]);"
        "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0]);"
        "print(sorted(line.split(':')[0].strip() for line in open('/proc/self/net/dev').readlines()[2:]))"
    )
    result = manager.run(["/usr/bin/python3", "-c", script], parse_policy(""))
    assert result.exit_status == 0, result.stderr
    ids, caps, nnp, seccomp, nets = result.stdout.splitlines()
    assert ids == "65534 65534 2 bastion"  # nobody, pid 2 under Bastion's init in its own namespace, own hostname
    assert (caps, nnp, seccomp) == ("0000000000000000", "1", "2")
    assert nets == "['lo']"  # network: none is an empty network namespace


def test_a_tool_that_cannot_be_executed_is_refused_at_start_naming_it(manager: SandboxManager) -> None:
    """The launcher reports why the tool did not run, and nothing is left behind."""
    before = sorted(p.name for p in bastion_root().iterdir() if p.is_dir())
    with pytest.raises(SandboxError, match=r"/no/such/tool: No such file or directory"):
        manager.run(["/no/such/tool"], parse_policy(""))
    assert sorted(p.name for p in bastion_root().iterdir() if p.is_dir()) == before
    assert manager.sandboxes() == []


def test_a_start_that_fails_after_its_preparers_undoes_what_they_made(manager: SandboxManager) -> None:
    """The guard makes its state for a sandbox before the command starts; a
    start that then fails must not leave it behind for a later cgroup."""
    prepared: list[str] = []

    def prepare(sb: Sandbox) -> Callable[[], object]:
        prepared.append(sb.name)
        return lambda: prepared.remove(sb.name)

    manager.preparers.append(prepare)
    try:
        with pytest.raises(SandboxError, match=r"/no/such/tool"):
            manager.run(["/no/such/tool"], parse_policy(""))
        assert prepared == []
        result = manager.run(["/bin/true"], parse_policy(""))
        assert result.exit_status == 0 and prepared == [result.sandbox]  # a start that succeeds keeps it
    finally:
        manager.preparers.remove(prepare)


def test_the_tool_gets_exactly_the_policys_environment_and_the_launcher_none(manager: SandboxManager) -> None:
    """The launcher runs as root before any confinement: nothing a policy sets
    reaches it, and no value shows in its command line, which any user can read."""
    policy = parse_policy("env: {allow: [PATH], set: {API_TOKEN: s3cr3t-value}}")
    result = manager.run(["/usr/bin/env"], policy)
    assert result.exit_status == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["API_TOKEN=s3cr3t-value", f"PATH={os.environ['PATH']}"]
    sb = manager.start(["/bin/sleep", "30"], policy)
    try:
        assert sb.proc is not None
        launcher = Path(f"/proc/{sb.proc.pid}")
        assert (launcher / "environ").read_bytes() == b""
        assert b"s3cr3t" not in (launcher / "cmdline").read_bytes()
    finally:
        manager.enforce(sb, Verdict.KILL, "test over")
        manager.wait(sb)


def test_a_launcher_others_could_have_written_is_rebuilt_not_run(tmp_path: Path) -> None:
    cache = tmp_path / "launcher"
    built = launcher_binary(cache)
    built.write_bytes(b"#!/bin/sh\necho hijacked\n")
    built.chmod(0o777)
    rebuilt = launcher_binary(cache)
    assert rebuilt == built and rebuilt.stat().st_mode & 0o777 == 0o700
    assert rebuilt.read_bytes().startswith(b"\x7fELF")
    cache.chmod(0o777)
    with pytest.raises(LaunchError, match="writable by others"):
        launcher_binary(cache)


def test_a_supervisor_with_more_open_files_than_the_limit_still_starts_tools(manager: SandboxManager) -> None:
    """A long-running node holds many descriptors (BPF maps, gRPC clients);
    the policy's open-files limit binds the tool, not Bastion's setup."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]
    try:
        result = manager.run(["/usr/bin/python3", "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"],
                             parse_policy("limits: {open_files: 16}"))
    finally:
        for fd in held:
            os.close(fd)
    assert result.exit_status == 0, result.stderr
    assert result.stdout.strip() == "['0', '1', '2', '3']"  # stdio, and listdir's own: nothing inherited


def test_output_is_capped_and_flagged(manager: SandboxManager) -> None:
    result = manager.run(["/bin/sh", "-c", "yes | head -c 100000"], parse_policy("limits: {output_bytes: 4096}"))
    assert len(result.stdout) == 4096 and result.stdout_truncated and not result.stderr_truncated


def _received(sock: socket.socket) -> bytes:
    """All a socket gets until its peer closes or is silent for half a second."""
    sock.settimeout(0.5)
    got = b""
    try:
        while chunk := sock.recv(100):
            got += chunk
    except TimeoutError:
        pass
    return got


def test_quarantine_blocks_egress_from_that_instant(manager: SandboxManager) -> None:
    """New connections are refused, and sockets opened before the
    quarantine (TCP, and UDP connected to an allowed destination) send
    nothing more."""
    with socket.socket() as server, socket.socket(type=socket.SOCK_DGRAM) as udp:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        udp.bind(("127.0.0.1", 0))
        udp_port = udp.getsockname()[1]
        policy = parse_policy(f"network: {{allow: [{{host: 127.0.0.1, ports: [{port}, {udp_port}], protocol: any}}]}}\n"
                              "on_violation: deny")
        script = (
            "import socket, sys, time\n"
            f"tcp = socket.create_connection(('127.0.0.1', {port}))\n"
            "udp = socket.socket(type=socket.SOCK_DGRAM)\n"
            f"udp.connect(('127.0.0.1', {udp_port}))\n"
            "tcp.sendall(b'before'); udp.send(b'before')\n"
            "print(True, flush=True)\n"
            "time.sleep(1)\n"
            "for s in (tcp, udp):\n"
            "    try:\n        print(s.send(b'after'))\n    except OSError as e:\n        print(e.errno)\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}))\nexcept OSError as e:\n    print(e.errno)\n"
        )
        sb = manager.start(["/usr/bin/python3", "-c", script], policy)
        peer, _ = server.accept()
        time.sleep(0.5)
        manager.enforce(sb, Verdict.QUARANTINE, "test")
        result = manager.wait(sb)
        with peer:
            assert [_received(peer), _received(udp)] == [b"before", b"before"]
    # the queued TCP send is dropped on its way out, the UDP one refused, the new connect refused
    assert result.stdout.split() == ["True", "5", "1", "1"], (result.stdout, result.stderr)
    assert "egress" in [d.kind for d in result.denials]
    # the dropped packets are counted, not sent one by one (a flood would fill the ring)
    (dropped,) = [d.detail for d in result.denials if "dropped while quarantined" in d.detail]
    assert int(dropped.split()[0]) >= 2, dropped  # at least the TCP send and the UDP one
    assert result.verdict == "quarantine"


def test_an_entry_for_one_protocol_opens_no_port_to_the_other(manager: SandboxManager) -> None:
    """The kernel keeps one rule an address, with the ports of every entry
    that covers it: DNS to a resolver (port 53, TCP and UDP) beside a network
    allowed TCP on another port must not open UDP on that port."""
    with socket.socket(type=socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        policy = parse_policy(f"network: {{allow: [{{host: 127.0.0.0/8, ports: [{port}]}}], "
                              "dns_resolvers: [127.0.0.1]}\non_violation: deny")
        script = ("import socket\n"
                  "s = socket.socket(type=socket.SOCK_DGRAM)\n"
                  f"try:\n    s.sendto(b'x', ('127.0.0.1', {port}))\n    print('sent')\n"
                  "except OSError as e:\n    print(e.errno)\n")
        result = manager.run(["/usr/bin/python3", "-c", script], policy)
        assert _received(udp) == b""
    assert result.stdout.split() == ["1"], (result.stdout, result.stderr)  # EPERM
    assert "egress" in [d.kind for d in result.denials]


def test_freeze_and_thaw(manager: SandboxManager) -> None:
    sb = manager.start(["/bin/sh", "-c", "i=0; while [ $i -lt 30 ]; do i=$((i+1)); sleep 0.05; done; echo done"],
                       parse_policy("on_violation: deny"))
    manager.enforce(sb, Verdict.FREEZE, "test")
    assert sb.cgroup.events()["frozen"] == 1
    time.sleep(2)
    assert sb.proc is not None and sb.proc.poll() is None  # frozen: it cannot finish
    manager.thaw(sb)
    result = manager.wait(sb)
    assert result.stdout.strip() == "done" and result.exit_status == 0
    assert result.actions == ["freeze: test"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _sleeping(cgroup: Cgroup) -> list[int]:
    return [p for p in cgroup.pids() if Path(f"/proc/{p}/comm").read_text() == "sleep\n"]


def test_a_stopped_caller_is_continued_only_while_it_is_in_its_sandbox(manager: SandboxManager) -> None:
    """The guard continues a held caller by the pid the kernel reported: a
    pid no longer in the sandbox (the caller gone, the pid reused) is left
    alone."""
    sb = manager.start(["/bin/sleep", "30"], parse_policy(""))
    outside = subprocess.Popen(["/bin/sleep", "30"])
    try:
        until(lambda: bool(_sleeping(sb.cgroup)), 2, "the tool did not start")
        tool = _sleeping(sb.cgroup)[0]
        for pid in (tool, outside.pid):
            os.kill(pid, signal.SIGSTOP)
            until(lambda: _state(pid) == "T", 2, f"SIGSTOP did not stop {pid}")
            manager.resume(sb, pid)
        until(lambda: _state(tool) != "T", 2, "the sandbox's caller should run again")
        assert _state(outside.pid) == "T", "a process outside the sandbox should not be continued"
    finally:
        outside.kill()
        outside.wait()
        manager.enforce(sb, Verdict.KILL, "test")
        manager.wait(sb)


def test_lost_events_trigger_the_policy_action(kernel: None) -> None:
    with Sensor(ringbuf_pages=1) as tiny:
        manager = SandboxManager(tiny)
        manager._stop.set()  # a stalled reader: nothing drains the ring buffer
        manager._pump.join()
        try:
            sb = manager.start(["/bin/sh", "-c", "for i in $(seq 300); do cat /etc/hostname; done"], parse_policy(""))
            time.sleep(1.5)
            manager._check_losses()
            result = manager.wait(sb)
        finally:
            manager.close()
    assert result.events_lost > 0
    assert result.stopped_by is not None and "events lost" in result.stopped_by
    assert result.exit_status == STOPPED_EXIT


def test_a_benign_tool_that_opens_200k_files_completes_under_on_event_loss_kill(manager: SandboxManager) -> None:
    """A thousand library files read 200 times, then 20,000 names that do not
    exist, each a new event: the kernel counts the repeats, and the ring
    holds the burst of new paths while the pump catches up."""
    script = (
        "import glob\n"
        "files = sorted(glob.glob('/usr/lib/python3*/**/*.py', recursive=True))[:1000]\n"
        "assert len(files) == 1000\n"
        "for _ in range(200):\n"
        "    for f in files:\n"
        "        open(f, 'rb').close()\n"
        "for i in range(20000):\n"
        "    try:\n"
        "        open(f'/usr/lib/bastion-missing-{i}', 'rb')\n"
        "    except FileNotFoundError:\n"
        "        pass\n"
        "print('done')\n"
    )
    policy = parse_policy("on_event_loss: kill\nlimits: {wall_timeout_s: 120}\n")
    assert policy.on_event_loss is Verdict.KILL
    result = manager.run(["/usr/bin/python3", "-c", script], policy)
    assert result.exit_status == 0 and result.stdout.strip() == "done", (result.stopped_by, result.stderr)
    assert result.events_lost == 0 and result.stopped_by is None
    assert result.opens_repeated >= 199 * 1000
    assert result.events_seen >= 20_000 + 1000  # every distinct path was sent


def test_records_that_cannot_be_decoded_count_as_lost_events(manager: SandboxManager) -> None:
    """A record the user side cannot read is an event the guard never saw."""
    import ctypes as ct

    from ebpf.events import EvHdr

    sb = manager.start(["/bin/sleep", "30"], parse_policy(""))
    bad = bytes(EvHdr(cgroup_id=sb.id, type=99)) + b"garbage"  # a type no program sends
    pending = manager.sensor._ring(manager.sensor._events).pending  # as if the events ring had sent them
    pending.append(bad)
    pending.append(b"\x01" * (ct.sizeof(EvHdr) - 1))  # too short to say whose it is
    result = manager.wait(sb)
    assert result.stopped_by is not None and "2 events lost" in result.stopped_by, result.stopped_by
    assert result.exit_status == STOPPED_EXIT and result.events_lost == 2


def test_orphaned_sandboxes_are_killed_at_the_next_start(kernel: None, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = Cgroup.create(f"sbx-{dead.pid}-{uuid.uuid4().hex[:8]}")
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=orphan.enter)
    workdir = tmp_path / orphan.name
    workdir.mkdir()
    cleaned = kill_orphans(tmp_path)
    assert f"cgroup {orphan.name}" in cleaned and f"workdir {workdir}" in cleaned
    assert not workdir.exists()
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert not orphan.path.exists()


def test_sandboxes_die_with_their_supervisor(kernel: None, tmp_path: Path) -> None:
    """SIGKILL the supervising process: its sandbox must not outlive it."""
    script = (
        "import sys, time\n"
        "from ebpf.sensor import Sensor\nfrom sandbox.manager import SandboxManager\nfrom sandbox.policy import Policy\n"
        "s = Sensor().start(); m = SandboxManager(s)\n"
        "sb = m.start(['/bin/sleep', '60'], Policy())\n"
        "print(sb.name, flush=True); time.sleep(60)\n"
    )
    sup = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert sup.stdout is not None
    name = sup.stdout.readline().strip()
    leaf = bastion_root() / name
    assert Cgroup(leaf).pids(), "the sandbox should be running"
    sup.kill()
    sup.wait()
    until(lambda: not Cgroup(leaf).pids(), timeout=5, what="the sandbox outlived its supervisor")
    kill_orphans(tmp_path)
    assert not leaf.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("network: everywhere", "field network: must be 'none'"),
        ("network: {allow: [{host: 127.0.0.1, ports: [70000]}]}", "field network.allow.0.ports: port 70000"),
        ("limits: {pids: 0}", "field limits.pids"),
        ("user: {uid: 0}", "field user.uid"),
        ("deny_syscalls: [teleport]", "field deny_syscalls: unknown syscall 'teleport'"),
        ("filesystem: {read_only: [etc]}", "field filesystem.read_only: etc is not an absolute path"),
        ("on_violation: shrug", "field on_violation"),
        ("surprise: 1", "field surprise: Extra inputs are not permitted"),
        ("limits: [1", "not valid YAML"),
        ("- a list", "expected a mapping of fields"),
    ],
)
def test_bad_policy_names_the_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match="^policy.yaml: .*" + message.replace("[", r"\[").replace("(", r"\(")):
        parse_policy(text, "policy.yaml")


def test_cli_runs_a_command_and_reports_json(kernel: None, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("on_violation: kill\n")
    bastion = Path(sys.executable).parent / "bastion"
    out = subprocess.run([str(bastion), "sandbox", "run", "--policy", str(policy), "--json", "--",
                          "/bin/sh", "-c", "echo hello; exit 3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    first, report = out.stdout.splitlines()
    assert first == "hello"
    data = json.loads(report)
    assert data["exit_code"] == 3 and data["verdict"] == "allow" and data["denials"] == []

    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: {pids: -1}\n")
    out = subprocess.run([str(bastion), "sandbox", "run", "--policy", str(bad), "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and f"{bad}: field limits.pids" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_cli_alone_judges_as_a_node_does(kernel: None) -> None:
    """Without a node, `sandbox run` is under the same guard: a packet socket
    is a violation and the policy's kill, not a refusal that lets it run on."""
    bastion = Path(sys.executable).parent / "bastion"
    attack = "import socket; socket.socket(17, socket.SOCK_RAW, 0)"
    out = subprocess.run([str(bastion), "sandbox", "run", "--json", "--", "/usr/bin/python3", "-c", attack],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == STOPPED_EXIT, out.stderr
    assert "compiling the sensor" in out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["verdict"] == "kill" and report["stopped_by"].startswith("rule: denied syscall socket")
    assert [a["rule"] for a in report["alerts"]] == ["denied syscall socket attempted"]


def test_cli_exit_status_is_126_when_bastion_stops_the_command(kernel: None) -> None:
    bastion = Path(sys.executable).parent / "bastion"
    out = subprocess.run([str(bastion), "sandbox", "run", "--timeout", "0.5", "--", "/bin/sleep", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == STOPPED_EXIT
    assert os.path.exists(bastion)
