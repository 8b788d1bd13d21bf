"""The remote backend against a real peer: `transformers serve` on 127.0.0.1 serving the embedded model.

Remote answers and grounded targets must equal the local torch backend's on the same frames (frames are
sent as PNG, so the server's processor sees the same pixels); streaming, the deadline and a server that goes
down and comes back behave as the node's contract says. Nothing here depends on how good the weights are.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise

import pytest
from serve_peer import ServePeer, requires_serve

from vlm_ros.core.types import Frame, Request, Status, Task

pytestmark = [requires_serve, pytest.mark.slow]

SEEDS = (3, 7)


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    p = ServePeer(tmp_path_factory.mktemp("serve") / "serve.log")
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def remote(peer):
    from vlm_ros.backends import BackendSettings, RemoteSettings, build_pipeline

    remote = RemoteSettings(base_url=peer.base_url, model=peer.model, image_format="png", family="embedded")
    pipeline, description = build_pipeline(BackendSettings(backend="remote", remote=remote), lambda line: None)
    assert peer.base_url in description
    return pipeline


@pytest.fixture(scope="module")
def local():
    from vlm_ros.models.registry import load_adapter
    from vlm_ros.pipeline import Pipeline

    return Pipeline(load_adapter("", "embedded", "cpu"))


def scene_frame(seed: int) -> tuple[Frame, object]:
    from vlm_ros.embedded.scenes import render_scene

    scene = render_scene(seed)
    return Frame(scene.image, stamp_ns=seed, camera="front", intrinsics=scene.intrinsics, depth=scene.depth), scene


def requests_for(scene) -> list[Request]:
    obj = scene.objects[0]
    # generous timeouts: a loaded CI machine runs the model slowly on both sides
    return [Request(Task.DESCRIBE, "", 48, 200), Request(Task.ANSWER, f"what color is the {obj.shape}?", 16, 200),
            Request(Task.GROUND, "detect all objects", 48, 200),
            Request(Task.GROUND, f"where is the {obj.label}?", 24, 200)]


def test_remote_answers_and_targets_equal_the_local_backend(remote, local):
    compared = 0
    for seed in SEEDS:
        frame, scene = scene_frame(seed)
        for request in requests_for(scene):
            here, there = local.answer(frame, request), remote.answer(frame, request)
            assert (here.status, there.status) == (Status.OK, Status.OK), (here.message, there.message)
            assert there.text == here.text, (seed, request)
            assert [(t.label, t.box, t.position) for t in there.targets] == \
                   [(t.label, t.box, t.position) for t in here.targets], (seed, request)
            assert there.generated_tokens > 0 and there.message == here.message
            compared += len(here.targets)
    print(f"compared {compared} grounded targets")  # with the current weights: about a dozen


def test_streaming_feeds_growing_text_to_the_caller(remote):
    frame, _ = scene_frame(SEEDS[0])
    seen: list[tuple[str, int]] = []
    answer = remote.answer(frame, Request(Task.DESCRIBE, "", 48, 120), on_text=lambda text, n: seen.append((text, n)))
    assert answer.status == Status.OK and seen
    assert [n for _, n in seen] == list(range(1, len(seen) + 1)) == list(range(1, answer.generated_tokens + 1))
    assert all(b[0].startswith(a[0]) for a, b in pairwise(seen))
    assert seen[-1][0].strip() == answer.text  # the embedded model's describe answer has no location tokens


def test_deadline_is_honoured_with_a_partial_answer(remote):
    frame, _ = scene_frame(SEEDS[0])
    full = remote.answer(frame, Request(Task.DESCRIBE, "", 48, 120))
    t0 = time.monotonic()
    answer = remote.answer(frame, Request(Task.DESCRIBE, "", 48, 0.25))
    elapsed = time.monotonic() - t0
    assert elapsed < 0.25 + 0.3
    assert answer.status in (Status.TIMEOUT, Status.OK), answer.message
    if answer.status == Status.TIMEOUT:
        assert full.text.startswith(answer.text) and "partial" in answer.message


def test_cancel_mid_stream(remote):
    frame, _ = scene_frame(SEEDS[0])
    cancel = threading.Event()
    answer = remote.answer(frame, Request(Task.DESCRIBE, "", 48, 120), cancel=cancel,
                           on_text=lambda text, n: n >= 2 and cancel.set())
    assert answer.status == Status.OK
    if answer.generated_tokens >= 2:  # a describe answer of one token would finish before the cancel
        assert "cancelled" in answer.message and answer.generated_tokens < 48


def test_server_down_gives_model_error_and_the_next_query_after_restart_succeeds(peer, remote):
    frame, scene = scene_frame(SEEDS[0])
    request = requests_for(scene)[1]
    before = remote.answer(frame, request)
    peer.stop()
    t0 = time.monotonic()
    down = remote.answer(frame, request)
    assert down.status == Status.MODEL_ERROR and "connection refused" in down.message, down.message
    assert peer.base_url.rsplit("/", 1)[0] in down.message and time.monotonic() - t0 < 3.0
    assert remote.engine.diagnostics()["remote_last_error"]
    peer.start()
    after = remote.answer(frame, request)
    assert after.status == Status.OK and after.text == before.text
