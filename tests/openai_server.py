"""A loopback OpenAI-compatible chat-completions server for offline provider tests and benchmarks.

Serves `POST /v1/chat/completions` on 127.0.0.1 (ephemeral port) with canned replies and a scriptable fault plan, so
litellm is exercised through its ordinary HTTP path without any paid API or internet access. Simplifications: no
streaming, no tool-call replies, one reply text per request (a fixed string or a function of the request body).

A fault plan maps each request to one `Fault`. `keyed_plan` makes plans deterministic under concurrency: the fault of
a request depends on a key found in its body (e.g. a task id) and on how many earlier requests carried the same key,
so retries of one group replay that group's own script.

Every request is recorded (`requests`, `bodies`, `kind_counts`). Hanging requests wait at most `hang_s` seconds or
until `stop()`, and handler threads are daemons, so the server never outlives its fixture.

The module also builds airline-like sibling groups (`airline_group`) with planted secrets (`PLANTED_SECRETS`), shared by
the provider tests and `benchmarks/provider_latency.py`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trl_sgcd.siblings import Sibling, SiblingGroup


FAULT_KINDS = (
    "ok",  # a normal completion (after `delay` seconds)
    "429",  # rate limited, with a `Retry-After: 0` header
    "500",  # internal server error
    "503",  # service unavailable
    "400",  # bad request (must not be retried)
    "401",  # authentication error whose message echoes the bearer token, as some APIs do
    "hang",  # no response until the client gives up (bounded by `hang_s`)
    "empty_body",  # HTTP 200 with an empty body
    "bad_json",  # HTTP 200 with a truncated JSON body
    "bad_reference",  # a well-formed completion whose text is not a credit reference
    "empty_content",  # a well-formed completion with empty message content
)

VALID_REFERENCE = """## State checks
- Look up the reservation before changing it; confirm the cabin class and the flight status.

## Successful branches
1. get_reservation_details -> check status -> cancel_reservation only when the policy allows it.

## Failed branches and why
- Cancelling without checking the fare rules: the cancellation is not allowed for basic economy.

## Deviation points
- Step 2: failures call cancel_reservation where successes first call get_flight_status.

