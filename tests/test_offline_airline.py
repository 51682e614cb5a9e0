"""Tests of the built-in offline airline environment: domain rules, tasks, expert, reward, deviation, TRL integration."""

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from trl_sgcd.envs.offline_airline import (
    CATEGORIES,
    KINDS,
    TOOL_NAMES,
    OfflineAirlineEnv,
    completion_tool_calls,
    corpus_texts,
    dataset_from_tasks,
    expert_actions,
    expert_conversation,
    final_answer,
    first_deviation,
    make_dataset,
    make_db,
    make_sft_dataset,
    make_tasks,
    offline_airline_reward,
    prompt_messages,
    score_answer,
    split_of,
    task_from_id,
    tool_schemas,
)
from trl_sgcd.envs.offline_airline.domain import db_hash


PINNED_DB_HASH = "3d6957518c93cdab7d0c47efdbe908e8a8b41708ba8741e941a4ee2d074b82c2"
PINNED_TASKS_DIGEST = "bfdfc1599f9526c275d5e3c561ea1ebb3b2eabfd75b6f492109c6b506a735779"


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(300, seed=0, split="train") + make_tasks(100, seed=0, split="test")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trl_sgcd.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), texts=corpus_texts(n=64))


def first_of(tasks, kind):
    return next(task for task in tasks if task["kind"] == kind)


def run(task, calls):
    env = OfflineAirlineEnv()
    assert env.reset(task=json.dumps(task), prompt=prompt_messages(task)) is None
    observations = [getattr(env, call["name"])(**call["arguments"]) for call in calls]
    return env, observations


def test_every_kind_and_category_is_generated(tasks):
    assert {task["kind"] for task in tasks} == set(KINDS)
    assert {task["category"] for task in tasks} == set(CATEGORIES)
    assert all(1 <= len(task["actions"]) <= 4 for task in tasks)


def test_expert_solves_every_task(tasks):
    for task in tasks:
        env, observations = run(task, expert_actions(task))
        assert not any(o.startswith("Error") for o in observations), task["task_id"]
        assert score_answer(env, task["expert_answer"]) == 1.0, (task["task_id"], env.episode)
        assert env.episode.success and env.episode.db_match and env.episode.missing_facts == []
        assert first_deviation(task, env.episode) is None


def test_expert_conversation_scores_through_the_reward_function(tasks):
    sample = [first_of(tasks, kind) for kind in KINDS]
    completions, environments = [], []
    for task in sample:
        conversation = expert_conversation(task)
        assert conversation[:2] == prompt_messages(task)
        assert conversation[-1] == {"role": "assistant", "content": task["expert_answer"]}
        env = OfflineAirlineEnv()
        env.reset(task=task, prompt=conversation[:2])
        for call in completion_tool_calls(conversation[2:]):
            getattr(env, call["name"])(**call["arguments"])
        completions.append(conversation[2:])
        environments.append(env)
    assert offline_airline_reward(completions, environments=environments) == [1.0] * len(sample)
    # The rollout record is what evaluation and the zero-tool audit read.
    record = environments[0].episode.to_dict()
    assert record["num_tool_calls"] == len(sample[0]["actions"]) and record["success"] is True


def test_wrong_write_scores_zero(tasks):
    task = next(t for t in tasks if t["kind"] == "set_bags")
    rid, bags = task["actions"][1]["arguments"].values()
    env, observations = run(
        task,
        [
            task["actions"][0],
            {
                "name": "update_baggage",
                "arguments": {"reservation_id": rid, "bags": bags + 1 if bags < 3 else bags - 1},
            },
        ],
    )
    assert not observations[1].startswith("Error")
    assert score_answer(env, task["expert_answer"]) == 0.0

    task = first_of(tasks, "book_cheapest")
    booking = dict(
        task["actions"][1]["arguments"],
        cabin="business" if task["actions"][1]["arguments"]["cabin"] != "business" else "basic",
    )
    env, observations = run(task, [task["actions"][0], {"name": "book_flight", "arguments": booking}])
    assert not observations[1].startswith("Error")  # the write went through, to the wrong state
    assert score_answer(env, task["expert_answer"]) == 0.0 and env.episode.db_match is False


