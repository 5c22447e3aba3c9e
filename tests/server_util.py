"""Real `llamaherd serve` processes on 127.0.0.1 for the server tests (no test-client shortcuts).

`shared_server()` starts one server per test process and reuses it across modules, since
loading the model is the slow part; `ServerProcess` starts others with special options.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
SHARED_CONTEXT = 160  # small, so over-long prompts and clamping are cheap to test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model_path: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.saw_503_while_loading = False
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llamaherd-serve-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamaherd", "serve", "-m", str(model_path), "--port", str(self.port),
             "--log-level", "warning", *options],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 240.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                status = httpx.get(f"{self.url}/health", timeout=5).status_code
                if status == 200:
                    return self
                self.saw_503_while_loading |= status == 503
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server was not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


_shared: ServerProcess | None = None


def shared_server(model_path: Path) -> ServerProcess:
    global _shared
    if _shared is None:
        _shared = ServerProcess(model_path, "--max-batch", "8", "--max-queue", "32",
                                "--ctx-size", str(SHARED_CONTEXT)).wait_ready()
        atexit.register(_shared.stop)
    return _shared


def metrics(url: str) -> dict[str, float]:
    """The server's /metrics as {"name{labels}": value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(condition, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def is_openai_error(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error) and bool(
        re.search(r"\S", str(error["message"])))
