"""Policies the evaluation loop can drive: a local transformers checkpoint and an OpenAI-compatible endpoint.

A policy answers a batch of conversations with one assistant message each, in TRL's message format
(`{"role": "assistant", "content": str, "tool_calls": [{"type": "function", "function": {"name", "arguments"}}]}`).
The loop in `harness.py` executes the tool calls and appends the tool results; the policy only generates.

`TransformersPolicy` mirrors how TRL 1.16's `GRPOTrainer` generates with tools (`_generate`, `_tool_call_loop`), so
an evaluated checkpoint sees exactly the token layout it was trained on: the prompt is rendered once with the
tokenizer's chat template and the tool schemas (TRL's prefix-preserving training template when the original is not),
every later turn is appended as token ids (the tool results rendered through a minimal dummy conversation, as TRL's
`_get_tool_suffix_ids` does), and each turn is parsed with `trl.chat_template_utils.parse_response`.

`OpenAIChatPolicy` speaks the `/chat/completions` protocol with the standard library (`urllib`), sending the tool
schemas in the `tools` parameter; it needs no client package.

Simplified: the local policy generates with `model.generate` (no vLLM) and does not handle images; the endpoint
policy does not stream.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


Message = dict[str, Any]


@dataclass
class Conversation:
    """One episode's conversation, as the loop and the policy share it.

    Args:
        messages: the prompt messages followed by the completion (assistant turns and tool results), in TRL's format.
        tools: the JSON schemas of the tools available in this episode.
        num_prompt_messages: how many leading messages are the prompt.
        state: private to the policy (e.g. the token ids generated so far).
        error: set by the policy when it could not answer (e.g. an endpoint that kept failing); ends the episode.
        truncated: set by the policy when the token budget ran out; ends the episode.
    """

    messages: list[Message]
    tools: list[dict[str, Any]]
    num_prompt_messages: int
    state: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    truncated: bool = False

    @property
    def prompt(self) -> list[Message]:
        return self.messages[: self.num_prompt_messages]

    @property
    def completion(self) -> list[Message]:
        return self.messages[self.num_prompt_messages :]


class Policy(ABC):
    """Generates the next assistant message of each conversation."""

    @abstractmethod
    def respond(self, conversations: list[Conversation]) -> list[Message | None]:
        """One assistant message per conversation, or None when the policy cannot continue it.

        Before returning None, set `conversation.truncated` (budget exhausted) or `conversation.error` (failure).
        The policy must not modify `conversation.messages`: the loop appends the returned message.
        """

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable settings recorded in the evaluation result."""
        return {"policy": type(self).__name__}


# ── local checkpoint ────────────────────────────────────────────────────────────────────────────────────────────────


