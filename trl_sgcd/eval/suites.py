"""Benchmark suites for `trl-sgcd eval`: the environment, dataset and reward of each supported environment.

A suite bundles what `evaluate` needs, with the paper's per-environment budgets as defaults (τ³-airline: 16 assistant
turns, 512-character observations; AppWorld: 30 turns, 12,000-character observations). External benchmarks are
checked up front, so a missing extra, data folder or server fails with a message saying what to install or start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
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


def load_suite(name: str, **options: Any) -> Suite:
    """The suite called `name` (one of `SUITE_NAMES`), built with the keyword `options` of its function."""
    builders = {
        "offline_airline": offline_airline_suite,
        "tau2_airline": tau2_airline_suite,
        "appworld": appworld_suite,
    }
    if name not in builders:
        raise ValueError(f"Unknown environment {name!r}; expected one of {list(builders)}.")
    return builders[name](**options)
