"""Evaluation with tau2's own orchestrator, the agent speaking the training protocol (tool-ified user)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .env import Tau2AirlineEnv, _bind_airline_tools
from .runtime import AGENT_INSTRUCTION, SYSTEM_PROMPT_TEMPLATE, USER_TOOL_NAME, _tau2
from .tasks import load_tau2_airline_tasks, task_category
from .tools import airline_tool_schemas
from .users import LiteLLMUserSimulator


# ── evaluation with tau2's own orchestrator ────────────────────────────────────────────────────────────────────────


@functools.lru_cache(maxsize=1)
def _training_tool_schemas() -> tuple[dict[str, Any], ...]:
    """The 15 tool schemas exactly as TRL renders them for the model during training."""
    from transformers.utils import get_json_schema

    _bind_airline_tools()
    names = [schema["function"]["name"] for schema in airline_tool_schemas()] + [USER_TOOL_NAME]
    return tuple(get_json_schema(getattr(Tau2AirlineEnv, name)) for name in names)


@functools.lru_cache(maxsize=1)
def _toolified_agent_class() -> type:
    t2 = _tau2()

    class ToolifiedAgentState:
        def __init__(self, messages: list[Any]):
            self.messages = messages
            self.pending_user_call = None

    class Tau2ToolifiedAgent(t2.LLMAgent):
        """A tau2 agent that speaks the training protocol: the customer is the `send_message_to_user` tool.

        tau2's orchestrator, user simulator and evaluator stay in charge; this agent only translates. A
        `send_message_to_user` call becomes a plain message to the customer, and the customer's answer comes back to
        the model as that call's result, so the model sees the same conversation shape and the same tool schemas as in
        training. Only the first tool call of a message is executed (the policy allows one at a time). A subclass of
        tau2's `LLMAgent`, so tau2's `run_domain` can construct it once registered (`register_toolified_agent`).
        """

        def __init__(self, tools: list[Any], domain_policy: str, llm: str, llm_args: dict[str, Any] | None = None):
            super().__init__(tools=tools, domain_policy=domain_policy, llm=llm, llm_args=llm_args)
            if importlib.util.find_spec("mcp") is None:
                # litellm (1.106) imports its MCP gateway, which needs the `mcp` package, whenever `tools` are passed;
                # this litellm flag skips that import for ordinary tool calling.
                self.llm_args.setdefault("_skip_mcp_handler", True)
            # tau2's `generate` only reads `.openai_schema`: hand it the schemas the model was trained with
            self.model_tools = [SimpleNamespace(openai_schema=schema) for schema in _training_tool_schemas()]

        def get_init_state(self, message_history: list[Any] | None = None) -> Any:
            system = SYSTEM_PROMPT_TEMPLATE.format(instruction=AGENT_INSTRUCTION, policy=self.domain_policy.strip())
            return ToolifiedAgentState([t2.SystemMessage(role="system", content=system), *(message_history or [])])

        def set_seed(self, seed: int) -> None:
            self.llm_args["seed"] = seed

        def generate_next_message(self, message: Any, state: Any) -> tuple[Any, Any]:
            if isinstance(message, t2.UserMessage) and state.pending_user_call is not None:
                call_id = state.pending_user_call.id
                state.messages.append(t2.ToolMessage(id=call_id, role="tool", content=message.content or ""))
                state.pending_user_call = None
            elif isinstance(message, t2.MultiToolMessage):
                state.messages.extend(message.tool_messages)
            else:
                state.messages.append(message)
            response = t2.generate(model=self.llm, tools=self.model_tools, messages=state.messages, **self.llm_args)
            if not response.tool_calls:
                state.messages.append(response)
                return response, state
            call = response.tool_calls[0]
            response.tool_calls = [call]
            state.messages.append(response)
            if call.name == USER_TOOL_NAME:
                state.pending_user_call = call
                text = str(call.arguments.get("message") or "").strip() or "(empty message)"
                return t2.AssistantMessage(role="assistant", content=text, cost=response.cost), state
            return t2.AssistantMessage(role="assistant", tool_calls=[call], cost=response.cost), state

    return Tau2ToolifiedAgent


def register_toolified_agent(name: str = "trl_sgcd_toolified") -> str:
    """Registers the training-protocol agent in tau2's registry (this process only) and returns its name.

    Then tau2's own runner can use it, e.g. `tau2.run.run_domain(RunConfig(domain="airline", agent=name, ...))`, with
    its result files and viewers; `evaluate_with_tau2_orchestrator` is the short path.
    """
    registry = _tau2().registry
    if name not in registry.get_agents():
        registry.register_agent(_toolified_agent_class(), name)
    return name


def evaluate_with_tau2_orchestrator(
    agent_model: str,
    user_simulator: LiteLLMUserSimulator,
    split: str | None = "test",
    task_ids: Sequence[str] | None = None,
    tasks_path: str | Path | None = None,
    split_path: str | Path | None = None,
    agent_llm_args: dict[str, Any] | None = None,
    num_trials: int = 1,
    max_steps: int = 200,
    max_errors: int = 10,
    seed: int = 300,
) -> list[dict[str, Any]]:
    """Runs a served policy through tau2's own orchestrator and scores it with tau2's evaluator.

    Everything but the agent is tau2's: its `Orchestrator` (greeting, turn taking, stop tokens, step and error limits),
    its LLM user simulator, its environment constructor and `evaluate_simulation`. The agent is a thin translator for
    models trained with `Tau2AirlineEnv` (see `docs/tau2_airline.md`). Serve the checkpoint behind an OpenAI-compatible
    endpoint (e.g. `vllm serve <ckpt> --enable-auto-tool-choice --tool-call-parser hermes`) and pass
    `agent_model="openai/<name>"`, `agent_llm_args={"api_base": ..., "temperature": 0.0}` for greedy pass@1.

    Args:
        agent_model (`str`):
            litellm model string of the policy.
        user_simulator (`LiteLLMUserSimulator`):
            The customer (model and arguments are reused; tau2's user prompt is used as is).
        split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate (ignored when `task_ids` is given); `None` for every task.
        task_ids (`Sequence[str]`, *optional*):
            Explicit task ids.
        tasks_path, split_path:
            As in `load_tau2_airline_tasks`.
        agent_llm_args (`dict`, *optional*):
            `litellm.completion` arguments of the policy (`api_base`, `temperature`, ...).
        num_trials (`int`, *optional*, defaults to `1`):
            Runs per task; trial `k` uses seed `seed + k`.
        max_steps, max_errors (`int`, *optional*, default to `200` and `10`):
            tau2's limits (its defaults).
        seed (`int`, *optional*, defaults to `300`):
            tau2's default seed, passed to both LLMs.

    Returns:
        `list[dict]`: one record per run with `task_id`, `trial`, `category`, `reward`, `success`,
        `termination_reason`, and the tau2 `simulation` (a `SimulationRun` carrying `reward_info`).
    """
    t2 = _tau2()
    tasks = load_tau2_airline_tasks(None if task_ids is not None else split, tasks_path, split_path)
    if task_ids is not None:
        wanted = [str(task_id) for task_id in task_ids]
        by_id = {str(task.id): task for task in tasks}
        missing = [task_id for task_id in wanted if task_id not in by_id]
        if missing:
            raise ValueError(f"Unknown airline task ids: {missing}")
        tasks = [by_id[task_id] for task_id in wanted]
    agent_class = _toolified_agent_class()
    records = []
    for task in tasks:
        for trial in range(num_trials):
            environment = t2.get_tau2_environment()
            agent = agent_class(
                tools=environment.get_tools(),
                domain_policy=environment.get_policy(),
                llm=agent_model,
                llm_args=agent_llm_args,
            )
            user = t2.UserSimulator(
                tools=None,
                instructions=str(task.user_scenario),
                llm=user_simulator.model,
                llm_args=dict(user_simulator._llm_args),
            )
            orchestrator = t2.Orchestrator(
                domain="airline",
                agent=agent,
                user=user,
                environment=environment,
                task=task,
                max_steps=max_steps,
                max_errors=max_errors,
                seed=seed + trial,
            )
            simulation = orchestrator.run()
            simulation.trial = trial
            simulation.reward_info = t2.evaluate_simulation(
                simulation=simulation,
                task=task,
                evaluation_type=t2.EvaluationType.ALL,
                solo_mode=False,
                domain="airline",
            )
            reward = float(simulation.reward_info.reward)
            records.append(
                {
                    "task_id": str(task.id),
                    "trial": trial,
                    "category": task_category(task),
                    "reward": reward,
                    "success": reward >= 1.0 - 1e-6,
                    "termination_reason": getattr(
                        simulation.termination_reason, "value", simulation.termination_reason
                    ),
                    "simulation": simulation,
                }
            )
    return records
