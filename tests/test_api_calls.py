"""API calls decided in the kernel: a tool allowed to reach the records API
may call only the endpoints its policy names, over plain HTTP and over TLS.
Each stopped call is checked three ways: the server received nothing, the
alert names the step, method and path, and the audit log holds the call."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bastion.guarded import GuardedRun, GuardedSandboxes
from bastion.local_api import LocalApi, Received, serve
from common.verdicts import Verdict
from ebpf.api import API_ANY_SEGMENT, METHODS, fnv1a
from ebpf.events import Event, EventKind
from ebpf.sensor import Sensor
from guard import audit
from guard.alerts import ApiCallRecord
from guard.audit import AuditLog
from guard import recorder
from sandbox.cgroup import cgroup2_mount
from sandbox.egress import compile_api
from sandbox.limits import v1_mount
from sandbox.policy import ApiRule, Destination, Network, Policy, PolicyError, parse_policy
from sandbox.result import STOPPED_EXIT
from tests.apis import LABELS, allowing, api_policy, base, ip_port_only, request
from tests.waiting import until

CURL = Path("/usr/bin/curl")


@pytest.fixture(scope="module")
def guarded(sensor: Sensor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedSandboxes]:
    log = AuditLog(tmp_path_factory.mktemp("audit") / "audit.jsonl")
    with GuardedSandboxes(sensor, log) as g:
        yield g
    log.close()


def _curl(guarded: GuardedSandboxes, records_policy: Policy, method: str, url: str, body: str) -> GuardedRun:
    return guarded.run([str(CURL), "-sS", "-X", method, "-H", "Content-Type: application/json",
                        "--data", body, url], records_policy, labels=LABELS)


def _audited_calls(guarded: GuardedSandboxes, sandbox: str) -> list[dict[str, object]]:
    calls = [b for b in audit.read(guarded.audit.path, "api_call", anchored=True) if b["sandbox"] == sandbox]
    for body in calls:  # the guard writes plain dicts: each must be exactly the record model
        assert ApiCallRecord.model_validate(body).model_dump(mode="json", exclude={"seq", "log"}) == body
    return calls


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_allowed_calls_pass_with_their_replies(guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi,
                                               tls: bool) -> None:
    before = len(records_api.received)
    get = request(guarded, records_policy, "GET", f"{base(records_api, tls)}/records/17")
    post = request(guarded, records_policy, "POST", f"{base(records_api, tls)}/notes", {"text": "seen in clinic"})

    assert get.result.exit_status == 0, get.result.stderr
    assert '"status": 200' in get.result.stdout and "penicillin" in get.result.stdout
    assert post.result.exit_status == 0, post.result.stderr
    assert '"status": 201' in post.result.stdout and '\\"stored\\": 26' in post.result.stdout
    assert [(r.method, r.path) for r in records_api.received[before:]] == [("GET", "/records/17"), ("POST", "/notes")]
    assert not get.alerts and not post.alerts
    for run, (method, path) in ((get, ("GET", "/records/17")), (post, ("POST", "/notes"))):
        calls = run.result.api_calls
        assert [(c.method, c.path, c.tls, c.allowed) for c in calls] == [(method, path, tls, True)]
        logged = _audited_calls(guarded, run.result.sandbox)
        assert [(b["method"], b["path"], b["allowed"]) for b in logged] == [(method, path, True)]


def _two_hosts(records_api: LocalApi) -> Policy:
    """Virtual hosts behind one gateway: 127.0.0.1 serves records, localhost
    the formulary."""
    policy = api_policy(records_api)
    assert isinstance(policy.network, Network)
    records = policy.network.allow[0].model_copy(update={"api": [ApiRule(methods=["GET"], path="/records/{id}")]})
    formulary = records.model_copy(update={"host": "localhost", "api": [ApiRule(methods=["GET"], path="/formulary")]})
    return allowing(policy, [records, formulary])


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_two_api_hosts_on_one_address_and_port_each_keep_their_rules(
        guarded: GuardedSandboxes, records_api: LocalApi, tls: bool) -> None:
    """The Host header, not the address, says whose rules a request answers to."""
    policy = _two_hosts(records_api)
    port = records_api.tls_port if tls else records_api.port
    scheme = "https" if tls else "http"
    before = len(records_api.received)
    for host, path in (("127.0.0.1", "/records/17"), ("localhost", "/formulary")):
        run = request(guarded, policy, "GET", f"{scheme}://{host}:{port}{path}")
        assert run.result.exit_status == 0 and not run.alerts, (host, run.result.stderr, run.alerts)
    assert [r.path for r in records_api.received[before:]] == ["/records/17", "/formulary"]
    before = len(records_api.received)
    crossed = request(guarded, policy, "GET", f"{scheme}://127.0.0.1:{port}/formulary")
    _assert_stopped(guarded, crossed, records_api, before, "GET 127.0.0.1/formulary stopped in the kernel: no API rule")


# A TLS connection whose server name (SNI) is not its requests' Host: a
# gateway that routes by the name sends the requests to that name's server.
# argv: port, CA file, server name, Host, path.
NAMED_OTHERWISE = r"""
import socket, ssl, sys
port, ca, name, host, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=ca)
context.check_hostname = False  # the name is the attack's, not the certificate's
s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=name)
s.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path.encode(), host.encode(), port))
print(s.recv(100))
"""


@pytest.mark.parametrize("name, host, path, why", [
    ("exfil.example", "127.0.0.1", "/records/17",
     "(TLS to exfil.example at port {port}) stopped in the kernel: the TLS server name (SNI) names no API destination"),
    ("localhost", "127.0.0.1", "/records/17",
     "stopped in the kernel: a TLS request whose Host names another destination than its connection's server name"),
], ids=["a name without rules", "another API host's name"])
def test_a_tls_connection_answers_to_its_server_name(guarded: GuardedSandboxes, records_api: LocalApi, name: str,
                                                     host: str, path: str, why: str) -> None:
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", NAMED_OTHERWISE, str(records_api.tls_port), str(records_api.ca_file),
                       name, host, path], _two_hosts(records_api), labels=LABELS)
    _assert_stopped(guarded, run, records_api, before, why.format(port=records_api.tls_port))


# A call with a bearer token: its headers take more than one of the kernel's
# 512-byte windows. argv: port, tls, CA file, token length.
WITH_TOKEN = """
import http.client, ssl, sys
port, tls, ca, n = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
conn = (http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca)) if tls
        else http.client.HTTPConnection("127.0.0.1", port))
