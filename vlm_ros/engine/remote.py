"""Generation on a remote OpenAI-compatible server (vLLM, SGLang, TensorRT-LLM, Ollama, `transformers serve`).

One POST to `<base_url>/chat/completions` per query, streamed back as server-sent events; standard library
only (http.client, ssl, json), so the robot's install needs nothing more. What it guarantees:
  - streaming: every content delta goes to `on_text` (text so far, deltas so far);
  - deadline and cancel: a watcher closes the connection at the deadline or on cancel; the partial text comes
    back with StopReason.DEADLINE / CANCELLED, so a call returns within its deadline plus a few milliseconds;
  - retries with exponential backoff on connection errors and 5xx answers, never after the first token;
  - every other failure (non-200, malformed JSON, an error event, a stream cut in the middle, a stall longer
    than `timeout_s`) raises RemoteError with the server, the HTTP status where there is one, and a short
    excerpt of the server's message; the API key never appears in a message.
The server does not return token ids: `GenerationResult.token_ids` holds one -1 per streamed content delta
(one token per delta on vLLM, SGLang and transformers serve), so counts stay meaningful.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vlm_ros.engine.base import EngineError, GenerationResult, StopReason, TextCallback

__all__ = ["RemoteConfig", "RemoteEngine", "RemoteError"]

_EXCERPT = 200  # characters of a server's error body kept in a message
_MAX_LINE = 1 << 20  # longest SSE line accepted (bytes)


class RemoteError(EngineError):
    """The server could not give an answer; the message says why (never contains the API key)."""


@dataclass
class RemoteConfig:
    """Where the server is and how to talk to it (the node's `remote.*` parameters); RemoteEngine checks it."""

    base_url: str = "http://127.0.0.1:8000/v1"  # OpenAI convention: the endpoint is <base_url>/chat/completions
    model: str = ""  # the server's model name; '' = the first model the server lists
    api_key_env: str = ""  # name of the environment variable holding the API key; '' = no key
    timeout_s: float = 30.0  # longest wait for any byte from the server (connect excluded)
    connect_timeout_s: float = 3.0
    retries: int = 2  # further tries after a connection error or a 5xx answer
    max_concurrency: int = 1  # requests in flight from this engine
    verify_tls: bool = True

    def check(self) -> None:
        """Raise ValueError with the reason when this configuration cannot be used."""
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"remote base_url must be http(s)://host[:port]/path, got '{self.server}'")
        if url.username or url.password:
            raise ValueError("remote base_url must not carry credentials; name an environment variable in api_key_env")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0 or self.retries < 0 or self.max_concurrency < 1:
            raise ValueError("remote timeouts must be > 0, retries >= 0 and max_concurrency >= 1")

    @property
    def server(self) -> str:
        """base_url without credentials, query or fragment: safe for logs and diagnostics."""
        url = urlsplit(self.base_url)
        host = url.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if url.port:
            netloc += f":{url.port}"
        return f"{url.scheme}://{netloc}{url.path.rstrip('/')}"


class _Stop(Exception):
    """The watcher closed the connection (deadline or cancel)."""