def test_forbidden_write_fails_even_though_the_db_is_unchanged(tasks):
    task = first_of(tasks, "cancel_basic")
    rid = task["actions"][0]["arguments"]["reservation_id"]
    env, observations = run(
        task, [task["actions"][0], {"name": "cancel_reservation", "arguments": {"reservation_id": rid}}]
    )
    assert observations[1].startswith("Error: policy")
    assert env.db_hash == db_hash(make_db(task["db_seed"]))
    assert score_answer(env, task["expert_answer"]) == 0.0
    assert env.episode.db_match is True and env.episode.violations == [observations[1]]


def test_zero_tool_answers_fail_actions_and_may_pass_no_action(tasks):
    rewards = {category: [] for category in CATEGORIES}
    for task in tasks:
        env, _ = run(task, [])
        rewards[task["category"]].append(score_answer(env, "Sorry, I cannot help with that."))
    assert set(rewards["action"]) == {0.0}
    assert set(rewards["information"]) == {0.0}
    assert set(rewards["transfer"]) == {0.0}
    assert set(rewards["no_action"]) == {1.0}  # like τ-bench: refusing without looking passes a no-action task


def test_missing_final_answer_or_fact_scores_zero(tasks):
    task = first_of(tasks, "cancel")
    env, _ = run(task, expert_actions(task))
    assert score_answer(env, None) == 0.0
    assert score_answer(env, "Done, it is cancelled.") == 0.0 and env.episode.missing_facts == task["required_facts"]
    assert score_answer(env, task["expert_answer"]) == 1.0
    assert final_answer([{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}]) is None
    assert final_answer([{"role": "assistant", "content": "<think>\nhm\n</think>\n\nRefund: 240."}]) == "Refund: 240."
    assert final_answer([{"role": "tool", "name": "get_user", "content": "{}"}]) is None


def test_bad_calls_return_error_observations_and_never_raise(tasks):
    task = first_of(tasks, "cancel")
    env = OfflineAirlineEnv()
    assert env.get_user(user_id="u1").startswith("Error: no task")  # before reset
    env.reset(task=task, prompt=prompt_messages(task))
    before = env.db_hash
    bad_calls = [
        ("get_user", {"user_id": "u999"}),
        ("get_reservation", {"reservation_id": "r1"}),
        ("get_flight", {"flight_id": "F0"}),
        ("get_flight", {"flight": "F7"}),  # wrong argument name
        ("get_flight", {}),  # missing argument
        ("get_flight", {"flight_id": ["F7"]}),  # wrong type
        ("update_baggage", {"reservation_id": task["actions"][0]["arguments"]["reservation_id"], "bags": "many"}),
        ("update_baggage", {"reservation_id": task["actions"][0]["arguments"]["reservation_id"], "bags": 2.5}),
        ("book_flight", {"user_id": task["user_id"], "flight_id": "F0", "cabin": "economy", "passengers": 1}),
        (
            "book_flight",
            {
                "user_id": task["user_id"],
                "flight_id": next(iter(make_db(task["db_seed"])["flights"])),
                "cabin": "first",
                "passengers": 1,
            },
        ),
        ("cancel_reservation", {"reservation_id": "r1", "extra": 1}),
    ]
    for name, arguments in bad_calls:
        observation = getattr(env, name)(**arguments)
        assert isinstance(observation, str) and observation.startswith("Error: "), (name, arguments, observation)
    assert env.db_hash == before
    assert env.episode.num_tool_calls == len(bad_calls) and all(call.error for call in env.episode.tool_calls)
    assert not env.episode.violations  # lookup and argument errors are not policy violations

    other_user = next(u for u in make_db(task["db_seed"])["users"] if u != task["user_id"])
    flight = next(iter(make_db(task["db_seed"])["flights"]))
    assert env.book_flight(user_id=other_user, flight_id=flight, cabin="economy", passengers=1).startswith(
        "Error: policy"
    )
    assert env.episode.tool_calls[-1].violation


def test_arguments_are_normalised_like_the_expert_compares_them(tasks):
    task = first_of(tasks, "set_bags")
    rid, bags = task["actions"][1]["arguments"].values()
    calls = [
        {"name": "get_reservation", "arguments": {"reservation_id": f" {rid.upper()} "}},
        {"name": "update_baggage", "arguments": {"reservation_id": rid, "bags": str(bags)}},
    ]
    env, observations = run(task, calls)
    assert score_answer(env, task["expert_answer"]) == 1.0
    assert first_deviation(task, calls) is None
    assert json.loads(env.get_reservation(rid))["bags"] == bags  # a positional call works too


