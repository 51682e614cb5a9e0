"""A tiny tool-using policy for the built-in offline environment: SFT warm start and the RL recipe on top of it.

The paper SFT-initialises its τ³-airline runs (step-800 checkpoint, pass@1 0.438) before RL; this is the CPU-scale
analogue used by the quickstart and by `benchmarks/reproduce.py`: a random-weight tiny Qwen3 whose tokenizer is
trained on the environment's own text, then a few epochs of TRL's `SFTTrainer` on expert conversations (assistant
tokens only). The result calls tools and succeeds on some tasks, not all, so RL sees mixed sibling groups.

Simplified on purpose: the tokenizer may merge across word boundaries (`split_on_whitespace=False`), which shrinks
the ~1.2k-token tool-schema prompt to ~270 tokens; this is a property of the toy, not of real Qwen tokenizers.
"""

from __future__ import annotations

import os
from pathlib import Path


def offline_airline_base_model(
    output_dir: str | os.PathLike,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    seed: int = 0,
    isolate_digits: bool = False,
) -> str:
    """Builds the random-weight tiny model and environment-trained tokenizer (about 10 s on a CPU).

    `isolate_digits=True` keeps numbers out of BPE merges (see `build_tokenizer`), so ids are tokenized alike in the
    request, the tool calls and the observations.
    """
    from .envs.offline_airline import corpus_texts
    from .tiny_model import make_tiny_model

    return make_tiny_model(
        output_dir,
        texts=corpus_texts(512, seed=seed),
        vocab_size=4096,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=max(1, hidden_size // 32),
        num_key_value_heads=max(1, hidden_size // 64),
        seed=seed,
        split_on_whitespace=False,
        max_token_length=64,
        isolate_digits=isolate_digits,
    )


def sft_warm_start(
    model_path: str,
    output_dir: str | os.PathLike,
    num_examples: int = 512,
    num_epochs: float = 8.0,
    learning_rate: float = 5e-3,
    batch_size: int = 8,
    seed: int = 0,
    show_progress: bool = False,
    warmup_steps: int = 5,
) -> str:
    """Supervised warm start on the scripted expert's conversations; returns the saved checkpoint's path."""
    from trl import SFTConfig, SFTTrainer

    from .envs.offline_airline import make_sft_dataset

    config = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        num_train_epochs=num_epochs,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps,
        assistant_only_loss=True,
        max_length=1024,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=not show_progress,
        seed=seed,
    )
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=make_sft_dataset(n=num_examples, seed=seed))
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.processing_class.save_pretrained(str(output_dir))
    return str(Path(output_dir))


def offline_airline_rl_config(output_dir: str | os.PathLike, **overrides):
    """The `SGCDConfig` the quickstart and `benchmarks/reproduce.py` train the warm-started policy with.

    Two prompts x 8 siblings per step, 192-token multi-turn completions with up to 4 tool calls, sampling at
    temperature 1, two extra dynamic-sampling rounds. `overrides` replace any field (e.g. `credit_mode`, `max_steps`).
    """
    from .config import SGCDConfig

    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=192,
        max_tool_calling_iterations=4,
        temperature=1.0,
        learning_rate=1e-4,
        max_resample_rounds=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    values.update(overrides)
    return SGCDConfig(**values)
