"""SGCD on AppWorld (paper §5.1, Table 3 hyperparameters as defaults).

    bash scripts/setup_appworld.sh install                  # AppWorld in its own venv + data (needs internet once)
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/appworld.py \
        --config examples/recipes/appworld_paper_8gpu.yaml --provider_model openai/gpt-4.1-mini

Arguments follow TRL's example scripts: `TrlParser((ScriptArguments, SGCDConfig, ModelConfig))`, so `--config
recipe.yaml` sets any field (command-line flags override it), and `--model_name_or_path`, `--dtype`,
`--attn_implementation`, `--use_peft --lora_r 16 ...` work as in `trl grpo`.

AppWorld pins pydantic<2, so it never runs in this process: `AppWorldServerPool` launches `appworld serve environment`
processes (one world per process) from the AppWorld venv and the policy acts through a single `execute(code)` tool.
Every `SGCDConfig` / `GRPOConfig` field is a flag (`--credit_mode off` gives the matched GRPO control). Servers started
elsewhere can be used with `SGCD_APPWORLD_URLS=http://host:port,...`. Without `--provider_model` the LLM-free
`ContrastCreditReference` builds the credit references.

What differs from the paper's runtime: TRL's tool loop only alternates assistant and tool turns and budgets the whole
multi-turn completion with `max_completion_length`; the paper used a verl agent loop with a 16k-token response budget
shared over up to 30 turns, which is what the defaults below mirror.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from trl_sgcd import ContrastCreditReference, LiteLLMCreditReference, SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.envs.appworld import AppWorldEnv, AppWorldServerPool, make_appworld_dataset


@dataclass
class ScriptArguments:
    provider_model: str | None = field(
        default=None, metadata={"help": "litellm model of the credit-reference provider; None: LLM-free contrast."}
    )
    provider_api_base: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL."})
    num_servers: int = field(
        default=8, metadata={"help": "AppWorld servers per process (>= rollouts in flight per process)."}
    )
    appworld_root: str | None = field(default=None, metadata={"help": "AppWorld root (holds data/)."})
    appworld_bin: str = field(default=".appworld-venv/bin/appworld", metadata={"help": "The appworld executable."})
    split: str = field(default="train", metadata={"help": "AppWorld split to train on."})
    max_observation_chars: int = field(default=12_000, metadata={"help": "Truncate observations to this length."})
    max_interactions: int = field(default=30, metadata={"help": "Environment steps per task."})


PAPER_DEFAULTS = dict(  # the paper's AppWorld settings (Table 3)
    num_generations=8,
    per_device_train_batch_size=8,
    learning_rate=1e-6,
    num_iterations=1,
    max_completion_length=16_384,
    max_tool_calling_iterations=30,
    temperature=1.0,
    top_p=1.0,
    loss_type="dapo",
    beta=0.0,
    bf16=True,
    gradient_checkpointing=True,
    logging_steps=1,
    save_steps=20,
    max_steps=240,
    report_to="none",
    credit_mode="sgcd",
    credit_gamma=1.0,
    credit_cap=2.0,
    success_threshold=1.0,
)


def parse(argv: list[str] | None = None) -> tuple[ScriptArguments, SGCDConfig, ModelConfig]:
    """Command line over `--config` YAML over the paper's defaults."""
    parser = TrlParser((ScriptArguments, SGCDConfig, ModelConfig))
    parser.set_defaults(output_dir="appworld-sgcd", model_name_or_path="Qwen/Qwen3.5-4B", **PAPER_DEFAULTS)
    script_args, config, model_args = parser.parse_args_and_config(args=argv)
    config.model_init_kwargs = {
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        **(config.model_init_kwargs or {}),
    }
    return script_args, config, model_args


def main(argv: list[str] | None = None) -> SGCDGRPOTrainer:
    script_args, config, model_args = parse(argv)

    provider = (
        LiteLLMCreditReference(script_args.provider_model, api_base=script_args.provider_api_base)
        if script_args.provider_model
        else ContrastCreditReference()
    )
    pool = AppWorldServerPool.from_env(
        script_args.num_servers, appworld_bin=script_args.appworld_bin, root=script_args.appworld_root
    )
    try:
        trainer = SGCDGRPOTrainer(
            model=model_args.model_name_or_path,
            args=config,
            train_dataset=make_appworld_dataset(script_args.split, root=script_args.appworld_root),
            environment_factory=AppWorldEnv.factory(
                pool,
                max_observation_chars=script_args.max_observation_chars,
                init_kwargs={"max_interactions": script_args.max_interactions},
            ),
            credit_reference=provider,
            peft_config=get_peft_config(model_args),
        )
        trainer.train()
        trainer.save_model(config.output_dir)
    finally:
        pool.close()
    return trainer


if __name__ == "__main__":
    main()
