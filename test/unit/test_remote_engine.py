"""The remote (OpenAI-compatible) backend against a scripted local HTTP server on 127.0.0.1.

The server below speaks HTTP/1.1 with chunked server-sent events, as vLLM, SGLang and uvicorn do, and can
misbehave on purpose: error statuses, malformed JSON, error events, stalls, a stream cut in the middle.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from vlm_ros.backends import BackendSettings, RemoteSettings, build_pipeline
from vlm_ros.core.types import Frame, Request, Status, Task
from vlm_ros.engine.remote import RemoteConfig, RemoteEngine
from vlm_ros.models.florence2 import Florence2Adapter
from vlm_ros.models.llava import EmbeddedAdapter
from vlm_ros.models.parsing import ResizeTransform
from vlm_ros.models.qwen2_5_vl import Qwen25VLAdapter
from vlm_ros.models.remote import RemoteAdapter, encode_frame, qwen_input_size
from vlm_ros.pipeline import Pipeline

SECRET = "sk-test-0123456789"


class Script:
    """What the server does with the next requests; every request is recorded."""

    def __init__(self) -> None:
        self.mode = "sse"
        self.chunks: list[str] = ["ok"]
        self.delay_s = 0.0  # between chunks
        self.status = 200
        self.fail_first = 0  # answer 503 to this many requests first
        self.requests: list[dict] = []
        self.closed_early = threading.Event()  # the client closed the stream before it ended


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})

    def do_POST(self) -> None:
        s = self.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        s.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if s.fail_first > 0:
            s.fail_first -= 1
            return self._json(503, {"error": {"message": "warming up"}})
        if s.mode == "status":
            return self._json(s.status, {"error": {"message": f"bad request, key {SECRET} not accepted"}})
        if s.mode == "json":
            return self._json(200, {"choices": [{"message": {"content": "".join(s.chunks)}, "finish_reason": "stop"}]})
        if s.mode == "bad_json":
            return self._raw(200, "application/json", b"{not json")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if s.mode == "stall_at_once":
                time.sleep(10)
                return
            for i, piece in enumerate(s.chunks):
                self._chunk(f"data: {json.dumps(_delta(piece))}\n\n")
                if s.mode == "cut" and i == 1:
                    self.connection.shutdown(socket.SHUT_RDWR)  # cut in the middle: no finish, no last chunk
                    return
                time.sleep(s.delay_s)
            if s.mode == "malformed":
                self._chunk('data: {"choices": [{"delta": {"content": "x"\n\n')
            elif s.mode == "error_event":
                self._chunk('data: {"error": "CUDA out of memory on the server"}\n\n')
            elif s.mode == "stall":
                time.sleep(10)
            self._chunk(f"data: {json.dumps(_delta('', finish='stop'))}\n\n")
            self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            s.closed_early.set()

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, value: dict) -> None:
        self._raw(status, "application/json", json.dumps(value).encode())

    def _raw(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _delta(content: str, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]}


def _serve(port: int = 0) -> tuple[ThreadingHTTPServer, Script]:
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", port), type("H", (Handler,), {"script": script}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, script


@pytest.fixture
def server():
    srv, script = _serve()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", script
    srv.shutdown()
    srv.server_close()


def _frame(w: int = 64, h: int = 48) -> Frame:
    rng = np.random.default_rng(0)
    return Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pipeline(url: str, family: str = "embedded", image_format: str = "png", max_image_side: int = 0,
              **config) -> Pipeline:
    adapter = RemoteAdapter(family, image_format, 90, max_image_side, loc_bins=64)
    return Pipeline(adapter, RemoteEngine(RemoteConfig(base_url=url, model="m", **config), backoff_s=0.05))


def _sent_image(body: dict) -> np.ndarray:
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    header, data = url.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


# --- answers, streaming and grounding ------------------------------------------------------------------------

def test_streamed_answer_reaches_on_text_and_boxes_match_the_local_embedded_parser(server):
    url, script = server
    script.chunks = ["red", " ball", "<loc_10>", "<loc_20>", "<loc_30>", "<loc_40>"]
    frame = _frame()
    seen: list[tuple[str, int]] = []
    answer = _pipeline(url).answer(frame, Request(Task.GROUND, "where is the red ball?", 32, 10),
                                   on_text=lambda text, n: seen.append((text, n)))
    assert answer.status == Status.OK, answer.message
    local = EmbeddedAdapter.parse_text("red ball<loc_10><loc_20><loc_30><loc_40>", frame, 64)
    assert answer.text == local.text == "red ball"
    assert [(t.label, t.box) for t in answer.targets] == local.boxes and len(local.boxes) == 1
    assert [n for _, n in seen] == [1, 2, 3, 4, 5, 6] and seen[-1][0] == "red ball<loc_10><loc_20><loc_30><loc_40>"
    assert answer.generated_tokens == 6
    body = script.requests[0]["body"]
    assert script.requests[0]["path"] == "/v1/chat/completions"
    assert (body["model"], body["max_tokens"], body["temperature"], body["stream"]) == ("m", 32, 0.0, True)
    assert body["messages"][0]["content"][1] == {"type": "text", "text": "where is the red ball?"}
    assert np.array_equal(_sent_image(body), frame.image)  # PNG: the exact frame


def test_describe_is_phrased_as_the_local_adapter_phrases_it(server):
    url, script = server
    _pipeline(url).answer(_frame(), Request(Task.DESCRIBE, "", 8, 10))
    text = script.requests[0]["body"]["messages"][0]["content"][1]["text"]
    assert text == EmbeddedAdapter.instruction(Request(Task.DESCRIBE, "", 8, 10))


def test_qwen_boxes_are_pixels_of_the_smart_resized_sent_image(server):
    url, script = server
    frame = _frame(640, 480)
    in_w, in_h = qwen_input_size(320, 240)  # the frame is sent downscaled to 320x240
    assert (in_w % 28, in_h % 28) == (0, 0)
    reply = json.dumps([{"bbox_2d": [28, 56, in_w // 2, in_h // 2], "label": "mug"}])
    script.chunks = [reply[:20], reply[20:]]
    request = Request(Task.GROUND, "where is the mug?", 64, 10)
    answer = _pipeline(url, "qwen2_5_vl", "jpeg", max_image_side=320).answer(frame, request)
    assert answer.status == Status.OK, answer.message
    local = Qwen25VLAdapter.parse_text(reply, ResizeTransform.resize(640, 480, in_w, in_h), frame, request)
    assert [(t.label, t.box) for t in answer.targets] == local.boxes
    box = answer.targets[0].box
    assert box.x_min == pytest.approx(28 * 640 / in_w) and box.y_max == pytest.approx(in_h // 2 * 480 / in_h)
    body = script.requests[0]["body"]
    assert _sent_image(body).shape == (240, 320, 3)
    assert body["messages"][0]["content"][1]["text"] == Qwen25VLAdapter.user_text(request)


def test_qwen_points_are_pixels_of_the_smart_resized_sent_image(server):
    url, script = server
    frame = _frame(640, 480)
    in_w, in_h = qwen_input_size(320, 240)
    script.chunks = [json.dumps([{"point_2d": [in_w // 2, in_h // 4], "label": "mug"}])]
    request = Request(Task.GROUND, "point to the mug", 64, 10)
    answer = _pipeline(url, "qwen2_5_vl", "jpeg", max_image_side=320).answer(frame, request)
    assert answer.status == Status.OK, answer.message
    [target] = answer.targets
    assert target.box is None and target.label == "mug"
    assert target.point == pytest.approx((in_w // 2 * 640 / in_w, in_h // 4 * 480 / in_h))
    assert "point coordinates in JSON" in script.requests[0]["body"]["messages"][0]["content"][1]["text"]


def test_florence2_boxes_are_bins_over_the_source_and_loc_tokens_are_asked_for(server):
    url, script = server
    frame = _frame(640, 480)
    script.chunks = ["mug", "<loc_100><loc_200><loc_500><loc_600>"]
    request = Request(Task.GROUND, "find the mug", 64, 10)
    answer = _pipeline(url, "florence2").answer(frame, request)
    assert answer.status == Status.OK, answer.message
    box = answer.targets[0].box
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == pytest.approx(
        (100.5 * 0.64, 200.5 * 0.48, 500.5 * 0.64, 600.5 * 0.48))
    local = Florence2Adapter.parse_text("mug<loc_100><loc_200><loc_500><loc_600>", (768, 768),
                                        ResizeTransform.resize(640, 480, 768, 768), frame, request)
    assert [(t.label, t.box) for t in answer.targets] == local.boxes
    body = script.requests[0]["body"]
    assert body["skip_special_tokens"] is False
    assert body["messages"][0]["content"][1]["text"] == "<OPEN_VOCABULARY_DETECTION>mug"


def test_text_family_answers_without_boxes_and_a_non_streaming_server_works(server):
    url, script = server
    script.mode, script.chunks = "json", ["a red mug on a table"]
    answer = _pipeline(url, "text").answer(_frame(), Request(Task.DESCRIBE, "", 16, 10))
    assert (answer.status, answer.text, answer.targets) == (Status.OK, "a red mug on a table", [])
    assert not RemoteAdapter("text", "jpeg", 90, 0).can_ground


# --- failures: a clear status and message, and the next query works ---------------------------------------

@pytest.mark.parametrize("mode, expected", [
    ("malformed", "malformed JSON"),
    ("error_event", "CUDA out of memory on the server"),
    ("cut", "without a finish reason"),
    ("bad_json", "malformed JSON"),
])
def test_bad_answers_give_model_error_and_the_next_query_succeeds(server, mode, expected):
    url, script = server
    pipeline = _pipeline(url)
    script.mode, script.chunks = mode, ["a", "b", "c"]
    answer = pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10))
    assert answer.status == Status.MODEL_ERROR and expected in answer.message, answer.message
    assert "127.0.0.1" in answer.message
    script.mode = "sse"
    assert pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10)).text == "abc"
    assert pipeline.engine.stats["failures"] == 1 and expected in pipeline.engine.stats["last_error"]


def test_client_error_status_is_reported_once_without_retry_and_without_the_key(server, monkeypatch):
    url, script = server
    monkeypatch.setenv("VLM_TEST_KEY", SECRET)
    script.mode, script.status = "status", 400
    pipeline = _pipeline(url, api_key_env="VLM_TEST_KEY")
    answer = pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10))
    assert answer.status == Status.MODEL_ERROR and "HTTP 400" in answer.message and "bad request" in answer.message
    assert SECRET not in answer.message and "***" in answer.message
    assert len(script.requests) == 1
    assert script.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    shown = pipeline.engine.describe() + json.dumps(pipeline.engine.diagnostics())
    assert SECRET not in shown and "127.0.0.1" in shown


def test_server_errors_are_retried_with_backoff_then_reported(server):
    url, script = server
    pipeline = _pipeline(url, retries=2)
    script.fail_first = 1
    answer = pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10))
    assert answer.status == Status.OK and pipeline.engine.stats["retries"] == 1
    script.requests.clear()
    script.fail_first = 5
    answer = pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10))
    assert answer.status == Status.MODEL_ERROR and "HTTP 503" in answer.message and "3 tries" in answer.message
    assert len(script.requests) == 3


def test_server_down_gives_model_error_fast_and_the_query_after_it_comes_up_succeeds():
    with socket.socket() as s:  # a free port, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pipeline = _pipeline(f"http://127.0.0.1:{port}/v1", retries=1)
    t0 = time.monotonic()
    answer = pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10))
    assert answer.status == Status.MODEL_ERROR and "connection refused" in answer.message, answer.message
    assert time.monotonic() - t0 < 2.0
    srv, _ = _serve(port)
    try:
        assert pipeline.answer(_frame(), Request(Task.ANSWER, "what?", 8, 10)).status == Status.OK
    finally:
        srv.shutdown()
        srv.server_close()


# --- deadline, stall, cancel, concurrency ------------------------------------------------------------------

def test_deadline_returns_the_partial_answer_on_time(server):
    url, script = server
    script.mode, script.chunks = "stall", ["red", " ball"]
    t0 = time.monotonic()
    answer = _pipeline(url).answer(_frame(), Request(Task.ANSWER, "what?", 8, 0.6))
    elapsed = time.monotonic() - t0
    assert answer.status == Status.TIMEOUT and answer.text == "red ball", (answer.status, answer.message)
    assert elapsed < 0.6 + 0.3
    assert script.closed_early.wait(12)  # the server saw the stream closed


def test_deadline_before_the_first_byte(server):
    url, script = server
    script.mode = "stall_at_once"
    t0 = time.monotonic()
    answer = _pipeline(url).answer(_frame(), Request(Task.ANSWER, "what?", 8, 0.4))
    assert answer.status == Status.TIMEOUT and answer.text == ""
    assert time.monotonic() - t0 < 0.4 + 0.3


def test_a_stall_longer_than_timeout_s_is_a_model_error(server):
    url, script = server
    script.mode, script.chunks = "stall", ["red"]
    t0 = time.monotonic()
    answer = _pipeline(url, timeout_s=0.4).answer(_frame(), Request(Task.ANSWER, "what?", 8, 30))
    assert answer.status == Status.MODEL_ERROR and "stalled after 1 tokens" in answer.message, answer.message
    assert time.monotonic() - t0 < 2.0


def test_cancel_closes_the_stream_and_keeps_the_partial_answer(server):
    url, script = server
    script.mode, script.chunks = "stall", ["red", " ball"]
    cancel = threading.Event()
    t0 = time.monotonic()
    answer = _pipeline(url).answer(_frame(), Request(Task.ANSWER, "what?", 8, 30), cancel=cancel,
                                   on_text=lambda text, n: n == 2 and cancel.set())
    assert answer.status == Status.OK and "cancelled" in answer.message and answer.text == "red ball"
    assert time.monotonic() - t0 < 2.0
    assert script.closed_early.wait(12)


def test_concurrency_limit_holds_a_second_query_until_its_deadline(server):
    url, script = server
    script.mode, script.chunks = "stall", ["a"]
    pipeline = _pipeline(url, max_concurrency=1)
    first = threading.Thread(target=pipeline.answer, args=(_frame(), Request(Task.ANSWER, "q", 8, 1.5)))
    first.start()
    time.sleep(0.3)
    answer = pipeline.answer(_frame(), Request(Task.ANSWER, "q", 8, 0.3))
    first.join()
    assert answer.status == Status.TIMEOUT and len(script.requests) == 1


# --- configuration ---------------------------------------------------------------------------------------

def test_config_refuses_credentials_in_the_url_and_a_missing_key_variable(monkeypatch):
    with pytest.raises(ValueError, match="credentials"):
        RemoteEngine(RemoteConfig(base_url="http://user:pw@127.0.0.1:8000/v1"))
    monkeypatch.delenv("VLM_TEST_MISSING", raising=False)
    with pytest.raises(ValueError, match="VLM_TEST_MISSING"):
        RemoteEngine(RemoteConfig(api_key_env="VLM_TEST_MISSING"))
    assert RemoteConfig(base_url="https://gpu.example:8443/v1/?x=1").server == "https://gpu.example:8443/v1"


def test_backend_registry_builds_the_remote_pipeline_and_finds_the_model(server):
    url, _ = server
    logs: list[str] = []
    remote = RemoteSettings(base_url=url, family="qwen2_5_vl", image_format="png")
    pipeline, description = build_pipeline(BackendSettings(backend="remote", remote=remote), logs.append)
    assert url in description and "served-model" in description and "qwen2_5_vl" in description
    assert any("served-model" in line for line in logs)
    assert pipeline.adapter.family == "qwen2_5_vl"


def test_encoded_frame_sizes_and_downscale():
    frame = _frame(640, 480)
    png, size = encode_frame(frame.image, "png")
    jpeg, _ = encode_frame(frame.image, "jpeg", 90)
    assert size == (640, 480) and len(jpeg) < len(png)
    _, small = encode_frame(frame.image, "jpeg", 90, max_image_side=100)
    assert small == (100, 75)