class TransformersPolicy(Policy):
    """A local causal LM, generating as TRL's `GRPOTrainer` does with tools (greedy by default).

    Args:
        model (`PreTrainedModel`):
            The causal LM. Anything with `generate(input_ids=, attention_mask=, generation_config=)` and `device`
            works, which lets tests script the model.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer. A response schema is added with TRL's `add_response_schema` when it has none (known
            templates such as Qwen3); tool calls are parsed with it.
        max_new_tokens (`int`, *optional*, defaults to `512`):
            Tokens generated per assistant turn at most.
        max_completion_length (`int`, *optional*):
            Token budget of the whole completion (assistant turns and tool results), like `GRPOConfig`'s. When a
            tool result would exceed it, the result is dropped and the episode ends, as in TRL. Defaults to the room
            left in the model's context (`max_position_embeddings`).
        temperature (`float`, *optional*, defaults to `0.0`):
            `0.0` decodes greedily; a positive value samples.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling threshold when sampling.
        chat_template_kwargs (`dict`, *optional*):
            Extra chat-template arguments (e.g. `{"enable_thinking": False}`), as `GRPOConfig.chat_template_kwargs`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_new_tokens: int = 512,
        max_completion_length: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        from trl.chat_template_utils import (
            add_response_schema,
            get_training_chat_template,
            is_chat_template_prefix_preserving,
            supports_tool_calling,
        )

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        if not supports_tool_calling(tokenizer):
            raise ValueError("The tokenizer's chat template cannot render a tool-calling conversation.")
        if (
            getattr(tokenizer, "response_template", None) is None
            and getattr(tokenizer, "response_schema", None) is None
        ):
            tokenizer = add_response_schema(tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_completion_length = max_completion_length
        self.temperature = temperature
        self.top_p = top_p
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # TRL swaps in a prefix-preserving template for multi-turn tool use; so does the evaluation, to match training.
        self.chat_template = (
            None if is_chat_template_prefix_preserving(tokenizer) else get_training_chat_template(tokenizer)
        )
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = [] if config_eos is None else [config_eos] if isinstance(config_eos, int) else list(config_eos)
        self.eos_token_ids = eos if tokenizer.eos_token_id in eos else [tokenizer.eos_token_id, *eos]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        config = getattr(model, "config", None)
        self.max_model_length = getattr(config, "max_position_embeddings", None) or 10**9

    @classmethod
    def from_pretrained(
        cls, path: str, device: str | None = None, dtype: str = "auto", **kwargs: Any
    ) -> TransformersPolicy:
        """Loads a checkpoint (a local directory or a Hub id) and its tokenizer; `kwargs` go to `__init__`."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {
            "policy": type(self).__name__,
            "model": getattr(self.model, "name_or_path", None),
            "decoding": "greedy" if self.temperature == 0 else f"sampling (temperature={self.temperature})",
            "max_new_tokens": self.max_new_tokens,
            "max_completion_length": self.max_completion_length,
        }

    def _render(self, messages: list[Message], tools: list[dict[str, Any]] | None, generation_prompt: bool):
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,  # TRL's `or None`: some templates render tool boilerplate for an empty list
            chat_template=self.chat_template,
            add_generation_prompt=generation_prompt,
            tokenize=True,
            return_dict=False,
            **self.chat_template_kwargs,
        )

    def tool_suffix_ids(self, tool_messages: list[Message]) -> list[int]:
        """Token ids of tool results plus the next generation prompt, rendered after a dummy tool call (TRL's way)."""
        dummy_call = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": dummy_call}]
        prefix = list(self._render(dummy, None, generation_prompt=False))
        full = list(self._render(dummy + tool_messages, None, generation_prompt=True))
        # Qwen-style templates end a turn with "<|im_end|>\n": cut the prefix at its last EOS so the newline is kept.
        eos_positions = [i for i, token in enumerate(prefix) if token == self.tokenizer.eos_token_id]
        if eos_positions:
            prefix = prefix[: eos_positions[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise ValueError(
                "Unexpected tokenization: the rendered tool-call prefix is not a prefix of the full turn."
            )
        return full[len(prefix) :]

    def _next_input(self, conversation: Conversation) -> list[int] | None:
        state = conversation.state
        if "ids" not in state:
            ids = list(self._render(conversation.prompt, conversation.tools, generation_prompt=True))
            state["prompt_length"] = len(ids)
        else:
            tool_messages = []
            for message in reversed(conversation.messages):
                if message["role"] != "tool":
                    break
                tool_messages.insert(0, message)
            ids = state["ids"] + (self.tool_suffix_ids(tool_messages) if tool_messages else [])
        if self._room(ids, state["prompt_length"]) <= 0:
            conversation.truncated = True
            return None
        state["ids"] = ids
        return ids

    def _room(self, ids: list[int], prompt_length: int) -> int:
        room = self.max_model_length - len(ids)
        if self.max_completion_length is not None:
            room = min(room, self.max_completion_length - (len(ids) - prompt_length))
        return room

    def respond(self, conversations: list[Conversation]) -> list[Message | None]:
        import torch
        from transformers import GenerationConfig
        from trl.chat_template_utils import parse_response

        inputs = [self._next_input(conversation) for conversation in conversations]
        active = [i for i, ids in enumerate(inputs) if ids is not None]
        replies: list[Message | None] = [None] * len(conversations)
        if not active:
            return replies
        rooms = {
            i: min(self.max_new_tokens, self._room(inputs[i], conversations[i].state["prompt_length"])) for i in active
        }
        width = max(len(inputs[i]) for i in active)
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(inputs[i])) + inputs[i] for i in active])
        attention_mask = torch.tensor([[0] * (width - len(inputs[i])) + [1] * len(inputs[i]) for i in active])
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        generation_config = GenerationConfig(
            max_new_tokens=max(rooms.values()),
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids,
            **(sampling if self.temperature > 0 else {"do_sample": False}),
        )
        device = getattr(self.model, "device", "cpu")
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
            )
        for row, i in enumerate(active):
            conversation = conversations[i]
            new_ids = output[row, width:].tolist()[: rooms[i]]
            cut = next((j + 1 for j, token in enumerate(new_ids) if token in self.eos_token_ids), len(new_ids))
            new_ids = new_ids[:cut]
            message = parse_response(self.tokenizer, new_ids, prefix=inputs[i], tools=conversation.tools or None)
            conversation.state["ids"] = inputs[i] + new_ids
            replies[i] = message
        return replies

    def completion_ids(self, conversation: Conversation) -> list[int]:
        """The completion's token ids (assistant turns and tool results), as TRL passes them to reward functions."""
        state = conversation.state
        return state["ids"][state["prompt_length"] :] if "ids" in state else []


