"""Replay a rosbag2 (mcap or sqlite3) into ROS 2 without `ros2 bag`: read with `rosbags`, publish with rclpy.

    python -m vlm_ros.tools.replay BAG [--rate R] [--start-offset S] [--loop] [--remap FROM:=TO ...]
        [--topics T ...] [--no-clock] [--clock-hz HZ] [--wait-for-subscribers N --wait-timeout S]
        [--reliable] [--qos-depth N] [--duration S]

Every topic whose type is installed is published (others are skipped with a warning), with the bag's relative
timing scaled by the rate. Messages are converted from rosbags objects to rclpy messages field by field, driven
by the rclpy class's `get_fields_and_field_types()`, so a bag recorded with a slightly different interface
version still plays (fields missing on either side are left at their defaults).

`/clock`: the bag's own /clock messages if it has them, else a clock synthesised from the bag timestamps
(published with every message and every 1/clock_hz wall seconds between them), so that a node with
`use_sim_time` follows the bag. `--loop` starts again from the start: the clock then jumps backwards; nodes
are expected to reset their buffers (this tool just publishes).

QoS: like `ros2 bag play`, the recorded reliability and durability are offered when all recorded offers of a
topic agree; otherwise, and with `--reliable`, reliable + volatile (which both reliable and best-effort
subscribers receive). The clock is published reliable.
"""

from __future__ import annotations

import argparse
import array
import functools
import importlib
import itertools
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosReliability

from vlm_ros.tools.bags import BagInfo, bag_info, read_bag_messages

__all__ = ["BagPlayer", "PlayStats", "message_class", "message_converter", "parse_remap", "main"]

CLOCK_TOPIC = "/clock"
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"

# ---------------------------------------------------------------------------------------------- conversion

# rclpy keeps numeric sequences in array.array and fixed-size numeric arrays in numpy arrays.
_NUMERIC: dict[str, tuple[str, type]] = {
    "int8": ("b", np.int8),
    "uint8": ("B", np.uint8),
    "int16": ("h", np.int16),
    "uint16": ("H", np.uint16),
    "int32": ("i", np.int32),
    "uint32": ("I", np.uint32),
    "int64": ("q", np.int64),
    "uint64": ("Q", np.uint64),
    "float": ("f", np.float32),
    "double": ("d", np.float64),
}
_SEQUENCE = re.compile(r"^sequence<(.+?)(?:, ?\d+)?>$")  # sequence<T> or bounded sequence<T, N>
_ARRAY = re.compile(r"^(.+)\[(\d+)\]$")  # T[N]
_STRING = re.compile(r"^w?string(<=\d+)?$")


def message_class(msgtype: str) -> type:
    """The installed rclpy class of `pkg/msg/Name` (or `pkg/Name`); LookupError if it is not installed."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise LookupError(f"not a message type name: {msgtype!r}")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise LookupError(f"message type {msgtype} is not installed ({exc})") from None


def _element_converter(ftype: str) -> Callable[[object], object]:
    if ftype in _NUMERIC:
        return float if _NUMERIC[ftype][0] in "fd" else int
    if ftype == "boolean":
        return bool
    if ftype in ("octet", "byte"):
        return lambda v: v if isinstance(v, bytes) else bytes([int(v)])
    if ftype == "char":
        return lambda v: v if isinstance(v, str) else chr(int(v))
    if _STRING.match(ftype):
        return str
    if "/" in ftype:
        return message_converter(message_class(ftype))
    raise LookupError(f"unsupported field type {ftype!r}")


def _field_converter(ftype: str) -> Callable[[object], object]:
    """A function turning a rosbags field value into what the rclpy setter of this field type accepts."""
    if m := _SEQUENCE.match(ftype):
        inner = m.group(1)
        if inner in _NUMERIC:
            code, dtype = _NUMERIC[inner]
            return lambda v: array.array(code, np.ascontiguousarray(v, dtype=dtype).tobytes())
        elem = _element_converter(inner)
        return lambda v: [elem(x) for x in v]
    if m := _ARRAY.match(ftype):
        inner = m.group(1)
        if inner in _NUMERIC:
            dtype = _NUMERIC[inner][1]
            return lambda v: np.array(v, dtype=dtype)  # an owned copy
        elem = _element_converter(inner)
        return lambda v: [elem(x) for x in v]
    return _element_converter(ftype)


_MISSING = object()


@functools.lru_cache(maxsize=None)
def message_converter(cls: type) -> Callable[[object], object]:
    """A function building a `cls` message from a rosbags message of the same type, field by field."""
    fields = [(name, _field_converter(ftype)) for name, ftype in cls.get_fields_and_field_types().items()]

    def convert(src: object) -> object:
        msg = cls()
        for name, conv in fields:
            value = getattr(src, name, _MISSING)
            if value is _MISSING:  # a Python keyword field name, or a field this bag's type version lacks
                value = getattr(src, name + "_", _MISSING)
                if value is _MISSING:
                    continue
            setattr(msg, name, conv(value))
        return msg

    return convert


# ---------------------------------------------------------------------------------------------- player


def _abs(name: str) -> str:
    return "/" + name.strip().lstrip("/")


def parse_remap(items: Sequence[str]) -> dict[str, str]:
    """`["FROM:=TO", ...]` -> {"/FROM": "/TO"}; ValueError on a malformed rule."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src.strip() or not dst.strip():
            raise ValueError(f"remap rule must be FROM:=TO, got {item!r}")
        out[_abs(src)] = _abs(dst)
    return out


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)  # output topic (after remapping) -> count
    clock_published: int = 0
    loops: int = 0  # complete passes through the bag
    first_publish: float | None = None  # time.monotonic() of the first and last data message
    last_publish: float | None = None
    bag_time_ns: int | None = None  # bag timestamp of the newest message published (data or /clock)
    skipped: dict[str, str] = field(default_factory=dict)  # bag topic -> why it is not published

    @property
    def total(self) -> int:
        return sum(self.published.values())