conn.request("POST", "/notes", body=b'{"text": "seen"}', headers={"Authorization": "Bearer " + "t" * n})
print(conn.getresponse().read().decode())
"""


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_call_with_a_kilobytes_long_token_is_read_and_one_past_the_scan_is_stopped(
        guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi, tls: bool) -> None:
    port = str(records_api.tls_port if tls else records_api.port)
    before = len(records_api.received)
    allowed = guarded.run(["/usr/bin/python3", "-c", WITH_TOKEN, port, "1" if tls else "0", str(records_api.ca_file),
                           "3000"], records_policy, labels=LABELS)
    assert allowed.result.exit_status == 0 and '"stored": 16' in allowed.result.stdout, allowed.result.stderr
    assert [(r.method, r.path) for r in records_api.received[before:]] == [("POST", "/notes")]
    assert [(c.method, c.path, c.allowed) for c in allowed.result.api_calls] == [("POST", "/notes", True)]
    assert not allowed.alerts
    # headers that end past the kernel's 4,096 bytes cannot be read
    before = len(records_api.received)
    past = guarded.run(["/usr/bin/python3", "-c", WITH_TOKEN, port, "1" if tls else "0", str(records_api.ca_file),
                        "5000"], records_policy, labels=LABELS)
    _assert_stopped(guarded, past, records_api, before, "POST 127.0.0.1/notes stopped in the kernel: not an HTTP/1.x")


def _assert_stopped(guarded: GuardedSandboxes, run: GuardedRun, records_api: LocalApi, before: int, what: str) -> None:
    """The call never reached the server, the tool was killed, and the alert
    and the audit record name the step and the call."""
    assert records_api.received[before:] == [], f"the server received {records_api.received[before:]}"
    _assert_killed_and_recorded(guarded, run, what)


def _assert_killed_and_recorded(guarded: GuardedSandboxes, run: GuardedRun, what: str) -> None:
    result = run.result
    assert result.exit_status == STOPPED_EXIT or result.signal == 9, (result.stdout, result.stderr)
    assert [d for d in result.denials if d.kind == "api"], result.denials
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert what in alert.rule and alert.step == LABELS["step"] and alert.agent == "clinic", alert.rule
    assert run.verdict is Verdict.KILL
    logged_alerts = [b for b in audit.read(guarded.audit.path, "alert") if b["id"] == alert.id]
    assert logged_alerts and logged_alerts[0]["step"] == LABELS["step"]
    calls = [b for b in _audited_calls(guarded, result.sandbox) if not b["allowed"]]
    assert calls and calls[0]["step"] == LABELS["step"]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_injected_export_to_the_allowed_host_is_stopped(guarded: GuardedSandboxes, records_policy: Policy,
                                                        records_api: LocalApi, tls: bool) -> None:
    before = len(records_api.received)
    run = request(guarded, records_policy, "POST", f"{base(records_api, tls)}/patients/export", {"mrn": "77120934"})
    _assert_stopped(guarded, run, records_api, before, "POST 127.0.0.1/patients/export")


@pytest.mark.skipif(not CURL.exists(), reason="curl is not installed")
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_curl_export_is_stopped_and_its_allowed_calls_pass(guarded: GuardedSandboxes, records_policy: Policy,
                                                            records_api: LocalApi, tls: bool) -> None:
    before = len(records_api.received)
    ok = _curl(guarded, records_policy, "POST", f"{base(records_api, tls)}/notes", '{"text": "ok"}')
    assert ok.result.exit_status == 0 and '"stored"' in ok.result.stdout, ok.result.stderr
    assert [(r.method, r.path) for r in records_api.received[before:]] == [("POST", "/notes")]
    run = _curl(guarded, records_policy, "POST", f"{base(records_api, tls)}/patients/export", '{"mrn": "77120934"}')
    _assert_stopped(guarded, run, records_api, before + 1, "POST 127.0.0.1/patients/export")


WGET = Path("/usr/bin/wget")


@pytest.mark.skipif(not WGET.exists(), reason="wget is not installed")
def test_gnutls_client_export_is_stopped_and_its_allowed_calls_pass(guarded: GuardedSandboxes, records_policy: Policy,
                                                                    records_api: LocalApi) -> None:
    """wget speaks TLS through GnuTLS, whose record writes are probed like libssl's."""
    before = len(records_api.received)
    wget = [str(WGET), "-q", "-O", "-", f"--ca-certificate={records_api.ca_file}"]
    ok = guarded.run([*wget, f"{base(records_api, True)}/records/17"], records_policy, labels=LABELS)
    assert ok.result.exit_status == 0 and "penicillin" in ok.result.stdout, ok.result.stderr
    assert [c.tls and c.allowed for c in ok.result.api_calls] == [True]
    run = guarded.run([*wget, "--post-data", '{"mrn": "77120934"}', f"{base(records_api, True)}/patients/export"],
                      records_policy, labels=LABELS)
    _assert_stopped(guarded, run, records_api, before + 1, "POST 127.0.0.1/patients/export")


# One HTTPS call, then the inode of the libssl this process maps.
CALL_THEN_MAPPED_LIBSSL = """
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
urllib.request.urlopen(sys.argv[1], context=context).read()
print(next(line.split()[4] for line in open("/proc/self/maps") if line.rstrip().endswith("/libssl.so.3")))
"""
TLS_PROGRAMS = ("tls_write", "tls_enter", "tls_leave")


def test_only_sandboxed_processes_map_the_probed_tls_library(sensor: Sensor, guarded: GuardedSandboxes,
                                                              records_policy: Policy, records_api: LocalApi) -> None:
    """A uprobe traps every process that maps the probed file: the host's own
    TLS clients and servers, and sandboxes without API rules, whose TLS is
    not read, must not pay for the checks."""
    from ebpf.program_stats import counting, runs

    (libssl,) = [lib for lib in sensor.tls_libraries if lib.path.name == "libssl.so.3"]
    url = f"{base(records_api, True)}/records/17"
    command = ["/usr/bin/python3", "-c", CALL_THEN_MAPPED_LIBSSL, url, str(records_api.ca_file)]
    with counting():
        before, _ = runs(sensor.bpf, TLS_PROGRAMS)
        # this process calls, and the records API in it answers: both unsandboxed
        urllib.request.urlopen(url, context=ssl.create_default_context(cafile=records_api.ca_file)).read()
        host, _ = runs(sensor.bpf, TLS_PROGRAMS)
        unread = guarded.run(command, ip_port_only(records_policy), labels=LABELS)
        no_rules, _ = runs(sensor.bpf, TLS_PROGRAMS)
        read = guarded.run(command, records_policy, labels=LABELS)
        with_rules, _ = runs(sensor.bpf, TLS_PROGRAMS)
    assert unread.result.exit_status == 0 and read.result.exit_status == 0, (unread.result.stderr, read.result.stderr)
    assert host - before == 0, "the host's own TLS calls ran the sensor's TLS programs"
    assert no_rules - host == 0, "a sandbox without API rules ran the sensor's TLS programs"
    assert with_rules - no_rules > 0, "the TLS call of a sandbox with API rules was not read"
    assert int(unread.result.stdout) == libssl.path.stat().st_ino
    assert int(read.result.stdout) == libssl.copy.stat().st_ino != libssl.path.stat().st_ino


# What an injected agent wants to send the allowed host
EXPORT = b"POST /patients/export HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"