## Literals to mask
- `<MASKED:PAYMENT>`
- reservation id
"""


@dataclass(frozen=True)
class Fault:
    """One scripted server behaviour.

    Args:
        kind: one of `FAULT_KINDS`.
        delay: seconds to wait before answering (any kind).
    """

    kind: str = "ok"
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}.")


FaultPlan = Callable[[dict[str, Any], int], Fault]


def always(fault: Fault | str) -> FaultPlan:
    """A plan that answers every request with the same fault."""
    fault = Fault(fault) if isinstance(fault, str) else fault
    return lambda body, attempt: fault


def keyed_plan(
    scripts: dict[str, list[Fault | str]], key_pattern: str = r"task-\d+", default: Fault | str = "ok"
) -> FaultPlan:
    """A deterministic plan keyed by a token of the request body.

    Args:
        scripts: key -> faults for its 1st, 2nd, ... request; the last entry repeats once the script is exhausted.
        key_pattern: regex whose first match in the concatenated message contents is the request's key.
        default: the fault for requests whose key has no script.
    """
    regex = re.compile(key_pattern)
    norm = {k: [Fault(f) if isinstance(f, str) else f for f in v] for k, v in scripts.items()}
    default_fault = Fault(default) if isinstance(default, str) else default

    def plan(body: dict[str, Any], attempt: int) -> Fault:
        key = request_key(body, regex)
        script = norm.get(key or "")
        if not script:
            return default_fault
        return script[min(attempt, len(script) - 1)]

    return plan


def request_text(body: dict[str, Any]) -> str:
    """The concatenated message contents of a chat-completions request body."""
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n".join(parts)


def request_key(body: dict[str, Any], regex: re.Pattern[str] = re.compile(r"task-\d+")) -> str | None:
    match = regex.search(request_text(body))
    return match.group(0) if match else None


class OpenAIStubServer:
    """Threaded OpenAI-compatible server; use as a context manager or call `start()` / `stop()`.

    Args:
        reply: the completion text, or a function of the request body returning it.
        plan: the fault plan (defaults to always answering `ok`).
        hang_s: the longest a `hang` request is held open.
        key_pattern: regex used to group requests per key for `attempt` counting (see `keyed_plan`).
    """

    def __init__(
        self,
        reply: str | Callable[[dict[str, Any]], str] = VALID_REFERENCE,
        plan: FaultPlan | None = None,
        hang_s: float = 10.0,
        key_pattern: str = r"task-\d+",
    ):
        self.reply = reply
        self.plan = plan or always("ok")
        self.hang_s = hang_s
        self.key_regex = re.compile(key_pattern)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def reset(self, plan: FaultPlan | None = None, reply: str | Callable[[dict[str, Any]], str] | None = None) -> None:
        """Clears the recorded requests and optionally swaps the plan or the reply."""
        with self._lock:
            if plan is not None:
                self.plan = plan
            if reply is not None:
                self.reply = reply
            self.bodies: list[str] = []
            self.authorizations: list[str] = []
            self.requests: list[dict[str, Any]] = []
            self.kind_counts: Counter[str] = Counter()
            self._attempts: Counter[str] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.connections = 0

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.bodies)

    def start(self) -> OpenAIStubServer:
        handler = _make_handler(self)
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> OpenAIStubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _admit(self, raw: str, authorization: str) -> tuple[dict[str, Any], Fault]:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {}
        key = request_key(body, self.key_regex) or f"<anon:{hash(raw)}>"
        with self._lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
            fault = self.plan(body, attempt)
            self.bodies.append(raw)
            self.authorizations.append(authorization)
            self.requests.append(body)
            self.kind_counts[fault.kind] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return body, fault

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def completion_json(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(request_text(body)) // 4)
        completion_tokens = max(1, len(text) // 4)
        return {
            "id": f"chatcmpl-stub-{len(self.bodies)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"},
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Server(ThreadingHTTPServer):
    # The stdlib default backlog (5) drops bursts of concurrent connects, which then wait ~1 s for a SYN retransmit.
    request_queue_size = 256
    daemon_threads = True


def _make_handler(server: OpenAIStubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            return

        def setup(self) -> None:  # once per TCP connection (HTTP/1.1 keeps it open across requests)
            super().setup()
            with server._lock:
                server.connections += 1

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, message: str, err_type: str, headers: dict[str, str] | None = None) -> None:
            payload = {"error": {"message": message, "type": err_type, "code": str(status)}}
            self._send(status, json.dumps(payload).encode(), headers)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, json.dumps({"object": "list", "data": [{"id": "test-model"}]}).encode())
            else:
                self._error(404, "not found", "invalid_request_error")

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._error(404, "not found", "invalid_request_error")
                return
            body, fault = server._admit(raw, self.headers.get("Authorization") or "")
            try:
                if fault.delay and server._stop.wait(fault.delay):
                    return
                self._respond(body, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); nothing to answer
            finally:
                server._release()

        def _respond(self, body: dict[str, Any], fault: Fault) -> None:
            kind = fault.kind
            if kind == "hang":
                server._stop.wait(server.hang_s)
                self.close_connection = True
                return
            if kind == "429":
                self._error(429, "Rate limit reached, retry later.", "rate_limit_error", {"Retry-After": "0"})
            elif kind in ("500", "503"):
                self._error(int(kind), "The server had an error.", "server_error")
            elif kind == "400":
                self._error(400, "Invalid request.", "invalid_request_error")
            elif kind == "401":
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                self._error(401, f"Incorrect API key provided: {token}.", "invalid_request_error")
            elif kind == "empty_body":
                self._send(200, b"")
            elif kind == "bad_json":
                self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "## State')
            else:
                if kind == "bad_reference":
                    text = "I am sorry, but I cannot produce a reference for these rollouts."
                elif kind == "empty_content":
                    text = ""
                else:
                    text = server.reply(body) if callable(server.reply) else server.reply
                self._send(200, json.dumps(server.completion_json(body, text)).encode())

    return Handler


# ---------------------------------------------------------------------------------------------------- sample evidence
# Airline-like sibling groups shared by the provider tests and the latency benchmark. The user record carries the
# kinds of values the sanitizer must mask (e-mail, phone, payment ids, a card number inside nested JSON, an evaluator
# report); `PLANTED_SECRETS` lists them so tests can scan whatever left the process.

PLANTED_SECRETS = (
    "mia.li3818@example.com",
    "+1 (415) 555-0142",
    "credit_card_4421486",
    "gift_card_7219486",
    "4539 1488 0343 6467",
    "sk-proj-Zr8K2mQpX4vN7tLw9YbC3dFh",
    "hunter2-Airline!",
    "reservation_status_mismatch_gold",
)


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _user_record(user_id: str) -> str:
    profile = {
        "user_id": user_id,
        "name": {"first_name": "Mia", "last_name": "Li"},
        "email": "mia.li3818@example.com",
        "phone": "+1 (415) 555-0142",
        "payment_methods": {
            "credit_card_4421486": {"source": "credit_card", "brand": "visa", "last_four": "6467"},
            "gift_card_7219486": {"source": "gift_card", "amount": 128},
        },
        "saved_profile": json.dumps(
            {"card": {"number": "4539 1488 0343 6467"}, "api_key": "sk-proj-Zr8K2mQpX4vN7tLw9YbC3dFh"}
        ),
        "login": "password=hunter2-Airline!",
        "reservations": ["ZFA04Y", "4WQ150"],
    }
    return json.dumps(profile)


def _reservation(reservation_id: str, pad: int = 0) -> str:
    record = {
        "reservation_id": reservation_id,
        "origin": "SFO",
        "destination": "JFK",
        "cabin": "economy",
        "created_at": "2024-05-13T09:12:00",
        "insurance": "yes",
        "flights": [{"flight_number": "HAT271", "date": "2024-05-20", "price": 312}],
        "evaluation": {"expected": "reservation_status_mismatch_gold", "passed": False},
        "notes": "x" * pad,
    }
    return json.dumps(record)


def airline_sibling(kind: str, user_id: str = "mia_li_3668", pad: int = 0, reward: float | None = None) -> Sibling:
    """One airline-like rollout.

    Args:
        kind: `success` (checks the user and the reservation, then cancels), `reckless` (cancels without reading the
            reservation), `transfer` (hands over to a human), or `wrong_id` (cancels the other reservation).
        user_id: the user id in the trace.
        pad: extra characters in the reservation observation (to exercise truncation and the fallback).
        reward: the verifier reward (1.0 for `success`, 0.0 otherwise by default).
    """
    msgs: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": "Let me look up your profile.",
            "tool_calls": [_call("get_user_details", user_id=user_id)],
        },
        {"role": "tool", "name": "get_user_details", "content": _user_record(user_id)},
    ]
    if kind in ("success", "transfer", "wrong_id"):
        reservation = "4WQ150" if kind == "wrong_id" else "ZFA04Y"
        msgs += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("get_reservation_details", reservation_id=reservation)],
            },
            {"role": "tool", "name": "get_reservation_details", "content": _reservation(reservation, pad)},
        ]
    if kind == "success":
        msgs += [
            {
                "role": "assistant",
                "content": "The booking has travel insurance, so it can be cancelled.",
                "tool_calls": [_call("cancel_reservation", reservation_id="ZFA04Y")],
            },
            {
                "role": "tool",
                "name": "cancel_reservation",
                "content": json.dumps({"reservation_id": "ZFA04Y", "status": "cancelled"}),
            },
            {
                "role": "assistant",
                "content": "Your reservation ZFA04Y is cancelled; the refund goes to the original payment method.",
            },
        ]
    elif kind == "reckless":
        msgs += [
            {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="4WQ150")]},
            {
                "role": "tool",
                "name": "cancel_reservation",
                "content": json.dumps({"reservation_id": "4WQ150", "status": "cancelled"}),
            },
            {"role": "assistant", "content": "Done, it is cancelled."},
        ]
    elif kind == "transfer":
        msgs += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("transfer_to_human_agents", summary="user wants to cancel")],
            },
            {"role": "tool", "name": "transfer_to_human_agents", "content": "Transfer successful"},
            {"role": "assistant", "content": "I have transferred you to a human agent."},
        ]
    elif kind == "wrong_id":
        msgs += [
            {"role": "assistant", "content": "", "tool_calls": [_call("cancel_reservation", reservation_id="4WQ150")]},
            {
                "role": "tool",
                "name": "cancel_reservation",
                "content": json.dumps({"reservation_id": "4WQ150", "status": "cancelled"}),
            },
            {"role": "assistant", "content": "Your reservation 4WQ150 is cancelled."},
        ]
    else:
        raise ValueError(kind)
    if reward is None:
        reward = 1.0 if kind == "success" else 0.0
    return Sibling(messages=msgs, reward=reward, success=kind == "success")


def airline_group(
    task_id: str = "task-1", kinds: tuple[str, ...] = ("success", "reckless", "success", "transfer"), pad: int = 0
) -> SiblingGroup:
    """A mixed airline-like group; `task_id` appears in the task text (the key of `keyed_plan`)."""
    prompt = [
        {
            "role": "system",
            "content": "You are an airline agent. Follow the policy: cancel only with insurance or within 24h.",
        },
        {"role": "user", "content": f"[{task_id}] Hi, I am mia_li_3668. Please cancel my trip to New York."},
    ]
    siblings = [airline_sibling(kind, pad=pad) for kind in kinds]
    return SiblingGroup(prompt=prompt, siblings=siblings, metadata={"task_id": task_id, "answer_literals": ["ZFA04Y"]})
