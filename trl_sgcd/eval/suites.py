"""Benchmark suites for `trl-sgcd eval`: the environment, dataset and reward of each supported environment.

A suite bundles what `evaluate` needs, with the paper's per-environment budgets as defaults (τ³-airline: 16 assistant
turns, 512-character observations; AppWorld: 30 turns, 12,000-character observations). External benchmarks are
checked up front, so a missing extra, data folder or server fails with a message saying what to install or start.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


SUITE_NAMES = ("offline_airline", "tau2_airline", "appworld")


@dataclass
class Suite:
    """Everything `evaluate` needs for one environment.

    Args:
        name: the environment's name.
        split: the evaluated split.
        environment_factory: zero-argument callable returning a fresh environment.
        dataset: the rows (`datasets.Dataset` or a list of dicts).
        reward_funcs: reward functions (the environment's `get_reward` is added by `evaluate` when defined).
        max_tool_calling_iterations: the suite's default tool-round budget.
        close: releases what the suite started (e.g. AppWorld servers).
    """

    name: str
    split: str
    environment_factory: Callable[[], Any]
    dataset: Any
    reward_funcs: list[Callable[..., Any]]
    max_tool_calling_iterations: int
    close: Callable[[], None] | None = None


def offline_airline_suite(split: str = "test", num_tasks: int = 50, seed: int = 0) -> Suite:
    """The built-in offline airline environment: `num_tasks` generated tasks of `split` (`"train"` or `"test"`)."""
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward

    return Suite(
        name="offline_airline",
        split=split,
        environment_factory=OfflineAirlineEnv,
        dataset=make_dataset(split, n=num_tasks, seed=seed),
        reward_funcs=[offline_airline_reward],
        max_tool_calling_iterations=8,
    )


def tau2_airline_suite(
    split: str = "test",
    user_model: str | None = None,
    user_base_url: str | None = None,
    user_simulator: Any = None,
    tasks_path: str | None = None,
    max_observation_chars: int | None = 512,
    num_tasks: int | None = None,
) -> Suite:
    """τ³-bench airline through `trl_sgcd.envs.tau2_airline`, scored by tau2's evaluator, with a litellm user simulator.

    Args:
        split: a split of the task file (`"test"`: the paper's 20 held-out tasks, `"train"`, `"base"`).
        user_model: litellm model string of the simulated customer (e.g. `"openai/<served-name>"`).
        user_base_url: OpenAI-compatible server of the user model, if it is not a hosted API.
        user_simulator: a ready `BaseUserSimulator` (e.g. `ScriptedUserSimulator`), instead of `user_model`.
        tasks_path: a tau2 `tasks.json` (e.g. the τ³ file); defaults to the installed tau2's.
        max_observation_chars: tool results shown to the agent are cut to this (the paper's 512).
        num_tasks: evaluate only the first `num_tasks` tasks of the split.
    """
    if not user_model and user_simulator is None:
        raise ValueError(
            "tau2_airline needs a user simulator: pass --user-model (a litellm model string, e.g. "
            "'openai/Qwen3-32B') and, for a local OpenAI-compatible server, --user-base-url."
        )
    from trl_sgcd.envs import tau2_airline

    if not tau2_airline.is_tau2_available():
        raise ImportError(tau2_airline.INSTALL_INSTRUCTIONS)
    user = user_simulator or tau2_airline.LiteLLMUserSimulator(user_model, api_base=user_base_url)
    dataset = tau2_airline.make_tau2_dataset(split, tasks_path=tasks_path)
    if num_tasks is not None:
        dataset = dataset.select(range(min(num_tasks, len(dataset))))
    factory = tau2_airline.Tau2AirlineEnv.factory(
        user_simulator=user, max_observation_chars=max_observation_chars, tasks_path=tasks_path
    )
    return Suite(
        name="tau2_airline",
        split=split,
        environment_factory=factory,
        dataset=dataset,
        reward_funcs=[tau2_airline.tau2_airline_reward],
        max_tool_calling_iterations=16,
    )


def appworld_suite(
    split: str = "test_normal",
    urls: str | None = None,
    pool_size: int = 8,
    appworld_bin: str = "appworld",
    root: str | None = None,
    max_observation_chars: int = 12_000,
    num_tasks: int | None = None,
) -> Suite:
    """AppWorld through `trl_sgcd.envs.appworld`: reward and TGC/SGC from AppWorld's evaluator.

    Servers come from `urls` (comma-separated, e.g. started by `scripts/setup_appworld.sh start`), else from
    `$SGCD_APPWORLD_URLS`, else `pool_size` servers are launched with `appworld_bin`. Evaluate with a batch size of
    at most the number of servers (one live world per server).

    Args:
        split: `"dev"`, `"test_normal"` or `"test_challenge"` (never aggregate the test splits).
        urls: running servers.
        pool_size: servers to launch when none are given.
        appworld_bin: the `appworld` executable of AppWorld's own virtualenv.
        root: the AppWorld root holding `data/` (defaults to `$APPWORLD_ROOT`, else the working directory).
        max_observation_chars: tool outputs are cut to this (the paper's 12,000).
        num_tasks: evaluate only the first `num_tasks` tasks of the split.
    """
    from trl_sgcd.envs.appworld import URLS_ENV_VAR, AppWorldEnv, AppWorldServerPool, make_appworld_dataset

    dataset = make_appworld_dataset(split, root=root)  # fails early, with instructions, when the data is missing
    if num_tasks is not None:
        dataset = dataset.select(range(min(num_tasks, len(dataset))))
    urls = urls or os.environ.get(URLS_ENV_VAR)
    if urls:
        pool = AppWorldServerPool.from_urls(urls)
    else:
        pool = AppWorldServerPool(pool_size, appworld_bin=appworld_bin, root=root)
    return Suite(
        name="appworld",
        split=split,
        environment_factory=AppWorldEnv.factory(pool, max_observation_chars=max_observation_chars),
        dataset=dataset,
        reward_funcs=[],
        max_tool_calling_iterations=30,
        close=pool.close,
    )


def load_object(spec: str) -> Any:
    """The object `spec` names: `package.module:name`, or `path/to/file.py:name` (the file is imported once)."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"Expected `package.module:name` or `file.py:name`, got {spec!r}.")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"No Python file at {path} (from {spec!r}).")
        unique = f"trl_sgcd_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(unique)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[unique] = module  # before running it, as `import` does (dataclasses, pickling)
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{module_name} has no attribute {attribute!r} (from {spec!r}).") from None


def _load_rows(spec: str, split: str) -> Any:
    if spec.endswith((".json", ".jsonl")) and ":" not in spec:
        text = Path(spec).read_text(encoding="utf-8")
        return json.loads(text) if spec.endswith(".json") else [json.loads(line) for line in text.splitlines() if line]
    source = load_object(spec)
    if not callable(source):
        return source
    accepts_split = "split" in inspect.signature(source).parameters
    return source(split=split) if accepts_split else source()


def custom_suite(
    environment: str,
    dataset: str | None = None,
    reward_funcs: Sequence[str] = (),
    split: str = "test",
    num_tasks: int | None = None,
    max_tool_calling_iterations: int = 16,
) -> Suite:
    """Any environment: `--env module:Factory` (an environment class or zero-argument factory), with the rows of
    `dataset` and the reward functions `reward_funcs`, all given as `package.module:name` or `file.py:name`.

    `dataset` names a `datasets.Dataset`, a list of row dicts, or a function returning one (called with `split=` when it
    takes a `split` parameter); or it is a `.json` (list of rows) or `.jsonl` file. The environment's `get_reward` is
    a reward source of its own; `evaluation_metrics` and `communication_tools` on its class are honoured.
    """
    factory = load_object(environment)
    if not callable(factory):
        raise ValueError(f"{environment!r} is not callable: pass an environment class or a zero-argument factory.")
    if dataset is None:
        raise ValueError(
            f"A custom environment ({environment!r}) needs --dataset: `module:name`, `file.py:name` or a "
            ".json/.jsonl file of rows."
        )
    rows = _load_rows(dataset, split)
    if num_tasks is not None:
        rows = rows.select(range(min(num_tasks, len(rows)))) if hasattr(rows, "select") else list(rows)[:num_tasks]
    funcs = [load_object(spec) for spec in reward_funcs]
    return Suite(
        name=environment,
        split=split,
        environment_factory=factory,
        dataset=rows,
        reward_funcs=funcs,
        max_tool_calling_iterations=max_tool_calling_iterations,
    )


def load_suite(name: str, **options: Any) -> Suite:
    """The suite called `name` (one of `SUITE_NAMES`, or a `module:Factory` spec for `custom_suite`), built with the
    keyword `options` of its function."""
    if ":" in name:
        return custom_suite(name, **options)
    builders = {
        "offline_airline": offline_airline_suite,
        "tau2_airline": tau2_airline_suite,
        "appworld": appworld_suite,
    }
    if name not in builders:
        raise ValueError(f"Unknown environment {name!r}; expected one of {list(builders)}.")
    return builders[name](**options)
