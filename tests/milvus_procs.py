"""A real Milvus server on loopback for the tests: ``milvus-lite server``, the gRPC server of milvus-lite.

It speaks the Milvus protocol pymilvus speaks to a standalone Milvus, so ``RAG_MILVUS_URI=http://...``
goes over the network exactly as it would to a server on another machine. ``MilvusServer`` is a
context manager: the process is killed on exit whatever happened inside.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

BIN = Path(sys.executable).with_name("milvus-lite")


def free_port() -> int:
    """A loopback port nothing listens on (bound then released; fine on a test machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusServer:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"milvus-server-{self.port}.log"

    def start(self, timeout: float = 60) -> MilvusServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"milvus-lite server did not listen on {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: the server goes away the way a crashed or unplugged one does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
