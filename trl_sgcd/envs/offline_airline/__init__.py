"""A built-in, offline, airline-shaped tool-use environment (written from scratch, τ-bench-like).

It is the quickstart's environment, the test bed, and the CPU-scale reproduction of the paper's comparisons: a tiny model
is warm-started on the scripted expert's conversations (`make_sft_dataset`), then trained with GRPO/SGCD on
`make_dataset` with `environment_factory=OfflineAirlineEnv` and `reward_funcs=offline_airline_reward`.

What it keeps from τ-bench airline: a JSON database of users, reservations and flights; read tools and state-changing
tools behind a written policy; task categories (action, information-only, no-action, transfer); and a binary reward
that requires the gold end state (database hash) and the required facts in the final answer.

What it simplifies, and why:

- **Size.** Each task has its own tiny database (4 users, 3 routes, about 18 flights), generated from a seed; 8 tools;
  1 to 4 tool calls per expert trajectory; short ids (`u3`, `r12`, `F7`). Rollouts stay short enough for a CPU.
- **One request, no user simulator.** Every task is a single user message, so there is no follow-up turn and no
  simulated user: the user is the opening message (TRL's tool loop has no user turns). The user is already
  authenticated (the task's `user_id`); ownership is checked by the tools.
- **Tools enforce the policy.** A write the policy forbids is refused with an error observation and leaves the
  database unchanged, but it is recorded as a violation and fails the episode (in τ-bench the write would go through
  and break the database hash instead). Unknown ids and bad arguments are plain errors and do not fail the episode.
- **Transfers are state.** `transfer_to_human` records a hand-off in the database, so the hash checks transfer tasks.
- **Deterministic.** Generation, new ids and prices depend only on seeds; there is no clock and no randomness at
  rollout time.
"""

from .data import (
    corpus_texts,
    dataset_from_tasks,
    expert_conversation,
    make_dataset,
    make_sft_dataset,
    prompt_messages,
    tool_schemas,
)
from .domain import POLICY, make_db
from .env import TOOL_NAMES, Episode, OfflineAirlineEnv, ToolCallRecord, canonical_call
from .reward import completion_tool_calls, final_answer, first_deviation, offline_airline_reward, score_answer
from .tasks import (
    CATEGORIES,
    DEFAULT_MIX,
    KINDS,
    expert_actions,
    gold_db_hash,
    make_task,
    make_tasks,
    split_of,
    task_from_id,
)


__all__ = [
    "CATEGORIES",
    "DEFAULT_MIX",
    "KINDS",
    "POLICY",
    "TOOL_NAMES",
    "Episode",
    "OfflineAirlineEnv",
    "ToolCallRecord",
    "canonical_call",
    "completion_tool_calls",
    "corpus_texts",
    "dataset_from_tasks",
    "expert_actions",
    "expert_conversation",
    "final_answer",
    "first_deviation",
    "gold_db_hash",
    "make_dataset",
    "make_db",
    "make_sft_dataset",
    "make_task",
    "make_tasks",
    "offline_airline_reward",
    "prompt_messages",
    "score_answer",
    "split_of",
    "task_from_id",
    "tool_schemas",
]
