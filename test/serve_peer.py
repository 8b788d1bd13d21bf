"""A real OpenAI-compatible peer for the remote-backend tests: `transformers serve` on 127.0.0.1.

It serves the embedded default model from its local directory (offline: HF_HUB_OFFLINE=1) on CPU. The process
runs in its own process group and is stopped by that group's id, never by name.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from vlm_ros.tools.processes import stop_process_group

MODEL_DIR = REPO / "vlm_ros" / "embedded" / "weights"


def serve_available() -> bool:
    try:
        from transformers.utils.import_utils import is_serve_available
    except ImportError:
        return False
    return is_serve_available()


requires_serve = pytest.mark.skipif(
    not serve_available(), reason="transformers[serving] is not installed (pip install -r requirements-dev.txt)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServePeer:
    """`transformers serve <model dir>` on 127.0.0.1:<port>; start() waits until /health answers."""

    def __init__(self, log_path: Path, model_dir: Path = MODEL_DIR, port: int | None = None):
        self.model_dir, self.log_path = model_dir, log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The name the server is pinned to (it refuses any other). Given to the client rather than found from
        /v1/models: transformers 5.20's lists only the hub cache's models (HTTP 500 when there is no cache)."""
        return str(self.model_dir)

    def start(self, timeout: float = 240.0) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transformers.cli.transformers", "serve", str(self.model_dir),
                 "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}:\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"transformers serve not healthy after {timeout} s:\n{self.log()}")

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, timeout)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
