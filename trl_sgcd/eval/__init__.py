"""Evaluation harness: run a local checkpoint or an OpenAI-compatible endpoint as a tool-calling agent on a TRL
`environment_factory` environment, and report the paper's metrics (§3): greedy pass@1 with a 95% interval, τ-bench
pass^k over k trials, per-category success, the zero-tool audit, and AppWorld's TGC/SGC.

```python
from trl_sgcd.eval import TransformersPolicy, evaluate, format_table
from trl_sgcd.envs import OfflineAirlineEnv, make_dataset, offline_airline_reward

policy = TransformersPolicy.from_pretrained("path/to/checkpoint")
result = evaluate(policy, OfflineAirlineEnv, make_dataset("test", n=50), reward_funcs=offline_airline_reward)
print(format_table(result))
result.save("results.json")
```

What is simplified, and why:

- Episodes run in lockstep batches with `model.generate` (no vLLM, no continuous batching): evaluation sets are
  small (20 τ³ tasks, a few hundred AppWorld tasks) and the loop must match the trainer's, not beat it.
- Text only: multimodal prompts and tool results are refused rather than half-supported.
- The confidence interval is a Student-t interval over per-task success rates (`mean_ci95`), not a bootstrap: it is
  closed-form and deterministic; with few tasks near 0 or 1 it is crude, which the docs say.
- Environment suites for the CLI (`suites.py`) wire what the adapters expose: the offline airline environment fully;
  τ³-airline and AppWorld only when their extras, data and servers are present, failing early with a clear message
  otherwise.
"""

from .harness import environment_tools, evaluate, tool_schemas
from .metrics import MeanCI, category_success, mean_ci95, pass_at_k, pass_hat_k, t_quantile_975
from .policies import Conversation, EndpointError, OpenAIChatPolicy, Policy, TransformersPolicy
from .results import EpisodeRecord, EvalResult, format_table, summarize


__all__ = [
    "Conversation",
    "EndpointError",
    "EpisodeRecord",
    "EvalResult",
    "MeanCI",
    "OpenAIChatPolicy",
    "Policy",
    "TransformersPolicy",
    "category_success",
    "environment_tools",
    "evaluate",
    "format_table",
    "mean_ci95",
    "pass_at_k",
    "pass_hat_k",
    "summarize",
    "t_quantile_975",
    "tool_schemas",
]
