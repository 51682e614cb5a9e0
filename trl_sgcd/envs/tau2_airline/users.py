"""User simulators behind the `send_message_to_user` tool: an LLM one (litellm) and a scripted one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from .runtime import _tau2


# ── user simulators ────────────────────────────────────────────────────────────────────────────────────────────────


class UserSession(ABC):
    """One simulated customer for one episode. `reply` gets the agent's message and returns the customer's answer."""

    @abstractmethod
    def reply(self, message: str) -> str: ...


class BaseUserSimulator(ABC):
    """A user-simulator configuration; `start(task)` opens an independent `UserSession` for one episode.

    The configuration object is shared by every environment instance (TRL pools one per rollout); all per-episode
    state lives in the session.
    """

    @abstractmethod
    def start(self, task: Any) -> UserSession: ...


class _LiteLLMUserSession(UserSession):
    def __init__(self, user: Any, state: Any):
        self._user = user
        self._state = state

    def reply(self, message: str) -> str:
        t2 = _tau2()
        user_message, self._state = self._user.generate_next_message(
            t2.AssistantMessage(role="assistant", content=message), self._state
        )
        return user_message.content or ""


class LiteLLMUserSimulator(BaseUserSimulator):
    """tau2's own LLM user simulator (its prompt and stop protocol), called through litellm.

    Args:
        model (`str`):
            A litellm model string, e.g. `"gpt-4.1-2025-04-14"` (tau2's default) or `"openai/<served-name>"` for an
            OpenAI-compatible server.
        api_base (`str`, *optional*):
            Base URL of an OpenAI-compatible server (vLLM, SGLang, a gateway), e.g. `"http://127.0.0.1:8000/v1"`.
            Such a server gets `api_key` if given, else the placeholder `"EMPTY"` (never a key from the environment).
        **llm_args:
            Extra `litellm.completion` arguments (`temperature` defaults to 0.0 as in tau2, `api_key`, `timeout`,
            `num_retries`, ...). Without `api_base`, litellm reads provider keys from the environment. Keys are never
            logged.
    """

    def __init__(self, model: str, api_base: str | None = None, **llm_args: Any):
        self.model = model
        self.api_base = api_base
        llm_args.setdefault("temperature", 0.0)
        # Per call rather than litellm's global that tau2 sets at import (and that `_tau2` restores).
        llm_args.setdefault("drop_params", True)
        if api_base is not None:
            llm_args["api_base"] = api_base
            # Never forward a provider key from the environment to a custom server; pass `api_key=` when it needs one.
            llm_args.setdefault("api_key", "EMPTY")
        self._llm_args = llm_args

    def __repr__(self) -> str:  # never print llm_args: they may hold an API key
        return f"{type(self).__name__}(model={self.model!r}, api_base={self.api_base!r})"

    def start(self, task: Any) -> UserSession:
        t2 = _tau2()
        user = t2.UserSimulator(
            tools=None, instructions=str(task.user_scenario), llm=self.model, llm_args=dict(self._llm_args)
        )
        return _LiteLLMUserSession(user, user.get_init_state())


class _ScriptedUserSession(UserSession):
    def __init__(self, simulator: ScriptedUserSimulator, task: Any):
        self._simulator = simulator
        self._task = task
        self._conversation: list[dict[str, str]] = []

    def reply(self, message: str) -> str:
        self._conversation.append({"role": "assistant", "content": message})
        replies = self._simulator.replies
        if callable(replies):
            text = replies(self._task, list(self._conversation))
        else:
            n_user_turns = sum(m["role"] == "user" for m in self._conversation)
            text = replies[n_user_turns] if n_user_turns < len(replies) else self._simulator.stop_message
        self._conversation.append({"role": "user", "content": text})
        return text


class ScriptedUserSimulator(BaseUserSimulator):
    """A deterministic customer for tests, smoke runs and CPU-scale experiments.

    Args:
        replies (`Sequence[str]` or `Callable`):
            Either the customer's messages in order (the first answers the greeting; once exhausted, the customer says
            `stop_message`), or a function `(task, conversation) -> str` where `task` is the tau2 `Task` and
            `conversation` is the list of `{"role": "assistant" | "user", "content": str}` messages so far, ending
            with the agent's latest message.
        stop_message (`str`, *optional*, defaults to `"###STOP###"`):
            What the customer says after the scripted replies run out (tau2's stop token ends the conversation).
    """

    def __init__(
        self,
        replies: Sequence[str] | Callable[[Any, list[dict[str, str]]], str],
        stop_message: str = "###STOP###",
    ):
        if isinstance(replies, str):
            raise TypeError("`replies` must be a sequence of strings or a callable, not a single string.")
        self.replies = replies if callable(replies) else list(replies)
        self.stop_message = stop_message

    def start(self, task: Any) -> UserSession:
        return _ScriptedUserSession(self, task)
