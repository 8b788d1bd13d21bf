"""Queries as callers send them -> validated Requests: instruction normalisation, limits, task choice.

Everything here treats its input as untrusted text and numbers from any caller.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from vlm_ros.core.types import Request, Task

# Control characters (Cc) and invisible format characters (Cf: bidi overrides, zero-width joiners and spaces,
# BOM) can hide text from a human reading logs and change what a model sees; they are refused. Plain spacing
# (space, tab, newline) is allowed and collapsed.
_ALLOWED_SPACING = {" ", "\t", "\n", "\r"}


def normalise_instruction(text: str, max_bytes: int) -> tuple[str, str]:
    """(normalised instruction, error message). The error is "" when the instruction is acceptable.

    Normalisation: Unicode NFC, whitespace runs collapsed to one space, ends stripped. An empty result is
    valid (it asks for a scene description).
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        return "", f"instruction is {size} bytes; the limit is {max_bytes} (parameter max_instruction_bytes)"
    for i, ch in enumerate(text):
        if ch in _ALLOWED_SPACING:
            continue
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            name = unicodedata.name(ch, "unnamed")
            return "", f"instruction has a control or invisible character U+{ord(ch):04X} ({name}) at {i}"
    return " ".join(unicodedata.normalize("NFC", text).split()), ""


def check_limits(timeout_s: float, max_new_tokens: int, max_timeout_s: float, max_tokens: int) -> str:
    """Error message for out-of-range query limits (0 = node default is accepted), or ""."""
    if not (timeout_s == timeout_s) or timeout_s < 0 or timeout_s > max_timeout_s:  # NaN fails the first test
        return f"timeout_s must be 0 (node default) or in (0, {max_timeout_s}], got {timeout_s}"
    if max_new_tokens < 0 or max_new_tokens > max_tokens:
        return f"max_new_tokens must be 0 (node default) or in [1, {max_tokens}], got {max_new_tokens}"
    return ""


@dataclass(frozen=True)
class QueryArgs:
    """A query's fields as the caller sent them (a Query service request or action goal), not yet validated."""

    instruction: str = ""
    camera: str = ""  # "" = the default camera
    ground: bool = False
    timeout_s: float = 0.0  # 0 = the default
    max_new_tokens: int = 0  # 0 = the default


@dataclass(frozen=True)
class QuerySettings:
    """The node's defaults and bounds for queries; parameters that may change while it runs, so read per query."""

    default_camera: str = "front"
    default_timeout_s: float = 10.0
    max_timeout_s: float = 120.0
    default_max_new_tokens: int = 64
    max_new_tokens_limit: int = 512
    max_instruction_bytes: int = 1024


def build_request(args: QueryArgs, settings: QuerySettings) -> tuple[Request | None, str]:
    """(Request, "") for acceptable args, else (None, why not). The camera is not checked here.

    The instruction is normalised here, once. Empty instruction -> describe; ground -> ground; else answer.
    Zero limits take the defaults.
    """
    instruction, error = normalise_instruction(args.instruction, settings.max_instruction_bytes)
    error = error or check_limits(args.timeout_s, args.max_new_tokens, settings.max_timeout_s,
                                  settings.max_new_tokens_limit)
    if error:
        return None, error
    task = Task.DESCRIBE if not instruction else Task.GROUND if args.ground else Task.ANSWER
    return Request(task, instruction, int(args.max_new_tokens) or settings.default_max_new_tokens,
                   float(args.timeout_s) or settings.default_timeout_s), ""