# Requests a parser-confusion attack would try; each on a raw socket to the plain port.
HOSTILE_REQUESTS = {
    "dot segments": b"GET /records/../patients/export HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "encoded slash": b"GET /records/1%2f..%2fpatients HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "doubled slash": b"GET //records/17 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # a server that takes path parameters off each segment (Tomcat) reads
    # `..;` as `..`: /allergies, not a record's allergies
    "dot segment with a parameter": b"GET /records/..;/allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # a URL parser drops tabs and newlines (WHATWG's), which joins the dots
    "tab between dots": b"GET /records/.\t./allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # raw UTF-8 where percent-encoding belongs: NFKC folds fullwidth dots to dots
    "fullwidth dots": "GET /records/\uff0e\uff0e/allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
    # a server that splits the target as a URL (uvicorn, with httptools) ends
    # the path at the `#`: /records/17, where the kernel matched /records/{id}/allergies
    "fragment": b"GET /records/17#/allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # escapes a lenient decoder turns into dots: a server that decodes twice,
    # IIS's and ASP.NET's %u, overlong UTF-8
    "double-encoded dots": b"GET /records/%252e%252e/allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "percent-u dots": b"GET /records/%u002e%u002e/allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "overlong UTF-8 dots": b"GET /records/%c0%ae%c0%AE/allergies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # a second request line in the version's place, which a server that reads
    # fewer bytes than were sent would take for the request
    "request line behind the target": (b"GET /records/POST /patients/export HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    "two Host headers": b"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
    "another host": b"GET /records/17 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "HTTP/2": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    # method-override middleware (Express, Rails, ASP.NET) would act on this allowed POST as a DELETE
    "method override": (b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-HTTP-Method-Override: DELETE\r\n"
                        b"Content-Length: 2\r\n\r\n{}"),
    "chunked body": b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    # a lenient server may take a name with space before its colon as that header
    "space before a colon": (b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                             b"Transfer-Encoding : chunked\r\n\r\n{}"),
    "folded line": (b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nX-Note: a\r\n"
                    b" Transfer-Encoding: chunked\r\n\r\n{}"),
    # 200 to Bastion; 2 to a server that stops at the space, which then reads the export
    "space inside Content-Length": (b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2 00\r\n\r\n{}"
                                    + EXPORT),
    "body over the limit": b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
    # a server that ends a line at a bare CR (Python's http.server) reads a
    # Content-Length that the kernel took for part of another header: the
    # body it reads ends where the kernel's begins, and what follows is a request
    "header behind a bare CR": (b"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: 1\rContent-Length: 0\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(EXPORT), EXPORT)),
    "pipelined second request": (b"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                 b"POST /patients/export HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"),
}
RAW_SEND = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(bytes.fromhex(sys.argv[2]))
print(s.recv(100))
"""


@pytest.mark.parametrize("name", sorted(HOSTILE_REQUESTS))
def test_requests_outside_normal_form_are_stopped(guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi,
                                                  name: str) -> None:
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", RAW_SEND, str(records_api.port), HOSTILE_REQUESTS[name].hex()],
                      records_policy, labels=LABELS)
    _assert_stopped(guarded, run, records_api, before, "stopped in the kernel")


# A body on a GET that carries a request: the server reads at most 1 MiB of a
# body (many cap what they read, and many read none on a GET), and takes the
# rest for the next request. argv: port, tls, CA file, the request carried.
BODY_PAST_THE_SERVER = r"""
import socket, ssl, sys
port, tls, ca, carried = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], bytes.fromhex(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
if tls:
    s = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname="127.0.0.1")
filler = b"x" * (1 << 20)
head = b"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n" % (port, len(filler) + len(carried))
s.sendall(head + filler + carried)
print(s.recv(100))
"""


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_body_on_a_get_cannot_carry_a_request_past_the_server(guarded: GuardedSandboxes, records_policy: Policy,
                                                               records_api: LocalApi, tls: bool) -> None:
    before = len(records_api.received)
    port = records_api.tls_port if tls else records_api.port
    run = guarded.run(["/usr/bin/python3", "-c", BODY_PAST_THE_SERVER, str(port), "1" if tls else "0",
                       str(records_api.ca_file), EXPORT.hex()], records_policy, labels=LABELS)
    _assert_stopped(guarded, run, records_api, before, "GET 127.0.0.1/records/17 stopped in the kernel: a body on a GET")


def test_a_get_carries_a_body_where_its_rule_asks_for_one(guarded: GuardedSandboxes, records_policy: Policy,
                                                          records_api: LocalApi) -> None:
    """A search API that takes its query as a GET's body: its rule sets max_body_bytes."""
    assert isinstance(records_policy.network, Network)
    dest = records_policy.network.allow[0].model_copy(
        update={"api": [ApiRule(methods=["GET"], path="/records/{id}", max_body_bytes=16)]})
    get = b"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", RAW_SEND, str(records_api.port), get.hex()],
                      allowing(records_policy, [dest]), labels=LABELS)
    assert run.result.exit_status == 0 and "200 OK" in run.result.stdout, run.result.stderr
    assert records_api.received[before:] == [Received("GET", "/records/17", b"{}")]
    assert not run.alerts


# TCP urgent data: the server's TCP takes each urgent byte out of the stream,
# so the server's body of an allowed POST ends as many bytes into what the
# kernel judged as the next request. argv: port.
URGENT_BYTES = r"""
import socket, sys, time
carried = b"POST /patients/export HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
pad = b"GET /records/"  # a request's start to the kernel, a body's end to the server
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (20 + len(pad)) + b"x" * 20)
for _ in pad:
    time.sleep(0.05)  # the server reads past each urgent byte before the next comes
    s.send(b"u", socket.MSG_OOB)
s.sendall(pad + carried)
print(s.recv(200))
"""


def test_urgent_data_cannot_take_bytes_out_of_what_the_checks_read(guarded: GuardedSandboxes, records_policy: Policy,
                                                                  records_api: LocalApi) -> None:
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", URGENT_BYTES, str(records_api.port)], records_policy, labels=LABELS)
    assert "/patients/export" not in records_api.paths[before:], records_api.paths[before:]
    # seccomp's trap (SIGSYS), or the guard's kill on its alert, whichever comes first
    assert run.result.signal in (9, 31) and run.verdict is Verdict.KILL, (run.result.exit_status, run.result.stderr)
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert "urgent data" in alert.rule and alert.step == LABELS["step"], alert.rule
    assert [b for b in audit.read(guarded.audit.path, "alert") if b["id"] == alert.id]


# A client that sends TLS records of its own: a ClientHello libssl made into
# memory, sent by the program outside any library call; the same with an
# encrypted_client_hello extension, whose server name the kernel cannot
# read; and a record that is no ClientHello. argv: port, which.
TLS_OF_ITS_OWN = r"""
import socket, ssl, struct, sys
port, which = int(sys.argv[1]), sys.argv[2]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
out = ssl.MemoryBIO()
try:
    context.wrap_bio(ssl.MemoryBIO(), out).do_handshake()
except ssl.SSLWantReadError:
    pass
hello = bytearray(out.read())
if which == "ech":
    ext = struct.pack("!HHI", 0xfe0d, 4, 0)
    at = 44 + hello[43]  # past the session id: the cipher suites, the compression methods
    at += 2 + struct.unpack_from("!H", hello, at)[0]
    at += 1 + hello[at]
    for where, size in ((3, 2), (at, 2), (6, 3)):  # the record's, the extensions' and the handshake's lengths
        value = int.from_bytes(hello[where:where + size], "big") + len(ext)
        hello[where:where + size] = value.to_bytes(size, "big")
    hello += ext
elif which == "other":
    hello = bytes([0x16, 0x03, 0x01, 0x00, 0x05]) + b"hello"
s = socket.create_connection(("127.0.0.1", port))
s.sendall(hello)
print(s.recv(100))
"""


@pytest.mark.parametrize("which, why", [
    ("own", "TLS bytes that no readable, allowed request wrote"),
    ("ech", "a TLS ClientHello Bastion cannot read, or one whose server name is encrypted (ECH)"),
    ("other", "a TLS ClientHello Bastion cannot read"),
], ids=["a ClientHello sent outside the library", "an encrypted server name", "no ClientHello"])
def test_a_tls_client_bastion_cannot_read_is_stopped(guarded: GuardedSandboxes, records_policy: Policy,
                                                     records_api: LocalApi, which: str, why: str) -> None:
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", TLS_OF_ITS_OWN, str(records_api.tls_port), which], records_policy,
                      labels=LABELS)
    _assert_stopped(guarded, run, records_api, before, why)