# ── OpenAI-compatible endpoint ──────────────────────────────────────────────────────────────────────────────────────


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint call failed after its retries."""


_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIChatPolicy(Policy):
    """Any OpenAI-compatible `/chat/completions` endpoint (vLLM, SGLang, TGI, a gateway, a hosted API), over `urllib`.

    Tool schemas go in the request's `tools` parameter and the endpoint's `tool_calls` come back as TRL-format tool
    calls (arguments decoded from their JSON string). Requests of one batch run concurrently. Transient failures
    (connection errors, timeouts, HTTP 408/409/425/429/5xx) are retried with exponential backoff; when the retries run
    out, or on any other HTTP error, the conversation's `error` is set and its episode ends (the harness counts it).

    Args:
        base_url (`str`):
            The API root, e.g. `"http://127.0.0.1:8000/v1"` (`/chat/completions` is appended unless already there).
        model (`str`):
            The served model name sent in each request.
        api_key (`str`, *optional*):
            Bearer token; defaults to the environment variable named by `api_key_env`. Never logged or recorded.
        api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            Environment variable holding the key when `api_key` is not given; no key means no `Authorization` header.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature (0: greedy).
        max_tokens (`int`, *optional*):
            `max_tokens` per request; the endpoint's default when unset.
        timeout (`float`, *optional*, defaults to `120.0`):
            Seconds per request.
        max_retries (`int`, *optional*, defaults to `3`):
            Retries of a transient failure.
        backoff (`float`, *optional*, defaults to `1.0`):
            First retry delay in seconds, doubled at each retry (with jitter); a `Retry-After` header takes precedence.
        concurrency (`int`, *optional*, defaults to `8`):
            Requests in flight at once.
        extra_body (`dict`, *optional*):
            Extra request fields (e.g. `{"chat_template_kwargs": {"enable_thinking": False}}` for vLLM).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        extra_body: dict[str, Any] | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}.")
        base_url = base_url.rstrip("/")
        self.url = base_url if base_url.endswith("/chat/completions") else base_url + "/chat/completions"
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "policy": type(self).__name__,
            "url": self.url,
            "model": self.model,
            "decoding": "greedy" if self.temperature == 0 else f"sampling (temperature={self.temperature})",
            "max_tokens": self.max_tokens,
        }

    def respond(self, conversations: list[Conversation]) -> list[Message | None]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self._respond_one(conversation) for conversation in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._respond_one, conversations))

    def _respond_one(self, conversation: Conversation) -> Message | None:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_to_wire(message) for message in conversation.messages],
            "temperature": self.temperature,
            **self.extra_body,
        }
        if conversation.tools:
            body["tools"] = [_wire_tool(schema) for schema in conversation.tools]
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        try:
            response = self._post(body)
            choice = response["choices"][0]
            message = choice["message"]
        except (EndpointError, KeyError, IndexError, TypeError) as error:
            conversation.error = f"{type(error).__name__}: {error}"
            return None
        usage = response.get("usage") or {}
        totals = conversation.state.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
        for key in totals:
            totals[key] += int(usage.get(key) or 0)
        if choice.get("finish_reason") == "length":
            conversation.state["length_stops"] = conversation.state.get("length_stops", 0) + 1
        return _from_wire(message, conversation)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last_error = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if self._api_key:
                    detail = detail.replace(self._api_key, "***")  # some servers echo the bearer token
                last_error = f"HTTP {error.code} from {self.url}: {detail}"
                if error.code not in _RETRY_STATUSES:
                    raise EndpointError(last_error) from None
                retry_after = error.headers.get("Retry-After") if error.headers else None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = f"{type(error).__name__} calling {self.url}: {getattr(error, 'reason', error)}"
            except json.JSONDecodeError:
                last_error = f"{self.url} returned a body that is not JSON"
            if attempt < self.max_retries:
                delay = self.backoff * 2**attempt * (1 + random.random() / 4)
                if retry_after is not None and retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), 60.0)
                time.sleep(delay)
        raise EndpointError(f"{last_error} (after {self.max_retries} retries)")


def _wire_tool(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool schema as the OpenAI API accepts it (`get_json_schema` adds a `return` entry the API does not define)."""
    function = schema.get("function", schema)
    wire = {key: function[key] for key in ("name", "description", "parameters") if key in function}
    return {"type": "function", "function": wire}


def _to_wire(message: Message) -> dict[str, Any]:
    role = message["role"]
    if role == "tool":
        wire = {"role": "tool", "content": str(message.get("content", ""))}
        if message.get("tool_call_id") is not None:
            wire["tool_call_id"] = message["tool_call_id"]
        return wire
    wire = {"role": role, "content": message.get("content")}
    if role == "assistant" and message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            function = call.get("function", call)
            arguments = function.get("arguments")
            calls.append(
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {
                        "name": function.get("name"),
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
        wire["tool_calls"] = calls
        wire["content"] = message.get("content") or None
    elif wire["content"] is None:
        wire["content"] = ""
    return wire


def _from_wire(message: dict[str, Any], conversation: Conversation) -> Message:
    """An API message as a TRL-format assistant message; tool calls keep their ids (one is made up when missing)."""
    reply: Message = {"role": "assistant", "content": message.get("content") or ""}
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                pass  # kept as the raw string: the loop reports it to the model as a tool error
        conversation.state["num_call_ids"] = number = conversation.state.get("num_call_ids", 0) + 1
        calls.append(
            {
                "type": "function",
                "id": call.get("id") or f"call_{number}",
                "function": {"name": function.get("name"), "arguments": arguments},
            }
        )
    if calls:
        reply["tool_calls"] = calls
    return reply
