"""Test-only fault injection for the perception node: a plan of faults and the sites where they fire.

The runtime never imports this module. A test starts the node through its test-only entry point,
`test/ros/faulty_node.py PLAN --ros-args ...`, a subclass of PerceptionNode that installs the plan in the node's
hooks (`on_image_decoded`, `on_model_ready`); everything else is the real node. A plan reads

    "model_error@2,cuda_oom@4,image_callback@30-34"

Each entry is `<fault>@<calls>`: the fault fires on those calls (1-based, counted per fault site, `N`, `N-M`
or `N+`; model calls are counted from the first query after the node's warm-up). Faults and their sites:

- `model_error`: a RuntimeError raised inside the model's forward (a torch forward pre-hook on the model).
- `cuda_oom`: `torch.cuda.OutOfMemoryError` raised inside the model's forward, as a CUDA allocator raises it.
- `image_callback`: a RuntimeError raised inside the colour image subscription callback, after decoding.

Unknown faults or malformed entries are refused (ValueError), so a typo cannot silently turn a fault test into
a test of nothing.

`scale_onnx_weight` breaks an exported graph instead (the self-check tests: a backend that must not serve).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

FAULTS = ("model_error", "cuda_oom", "image_callback")
_ENTRY = re.compile(r"^(?P<fault>[a-z_]+)@(?P<first>\d+)(?:(?P<plus>\+)|-(?P<last>\d+))?$")


class InjectedFault(RuntimeError):
    """The exception the plan raises (except for cuda_oom, which raises torch's own type)."""


@dataclass
class FaultPlan:
    ranges: dict[str, list[tuple[int, float]]]  # fault -> [(first, last)] call numbers, 1-based, inclusive
    calls: dict[str, int] = field(default_factory=dict)  # site -> calls so far
    fired: dict[str, int] = field(default_factory=dict)  # fault -> times fired
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        ranges: dict[str, list[tuple[int, float]]] = {}
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            m = _ENTRY.match(entry)
            if m is None or m["fault"] not in FAULTS:
                raise ValueError(f"fault plan: bad entry '{entry}'; expected <fault>@N, @N-M or @N+ with fault one "
                                 f"of {', '.join(FAULTS)}")
            first = int(m["first"])
            last = float("inf") if m["plus"] else int(m["last"] or first)
            if first < 1 or last < first:
                raise ValueError(f"fault plan: bad call range in '{entry}'")
            ranges.setdefault(m["fault"], []).append((first, last))
        if not ranges:
            raise ValueError(f"fault plan '{text}' names no fault")
        return cls(ranges)

    def describe(self) -> str:
        return ", ".join(f"{f}@{a}" + ("+" if b == float("inf") else f"-{b}" if b != a else "")
                         for f, rs in self.ranges.items() for a, b in rs)

    def _due(self, site: str, faults: tuple[str, ...]) -> str | None:
        """Count one call at `site`; the fault due on this call, if any."""
        with self._lock:
            n = self.calls[site] = self.calls.get(site, 0) + 1
            for fault in faults:
                if any(a <= n <= b for a, b in self.ranges.get(fault, ())):
                    self.fired[fault] = self.fired.get(fault, 0) + 1
                    return fault
        return None

    # --- sites ----------------------------------------------------------------------------------------
    def image_callback(self) -> None:
        if self._due("image_callback", ("image_callback",)):
            raise InjectedFault("injected fault in the image callback")

    def arm_model(self, model) -> bool:
        """Install the model faults as a forward pre-hook on `model` (a torch module). False if none planned."""
        if not any(f in self.ranges for f in ("model_error", "cuda_oom")):
            return False

        def pre_hook(module, args, kwargs=None):
            fault = self._due("model_forward", ("model_error", "cuda_oom"))
            if fault == "model_error":
                raise InjectedFault("injected fault in the model forward")
            if fault == "cuda_oom":
                import torch

                raise torch.cuda.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")

        model.register_forward_pre_hook(pre_hook)
        return True


def scale_onnx_weight(graph_path, factor: float, columns: int | None = None) -> str:
    """A broken export or engine build, for self-check tests: scale one weight initializer of an ONNX graph by
    `factor`, in place. The matrix with `columns` columns (the output projection, given the vocabulary size), else
    the largest matrix. Returns the initializer's name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph_path))
    matrices = [t for t in model.graph.initializer if len(t.dims) == 2 and (columns is None or t.dims[1] == columns)]
    if not matrices:
        raise ValueError(f"{graph_path} has no 2-D weight initializer with {columns} columns")
    target = max(matrices, key=lambda t: t.dims[0] * t.dims[1])
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * factor, target.name))
    onnx.save(model, str(graph_path))
    return target.name
