"""Newest-frame buffers, one per camera: what the image callbacks write and the query worker reads.

Callbacks only decode and store; no inference. A buffer keeps the newest colour image (older ones are
simply replaced: no backlog), and short histories of depth images and CameraInfo intrinsics to pair with it
by timestamp. Colour, depth and CameraInfo come on separate topics in no guaranteed order, so a query can
arrive between a colour frame and its companions: the reader may wait a moment for them
(`snapshot(companion_wait_s=...)`). Time going backwards (a looping bag replay) resets the buffer, so a
query never answers from a frame "from the future".
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from vlm_ros.core.types import CameraIntrinsics, Frame, Status

# A frame older than the newest by at most this much was delivered late (the node's sensor callbacks may run
# in parallel), not a sign of time going back: it is dropped ("out of order"), and the buffer is kept.
REORDER_WINDOW_NS = 500_000_000


@dataclass
class _Image:
    array: np.ndarray
    stamp_ns: int
    frame_id: str
    received: float  # time.monotonic()


@dataclass
class _Intrinsics:
    value: CameraIntrinsics | None
    stamp_ns: int
    size: tuple[int, int] | None = None  # (width, height) the CameraInfo is for; None: not given


@dataclass
class CameraStats:
    received: int = 0
    depth_received: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    resets: int = 0
    rate_hz: float = 0.0  # smoothed colour rate
    callback_s: float = 0.0  # smoothed CPU time of the colour callback (decode + store)


class CameraBuffer:
    """Thread-safe newest-frame store of one camera."""

    def __init__(self, name: str, depth_tolerance_ns: int = 50_000_000, history: int = 8):
        self.name = name
        self.depth_tolerance_ns = depth_tolerance_ns
        self.stats = CameraStats()
        self._lock = threading.Condition()  # put_image and put_depth notify a reader waiting for a frame or its depth
        self._image: _Image | None = None
        self._depths: deque[_Image] = deque(maxlen=history)
        self._intrinsics: deque[_Intrinsics] = deque(maxlen=history)
        self._intrinsics_match_frames = False  # a CameraInfo has carried a frame's exact stamp (a synchronised driver)
        self._depth_intrinsics: CameraIntrinsics | None = None
        self._depth_size: tuple[int, int] | None = None

    # --- writers (subscription callbacks) ----------------------------------------------------------------
    def put_image(self, image: np.ndarray, stamp_ns: int, frame_id: str, callback_s: float = 0.0) -> None:
        now = time.monotonic()
        with self._lock:
            if self._image is not None and stamp_ns < self._image.stamp_ns:
                if self._image.stamp_ns - stamp_ns <= REORDER_WINDOW_NS:  # delivered late (callbacks overlap)
                    self.stats.dropped["out of order"] += 1
                    return
                self._reset_locked()  # time went backwards: a replay looped or the clock was reset
            if self._image is not None and now > self._image.received:
                rate = 1.0 / (now - self._image.received)
                self.stats.rate_hz = rate if self.stats.rate_hz == 0 else 0.9 * self.stats.rate_hz + 0.1 * rate
            self.stats.callback_s = (callback_s if self.stats.received == 0
                                     else 0.9 * self.stats.callback_s + 0.1 * callback_s)
            self._image = _Image(image, stamp_ns, frame_id, now)
            self.stats.received += 1
            self._lock.notify_all()

    def put_depth(self, depth: np.ndarray, stamp_ns: int, frame_id: str) -> None:
        with self._lock:
            if self._depths and self._depths[-1].stamp_ns - stamp_ns > REORDER_WINDOW_NS:
                self._depths.clear()  # time went backwards (a late depth image is kept: pairing is by stamp)
            self._depths.append(_Image(depth, stamp_ns, frame_id, time.monotonic()))
            self.stats.depth_received += 1
            self._lock.notify_all()

    def put_intrinsics(self, intrinsics: CameraIntrinsics | None, depth: bool = False,
                       size: tuple[int, int] | None = None, stamp_ns: int = 0) -> None:
        with self._lock:
            if depth:
                self._depth_intrinsics, self._depth_size = intrinsics, size
            else:
                self._intrinsics.append(_Intrinsics(intrinsics, stamp_ns, size if size and all(size) else None))
                self._lock.notify_all()

    def drop(self, reason: str) -> None:
        with self._lock:
            self.stats.dropped[reason] += 1

    def reset(self) -> None:
        with self._lock:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self._image = None
        self._depths.clear()
        self.stats.resets += 1

    # --- reader (query worker) ----------------------------------------------------------------------------
    def newest_stamp_ns(self) -> int | None:
        with self._lock:
            return None if self._image is None else self._image.stamp_ns

    def wait_for_image(self, after_stamp_ns: int | None, timeout_s: float) -> int | None:
        """The newest frame's stamp as soon as it differs from `after_stamp_ns` (a new frame), or after `timeout_s`
        whatever it is then (None = no frame yet): a reader that follows every frame without polling."""
        with self._lock:
            self._lock.wait_for(lambda: self._image is not None and self._image.stamp_ns != after_stamp_ns, timeout_s)
            return None if self._image is None else self._image.stamp_ns

    def snapshot(self, now_ns: int, max_age_ns: int, companion_wait_s: float = 0.0,
                 depth_expected: bool = False, intrinsics_expected: bool = False) -> tuple[Frame | None, Status, str]:
        """The newest frame with its matching depth and intrinsics, or why there is none.

        A companion of the newest frame that is still on the way is waited for, up to `companion_wait_s`:
        its depth image when depth is expected (`depth_expected`: the caller knows a depth publisher, or a
        depth image arrived in the last second); its own CameraInfo (same stamp) when the camera's CameraInfo
        has carried frame stamps before, or none has arrived yet and the caller knows a publisher
        (`intrinsics_expected`). Without its own CameraInfo the frame takes the newest one for its resolution.
        """
        with self._lock:
            image = self._image
            if image is None:
                return None, Status.NO_FRAME, f"no frame received yet from camera '{self.name}'"
            age = now_ns - image.stamp_ns
            if age > max_age_ns:
                return None, Status.STALE_FRAME, (
                    f"newest frame of camera '{self.name}' is {age / 1e9:.2f} s old "
                    f"(max_frame_age_s {max_age_ns / 1e9:g})")
            depth_expected = depth_expected or bool(self._depths and time.monotonic() - self._depths[-1].received < 1.0)
            give_up = time.monotonic() + companion_wait_s
            while True:
                depth, intrinsics = self._depth_for(image), self._intrinsics_for(image)
                missing = (depth is None and depth_expected) or (intrinsics is None and (
                    self._intrinsics_match_frames or intrinsics_expected and not self._intrinsics))
                if not missing or (left := give_up - time.monotonic()) <= 0:
                    break
                self._lock.wait(left)
            if intrinsics is not None:
                self._intrinsics_match_frames = True
            height, width = image.array.shape[:2]
            if intrinsics is None:  # a driver that stamps CameraInfo apart from its frames, or this frame's is late:
                # the newest for this resolution (one for another resolution would put every 3-D point elsewhere)
                intrinsics = next((k for k in reversed(self._intrinsics) if k.size in (None, (width, height))), None)
            k = (intrinsics.value if intrinsics is not None else None) or self._scaled_depth_intrinsics(width, height)
        frame = Frame(image.array, image.stamp_ns, image.frame_id, self.name, k,
                      depth.array if depth is not None else None)
        return frame, Status.OK, ""

    def _depth_for(self, image: _Image) -> _Image | None:
        """The depth image nearest in time to `image`, if within the tolerance."""
        depth = min(self._depths, key=lambda d: abs(d.stamp_ns - image.stamp_ns), default=None)
        return depth if depth is not None and abs(depth.stamp_ns - image.stamp_ns) <= self.depth_tolerance_ns else None

    def _intrinsics_for(self, image: _Image) -> _Intrinsics | None:
        """The CameraInfo intrinsics stamped exactly like `image` (one header for both, as camera drivers do)."""
        return next((k for k in reversed(self._intrinsics) if k.stamp_ns == image.stamp_ns), None)

    def _scaled_depth_intrinsics(self, width: int, height: int) -> CameraIntrinsics | None:
        """Depth CameraInfo rescaled to the colour resolution (registered depth: same field of view)."""
        k, size = self._depth_intrinsics, self._depth_size
        if k is None or size is None:
            return None
        sx, sy = width / size[0], height / size[1]
        return CameraIntrinsics(k.fx * sx, k.fy * sy, (k.cx + 0.5) * sx - 0.5, (k.cy + 0.5) * sy - 0.5)
