"""Child processes the tools and tests start in their own process group, stop by that group's id, and measure.

`PythonProcess` is the one way they start one (the perception node: `PythonProcess(node_args(model, params))`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

NODE_MODULE = "vlm_ros.ros.node"


def node_args(model: str | None = None, params: Iterable[str] = ()) -> list[str]:
    """`python` arguments that start the perception node with `name:=value` parameters; `model` '' is the
    embedded default model, None leaves the parameter out."""
    model_params = [] if model is None else ["model:=" + (model or "''")]  # '' = YAML's empty string
    return ["-m", NODE_MODULE, "--ros-args", *(arg for p in (*model_params, *params) for arg in ("-p", p))]


class PythonProcess:
    """`python <args>` in its own process group, its output in `log_path` (None: discarded); stopped by that
    group's id, never by name. `pythonpath` goes first on the child's PYTHONPATH (tests: the checkout)."""

    def __init__(self, args: list[str], log_path: Path | None = None, pythonpath: str | Path | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115 -- closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, *args], stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """The output so far ("" when it is discarded)."""
        if self._log is None:
            return ""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Return once `text` is in the output; raise if the process exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode} before '{text}':\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"'{text}' not seen in {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT to the group, SIGKILL after `timeout` (stop_process_group); the exit code."""
        code = stop_process_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
        return code


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT to the process group of `proc` (started with start_new_session=True), SIGKILL after `timeout`.

    Never by name: only the group this caller created. Returns the exit code.
    """
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` now, MB (Linux /proc); NaN if the kernel does not report it."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