# A second thread rewrites an allowed request after the kernel judged it:
# Python lets go of its lock around the library's write, and on a connection
# whose handshake the library makes inside that write, it copies the request
# only after the server's answer, a round trip later. The export is padded to
# the GET's length. Pure Python. argv: port, CA file, whether to rewrite.
REWRITTEN_BY_A_THREAD = r"""
import socket, ssl, sys, threading, time
port, ca, rewriting = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
host = b"127.0.0.1:%d" % port
export = b"POST /patients/export HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n" % host
head = b"GET /records/17 HTTP/1.1\r\nHost: %s\r\n" % host
request = bytearray(head + b"X-Pad: " + b"a" * (len(export) - len(head) - 11) + b"\r\n\r\n")
writing = threading.Event()
def rewrite():
    writing.wait()
    time.sleep(0.0003)
    request[:] = export
if rewriting:
    threading.Thread(target=rewrite).start()
context = ssl.create_default_context(cafile=ca)
s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), do_handshake_on_connect=False,
                        server_hostname="127.0.0.1")
writing.set()
s.send(request)
print(s.recv(15))
"""


def test_a_tls_request_rewritten_after_it_was_judged_is_stopped(guarded: GuardedSandboxes, records_policy: Policy,
                                                               records_api: LocalApi) -> None:
    """Before the buffer was compared at each send, the export reached the
    server in every try, and the audit log said GET /records/17 allowed."""
    for _ in range(5):  # a rewrite before the probe's read, or after the send, shows nothing: again
        before = len(records_api.received)
        run = guarded.run(["/usr/bin/python3", "-c", REWRITTEN_BY_A_THREAD, str(records_api.tls_port),
                           str(records_api.ca_file), "1"], records_policy, labels=LABELS)
        assert "/patients/export" not in [r.path for r in records_api.received[before:]]
        if any("changed in memory" in c.reason for c in run.result.api_calls):
            break
    else:
        pytest.fail("the rewrite never fell between the kernel's read and the send")
    _assert_stopped(guarded, run, records_api, before,
                    "stopped in the kernel: a TLS request whose bytes changed in memory after the kernel judged them")


def test_a_tls_request_whose_handshake_runs_inside_its_write_is_served(
        guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi) -> None:
    """The same client, nothing rewritten: the handshake's records go out
    inside the judged write, each send compared, and the request after them."""
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", REWRITTEN_BY_A_THREAD, str(records_api.tls_port),
                       str(records_api.ca_file), "0"], records_policy, labels=LABELS)
    assert run.result.exit_status == 0 and "200 OK" in run.result.stdout, run.result.stderr
    assert [(r.method, r.path) for r in records_api.received[before:]] == [("GET", "/records/17")]
    assert not run.alerts


# The records of a request the library encrypted into memory (its Host names
# no API destination, so its write is let be), sent from a callback that the
# library runs inside a handshake of another connection of its own: bytes
# sent there were taken for the library's own records. Pure Python.
TLS_FROM_A_CALLBACK = r"""
import socket, ssl, sys
port, ca, request = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port))
context = ssl.create_default_context(cafile=ca)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

def send_inside_the_library(data):
    decoy = ssl.create_default_context()
    def callback(*_):
        if data:
            sock.sendall(data)
            data.clear()
    decoy._msg_callback = callback  # called as the decoy writes its ClientHello
    try:
        decoy.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()).do_handshake()
    except ssl.SSLWantReadError:
        pass

while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        send_inside_the_library(bytearray(outgoing.read()))
        incoming.write(sock.recv(65536))
tls.write(request)
send_inside_the_library(bytearray(outgoing.read()))
while True:
    incoming.write(sock.recv(65536))
    try:
        print(tls.read(4096))
        break
    except ssl.SSLWantReadError:
        pass
"""


# An allowed call from a tool that gave libssl a verify callback (ctypes).
CALL_WITH_A_VERIFY_CALLBACK = r"""
import ctypes, http.client, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
ctx = ctypes.c_void_p.from_address(id(context) + 16)  # CPython 3.11's PySSLContext: its SSL_CTX*
verify = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)(lambda ok, store: ok)
ctypes.CDLL("libssl.so.3").SSL_CTX_set_verify(ctx, 1, verify)  # SSL_VERIFY_PEER
conn = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=context)
conn.request("GET", "/records/17")
print(conn.getresponse().read())
"""


@pytest.mark.parametrize("script, request_hex", [
    (TLS_FROM_A_CALLBACK, EXPORT.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1:1").hex()),  # a port without rules
    (CALL_WITH_A_VERIFY_CALLBACK, ""),
], ids=["export from a message callback", "allowed call with a verify callback"])
def test_tls_from_a_tool_that_gave_its_library_a_callback_is_stopped(guarded: GuardedSandboxes, records_policy: Policy,
                                                                    records_api: LocalApi, script: str,
                                                                    request_hex: str) -> None:
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", script, str(records_api.tls_port), str(records_api.ca_file),
                       request_hex], records_policy, labels=LABELS)
    _assert_stopped(guarded, run, records_api, before, "asked its TLS library to call it back")


# One write of 4 GiB and a few bytes, through the library's own API: its
# size's low 32 bits are an allowed request, and the export follows it (the
# rest is a mapping never touched).
WRITE_PAST_4_GIB = r"""
import ctypes, http.client, mmap, ssl, sys
port, ca, allowed, export = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca))
conn.connect()
size = (1 << 32) + len(allowed)
buf = mmap.mmap(-1, size)
buf[:len(allowed) + len(export)] = allowed + export
tls = ctypes.c_void_p.from_address(id(conn.sock._sslobj) + 24)  # CPython 3.11's PySSLSocket: its SSL*
written = ctypes.c_size_t()
start = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
ctypes.CDLL("libssl.so.3").SSL_write_ex(tls, start, ctypes.c_size_t(size), ctypes.byref(written))
print(conn.sock.recv(100))
"""


def test_a_tls_write_past_4_gib_is_not_taken_for_its_first_bytes(guarded: GuardedSandboxes, records_policy: Policy,
                                                                records_api: LocalApi) -> None:
    before = len(records_api.received)
    host = f"Host: 127.0.0.1:{records_api.tls_port}".encode()
    allowed = b"GET /records/17 HTTP/1.1\r\n%s\r\n\r\n" % host
    run = guarded.run(["/usr/bin/python3", "-c", WRITE_PAST_4_GIB, str(records_api.tls_port), str(records_api.ca_file),
                       allowed.hex(), EXPORT.replace(b"Host: 127.0.0.1", host).hex()], records_policy, labels=LABELS)
    _assert_stopped(guarded, run, records_api, before, "not an HTTP/1.x request Bastion can read")


# Two keep-alive calls over one TLS connection.
TWO_TLS_CALLS = """
import http.client, ssl, sys
connection = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]),
                                         context=ssl.create_default_context(cafile=sys.argv[2]))
for _ in range(2):
    connection.request("GET", "/records/17")
    print(connection.getresponse().read().decode())
"""
REPLY = b'{"id": 17, "allergies": ["penicillin"]}'
HANDSHAKE, CLIENT_HELLO, KEY_UPDATE = 22, 1, 24  # a record's content type; two handshake messages' types


def _ssl_of(sock: ssl.SSLSocket) -> ctypes.c_void_p:
    """The SSL* under a Python TLS socket: CPython 3.11's PySSLSocket keeps
    it after its object header and its socket's weak reference."""
    return ctypes.c_void_p.from_address(id(sock._sslobj) + 24)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _server_that_asks(records_api: LocalApi, what: str) -> Iterator[tuple[int, list[int]]]:
    """A TLS server for one connection that, after the first request, asks
    the client for a renegotiation (TLS 1.2), which it answers inside its
    read, or for a key update (TLS 1.3), answered at its next write. Yields
    its port and the handshake messages the client sends after the ask."""
    libssl = ctypes.CDLL("libssl.so.3")  # the library this process's ssl module maps
    context = _server_context(records_api)
    if what == "renegotiation":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    answers: list[int] = []
    asked = threading.Event()

    def heard(_tls: object, direction: str, _version: object, content: int, message: int, _data: bytes) -> None:
        if asked.is_set() and direction == "read" and content == HANDSHAKE:
            answers.append(message)

    context._msg_callback = heard  # type: ignore[attr-defined]

    def serve(tls: ssl.SSLSocket) -> None:
        for call in range(2):
            request = b""
            while b"\r\n\r\n" not in request:
                request += tls.recv(4096)
            if call == 0:
                asked.set()
                if what == "renegotiation":  # sent with the answer; what the client does, the test asserts
                    libssl.SSL_renegotiate(_ssl_of(tls))
                    libssl.SSL_do_handshake(_ssl_of(tls))
                else:
                    libssl.SSL_key_update(_ssl_of(tls), 1)  # SSL_KEY_UPDATE_REQUESTED
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY))

    with _serving_one(socket.create_server(("127.0.0.1", 0)), context, serve) as port:
        yield port, answers


