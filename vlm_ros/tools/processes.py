"""Child processes the tools and tests start in their own process group, and stop by that group's id."""

from __future__ import annotations

import os
import signal
import subprocess


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
