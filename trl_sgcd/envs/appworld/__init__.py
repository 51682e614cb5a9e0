"""AppWorld for TRL: an HTTP client for `appworld serve environment`, a pool of server processes, and an
`environment_factory` environment exposing one `execute(code)` tool.

AppWorld pins `pydantic<2` and other packages that conflict with TRL, so it lives in its own virtualenv and this package
never imports it: the trainer talks to `appworld serve environment` processes over HTTP, with the standard library
only. An AppWorld server holds a single live world (task) per process, so the G sibling rollouts of one task that are
in flight together need G servers: `AppWorldServerPool` launches them and leases one per rollout, and every server
runs under its own `experiment_name` (AppWorld writes a task's outputs under that name).

What was simplified, and why:
- A rollout whose server dies mid-episode ends with an error observation and reward 0; the world is not rebuilt by
  replaying the executed code (LOOP does that). Crashes are rare and a zero reward keeps the batch well defined.
- The reward is the evaluator's binary `success` (the TGC unit) or its pass fraction, without penalties for failed
  executions (LOOP and open-instruct add some): SGCD needs the verifier reward, not a shaped one.
- TGC/SGC are aggregated in memory from the `/evaluate` results the environment records, rather than by running
  `appworld evaluate` over the experiment outputs on disk; the grouping (scenario = task id prefix) is the same.
- `/save_state`, `/load_state`, `/save_logs` and `/api_docs` are not wrapped: the adapter does not need them.
- The pool is POSIX-only (process groups) and relies on each server's own health, not on a supervisor process.

Modules: `client` (HTTP client, errors), `servers` (`AppWorldServerPool`), `env` (`AppWorldEnv`, datasets); the TGC/SGC
metrics are `trl_sgcd.eval.metrics.appworld_metrics`.
"""

from trl_sgcd.eval.metrics import appworld_metrics

from .client import (
    URLS_ENV_VAR,
    AppWorldClient,
    AppWorldConnectionError,
    AppWorldDataMissingError,
    AppWorldError,
    resolve_appworld_root,
)
from .env import (
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_TASK_TEMPLATE,
    DEFAULT_USER_PROMPT,
    SERVER_LOST_OBSERVATION,
    TASK_COMPLETED_OBSERVATION,
    AppWorldEnv,
    load_task_ids,
    make_appworld_dataset,
)
from .servers import AppWorldServer, AppWorldServerPool


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_TASK_TEMPLATE",
    "DEFAULT_USER_PROMPT",
    "SERVER_LOST_OBSERVATION",
    "TASK_COMPLETED_OBSERVATION",
    "URLS_ENV_VAR",
    "AppWorldClient",
    "AppWorldConnectionError",
    "AppWorldDataMissingError",
    "AppWorldEnv",
    "AppWorldError",
    "AppWorldServer",
    "AppWorldServerPool",
    "appworld_metrics",
    "load_task_ids",
    "make_appworld_dataset",
    "resolve_appworld_root",
]