def test_db_and_tasks_are_deterministic_across_processes():
    import trl_sgcd

    # Import the environment without the package root (which imports TRL) so the subprocesses start in a blink.
    script = (
        "import json, sys, types; package = types.ModuleType('trl_sgcd'); package.__path__ = [sys.argv[1]]; "
        "sys.modules['trl_sgcd'] = package; "
        "from trl_sgcd.envs.offline_airline import make_db, make_tasks, gold_db_hash; "
        "from trl_sgcd.envs.offline_airline.domain import db_hash; "
        "tasks = make_tasks(40, seed=3, split='test'); "
        "print(json.dumps([db_hash(make_db(11)), tasks, [gold_db_hash(t) for t in tasks]]))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script, os.path.dirname(trl_sgcd.__file__)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout
        for hash_seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    tasks = make_tasks(40, seed=3, split="test")
    assert json.loads(outputs[0])[:2] == [db_hash(make_db(11)), tasks]
    assert db_hash(make_db(11)) != db_hash(make_db(12))
    db = make_db(11)
    db["reservations"][next(iter(db["reservations"]))]["bags"] += 1
    assert db_hash(db) != db_hash(make_db(11))


def test_generated_data_is_pinned():
    # Every experiment's data comes from these generators: a change to them must be deliberate. If you changed the
    # domain or the task builders on purpose, update the pins (and note it in docs/LOG.md).
    assert db_hash(make_db(0)) == PINNED_DB_HASH
    digest = hashlib.sha256(json.dumps(make_tasks(40, seed=0, split="train")).encode()).hexdigest()
    assert digest == PINNED_TASKS_DIGEST


def test_splits_are_disjoint_seeded_and_follow_the_mix():
    train, test = make_tasks(300, seed=0, split="train"), make_tasks(300, seed=0, split="test")
    assert {t["db_seed"] for t in train}.isdisjoint({t["db_seed"] for t in test})
    assert {t["task_id"] for t in train}.isdisjoint({t["task_id"] for t in test})
    assert all(split_of(t["db_seed"]) == "train" == t["split"] for t in train)
    assert all(split_of(t["db_seed"]) == "test" == t["split"] for t in test)
    assert len({t["task_id"] for t in train}) == 300
    assert make_tasks(30, seed=0, split="train") == make_tasks(30, seed=0, split="train")
    assert make_tasks(30, seed=0, split="train") != make_tasks(30, seed=1, split="train")
    assert Counter(t["category"] for t in make_tasks(20, seed=5)) == {
        "action": 8,
        "information": 5,
        "no_action": 4,
        "transfer": 3,
    }
    assert Counter(t["category"] for t in make_tasks(6, mix={"transfer": 1.0})) == {"transfer": 6}
    with pytest.raises(ValueError):
        make_tasks(4, split="validation")


def test_reset_from_task_id_and_without_prompt(tasks):
    task = first_of(tasks, "rebook")
    assert task_from_id(task["task_id"]) == task
    env = OfflineAirlineEnv()
    opening = env.reset(task_id=task["task_id"])
    assert opening.endswith(task["request"]) and "Rules:" in opening
    assert env.task == task
    with pytest.raises(ValueError):
        env.reset(category="action")


def test_first_deviation_follows_the_expert_path(tasks):
    rebook = first_of(tasks, "rebook")
    read, cancel, search, book = rebook["actions"]
    assert first_deviation(rebook, [read, cancel, search, book]) is None
    assert first_deviation(rebook, [search, read, cancel, book]) is None  # reads in any order
    assert first_deviation(rebook, [read, read, cancel, search, search, book]) is None  # repeated reads
    assert first_deviation(rebook, [cancel, read, search, book]) == 0  # write before its read
    assert first_deviation(rebook, [read, cancel, book]) == 2  # booked without searching
    assert first_deviation(rebook, [read, cancel]) == 2  # stopped early: the answer came too early
    assert first_deviation(rebook, []) == 0
    wrong = {"name": "get_reservation", "arguments": {"reservation_id": "r1"}}
    assert first_deviation(rebook, [read, wrong, cancel, search, book]) == 1
    assert first_deviation(rebook, [read, cancel, search, book, cancel]) == 4  # extra write after the path
    trl_format = [
        {"type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
        for c in rebook["actions"]
    ]
    assert first_deviation(rebook, trl_format) is None
    transfer = next(t for t in tasks if t["category"] == "transfer")
    assert first_deviation(transfer, [{"name": "transfer_to_human", "arguments": {"summary": "other words"}}]) is None
    no_action = first_of(tasks, "cancel_basic")
    assert first_deviation(no_action, []) == 0  # succeeds (zero-tool refusal) but left the expert's path


def test_tool_schemas_build_with_transformers(tiny_model):
    from transformers import AutoTokenizer
    from transformers.utils import get_json_schema

    env = OfflineAirlineEnv()
    assert len(TOOL_NAMES) == 8 and "reset" not in TOOL_NAMES
    schemas = tool_schemas()
    for name, schema in zip(TOOL_NAMES, schemas, strict=True):
        assert get_json_schema(getattr(env, name)) == schema
        function = schema["function"]
        assert function["name"] == name and function["description"]
        assert function["parameters"]["required"] == list(function["parameters"]["properties"])
        assert all(p["description"] for p in function["parameters"]["properties"].values())
    assert (
        schemas[TOOL_NAMES.index("update_baggage")]["function"]["parameters"]["properties"]["bags"]["type"]
        == "integer"
    )
    # The SFT data's `tools` column renders exactly like the environment's methods do in GRPO.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = prompt_messages(make_tasks(1)[0])
    as_callables = tokenizer.apply_chat_template(messages, tools=[getattr(env, n) for n in TOOL_NAMES], tokenize=False)
    assert as_callables == tokenizer.apply_chat_template(messages, tools=schemas, tokenize=False)


def test_datasets_have_the_documented_columns():
    dataset = make_dataset("train", n=6, seed=0)
    assert dataset.column_names == ["prompt", "task", "task_id", "category", "kind"]
    row = dataset[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert json.loads(row["task"])["task_id"] == row["task_id"]
    sft = make_sft_dataset("train", n=6, seed=0)
    assert sft[0]["messages"] == expert_conversation(json.loads(row["task"]))
    # No Arrow-merged null arguments: each tool call keeps exactly its own arguments.
    for messages in sft["messages"]:
        for call in completion_tool_calls(messages):
            assert None not in call["arguments"].values()
    assert len(sft[0]["tools"]) == 8


def test_sft_step_runs_on_expert_conversations(tiny_model, tmp_path):
    import torch
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(1)
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        assistant_only_loss=True,
        max_length=None,  # the prompt alone (policy + 8 tool schemas) is ~1.2k tokens with the tiny tokenizer
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = SFTTrainer(model=tiny_model, args=args, train_dataset=make_sft_dataset("train", n=4))
    example = trainer.train_dataset[0]
    trained = [i for i, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    assert "<tool_call>" in trainer.processing_class.decode(trained)  # the tool calls are trained on
    assert "Rules:" not in trainer.processing_class.decode(trained)  # the prompt is not
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert any("loss" in entry for entry in trainer.state.log_history)


def test_isolated_ids_tokenize_alike_in_requests_calls_and_results():
    from trl_sgcd.tiny_model import build_tokenizer

    tokenizer = build_tokenizer(corpus_texts(n=32), vocab_size=1024, split_on_whitespace=False, isolate_ids=True)
    contexts = [
        "Hello, this is u22. Please cancel reservation r57.",
        '{"name": "cancel_reservation", "arguments": {"reservation_id": "r57"}}',
        '{"reservation_id": "r57", "user_id": "u22", "origin": "SEA"}',
        "Reservation r57 is cancelled.",
    ]
    pieces = [tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"]) for text in contexts]
    ids = {
        tuple(tokens[tokens.index("r") : tokens.index("r") + 1 + len(tokenizer.tokenize("57"))]) for tokens in pieces
    }
    assert ids == {("r", *tokenizer.tokenize("57"))}  # the same tokens after any context
    assert "".join(pieces[2]).count("SEA") == 1 and any(
        "".join(pieces[2][i:j]) == "SEA" for i in range(len(pieces[2])) for j in range(i + 1, len(pieces[2]) + 1)
    )  # an airport code shares no token with its neighbours


def test_shared_prefix_sft_equals_full_conversation_loss(tiny_model, tmp_path):
    """The quickstart's warm start: SFTTrainer's tokens and labels, and the same loss and gradients as the full
    conversations, with the shared system prompt encoded once per batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trl_sgcd.warm_start import common_prefix_length, sft_warm_start, shared_prefix_loss, tokenize_conversations

    torch.set_num_threads(1)
    dataset = make_sft_dataset("train", n=6, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = tokenize_conversations(tokenizer, dataset)
    args = SFTConfig(
        output_dir=str(tmp_path / "ref"), assistant_only_loss=True, max_length=None, use_cpu=True, report_to="none"
    )
    reference = SFTTrainer(model=tiny_model, args=args, train_dataset=dataset).train_dataset
    for (ids, mask), example in zip(rows, reference, strict=True):
        assert ids == example["input_ids"]
        assert [m == 1 for m in mask] == [label != -100 for label in example["labels"]]

    length = common_prefix_length(rows)
    assert 0 < length < min(mask.index(1) for _, mask in rows)  # the system prompt, no assistant token
    assert "Rules:" in tokenizer.decode(rows[0][0][:length])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    width = max(len(ids) for ids, _ in rows)
    full = torch.full((len(rows), width), tokenizer.pad_token_id)
    full_mask = torch.zeros_like(full)
    for row, (ids, mask) in enumerate(rows):
        full[row, : len(ids)], full_mask[row, : len(ids)] = torch.tensor(ids), torch.tensor(mask)
    targets = full[:, 1:].masked_fill(full_mask[:, 1:] == 0, -100)
    expected = torch.nn.functional.cross_entropy(model(input_ids=full).logits[:, :-1].flatten(0, 1), targets.flatten())
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss = shared_prefix_loss(model, full[0, :length], full[:, length:], full_mask[:, length:])
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    for grad, expected_grad in zip((p.grad for p in model.parameters()), expected_grads, strict=True):
        assert torch.allclose(grad, expected_grad, atol=1e-5)

    path = sft_warm_start(tiny_model, tmp_path / "sft", num_examples=4, batch_size=2, shared_prefix=True)
    trained = AutoModelForCausalLM.from_pretrained(path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), initial.parameters(), strict=True))


def test_grpo_trains_two_steps_with_the_environment(tiny_model, tmp_path):
    import torch
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=24,
        max_tool_calling_iterations=3,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=tiny_model,
        reward_funcs=offline_airline_reward,
        args=args,
        train_dataset=make_dataset("train", n=4, seed=0),
        environment_factory=OfflineAirlineEnv,
    )
    assert sorted(tool.__name__ for tool in trainer.tools) == sorted(TOOL_NAMES)
    trainer.train()
    assert trainer.state.global_step == 2
    rewards = [
        entry["rewards/offline_airline_reward/mean"]
        for entry in trainer.state.log_history
        if "rewards/offline_airline_reward/mean" in entry
    ]
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)
    # Every rollout was reset with its row's task and scored by the reward function.
    task_ids = set(trainer.train_dataset["task_id"])
    assert all(env.episode.task_id in task_ids and env.episode.reward in (0.0, 1.0) for env in trainer.environments)


def test_expert_rollouts_through_trls_tool_loop_score_one(tiny_model, tmp_path):
    """Replace the model's sampling by the scripted expert: TRL's real parse / tool / reward path must score 1."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    tasks = [first_of(make_tasks(200), kind) for kind in ("rebook", "cancel_basic")]
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=1024,
        max_tool_calling_iterations=4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=tiny_model,
        reward_funcs=offline_airline_reward,
        args=args,
        train_dataset=dataset_from_tasks(tasks),
        environment_factory=OfflineAirlineEnv,
    )
    tokenizer = trainer.processing_class

    def expert_turns(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        turns = []
        for ids in prompt_ids:
            text = tokenizer.decode(ids)
            task = next(task for task in tasks if task["request"] in text)
            done = text.count("<tool_response>")
            if done < len(task["actions"]):
                turn = "<tool_call>\n" + json.dumps(task["actions"][done]) + "\n</tool_call>"
            else:
                turn = task["expert_answer"]
            turns.append(
                tokenizer("<think>\n\n</think>\n\n" + turn + "<|im_end|>", add_special_tokens=False)["input_ids"]
            )
        return turns, None

    trainer._generate_single_turn = expert_turns
    trainer.train()
    rewards = [
        entry["rewards/offline_airline_reward/mean"]
        for entry in trainer.state.log_history
        if "rewards/offline_airline_reward/mean" in entry
    ]
    assert rewards == [1.0, 1.0]
    episodes = [env.episode for env in trainer.environments]
    assert all(e.success and not any(call.error for call in e.tool_calls) for e in episodes)
    last = next(task for task in tasks if task["task_id"] == episodes[0].task_id)
    assert [call.name for call in episodes[0].tool_calls] == [call["name"] for call in last["actions"]]
    assert all(first_deviation(last, e) is None for e in episodes)