def _server_context(records_api: LocalApi) -> ssl.SSLContext:
    """A TLS server's context with the records API's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(records_api.ca_file.parent / "server.pem", records_api.ca_file.parent / "server.key")
    return context


@contextlib.contextmanager
def _serving_one(listener: socket.socket, context: ssl.SSLContext,
                 serve: Callable[[ssl.SSLSocket], None]) -> Iterator[int]:
    """One TLS connection on listener, served on a thread; yields the port."""
    def run() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            serve(tls)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=10)


@pytest.mark.parametrize("what, answer", [("renegotiation", CLIENT_HELLO), ("key update", KEY_UPDATE)],
                         ids=["renegotiation", "key update"])
def test_what_a_tls_server_asks_for_is_answered_and_the_calls_pass(guarded: GuardedSandboxes, records_api: LocalApi,
                                                                  what: str, answer: int) -> None:
    """The client's library sends records of its own that no request wrote:
    a renegotiation's handshake from inside its read, a key update before
    its next request. They pass, and the calls with them."""
    with _server_that_asks(records_api, what) as (port, answers):
        policy = api_policy(dataclasses.replace(records_api, tls_port=port, received=[]))
        run = guarded.run(["/usr/bin/python3", "-c", TWO_TLS_CALLS, str(port), str(records_api.ca_file)], policy,
                          labels=LABELS)
    assert run.result.exit_status == 0, run.result.stderr
    assert run.result.stdout.count("penicillin") == 2
    assert not run.alerts and not run.result.denials
    assert [(c.method, c.path, c.tls, c.allowed) for c in run.result.api_calls] == [("GET", "/records/17", True, True)] * 2
    assert answer in answers, answers


@pytest.mark.parametrize("entry, field", [
    ('{host: 10.0.0.0/8, ports: [80], api: [{methods: [GET], path: "/x"}]}', "one host"),
    ('{host: 127.0.0.1, ports: [80], protocol: udp, api: [{methods: [GET], path: "/x"}]}', "protocol tcp"),
    ('{host: 127.0.0.1, api: [{methods: [GET], path: "/x"}]}', "ports"),
    ('{host: 127.0.0.1, ports: [80], api: [{methods: [GET], path: "/a/../b"}]}', "'..'"),
    ('{host: 127.0.0.1, ports: [80], api: [{methods: [GET], path: "records"}]}', "does not start with /"),
    ('{host: 127.0.0.1, ports: [80], api: [{methods: [FETCH], path: "/x"}]}', "methods"),
    ('{host: records.example, ports: [80], api: [{methods: [GET], path: "/x"}]}, '
     '{host: Records.example, ports: [80, 443], api: [{methods: [POST], path: "/y"}]}', "two entries"),
    (", ".join(f'{{host: h{i}.example, ports: [80], api: [{{methods: [GET], path: "/x"}}]}}' for i in range(32)),
     "at most 31 destinations"),
])
def test_malformed_api_rules_are_refused_naming_the_field(entry: str, field: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(f"network: {{allow: [{entry}]}}", "p.yaml")
    message = str(err.value)
    assert "p.yaml" in message and "network.allow" in message and field in message, message
    assert "\n" not in message


def test_a_template_matches_one_segment_per_name_and_any_rest_after_a_star() -> None:
    policy = parse_policy('network: {allow: [{host: 127.0.0.1, ports: [80], api: ['
                          '{methods: [GET], path: "/records/{id}"}, {methods: [GET, PUT], path: "/files/*"}]}]}')
    assert isinstance(policy.network, Network)
    (dest,) = compile_api(policy.network)
    records, files = dest.rules
    assert records.segments == (fnv1a(b"records"), API_ANY_SEGMENT) and not records.tail
    assert records.methods == 1 << METHODS["GET"]
    assert files.segments == (fnv1a(b"files"),) and files.tail
    assert dest.peers == ((ipaddress.ip_address("127.0.0.1"), 80),)


def test_unwatched_sockets_are_not_touched(sensor: Sensor, records_api: LocalApi) -> None:
    """Outside a sandbox, nothing of this is in the way: the host's own call to a
    path the sandboxes may not use goes through."""
    with socket.create_connection(("127.0.0.1", records_api.port)) as s:
        s.sendall(b"POST /patients/export HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        assert b"200" in s.recv(100)


# Ways around the SK_MSG program an attacker would try: data in the SYN (TCP
# Fast Open, by a send or by a socket option), a protocol whose sends it never
# sees (multipath TCP) and bytes spliced from a file. A send racing the
# handshake has a test of its own, below: on loopback the handshake is over
# before connect returns.
AROUND_THE_CHECKS = {
    "fast open send": """
import socket, sys
s = socket.socket()
s.sendto(bytes.fromhex(sys.argv[2]), socket.MSG_FASTOPEN, ("127.0.0.1", int(sys.argv[1])))
print(s.recv(100))
""",
    "fast open socket option": """
import socket, sys
s = socket.socket()
try:
    s.setsockopt(socket.IPPROTO_TCP, 30, 1)  # TCP_FASTOPEN_CONNECT
except OSError as exc:
    print("refused:", exc, flush=True)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(bytes.fromhex(sys.argv[2]))
print(s.recv(100))
""",
    "multipath TCP": """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)  # IPPROTO_MPTCP: its sends never reach SK_MSG
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(bytes.fromhex(sys.argv[2]))
print(s.recv(100))
""",
    "sendfile": """
import os, socket, sys
with open("request", "wb") as f:
    f.write(bytes.fromhex(sys.argv[2]))
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
with open("request", "rb") as f:
    os.sendfile(s.fileno(), f.fileno(), 0, 1000)
print(s.recv(100))
""",
}


@pytest.mark.parametrize("name", sorted(AROUND_THE_CHECKS))
def test_sends_that_avoid_a_connected_socket_are_stopped(guarded: GuardedSandboxes, records_policy: Policy,
                                                         records_api: LocalApi, name: str) -> None:
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", AROUND_THE_CHECKS[name], str(records_api.port), EXPORT.hex()],
                      records_policy, labels=LABELS)
    assert records_api.received[before:] == [], f"the server received {records_api.received[before:]}"
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert any(why in alert.rule for why in ("stopped in the kernel", "(fastopen)", "denied syscall socket")), alert.rule
    assert [b for b in audit.read(guarded.audit.path, "alert") if b["id"] == alert.id]


UDP_TO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"a QUIC Initial of an HTTP/3 request", ("127.0.0.1", int(sys.argv[1])))
    print("sent")
except OSError as exc:
    print("refused:", exc)
"""


