"""Tool-use environments for TRL's `environment_factory`.

`offline_airline` is built in and needs nothing beyond the core dependencies; adapters for external benchmarks live in
their own modules and import their benchmark packages lazily.
"""

from .offline_airline import (
    CATEGORIES,
    KINDS,
    Episode,
    OfflineAirlineEnv,
    completion_tool_calls,
    corpus_texts,
    dataset_from_tasks,
    expert_actions,
    expert_conversation,
    first_deviation,
    make_dataset,
    make_sft_dataset,
    make_tasks,
    offline_airline_reward,
    score_answer,
)


__all__ = [
    "CATEGORIES",
    "KINDS",
    "Episode",
    "OfflineAirlineEnv",
    "completion_tool_calls",
    "corpus_texts",
    "dataset_from_tasks",
    "expert_actions",
    "expert_conversation",
    "first_deviation",
    "make_dataset",
    "make_sft_dataset",
    "make_tasks",
    "offline_airline_reward",
    "score_answer",
]