def _publisher_qos(recorded: Sequence, depth: int, force_reliable: bool) -> QoSProfile:
    reliability, durability = ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE
    if recorded and not force_reliable:
        if {q.reliability for q in recorded} == {QosReliability.BEST_EFFORT}:
            reliability = ReliabilityPolicy.BEST_EFFORT
        if {q.durability for q in recorded} == {QosDurability.TRANSIENT_LOCAL}:
            durability = DurabilityPolicy.TRANSIENT_LOCAL
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability, durability=durability)


class BagPlayer:
    """Publish a bag's messages on `node` with their recorded relative timing (scaled by `rate`).

    play() blocks; start() plays in a background thread and stop() ends it. Publishing needs no spinning of
    `node`. topics: bag topics to play (None = all with an installed type); remap: {bag topic: output topic}.
    clock: publish /clock (the bag's, else synthesised every 1/clock_hz wall seconds and with each message).
    wait_for_subscribers: before each play(), wait until the data publishers have at least this many matched
    subscriptions in total (TimeoutError after wait_timeout seconds), then `settle_s` more for the matching to
    finish on the subscriber side.
    """

    def __init__(
        self,
        node,
        path: str | Path,
        rate: float = 1.0,
        start_offset: float = 0.0,
        loop: bool = False,
        remap: Mapping[str, str] | None = None,
        topics: Sequence[str] | None = None,
        *,
        clock: bool = True,
        clock_hz: float = 50.0,
        qos_depth: int = 10,
        reliable: bool = False,
        wait_for_subscribers: int = 0,
        wait_timeout: float = 10.0,
        settle_s: float = 0.2,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, got {rate}")
        if not (math.isfinite(start_offset) and start_offset >= 0):
            raise ValueError(f"start_offset must be >= 0 seconds, got {start_offset}")
        if not (math.isfinite(clock_hz) and clock_hz > 0):
            raise ValueError(f"clock_hz must be positive, got {clock_hz}")
        if qos_depth < 1:
            raise ValueError(f"qos_depth must be >= 1, got {qos_depth}")
        if wait_for_subscribers < 0:
            raise ValueError(f"wait_for_subscribers must be >= 0, got {wait_for_subscribers}")
        self.node = node
        self.path = Path(path)
        self.rate = float(rate)
        self.start_offset = float(start_offset)
        self.loop = bool(loop)
        self.remap = {_abs(k): _abs(v) for k, v in (remap or {}).items()}
        self.clock_hz = float(clock_hz)
        self.wait_for_subscribers = int(wait_for_subscribers)
        self.wait_timeout = float(wait_timeout)
        self.settle_s = float(settle_s)
        self.info: BagInfo = bag_info(self.path)
        self.stats = PlayStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        log = node.get_logger()

        wanted = None if topics is None else {_abs(t) for t in topics}
        if wanted is not None and (missing := sorted(wanted - set(self.info.topics))):
            log.warning(f"topics not in the bag: {', '.join(missing)}")
        bag_clock = self.info.topics.get(CLOCK_TOPIC)
        self._bag_has_clock = bool(clock and bag_clock is not None and bag_clock.msgtype == CLOCK_TYPE)
        self._clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
            self._clock_pub = node.create_publisher(Clock, self._out(CLOCK_TOPIC), qos)

        # bag topic -> (publisher, converter, output name)
        self._routes: dict[str, tuple[object, Callable[[object], object], str]] = {}
        for name, t in sorted(self.info.topics.items()):
            if name == CLOCK_TOPIC and t.msgtype == CLOCK_TYPE:
                if self._clock_pub is not None:
                    self._routes[name] = (self._clock_pub, message_converter(self._clock_cls), self._out(name))
                continue
            if wanted is not None and name not in wanted:
                continue
            try:
                cls = message_class(t.msgtype)
                convert = message_converter(cls)
            except LookupError as exc:
                self.stats.skipped[name] = str(exc)
                log.warning(f"skipping {name}: {exc}")
                continue
            pub = node.create_publisher(cls, self._out(name), _publisher_qos(t.qos, qos_depth, reliable))
            self._routes[name] = (pub, convert, self._out(name))
        self._data_pubs = [pub for name, (pub, _, _) in self._routes.items() if pub is not self._clock_pub]

    # ------------------------------------------------------------------ helpers

    def _out(self, topic: str) -> str:
        return self.remap.get(topic, topic)

    @property
    def output_topics(self) -> dict[str, str]:
        """bag topic -> topic it is published on."""
        return {name: out for name, (_, _, out) in self._routes.items()}

    def subscription_count(self) -> int:
        """Matched subscriptions over all data publishers (the clock excluded)."""
        return sum(pub.get_subscription_count() for pub in self._data_pubs)

    def _wait_for_subscribers(self) -> None:
        if self.wait_for_subscribers <= 0:
            return
        deadline = time.monotonic() + self.wait_timeout
        while self.subscription_count() < self.wait_for_subscribers:
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.subscription_count()} of {self.wait_for_subscribers} subscriptions matched "
                    f"after {self.wait_timeout} s"
                )
            self._stop.wait(0.02)
        self._stop.wait(self.settle_s)

    def _publish_clock(self, stamp_ns: int) -> None:
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)
        self._clock_pub.publish(msg)
        self.stats.clock_published += 1

    def _wait_until(self, due: float, t0_ns: int, wall0: float, deadline: float | None) -> bool:
        """Sleep until `due` (monotonic), ticking a synthesised clock; False if stopped or past the deadline."""
        synth = self._clock_pub is not None and not self._bag_has_clock
        period = 1.0 / self.clock_hz
        while True:
            now = time.monotonic()
            if self._stop.is_set() or (deadline is not None and now >= deadline):
                return False
            if now >= due:
                return True
            wake = min(due, deadline if deadline is not None else due)
            if synth:
                if now >= self._next_tick:
                    self._publish_clock(t0_ns + int((now - wall0) * self.rate * 1e9))
                    self._next_tick = now + period
                wake = min(wake, self._next_tick)
            self._stop.wait(max(0.0, wake - now))

    # ------------------------------------------------------------------ playing

    def play(self, until: float | None = None) -> PlayStats:
        """Play (once, or repeatedly with loop) and return the statistics.

        until: a wall-clock budget in seconds; play returns when it is spent, after stop(), or at the bag's end.
        Raises TimeoutError if the wanted subscribers do not appear.
        """
        deadline = None if until is None else time.monotonic() + float(until)
        self._wait_for_subscribers()
        t0 = self.info.start_ns + int(round(self.start_offset * 1e9))
        topics = list(self._routes)
        synth = self._clock_pub is not None and not self._bag_has_clock
        while not self._stop.is_set():
            messages = read_bag_messages(self.path, topics, start_ns=t0)
            first = next(messages, None)  # opening the bag takes a while: start the wall clock after it
            wall0 = time.monotonic()
            self._next_tick = wall0
            try:
                stream = itertools.chain([first] if first is not None else [], messages)
                finished, sent = self._play_pass(stream, t0, wall0, deadline, synth)
            finally:
                messages.close()  # closes the bag also when the pass was cut short
            if not finished:
                break
            self.stats.loops += 1
            if not self.loop or sent == 0:
                break
        return self.stats

    def _play_pass(self, messages, t0: int, wall0: float, deadline: float | None, synth: bool) -> tuple[bool, int]:
        """Publish one pass; (whether it reached the end, data messages sent)."""
        sent = 0
        for m in messages:
            pub, convert, out = self._routes[m.topic]
            msg = convert(m.message)  # before waiting: conversion time does not delay the publication
            due = wall0 + (m.timestamp_ns - t0) / 1e9 / self.rate
            if not self._wait_until(due, t0, wall0, deadline):
                return False, sent
            if pub is self._clock_pub:
                pub.publish(msg)
                self.stats.clock_published += 1
                self.stats.bag_time_ns = m.timestamp_ns
                continue
            if synth:
                self._publish_clock(m.timestamp_ns)
            pub.publish(msg)
            now = time.monotonic()
            self.stats.bag_time_ns = m.timestamp_ns
            self.stats.published[out] = self.stats.published.get(out, 0) + 1
            if self.stats.first_publish is None:
                self.stats.first_publish = now
            self.stats.last_publish = now
            sent += 1
        return True, sent

    def start(self, until: float | None = None) -> None:
        """play() in a background thread; stop() or wait() end it and re-raise its error, if any."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the player is already running")
        self._stop.clear()
        self._error = None

        def run() -> None:
            try:
                self.play(until)
            except BaseException as exc:  # handed to stop() / wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"bag_player:{self.path.name}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> PlayStats:
        """Wait for a start()ed playback to finish by itself; TimeoutError if it is still running."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"playback still running after {timeout} s")
        return self._finish()

    def stop(self, timeout: float = 10.0) -> PlayStats:
        """Stop playing (at the next message or clock tick) and join the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self._finish()

    def _finish(self) -> PlayStats:
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self.stats


# ---------------------------------------------------------------------------------------------- command line


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlm_ros.tools.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("bag", type=Path, help="rosbag2 directory (mcap or sqlite3)")
    p.add_argument("--rate", type=_positive, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--start-offset", type=_non_negative, default=0.0, help="skip this many seconds of the bag")
    p.add_argument("--loop", action="store_true", help="start again at the end (the clock jumps back)")
    p.add_argument("--remap", nargs="+", action="extend", default=[], metavar="FROM:=TO", help="rename topics")
    p.add_argument("--topics", nargs="+", default=None, metavar="TOPIC", help="play only these bag topics")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--clock-hz", type=_positive, default=50.0, help="synthesised /clock rate (wall Hz)")
    p.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                   help="wait until the played topics have N matched subscriptions in total")
    p.add_argument("--wait-timeout", type=_positive, default=30.0, metavar="S", help="give up waiting after S s")
    p.add_argument("--reliable", action="store_true", help="publish reliable whatever the recorded QoS")
    p.add_argument("--qos-depth", type=int, default=10, help="publisher history depth (default 10)")
    p.add_argument("--duration", type=_positive, default=None, metavar="S", help="stop after S wall seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    argv = list(sys.argv if argv is None else ["replay", *argv])
    # ROS arguments only after --ros-args (up to a lone "--"): rcl would take a bare FROM:=TO as a remap of this node.
    ours, ros = argv[1:], []
    if "--ros-args" in ours:
        i = ours.index("--ros-args")
        j = ours.index("--", i) if "--" in ours[i:] else len(ours)
        ours, ros = ours[:i] + ours[j + 1 :], ours[i:j]
    args = _parser().parse_args(ours)
    try:
        remap = parse_remap(args.remap)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (args.bag / "metadata.yaml").exists():
        print(f"error: {args.bag} is not a rosbag2 directory (no metadata.yaml)", file=sys.stderr)
        return 2
    # no rclpy signal handler: Ctrl-C arrives as KeyboardInterrupt and ends the playback cleanly
    rclpy.init(args=[argv[0], *ros], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("vlm_bag_player")
    log = node.get_logger()
    code = 0
    try:
        player = BagPlayer(
            node, args.bag, rate=args.rate, start_offset=args.start_offset, loop=args.loop, remap=remap,
            topics=args.topics, clock=not args.no_clock, clock_hz=args.clock_hz, qos_depth=args.qos_depth,
            reliable=args.reliable, wait_for_subscribers=args.wait_for_subscribers, wait_timeout=args.wait_timeout,
        )
        routes = ", ".join(f"{k}->{v}" if k != v else k for k, v in player.output_topics.items())
        log.info(f"playing {args.bag} ({player.info.duration_s:.2f} s, {player.info.message_count} messages) "
                 f"at rate {args.rate}: {routes}")
        if args.wait_for_subscribers:
            log.info(f"waiting for {args.wait_for_subscribers} subscriptions")
        stats = player.play(until=args.duration)
        log.info(f"done: {stats.total} messages, {stats.clock_published} clock, {stats.loops} complete passes")
    except TimeoutError as exc:
        log.error(str(exc))
        code = 1
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