def test_udp_to_an_api_destination_is_refused(guarded: GuardedSandboxes, records_policy: Policy,
                                              records_api: LocalApi) -> None:
    """HTTP/3 runs over UDP, which the API checks cannot read. Another entry
    that allows UDP to the address (a network's, on any port) must not open
    the API's port to it."""
    assert isinstance(records_policy.network, Network)
    udp_anywhere = Destination(host="127.0.0.0/8", protocol="udp")
    policy = allowing(records_policy, [*records_policy.network.allow, udp_anywhere])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", records_api.port))  # the API's port, on UDP
        listener.settimeout(0.5)
        run = guarded.run(["/usr/bin/python3", "-c", UDP_TO, str(records_api.port)], policy, labels=LABELS)
        with pytest.raises(TimeoutError):
            print("received", listener.recvfrom(100))
    # refused, and then killed by the guard on its alert, which may come before the tool prints
    assert "sent" not in run.result.stdout, run.result.stdout
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert alert.rule == f"egress to 127.0.0.1:{records_api.port} refused in the kernel (UDP to an API destination)"
    assert [b for b in audit.read(guarded.audit.path, "alert") if b["id"] == alert.id]


# A send begun before its connection is made: it waits in the kernel for the
# handshake, and then goes on in the TCP code it began in, past SK_MSG.
SEND_WHILE_CONNECTING = r"""
import socket, sys, time
s = socket.socket()
s.setblocking(False)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except BlockingIOError:
    pass
s.setblocking(True)
started = time.monotonic()
s.sendall(bytes.fromhex(sys.argv[2]))
print(f"sent after {time.monotonic() - started:.1f} s", flush=True)
"""
SYN_SENT = "02"  # /proc/net/tcp's state


def _connecting_to(port: int) -> bool:
    """Whether a socket of this host is waiting for its handshake with the port."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return any(row[3] == SYN_SENT and int(row[2].split(":")[1], 16) == port for row in rows)


@contextlib.contextmanager
def _slow_handshake() -> Iterator[tuple[int, list[bytes]]]:
    """A listener whose accept queue is full, so a client's SYN is dropped
    and sent again a second later. Once a client is seen waiting, it makes
    room; what that client sends is appended to the list."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    received: list[bytes] = []
    done = threading.Event()  # the client's run is over: one killed at once is never seen waiting

    def serve() -> None:
        while not _connecting_to(port):
            if done.wait(0.01):
                return
        listener.accept()[0].close()  # the filler: room for the SYN sent again
        listener.settimeout(3)
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            conn.settimeout(2)
            received.append(conn.recv(1000))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield port, received
    finally:
        done.set()
        server.join(timeout=10)
        filler.close()
        listener.close()


@pytest.mark.parametrize("api", [True, False], ids=["API rules", "IP:port only"])
def test_a_send_waiting_for_its_connection_is_killed_before_it_leaves(guarded: GuardedSandboxes,
                                                                      records_policy: Policy, api: bool) -> None:
    """With API rules, such a send would leave unjudged: the tool is killed
    while it waits, the server receives nothing, and the alert and audit
    record say why. With IP:port only there is nothing to judge: the same
    send waits out the handshake and arrives."""
    with _slow_handshake() as (port, received):
        rules = [ApiRule(methods=["GET"], path="/records/{id}")] if api else []
        policy = allowing(records_policy, [Destination(host="127.0.0.1", ports=[port], api=rules)])
        run = guarded.run(["/usr/bin/python3", "-c", SEND_WHILE_CONNECTING, str(port), EXPORT.hex()], policy,
                          labels=LABELS)
    if not api:
        assert run.result.exit_status == 0 and received == [EXPORT], (run.result.stderr, received)
        assert float(run.result.stdout.split()[-2]) >= 0.5, run.result.stdout  # it did wait for the handshake
        return
    assert received in ([], [b""]), received
    assert run.result.signal == 9 and "sent after" not in run.result.stdout, run.result.stdout
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert "a send made to wait for its connection's handshake" in alert.rule and alert.step == LABELS["step"]
    assert [b for b in audit.read(guarded.audit.path, "alert") if b["id"] == alert.id]
    assert [c for c in _audited_calls(guarded, run.result.sandbox) if not c["allowed"]]


# Fills the checks' socket map with connections held open, then sends the
# export on one more.
CONNECTIONS_THEN_EXPORT = r"""
import socket, sys
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(int(sys.argv[3]))]
s = socket.create_connection(("127.0.0.1", int(sys.argv[4])))
s.sendall(bytes.fromhex(sys.argv[2]))
print(s.recv(100), flush=True)
"""


@pytest.mark.parametrize("slow", [False, True], ids=["at once", "a second later"])
def test_a_connection_the_checks_cannot_take_quarantines_its_sandbox(records_policy: Policy,
                                                                     records_api: LocalApi,
                                                                     tmp_path: Path, slow: bool) -> None:
    """Past the socket map's size a socket cannot join the checks, and its
    sends would pass unjudged: its sandbox is quarantined before it can
    send, so the export never arrives, and the alert and audit record say
    why, in the name of the process that connected it, also where its
    handshake ends a second later (in softirq, on whatever task then runs).
    A sensor whose map holds two sockets stands for a host holding 65,535
    at once."""
    log = AuditLog(tmp_path / "audit.jsonl")
    before = len(records_api.received)
    with contextlib.ExitStack() as stack:
        port, received = stack.enter_context(_slow_handshake()) if slow else (records_api.port, records_api.received)
        policy = api_policy(dataclasses.replace(records_api, tls_port=port)) if slow else records_policy
        tiny = stack.enter_context(Sensor(api_sockets=2))
        guarded = stack.enter_context(GuardedSandboxes(tiny, log))
        run = guarded.run(["/usr/bin/python3", "-c", CONNECTIONS_THEN_EXPORT, str(records_api.port), EXPORT.hex(),
                           "2", str(port)], policy, labels=LABELS)
    log.close()
    assert records_api.received[before:] == [] and (not slow or received == []), received
    assert run.verdict is Verdict.KILL and run.result.exit_status != 0, run.result.stdout
    alert = next(a for a in run.alerts if a.detector == "rule")
    assert "could not take" in alert.rule and alert.step == LABELS["step"], alert.rule
    assert [e.comm for e in alert.evidence] == ["python3"], alert.evidence
    assert [b for b in audit.read(log.path, "alert") if b["id"] == alert.id]


def test_the_kernel_header_hashes_are_the_header_names() -> None:
    """api.bpf.c compares header names by their FNV-1a hash."""
    from ebpf.sensor import BPF_DIR

    source = (BPF_DIR / "api.bpf.c").read_text()
    for name in ("host", "content-length", "transfer-encoding", "x-http-method-override", "x-http-method",
                 "x-method-override"):
        define = f"H_{name.upper().replace('-', '_')} {fnv1a(name.encode()):#018x}ULL"
        assert define in source, define


# Keeps one connection and makes allowed calls for a given number of
# seconds, then the injected export.
CALLS_THEN_EXPORT = r"""
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
end, gets = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    conn.request("GET", "/records/17")
    conn.getresponse().read()
    gets += 1
print(gets, flush=True)
conn.request("POST", "/patients/export", body='{"mrn": "77120934"}')
conn.getresponse().read()
"""


