"""The environment-side interfaces of evaluation and the zero-tool audit: `EnvironmentMetrics`, communication tools,
and the import boundary between evaluation and training."""

import ast
from pathlib import Path

import pytest

from trl_sgcd.diagnostics import declared_communication_tools, tool_audit
from trl_sgcd.eval import evaluate
from trl_sgcd.eval.metrics import EnvironmentMetrics, summarize_pass_at_1
from trl_sgcd.eval.policies import Policy


PACKAGE = Path(__file__).resolve().parent.parent / "trl_sgcd"


class HelpDesk:
    """A toy environment: `lookup` reads the world, `send_message_to_user` only talks to the user."""

    communication_tools = ("send_message_to_user",)

    def reset(self, **row):
        self.solved = False
        return None

    def lookup(self, key: str) -> str:
        """Looks a key up.

        Args:
            key: the key.
        """
        self.solved = True
        return f"value of {key}"

    def send_message_to_user(self, message: str) -> str:
        """Sends a message to the user.

        Args:
            message: the message.
        """
        self.solved = True
        return "thanks, that was all"

    def get_reward(self) -> float:
        return float(self.solved)

    @classmethod
    def evaluation_metrics(cls, episodes):
        return {"helpdesk/solved_tasks": float(len({e["task_id"] for e in episodes if e["success"]}))}


class SilentHelpDesk(HelpDesk):
    """The same environment without the interfaces: every tool call counts, no extra metrics."""

    communication_tools = ()
    evaluation_metrics = None


def _call(name, **arguments):
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


class ScriptedPolicy(Policy):
    """Task `talk` is solved by messaging the user only; task `look` by one `lookup`."""

    def respond(self, conversations):
        replies = []
        for conversation in conversations:
            task = conversation.messages[0]["content"]
            if conversation.completion:
                replies.append({"role": "assistant", "content": "done"})
            elif task == "talk":
                replies.append(_call("send_message_to_user", message="Your booking is confirmed."))
            else:
                replies.append(_call("lookup", key="booking"))
        return replies


DATASET = [{"prompt": [{"role": "user", "content": task}], "task_id": task} for task in ("talk", "look")]


def test_success_reached_only_by_messaging_the_user_is_zero_tool():
    result = evaluate(ScriptedPolicy(), HelpDesk, DATASET)
    assert result.metrics["pass@1"] == 1.0
    assert result.metrics["zero_tool_success_frac"] == pytest.approx(0.5)  # `talk` used no environment tool
    assert result.metrics["tool_calls_per_success"] == pytest.approx(0.5)
    assert result.metrics["helpdesk/solved_tasks"] == 2.0  # merged through `evaluation_metrics`
    silent = evaluate(ScriptedPolicy(), SilentHelpDesk, DATASET)
    assert silent.metrics["zero_tool_success_frac"] == 0.0 and silent.metrics["tool_calls_per_success"] == 1.0
    assert "helpdesk/solved_tasks" not in silent.metrics


def test_tool_audit_leaves_out_declared_communication_tools():
    talk = [
        _call("send_message_to_user", message="hi"),
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "bye"},
    ]
    act = [_call("lookup", key="k"), _call("send_message_to_user", message="hi")]
    tools = declared_communication_tools([HelpDesk(), SilentHelpDesk, object()])
    assert tools == frozenset({"send_message_to_user"})
    audit = tool_audit([talk, act, "plain text"], [True, True, False], tools)
    assert audit == {
        "tool_calls_per_rollout": pytest.approx(1 / 3),
        "tool_calls_per_success": 0.5,
        "zero_tool_success_frac": 0.5,
    }
    plain = tool_audit([talk, act, "plain text"], [True, True, False])
    assert plain == {"tool_calls_per_rollout": 1.0, "tool_calls_per_success": 1.5, "zero_tool_success_frac": 0.0}


def test_environment_metrics_protocol_matches_environment_classes():
    from trl_sgcd.envs.appworld import AppWorldEnv

    assert isinstance(AppWorldEnv, EnvironmentMetrics) and isinstance(HelpDesk, EnvironmentMetrics)
    assert not isinstance(SilentHelpDesk, EnvironmentMetrics)  # `evaluation_metrics = None` opts out
    episodes = [
        {"task_id": "s1_1", "success": True, "info": {"difficulty": 1}},
        {"task_id": "s1_2", "success": False, "info": {"difficulty": 2}},
        {"task_id": "s2_1", "success": True, "info": {}},
    ]
    metrics = AppWorldEnv.evaluation_metrics(episodes)
    # TGC 2/3 tasks; SGC 1/2 scenarios (s1 failed s1_2); a scenario's difficulty is its tasks' highest (s1: 2).
    assert metrics["tgc"] == pytest.approx(200 / 3) and metrics["sgc"] == pytest.approx(50.0)
    assert metrics["tgc/difficulty_1"] == 100.0 and metrics["tgc/difficulty_2"] == 0.0
    assert metrics["sgc/difficulty_2"] == 0.0


def test_summarize_pass_at_1_averages_trials_then_tasks():
    records = [
        {"task_id": "1", "category": "action", "success": True},
        {"task_id": "1", "category": "action", "success": False},
        {"task_id": "2", "category": "transfer", "success": True},
        {"task_id": 3, "category": "action", "success": False},
    ]
    assert summarize_pass_at_1(records) == {
        "pass@1": pytest.approx(0.5),
        "pass@1/action": pytest.approx(0.25),
        "pass@1/transfer": 1.0,
        "num_tasks": 3.0,
    }


TRAINING_SIDE = {
    "sampling",
    "trainer",
    "scoring",
    "dynamic_sampling",
    "credit_dump",
    "credit",
    "siblings",
    "teacher_context",
    "warm_start",
    "config",
    "references",
}


def test_evaluation_imports_nothing_from_the_training_side():
    offenders = []
    for path in sorted((PACKAGE / "eval").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "trl_sgcd" and len(parts) > 1 and parts[1] in TRAINING_SIDE:
                    offenders.append(f"{path.name}: {node.module}")
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 2
                and (node.module or "").split(".")[0] in TRAINING_SIDE
            ):
                offenders.append(f"{path.name}: ..{node.module}")
    assert offenders == []


def test_trainer_audits_with_the_environments_communication_tools(tiny_model_path, tmp_path, monkeypatch):
    import sys

    from datasets import Dataset

    import trl_sgcd.diagnostics as diagnostics
    from trl_sgcd import SGCDConfig, SGCDGRPOTrainer

    seen = []

    def spy(completions, successes, communication_tools=()):
        seen.append(frozenset(communication_tools))
        return tool_audit(completions, successes, communication_tools)

    # Wherever the trainer's modules import `tool_audit` from, they call the spy.
    holders = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("trl_sgcd")
        and module is not diagnostics
        and getattr(module, "tool_audit", None) is tool_audit
    ]
    assert holders
    for module in holders:
        monkeypatch.setattr(module, "tool_audit", spy)
    args = SGCDConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        dynamic_sampling=False,
        credit_mode="off",
    )
    rows = [{"prompt": [{"role": "user", "content": "help"}], "task_id": str(i)} for i in range(4)]
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path, args=args, train_dataset=Dataset.from_list(rows), environment_factory=HelpDesk
    )
    trainer.train()
    assert seen and all(tools == {"send_message_to_user"} for tools in seen)
