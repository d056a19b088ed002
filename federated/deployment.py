"""The embedded deployment of `bastion fl run`: a real Flower SuperLink and
one SuperNode per site as separate processes on loopback, over TLS with
generated certificates, each SuperNode authenticated by its own key and
registered before it connects; then the app is submitted with `flwr run`.

Across real sites the same app runs on Flower's Deployment Engine: a
SuperLink at the coordinator, `flower-supernode --superlink HOST:PORT
--root-certificates CA --auth-supernode-private-key K --node-config
"site=I train-path=... test-path=... trainer=SOCKET"` at each site beside
`python -m federated.trainer SOCKET`, `flwr run federated/app`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federated.sites import make_sites

APP = Path(__file__).parent / "app"
BIN = Path(sys.executable).parent
ROUND = re.compile(r"\[ROUND (\d+)(?:/\d+)?\]")  # the legacy workflow (SecAgg+) prints no total


class DeploymentError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_key(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.touch(mode=0o600)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


class LocalDeployment:
    def __init__(self, workdir: Path, n_sites: int, tls: tuple[Path, Path, Path], poisoned: tuple[int, ...] = ()) -> None:
        """tls: the CA certificate, the SuperLink's certificate and its key."""
        self.workdir = workdir
        self.ca_cert, self.server_cert, self.server_key = tls
        self.n_sites = n_sites
        self.poisoned = poisoned
        self.procs: list[subprocess.Popen[bytes]] = []
        # the sites share this machine: each site's torch gets its share of the cores, where
        # a thread per core each made 3 sites on 2 cores spin against each other, 10x slower
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n_sites))
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "FLWR_HOME": str(workdir / "flwr-home"), "OMP_NUM_THREADS": threads}
        self.sites: dict[str, tuple[Path, Path]] = {}
        # the trainers' sockets: a private directory, with a path short enough for a socket's name
        self.sockets = Path(tempfile.mkdtemp(prefix="bastion-fl-"))

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        # a session of its own: closing kills the SuperExec children with it
        proc = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def _wait_for(self, name: str, pattern: str, timeout: float = 60) -> None:
        log = self.workdir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and pattern in log.read_text(errors="replace"):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.3)
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        raise DeploymentError(f"{name} did not start ({pattern!r} not in {log}): {tail}")

    def start(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sites = make_sites(self.workdir / "sites", self.n_sites)
        port = _free_port()
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bastion"\n\n[superlink.bastion]\naddress = "127.0.0.1:{port}"\n'
            f'root-certificates = "{self.ca_cert}"\n')
        self._spawn("superlink", [str(BIN / "flower-superlink"), "--ssl-certfile", str(self.server_cert),
                                  "--ssl-keyfile", str(self.server_key), "--ssl-ca-certfile", str(self.ca_cert),
                                  "--host", "127.0.0.1", "--port", str(port), "--enable-supernode-auth",
                                  "--database", str(self.workdir / "superlink.db"),
                                  "--disable-runtime-dependency-installation"])
        # each site's trainer imports torch while the SuperLink and SuperNodes start
        trainers = {name: self.sockets / f"{name}.sock" for name in self.sites}
        for name, path in trainers.items():
            self._spawn(f"trainer-{name}", [sys.executable, "-m", "federated.trainer", str(path)])
        self._wait_for("superlink", "Application startup complete")
        for i, (name, (train, test)) in enumerate(self.sites.items()):
            private, public = _node_key(self.workdir, name)
            reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(public), "bastion"], env=self.env,
                                 capture_output=True, text=True, timeout=60)
            if reg.returncode != 0:
                raise DeploymentError(f"registering site {name} failed: {reg.stdout[-300:]}{reg.stderr[-300:]}")
            config = (f'site={i} train-path="{train}" test-path="{test}" trainer="{trainers[name]}" '
                      f'poison={"true" if i in self.poisoned else "false"}')
            self._spawn(f"supernode-{name}", [
                str(BIN / "flower-supernode"), "--root-certificates", str(self.ca_cert),
                "--superlink", f"127.0.0.1:{port}", "--port", str(_free_port()),
                "--auth-supernode-private-key", str(private),  # flwr 1.41 derives the public key from it
                "--node-config", config])
            self._wait_for(f"supernode-{name}", "SuperNode ID")
        for name in trainers:
            self._wait_for(f"trainer-{name}", "trainer listening")
        return self

    def run(self, run_config: dict[str, Any], on_round: Callable[[int], None] | None = None,
            timeout: float = 1800) -> dict[str, Any]:
        out = Path(str(run_config["output-dir"]))
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in {
            **run_config, "num-sites": self.n_sites, "site-names": ",".join(self.sites)}.items())
        proc = subprocess.Popen([str(BIN / "flwr"), "run", str(APP), "bastion", "--stream", "--run-config", overrides],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if (m := ROUND.search(line)) and on_round:
                on_round(int(m.group(1)))
            if time.monotonic() > deadline:
                proc.kill()
                break
        proc.wait()
        report = out / "report.json"
        if proc.returncode != 0 or not report.exists():
            raise DeploymentError(f"the federated run failed (exit {proc.returncode}): {''.join(tail)[-1500:]}")
        return json.loads(report.read_text())

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.sockets, ignore_errors=True)

    def __enter__(self) -> LocalDeployment:
        try:
            return self.start()
        except BaseException:  # a start that fails part way leaves no process or socket behind
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
