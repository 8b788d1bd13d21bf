"""The engine cache: where exports and engines live, the key that says whether one still fits, the policy.

Layout: `<engines_dir>/<model>-<family>-<target>/` holds the graphs (or the TensorRT engines) and a
manifest.json written last (a folder without one is an interrupted build). The folder name is stable for a
model and target; the manifest's `key` records everything the files depend on (model content hash, export
version, opset, precision, shape profile and, for TensorRT, TensorRT version, GPU name, compute capability and
JetPack). A folder whose key differs from the expected one is *stale*; `engine_policy` says what then happens:

| policy  | matching | missing       | stale                  |
|---------|----------|---------------|------------------------|
| reuse   | use it   | build         | refuse (error)         |
| rebuild | use it   | build         | rebuild (logged)       |
| refuse  | use it   | refuse        | refuse                 |

`refuse` is for deployment: nothing is built at node start (build offline with `build_engines`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_ros.engine import names

POLICIES = ("reuse", "rebuild", "refuse")
_REPO_ENGINES = Path(__file__).resolve().parents[2] / "engines"  # a source checkout's engines/ folder


class EngineCacheError(RuntimeError):
    """An engine folder cannot be used under the chosen policy; the message says why and what to do."""


def default_engines_dir() -> Path:
    """The checkout's engines/ folder when it exists and is writable, else $VLM_ROS_HOME/engines
    (default ~/.cache/vlm_ros/engines): an installed package's folder is usually read-only."""
    if _REPO_ENGINES.is_dir() and os.access(_REPO_ENGINES, os.W_OK):
        return _REPO_ENGINES
    home = Path(os.environ.get("VLM_ROS_HOME") or Path.home() / ".cache" / "vlm_ros")
    return home / "engines"


def engines_dir(value: str | os.PathLike | None) -> Path:
    """The engines_dir parameter: '' = default_engines_dir(); relative paths are refused (working-directory traps)."""
    if not value:
        return default_engines_dir()
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ValueError(f"engines_dir must be an absolute path; got '{value}'")
    return path


def model_hash(model_dir: str | os.PathLike) -> str:
    """sha256 over every file of a model directory (relative name + content; logs skipped). Reads the whole
    model once per node start (about 1 s per GB)."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".log"):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def folder_name(model_dir: str | os.PathLike, family: str, target: str) -> str:
    """'<model dir name>-<family>-<target>' with unsafe characters replaced (target: onnx, trt-fp16, ...)."""
    name = f"{Path(model_dir).resolve().name}-{family}-{target}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


@dataclass
class Manifest:
    """What is stored beside the files: the key they were built for, and facts for people (not compared)."""

    kind: str  # onnx | tensorrt
    key: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        text = json.dumps({"kind": self.kind, "key": self.key, "info": self.info}, indent=2, sort_keys=True)
        (directory / names.MANIFEST_FILE).write_text(text + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest | None:
        try:
            data = json.loads((directory / names.MANIFEST_FILE).read_text())
            return cls(data["kind"], data["key"], data.get("info", {}))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass
class CacheCheck:
    status: str  # match | missing | stale
    differences: list[str] = field(default_factory=list)  # "field: stored -> expected"


def check(directory: Path, kind: str, key: dict[str, Any]) -> CacheCheck:
    """Compare a folder's manifest with the expected key (JSON-normalised, so tuples equal lists)."""
    stored = Manifest.read(directory)
    if stored is None:
        return CacheCheck("missing")
    want = json.loads(json.dumps(key, sort_keys=True))
    have = {"kind": stored.kind, **stored.key}
    want = {"kind": kind, **want}
    diffs = [f"{k}: {have.get(k)!r} -> {want.get(k)!r}"
             for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    return CacheCheck("stale" if diffs else "match", diffs)


def ensure(directory: Path, kind: str, key: dict[str, Any], policy: str,
           build: Callable[[Path], dict[str, Any]], log: Callable[[str], None]) -> Manifest:
    """Reuse, build or refuse `directory` per `policy`. `build(tmp)` writes the files into an empty folder
    and returns the manifest's info; the folder replaces `directory` only when the build succeeded."""
    if policy not in POLICIES:
        raise ValueError(f"engine_policy must be one of {', '.join(POLICIES)}; got '{policy}'")
    found = check(directory, kind, key)
    if found.status == "match":
        log(f"reusing {kind} cache {directory}")
        return Manifest.read(directory)
    if found.status == "stale":
        what = "; ".join(found.differences)
        if policy != "rebuild":
            raise EngineCacheError(f"{kind} cache {directory} is stale ({what}); set engine_policy to rebuild, "
                                   "or rebuild it with build_engines")
        log(f"{kind} cache {directory} is stale ({what}): rebuilding")
    elif policy == "refuse":
        raise EngineCacheError(f"no {kind} cache at {directory} and engine_policy is refuse; build it with "
                               "`ros2 run vlm_ros build_engines` (or python -m vlm_ros.export.build_engines)")
    else:
        log(f"no {kind} cache at {directory}: building")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        t0 = time.monotonic()
        info = build(tmp)
        manifest = Manifest(kind, json.loads(json.dumps(key, sort_keys=True)),
                            {**info, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "build_s": round(time.monotonic() - t0, 2)})
        manifest.write(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{kind} cache written to {directory}")
    return manifest