class RemoteEngine:
    """Engine for `ModelInputs` that carry chat `messages` (see vlm_ros.models.remote). Thread-safe."""

    def __init__(self, config: RemoteConfig, backoff_s: float = 0.25):
        config.check()
        self.config = config
        self.backoff_s = backoff_s  # first retry delay; doubles per retry
        self._api_key = ""
        if config.api_key_env:
            self._api_key = os.environ.get(config.api_key_env, "")
            if not self._api_key:
                raise ValueError(f"remote api_key_env names '{config.api_key_env}', which is not set or empty")
        url = urlsplit(config.base_url)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname or "", url.port or (443 if self._https else 80)
        self._path = url.path.rstrip("/")
        self._ssl = None
        if self._https:
            self._ssl = ssl.create_default_context()
            if not config.verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._model = config.model
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {"requests": 0, "failures": 0, "retries": 0, "last_latency_s": None,
                                      "last_error": ""}

    # --- what the node shows --------------------------------------------------------------------------
    def describe(self) -> str:
        return f"remote ({self.config.server}, model '{self._model or 'first listed'}')"

    def diagnostics(self) -> dict[str, str]:
        s = self.stats
        latency = s["last_latency_s"]
        return {"server": self.config.server, "remote_model": self._model, "remote_requests": str(s["requests"]),
                "remote_failures": str(s["failures"]), "remote_retries": str(s["retries"]),
                "remote_last_latency_s": "" if latency is None else f"{latency:.3f}",
                "remote_last_error": s["last_error"]}

    def probe(self) -> str:
        """One GET of <base_url>/models: a line for the log (the server may come up later: never raises)."""
        try:
            models = self._list_models(time.monotonic() + self.config.connect_timeout_s + 2.0)
        except RemoteError as exc:
            return f"remote server not answering yet ({exc}); queries will retry"
        if not self._model and models:
            self._model = models[0]
        return f"remote server {self.config.server} answers; models: {', '.join(models) or 'none listed'}"

    # --- generation -----------------------------------------------------------------------------------
    def generate(
        self,
        inputs: Any,  # vlm_ros.models.remote.RemoteInputs
        max_new_tokens: int,
        *,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        deadline = time.monotonic() + 3600.0 if deadline is None else deadline
        cancel = cancel or threading.Event()
        t0 = time.perf_counter()
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return GenerationResult([], "", StopReason.DEADLINE)  # no request slot came free in time
        try:
            model = self._model or self._first_model(deadline)
            body = {"model": model, "messages": inputs.messages, "max_tokens": int(max_new_tokens),
                    "temperature": 0.0, "stream": True, **inputs.extra_body}
            result = self._with_retries(json.dumps(body).encode(), deadline, cancel, on_text)
        except RemoteError as exc:
            self._record(time.perf_counter() - t0, str(exc))
            raise
        finally:
            self._slots.release()
        self._record(time.perf_counter() - t0, "")
        return result

    def _record(self, latency: float, error: str) -> None:
        with self._lock:
            self.stats["requests"] += 1
            self.stats["last_latency_s"] = latency
            if error:
                self.stats["failures"] += 1
                self.stats["last_error"] = error[:_EXCERPT]

    def _with_retries(self, payload: bytes, deadline: float, cancel: threading.Event,
                      on_text: TextCallback | None) -> GenerationResult:
        attempt = 0
        while True:
            try:
                return self._stream(payload, deadline, cancel, on_text)
            except _Retryable as exc:
                if time.monotonic() >= deadline:  # e.g. a connect timeout cut short by the deadline: no answer in time
                    return GenerationResult([], "", StopReason.DEADLINE)
                delay = self.backoff_s * 2 ** attempt
                if attempt >= self.config.retries or time.monotonic() + delay >= deadline:
                    tries = f"{attempt + 1} tr{'y' if attempt == 0 else 'ies'}"
                    raise RemoteError(f"{exc} ({tries})") from None
                attempt += 1
                with self._lock:
                    self.stats["retries"] += 1
                if cancel.wait(delay):
                    return GenerationResult([], "", StopReason.CANCELLED)

    # --- one HTTP exchange ----------------------------------------------------------------------------
    def _connection(self, deadline: float) -> http.client.HTTPConnection:
        timeout = max(0.01, min(self.config.connect_timeout_s, deadline - time.monotonic()))
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, content: bool) -> dict[str, str]:
        headers = {"Accept": "text/event-stream, application/json"}
        if content:
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _stream(self, payload: bytes, deadline: float, cancel: threading.Event,
                on_text: TextCallback | None) -> GenerationResult:
        server = self.config.server
        conn = self._connection(deadline)
        done = threading.Event()
        stopped: list[StopReason] = []
        watcher = threading.Thread(target=self._watch, args=(conn, deadline, cancel, done, stopped), daemon=True)
        t_start = time.perf_counter()
        text, n, first_token_s, finish = "", 0, None, None
        try:
            try:
                conn.connect()
                watcher.start()
                conn.sock.settimeout(self._read_timeout(deadline))
                conn.request("POST", self._path + "/chat/completions", body=payload, headers=self._headers(True))
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if stopped:
                    raise _Stop() from None
                raise _Retryable(f"cannot reach {server}: {_reason(exc)}") from None
            if response.status != 200:
                detail = _excerpt(self._redact(_read_some(response)))
                message = f"{server} answered HTTP {response.status} {response.reason}: {detail}".rstrip(": ")
                if response.status >= 500:
                    raise _Retryable(message)
                raise RemoteError(message)
            content_type = response.getheader("Content-Type", "")
            if "text/event-stream" not in content_type:  # a server that ignores "stream": one JSON answer
                text, finish, n = _whole_answer(self._redact(_read_some(response, 16 << 20)), server)
                if on_text is not None and text:
                    on_text(text, n)
            else:
                for event in _sse_events(response, server):
                    if event is None:  # [DONE]
                        break
                    delta, reason = _delta(event, server, self._redact)
                    if delta:
                        if first_token_s is None:
                            first_token_s = time.perf_counter() - t_start
                        text += delta
                        n += 1
                        if on_text is not None:
                            on_text(text, n)
                    finish = reason or finish
                if finish is None and not stopped:
                    raise RemoteError(f"stream from {server} ended after {n} tokens without a finish reason "
                                      "(connection cut)")
        except _Stop:
            pass
        except RemoteError:
            if not stopped:  # a line cut by the watcher is no server error
                raise
        except (OSError, http.client.HTTPException) as exc:
            if not stopped:
                what = "stalled" if isinstance(exc, TimeoutError) else "cut"
                raise RemoteError(f"stream from {server} {what} after {n} tokens: {_reason(exc)}") from None
        finally:
            done.set()
            conn.close()
        if finish is not None:  # the answer was complete (servers report "stop" for EOS)
            reason = StopReason.LENGTH if finish == "length" else StopReason.EOS
        else:
            reason = stopped[0]
        total = time.perf_counter() - t_start
        first = total if first_token_s is None else first_token_s
        return GenerationResult([-1] * n, text.strip(), reason, prefill_s=first, decode_s=total - first)

    def _read_timeout(self, deadline: float) -> float:
        # the watcher ends the call at the deadline; this bounds a stall before it
        return max(0.01, min(self.config.timeout_s, deadline - time.monotonic() + 1.0))

    @staticmethod
    def _watch(conn: http.client.HTTPConnection, deadline: float, cancel: threading.Event, done: threading.Event,
               stopped: list[StopReason]) -> None:
        """Close the connection at the deadline or on cancel, which wakes a blocked read at once."""
        while not done.wait(min(0.02, max(0.0, deadline - time.monotonic()))):
            reason = (StopReason.CANCELLED if cancel.is_set() else
                      StopReason.DEADLINE if time.monotonic() >= deadline else None)
            if reason is not None:
                stopped.append(reason)
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    # --- model list -----------------------------------------------------------------------------------
    def _first_model(self, deadline: float) -> str:
        models = self._list_models(deadline)
        if not models:
            raise RemoteError(f"no model configured (remote.model) and {self.config.server}/models lists none")
        self._model = models[0]
        return self._model

    def _list_models(self, deadline: float) -> list[str]:
        conn = self._connection(deadline)
        try:
            conn.connect()
            conn.sock.settimeout(self._read_timeout(deadline))
            conn.request("GET", self._path + "/models", headers=self._headers(False))
            response = conn.getresponse()
            body = self._redact(_read_some(response, 1 << 20))
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteError(f"cannot reach {self.config.server}: {_reason(exc)}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise RemoteError(f"{self.config.server}/models answered HTTP {response.status}: {_excerpt(body)}")
        try:
            return [str(m["id"]) for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{self.config.server}/models answered malformed JSON: {_excerpt(body)}") from None


class _Retryable(Exception):
    """A failure before the answer started: connection error or 5xx."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


def _read_some(response: http.client.HTTPResponse, limit: int = 4096) -> str:
    try:
        return response.read(limit).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _sse_events(response: http.client.HTTPResponse, server: str):
    """Yield each event's JSON value; None for `[DONE]`. Comments, ids and event names are skipped."""
    data: list[str] = []
    while True:
        line = response.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise RemoteError(f"stream from {server} has a line over {_MAX_LINE} bytes")
        if not line:  # end of stream
            if data:
                yield _event_json("\n".join(data), server)
            return
        line = line.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            joined = "\n".join(data)
            data = []
            if joined.strip() == "[DONE]":
                yield None
                return
            yield _event_json(joined, server)


def _event_json(data: str, server: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise RemoteError(f"stream from {server} sent malformed JSON: {_excerpt(data)}") from None


def _delta(event: Any, server: str, redact) -> tuple[str, str | None]:
    """(content delta, finish reason or None) of one chat.completion.chunk; an error event raises."""
    if isinstance(event, dict) and "error" in event:
        error = event["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise RemoteError(f"{server} reported an error in the stream: {_excerpt(redact(str(message)))}")
    try:
        choices = event["choices"]
        if not choices:  # a usage-only chunk
            return "", None
        choice = choices[0]
        content = choice.get("delta", {}).get("content") or ""
        if not isinstance(content, str):
            raise TypeError
        return content, choice.get("finish_reason")
    except (KeyError, TypeError, AttributeError, IndexError):
        raise RemoteError(f"stream from {server} sent an unexpected chunk: {_excerpt(json.dumps(event))}") from None


def _whole_answer(body: str, server: str) -> tuple[str, str | None, int]:
    """(content, finish reason, completion tokens or 1) of a non-streamed chat.completion."""
    try:
        value = json.loads(body)
    except ValueError:
        raise RemoteError(f"{server} answered malformed JSON: {_excerpt(body)}") from None
    if isinstance(value, dict) and "error" in value:
        raise RemoteError(f"{server} reported an error: {_excerpt(str(value['error']))}")
    try:
        choice = value["choices"][0]
        content = choice["message"]["content"] or ""
        if not isinstance(content, str):
            raise TypeError
        usage = value.get("usage") or {}
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return content, choice.get("finish_reason") or "stop", tokens if isinstance(tokens, int) and tokens > 0 else 1
    except (KeyError, TypeError, IndexError, AttributeError):
        raise RemoteError(f"{server} answered an unexpected JSON object: {_excerpt(body)}") from None