def _calls_then_export(guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi,
                       seconds: float) -> tuple[GuardedRun, list[tuple[bool, str, float]]]:
    """Runs CALLS_THEN_EXPORT, checks the export was stopped and every call
    audited and in the result, and returns the run and how the listeners
    got each batch: (only allowed calls, "real time" or "nice N", ms since
    its first record was sent)."""
    routed: list[tuple[bool, str, float]] = []

    def watch(_sb: object, events: list[Event]) -> None:
        realtime = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
        routed.append((all(e.kind is EventKind.API and e.ret == 0 for e in events),
                       "real time" if realtime else f"nice {os.getpriority(os.PRIO_PROCESS, 0)}",
                       (time.monotonic_ns() - min(e.ts_ns for e in events)) / 1e6))

    before = len(records_api.received)
    guarded.manager.listeners.append(watch)
    try:
        run = guarded.run(["/usr/bin/python3", "-c", CALLS_THEN_EXPORT, str(records_api.port), str(seconds)],
                          records_policy, labels=LABELS)
    finally:
        guarded.manager.listeners.remove(watch)
    gets = int(run.result.stdout)  # the tool's own count: whatever else the server received fails
    _assert_stopped(guarded, run, records_api, before + gets, "POST 127.0.0.1/patients/export")
    assert gets and [(r.method, r.path) for r in records_api.received[before:]] == [("GET", "/records/17")] * gets
    assert len(_audited_calls(guarded, run.result.sandbox)) == gets + 1
    assert [c.path for c in run.result.api_calls] == ["/records/17"] * gets + ["/patients/export"]
    assert run.result.events_lost == 0
    return run, routed


def _quiet_group(guarded: GuardedSandboxes) -> Path:
    """The idle cpu group the kernel says the recorder's process is in."""
    for line in Path(f"/proc/{guarded.recorder.proc.pid}/cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if "bastion-quiet-" in group:
            mount = v1_mount("cpu") if controllers else cgroup2_mount()
            assert mount is not None
            return mount / group.lstrip("/")
    raise AssertionError("the recorder is in no idle cpu group")


def test_allowed_calls_are_recorded_on_idle_cpu_time_and_the_rest_judged_at_real_time(
        guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi) -> None:
    """The calls the kernel allowed need only their record: a process of
    the node's own in an idle cpu group writes it, so it does not slow the
    calls themselves, and the run's result has them. Anything that needs a
    verdict is judged at real time, here the export that kills the tool."""
    assert (_quiet_group(guarded) / "cpu.idle").read_text().strip() == "1"
    run, routed = _calls_then_export(guarded, records_policy, records_api, 0.3)

    assert routed and {how for _, how, _ in routed} == {"real time"}
    assert not any(only_allowed for only_allowed, *_ in routed), "the listeners got allowed calls"
    # on disk, and anchored in the node's log
    gets = len(run.result.api_calls) - 1
    anchors = [b for b in audit.read(guarded.audit.path, audit.ANCHOR) if b["sandbox"] == run.result.sandbox]
    assert [(a["log"], a["calls"]) for a in anchors] == [(guarded.recorder.path.name, gets)]
    assert audit.verify(guarded.audit.path).anchored >= gets


def test_a_recorder_that_falls_behind_leaves_the_idle_group_until_it_catches_up(
        guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With every CPU busy, the idle recorder gets no CPU time while the
    ring fills; before it could overflow (a loss kills the sandbox) the
    pump lets it out of the idle group, here at the first record waiting.
    Every call is still judged and audited, none lost."""
    group = _quiet_group(guarded)
    rec = guarded.recorder
    states: list[tuple[bool, bool]] = []  # (quiet, while collecting)
    monkeypatch.setattr(rec, "_behind", 0)
    real_quiet = rec._place.quiet
    monkeypatch.setattr(rec._place, "quiet", lambda on: (states.append((on, rec._collecting)), real_quiet(on))[1])
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        _calls_then_export(guarded, records_policy, records_api, 1)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert (False, False) in states, states  # let out by the pump, not only while collected
    time.sleep(2 * recorder.CATCH_UP_S)
    guarded.recorder.check()
    assert (group / "cpu.idle").read_text().strip() == "1"


def test_the_local_api_goes_on_quietly_after_a_client_resets_its_connection(capfd: pytest.CaptureFixture[str]) -> None:
    """A tool killed mid-request resets its connection; the demo's API keeps
    serving and puts no traceback on the terminal."""
    others = set(threading.enumerate())  # other tests' servers may still hold connections
    with serve() as api:
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sock.sendall(b"GET /records/1")  # no end of line: the server is left reading it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        with urllib.request.urlopen(f"http://127.0.0.1:{api.port}/records/17", timeout=5) as reply:
            assert json.loads(reply.read())["id"] == 17
        until(lambda: not any("process_request" in t.name for t in set(threading.enumerate()) - others),
              what="the API's request threads did not end")
    assert "Traceback" not in capfd.readouterr().err



# What the kernel learns of a socket at its first send (its destination, a
# body still owed) belongs to that connection. Dissolving it (connect with
# AF_UNSPEC) and connecting the same socket again to the API must not carry
# over a destination without rules, nor a body the first request announced.
RECONNECT = """
import ctypes, socket, sys
first, api, opening, request = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
s = socket.socket()
s.connect(("127.0.0.1", first))
s.sendall(opening)
if first != api:
    s.recv(2)  # heard: the dissolve's reset cannot overtake the data
unspec = (ctypes.c_ubyte * 16)()
if ctypes.CDLL(None, use_errno=True).connect(s.fileno(), unspec, 16):
    sys.exit(f"disconnect failed: errno {ctypes.get_errno()}")
s.connect(("127.0.0.1", api))
s.sendall(request)
print(s.recv(100))
"""
OWING = b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000\r\n\r\n"


@pytest.mark.parametrize("first", ["no rules", "owing a body"])
def test_a_socket_connected_again_to_the_api_is_judged_afresh(guarded: GuardedSandboxes, records_policy: Policy,
                                                               records_api: LocalApi, first: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as free:
        heard: list[bytes] = []

        def listen() -> None:
            with contextlib.suppress(OSError), free.accept()[0] as conn:
                heard.append(conn.recv(100))
                conn.sendall(b"ok")

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        network = records_policy.network
        assert isinstance(network, Network)
        # a second destination on the same host, allowed by IP:port only
        plain = network.allow[0].model_copy(update={"ports": [free.getsockname()[1]], "api": []})
        policy = allowing(records_policy, [*network.allow, plain])
        port, opening = (plain.ports[0], b"hello") if first == "no rules" else (records_api.port, OWING)
        before = len(records_api.received)
        run = guarded.run(["/usr/bin/python3", "-c", RECONNECT, str(port), str(records_api.port), opening.hex(),
                           EXPORT.hex()], policy, labels=LABELS)
        free.close()
        listener.join(5)
    assert heard == ([b"hello"] if first == "no rules" else []), run.result.stderr
    received = records_api.received[before:]
    assert all(r.path != "/patients/export" for r in received), f"the server received {received}"
    _assert_stopped(guarded, run, records_api, len(records_api.received), "POST 127.0.0.1/patients/export")



# A TLS request's body is owed to the library object that wrote its headers.
# The same object used again for a new connection (SSL_clear, then a new
# socket), its first write is a request to read, not that body.
SAME_OBJECT_NEW_CONNECTION = """
import ctypes, socket, sys
port, opening, request = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
lib = ctypes.CDLL("libssl.so.3")
ptr = ctypes.c_void_p
lib.TLS_client_method.restype = lib.SSL_CTX_new.restype = lib.SSL_new.restype = ptr
lib.SSL_CTX_new.argtypes = lib.SSL_new.argtypes = lib.SSL_clear.argtypes = lib.SSL_connect.argtypes = [ptr]
lib.SSL_set_fd.argtypes = [ptr, ctypes.c_int]
lib.SSL_write.argtypes = lib.SSL_read.argtypes = [ptr, ctypes.c_char_p, ctypes.c_int]
ssl = lib.SSL_new(lib.SSL_CTX_new(lib.TLS_client_method()))
connections = []
for data in (opening, request):
    connections.append(socket.create_connection(("127.0.0.1", port)))
    lib.SSL_clear(ssl)
    lib.SSL_set_fd(ssl, connections[-1].fileno())
    if lib.SSL_connect(ssl) != 1 or lib.SSL_write(ssl, data, len(data)) != len(data):
        sys.exit("the TLS connection failed")
reply = ctypes.create_string_buffer(100)
print(reply.raw[:lib.SSL_read(ssl, reply, 100)])
"""


def test_a_tls_body_owed_on_one_connection_is_not_carried_to_the_next(
        guarded: GuardedSandboxes, records_policy: Policy, records_api: LocalApi) -> None:
    host = f"Host: 127.0.0.1:{records_api.tls_port}".encode()  # without a port, TLS means 443
    opening, export = (r.replace(b"Host: 127.0.0.1", host) for r in (OWING, EXPORT))
    before = len(records_api.received)
    run = guarded.run(["/usr/bin/python3", "-c", SAME_OBJECT_NEW_CONNECTION, str(records_api.tls_port),
                       opening.hex(), export.hex()], records_policy, labels=LABELS)
    received = records_api.received[before:]
    assert all(r.path != "/patients/export" for r in received), f"the server received {received}"
    # SSL_clear ends what the kernel kept for the object: the write is read as the request it is
    _assert_stopped(guarded, run, records_api, len(records_api.received),
                    "POST 127.0.0.1/patients/export stopped in the kernel: no API rule")


# A write that did not go out (its socket full) leaves its records in the
# library, which sends them at the start of the next write on the object;
# Python's ssl lets that be another buffer, no shorter
# (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER). The script fills the connection
# with allowed calls while the server reads nothing (TCP_NOTSENT_LOWAT makes
# the socket full as soon as a byte waits unsent, so the next write finds no
# room before the kernel sees any of it), writes `first`, and once the
# server reads again, `retry` and then `rest`, itself or from a child it
# forks. Pure Python, but for SSL_up_ref and SSL_free through ctypes.
AFTER_A_FULL_SOCKET = r"""
import os, select, socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
filler, first, retry, rest = (bytes.fromhex(a) for a in sys.argv[3:7])
tls = ssl.create_default_context(cafile=ca).wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                                        server_hostname="127.0.0.1")
tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 1)
tls.setblocking(False)
while select.select([], [tls], [], 0.3)[1]:
    tls.write(filler)
