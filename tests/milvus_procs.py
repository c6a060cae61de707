"""Real Milvus servers on loopback for the tests, each a context manager whose processes die on exit.

- ``MilvusServer``: ``milvus-lite server``, the gRPC server of milvus-lite (the same engine as
  Milvus Lite in process, behind a socket).
- ``MilvusStandalone``: ``milvus-server``, the ``milvus`` 2.3.5 package's Milvus 2.3 standalone
  binary (Go and C++, embedded etcd and rocksmq; server version ``v2.3.5-lite``). A different
  engine from Milvus Lite: its own consistency levels, segments, flush and index build.

Both speak the Milvus protocol pymilvus speaks to any Milvus, so ``RAG_MILVUS_URI=http://...``
goes over the network exactly as it would to a server on another machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

BIN = Path(sys.executable).with_name("milvus-lite")
# util-linux's setpriv asks the kernel to signal the server when the test process dies (even by
# SIGKILL, when no fixture can stop it): no server outlives the run that started it.
SETPRIV = shutil.which("setpriv")
STANDALONE_BIN = Path(sys.executable).with_name("milvus-server")
# The other ports Milvus 2.3 standalone listens on (its coordinators). Given as free ports, so two
# servers never race for the defaults (53100, ...). Its metrics and /healthz port is the first free
# one from 9091 (the wrapper picks it). The embedded etcd's two are set apart: see MilvusStandalone.
STANDALONE_PORTS = (
    "root-coord-port",
    "proxy-internal-port",
    "query-coord-port",
    "query-node-port",
    "index-coord-port",
    "index-node-port",
    "data-coord-port",
    "data-node-port",
)


def free_port() -> int:
    """A loopback port nothing listens on (bound then released; fine on a test machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class MilvusServer:
    """``milvus-lite server`` on a free loopback port; SIGKILLed on exit."""

    name = "milvus-lite server"
    death_signal = "KILL"  # what the server gets if the test process dies first

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-{self.port}.log"

    def command(self) -> list[str]:
        return [str(BIN), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        """Environment variables for the server beyond the test process's own."""
        return {}

    def ready(self) -> bool:
        return _listening(self.port)

    def start(self, timeout: float = 60) -> MilvusServer:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            orphan_guard = [SETPRIV, "--pdeathsig", self.death_signal] if SETPRIV else []
            self.proc = subprocess.Popen(
                [*orphan_guard, *self.command()],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Without PYTHONPATH: the server runs the venv's own packages, not the tree under test.
                # PYTHONUNBUFFERED: milvus-server says it is ready on stdout, which goes to a file.
                env={
                    **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                    "PYTHONUNBUFFERED": "1",
                    **self.env(),
                },
                # Its own process group: milvus-server runs the Milvus binary as a child, and the
                # group dies together even if the wrapper is killed first.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log.read_text()}")
                if self.ready():
                    return self
                time.sleep(0.2)
            raise RuntimeError(f"{self.name} was not ready on {self.port} within {timeout} s: {self.log.read_text()}")
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL to the whole process group: the server goes away the way a crashed or unplugged one does."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill()

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class MilvusStandalone(MilvusServer):
    """Milvus 2.3 standalone (``milvus-server`` of the ``milvus`` 2.3.5 package) on a free loopback port.

    ``milvus-server --data DIR`` unpacks the binary into ``DIR/bin`` (~250 MB; ~4 s of CPU), writes
    ``DIR/configs/milvus.yaml`` and runs ``milvus run standalone`` as its child; it prints its
    banner once Milvus's ``/healthz`` says OK (6–10 s from the start here). ``--proxy-port`` is
    where clients connect. Stopped with SIGINT (the wrapper then terminates Milvus), then SIGKILL to
    the group whatever is left; the binary and the data (~500 MB) are removed, the logs kept.

    Its embedded etcd ignores ``--etcd-port`` and listens on 2379 and 2380, so a second server
    would fail to start (never healthy) while one runs; Milvus reads ``ETCD_CONFIG_PATH`` from the
    environment (it overrides milvus.yaml), an etcd config file that moves both to free ports.
    The coordinators listen on every interface (Milvus 2.3 has no listen address); the tests
    connect on 127.0.0.1.
    """

    name = "milvus-server (Milvus 2.3 standalone)"
    death_signal = "INT"  # the wrapper's clean stop: it terminates Milvus, then exits

    def command(self) -> list[str]:
        ports = [arg for flag in STANDALONE_PORTS for arg in (f"--{flag}", str(free_port()))]
        return [str(STANDALONE_BIN), "--data", str(self.data_dir), "--proxy-port", str(self.port), *ports]

    def env(self) -> dict[str, str]:
        client, peer = free_port(), free_port()
        etcd = self.data_dir.parent / f"embedEtcd-{self.port}.yaml"
        etcd.write_text(
            f"listen-client-urls: http://127.0.0.1:{client}\n"
            f"advertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        return {"ETCD_CONFIG_PATH": str(etcd)}

    def ready(self) -> bool:
        # The wrapper prints "Process: <pid>" in its banner after /healthz answered OK.
        return "Process:" in self.log.read_text(errors="replace") and _listening(self.port)

    def start(self, timeout: float = 120) -> MilvusServer:
        if not STANDALONE_BIN.exists():
            raise RuntimeError(f"{STANDALONE_BIN} is missing: pip install -e '.[dev]' (milvus==2.3.5)")
        return super().start(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the wrapper's own clean stop of Milvus
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.kill()  # anything left in the group (a Milvus the wrapper did not stop)
        for big in ("bin", "data"):
            shutil.rmtree(self.data_dir / big, ignore_errors=True)
