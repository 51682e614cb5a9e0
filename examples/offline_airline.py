"""SGCD on the built-in offline airline environment: the script behind the CPU recipe, no API key, no download.

    python examples/offline_airline.py --config examples/recipes/cpu_tiny.yaml

Without `--model_name_or_path` it builds a tiny random model and a digit-isolating tokenizer from the environment's
text and, with `--sft_examples N`, warm-starts it by SFT on N of the scripted expert's conversations. With a model
path it trains that model directly. Arguments follow TRL's example scripts (`--config`, `ModelConfig`'s flags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser, get_peft_config

from trl_sgcd import ContrastCreditReference, SGCDConfig, SGCDGRPOTrainer
from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@dataclass
class ScriptArguments:
    train_tasks: int = field(default=512, metadata={"help": "Training tasks drawn from the environment."})
    sft_examples: int = field(default=0, metadata={"help": "SFT warm-start conversations for the built tiny model."})
    sft_epochs: float = field(default=1.0, metadata={"help": "SFT epochs for the built tiny model."})


def parse(argv: list[str] | None = None) -> tuple[ScriptArguments, SGCDConfig, ModelConfig]:
    """Command line over `--config` YAML over these defaults."""
    parser = TrlParser((ScriptArguments, SGCDConfig, ModelConfig))
    parser.set_defaults(output_dir="outputs/offline-airline", report_to="none", save_strategy="no")
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
    model = model_args.model_name_or_path
    if model is None:
        from trl_sgcd.warm_start import offline_airline_base_model, sft_warm_start

        out = Path(config.output_dir)
        model = offline_airline_base_model(out / "base", seed=config.seed, isolate_digits=True)
        if script_args.sft_examples:
            model = sft_warm_start(
                model, out / "sft", num_examples=script_args.sft_examples, num_epochs=script_args.sft_epochs
            )
    trainer = SGCDGRPOTrainer(
        model=model,
        reward_funcs=offline_airline_reward,
        args=config,
        train_dataset=make_dataset("train", n=script_args.train_tasks, seed=config.seed),
        environment_factory=OfflineAirlineEnv,
        credit_reference=ContrastCreditReference(),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    return trainer


if __name__ == "__main__":
    main()