try:
    tls.write(first)
    sys.exit("the first write went out")
except ssl.SSLWantWriteError:
    pass
if sys.argv[7:] == ["fork"] and os.fork():  # the child has the connection, and the export waiting in it
    sys.exit(os.waitstatus_to_exitcode(os.wait()[1]) != 0)
if sys.argv[7:] == ["free"]:  # an SSL_free that frees nothing, the object's reference count raised first
    import ctypes
    libssl, obj = ctypes.CDLL("libssl.so.3"), ctypes.c_void_p.from_address(id(tls._sslobj) + 24)
    libssl.SSL_up_ref(obj)
    libssl.SSL_free(obj)
for data in (retry, rest):
    if data:
        select.select([], [tls], [], 10)
        tls.write(data)
# a socket in the checks' sockhash answers a blocking recv woken without data
# (by the ACK of the FIN below) with EAGAIN; with a timeout, Python polls and
# tries again
tls.settimeout(10)
tls.shutdown(socket.SHUT_WR)  # a close with the server's tickets unread would reset the connection
while tls.recv(4096):  # until the server has read all and closed
    pass
print("written")
"""


@contextlib.contextmanager
def _server_that_waits(records_api: LocalApi) -> Iterator[tuple[int, list[bytes]]]:
    """A TLS server for one connection, with a small receive buffer, that
    reads nothing for three seconds and then all the client sends. Yields
    its port and what it read."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    read: list[bytes] = []

    def serve(tls: ssl.SSLSocket) -> None:
        time.sleep(3)
        tls.settimeout(5)
        with contextlib.suppress(OSError):
            while data := tls.recv(65536):
                read.append(data)

    with _serving_one(listener, _server_context(records_api), serve) as port:
        yield port, read


def _after_a_full_socket(guarded: GuardedSandboxes, records_api: LocalApi, first: bytes, retry: bytes,
                         rest: bytes = b"", by: str = "") -> tuple[GuardedRun, bytes]:
    with _server_that_waits(records_api) as (port, read):
        policy = api_policy(dataclasses.replace(records_api, tls_port=port, received=[]))
        requests = [r.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1:%d\r\n" % port) for r in (first, retry, rest)]
        filler = f"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        run = guarded.run(["/usr/bin/python3", "-c", AFTER_A_FULL_SOCKET, str(port), str(records_api.ca_file),
                           filler.hex(), *(r.hex() for r in requests), by], policy, labels=LABELS)
    return run, b"".join(read)


@pytest.mark.parametrize("by", ["", "fork", "free"],
                         ids=["the writer", "its forked child", "the writer after an SSL_free that freed nothing"])
def test_records_a_write_left_in_the_library_go_out_only_with_its_retry(guarded: GuardedSandboxes,
                                                                        records_api: LocalApi, by: str) -> None:
    """The export, its Host a port without rules (its write let be, its
    records kept for the API socket), then an allowed call of its length:
    before, the library sent the export inside that call's write. A child
    forked after the export has the connection and its records as well; an
    SSL_free of an object with another reference leaves both."""
    export = EXPORT.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1:1")
    allowed = b"GET /records/17 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: \r\n\r\n"
    allowed = allowed.replace(b"X-Pad: ", b"X-Pad: " + b"x" * (len(export) - len(allowed) + 6))
    run, read = _after_a_full_socket(guarded, records_api, export, allowed, by=by)
    assert read.count(b"GET /records/17") > 10, read[:200]  # the filler went out
    assert b"/patients/export" not in read and b"X-Pad" not in read
    _assert_killed_and_recorded(guarded, run, "(a TLS write) stopped in the kernel: a TLS write after one that did "
                                               "not go out on the same connection, not that write again")


def test_a_request_written_again_after_a_full_socket_passes_with_its_body(guarded: GuardedSandboxes,
                                                                         records_api: LocalApi) -> None:
    """The same bytes again, as a client must: judged once more in full,
    and the body after them still passes."""
    head = b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200\r\n\r\n"
    body = b'{"note": "%s"}' % (b"x" * 188)
    assert len(body) == 200
    run, read = _after_a_full_socket(guarded, records_api, head, head, body)
    assert run.result.exit_status == 0 and "written" in run.result.stdout, run.result.stderr
    assert not run.alerts and not run.result.denials
    assert read.count(b"POST /notes") == 1 and read.endswith(b"\r\n\r\n" + body), read[-300:]


# Writes that cannot go out yet, each on its own library object: into
# memory, before the handshake, which then waits for the server's answer.
WRITES_LEFT_WAITING = r"""
import ssl, sys
context, kept = ssl.create_default_context(), []
for n in range(int(sys.argv[1])):
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.org")
    try:
        tls.write(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    except ssl.SSLWantReadError:
        kept.append(tls)
print(len(kept), "waiting")
"""


@pytest.mark.parametrize("writes", [8, 9])
def test_a_process_keeps_at_most_eight_tls_writes_waiting(guarded: GuardedSandboxes, records_policy: Policy,
                                                          writes: int) -> None:
    """The kernel keeps eight failed writes a process, to check what sends
    their records; a ninth cannot be kept, and its writer is stopped."""
    run = guarded.run(["/usr/bin/python3", "-c", WRITES_LEFT_WAITING, str(writes)], records_policy, labels=LABELS)
    if writes == 8:
        assert run.result.exit_status == 0 and "8 waiting" in run.result.stdout, run.result.stderr
        assert not run.alerts
    else:
        _assert_killed_and_recorded(guarded, run, "which the kernel could not keep")
