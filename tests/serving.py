"""Starting and stopping real servers for the tests: `bertnpu serve` in a process of its own, or the
app on uvicorn in a thread of this process (for a FakeNpu encoder). Loopback only, bounded in time."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} was not healthy within {START_TIMEOUT_S} s")


class ServerProcess:
    """`bertnpu serve --bundle BUNDLE ARGS...` on a free loopback port."""

    def __init__(self, bundle: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "bertnpu_runtime",
            "serve",
            "--bundle",
            str(bundle),
            "--port",
            str(self.port),
            *args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        wait_healthy(self.url, self.process)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> tuple[int, str]:
        """Send `sig`; the exit code and what the server logged."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _, stderr = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
            raise AssertionError(f"the server did not stop within {timeout_s} s: {stderr}") from None
        return self.process.returncode, stderr


@contextlib.contextmanager
def server_in_thread(app: object, healthy: bool = True) -> Iterator[str]:
    """The ASGI app on uvicorn in a thread of this process; yields its URL once /health answers 200
    (or, with healthy=False, once it listens), and stops it after."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if healthy:
            wait_healthy(url)
        else:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server thread did not stop"
