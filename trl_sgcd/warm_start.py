"""A tiny tool-using policy for the built-in offline environment: SFT warm start and the RL recipe on top of it.

The paper SFT-initialises its τ³-airline runs (step-800 checkpoint, pass@1 0.438) before RL; this is the CPU-scale
analogue used by the quickstart and by `benchmarks/reproduce.py`: a random-weight tiny Qwen3 whose tokenizer is
trained on the environment's own text, then a few epochs of TRL's `SFTTrainer` on expert conversations (assistant
tokens only). The result calls tools and succeeds on some tasks, not all, so RL sees mixed sibling groups.

Simplified on purpose: the tokenizer may merge across word boundaries (`split_on_whitespace=False`), which shrinks
the ~1.2k-token tool-schema prompt to ~270 tokens; this is a property of the toy, not of real Qwen tokenizers.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def offline_airline_base_model(
    output_dir: str | os.PathLike,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    seed: int = 0,
    isolate_digits: bool = False,
    isolate_ids: bool = False,
) -> str:
    """Builds the random-weight tiny model and environment-trained tokenizer (about 10 s on a CPU).

    `isolate_digits=True` keeps numbers out of BPE merges (see `build_tokenizer`), so ids are tokenized alike in the
    request, the tool calls and the observations; `isolate_ids=True` also keeps ids' letters and airport codes out
    of merges, so an id is the same tokens after any context (what the quickstart's warm start needs to copy ids).
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
        isolate_ids=isolate_ids,
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
    shared_prefix: bool = False,
) -> str:
    """Supervised warm start on the scripted expert's conversations; returns the saved checkpoint's path.

    By default TRL's `SFTTrainer` (assistant tokens only). `shared_prefix=True` computes the same loss with the
    conversations' common prefix (the system policy and tool schemas, about 80% of each conversation's tokens)
    encoded once per batch (`shared_prefix_loss`), in a plain AdamW loop with the same schedule: 3-4x less compute
    per step, what lets the quickstart's warm start learn to copy ids within its budget. The batches differ from
    `SFTTrainer`'s (own shuffling), so the two paths give different checkpoints.
    """
    from .envs.offline_airline import make_sft_dataset

    dataset = make_sft_dataset(n=num_examples, seed=seed)
    if shared_prefix:
        steps = math.ceil(num_examples * num_epochs / batch_size)
        return _shared_prefix_sft(
            model_path, output_dir, dataset, steps, learning_rate, batch_size, warmup_steps, seed, show_progress
        )
    from trl import SFTConfig, SFTTrainer

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
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=dataset)
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.processing_class.save_pretrained(str(output_dir))
    return str(Path(output_dir))


def tokenize_conversations(tokenizer, dataset) -> list[tuple[list[int], list[int]]]:
    """`(input_ids, assistant_mask)` of each `messages`/`tools` row, rendered by TRL's training chat template (the one
    `SFTTrainer(assistant_only_loss=True)` uses)."""
    from trl.chat_template_utils import get_training_chat_template

    template = get_training_chat_template(tokenizer)
    rows = []
    for example in dataset:
        encoded = tokenizer.apply_chat_template(
            example["messages"],
            tools=example["tools"],
            chat_template=template,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        rows.append((list(encoded["input_ids"]), list(encoded["assistant_masks"])))
    return rows


def common_prefix_length(rows: list[tuple[list[int], list[int]]]) -> int:
    """Length of the token prefix all rows share, ending at least one token before each row's first assistant token
    (so every assistant token is predicted from inside the row's own suffix)."""
    first = rows[0][0]
    length = min(len(ids) for ids, _ in rows) - 1
    for ids, mask in rows:
        length = min(length, next((i for i, (a, b) in enumerate(zip(first, ids, strict=False)) if a != b), length))
        if 1 in mask:
            length = min(length, mask.index(1) - 1)
    return max(length, 0)


def shared_prefix_loss(model, prefix, suffixes, masks):
    """Mean next-token loss over the assistant tokens of a batch of conversations that share a token prefix.

    The prefix runs once and its keys and values are repeated for the batch, so `B` conversations cost `P + B·S`
    tokens instead of `B·(P + S)`; gradients reach the prefix through the shared cache. Equal to the loss of the
    full conversations when the prefix holds no assistant token (see `common_prefix_length`).

    Args:
        prefix: `(P,)` token ids every conversation starts with.
        suffixes: `(B, S)` the rest of each conversation, right-padded (causal attention never looks right).
        masks: `(B, S)` 1 on the assistant tokens of each suffix, 0 elsewhere and on padding.
    """
    import torch

    batch, length = suffixes.shape
    cache = model.get_decoder()(input_ids=prefix[None], use_cache=True).past_key_values
    cache.batch_repeat_interleave(batch)
    positions = torch.arange(len(prefix), len(prefix) + length, device=suffixes.device).expand(batch, -1)
    logits = model(input_ids=suffixes, past_key_values=cache, position_ids=positions, use_cache=True).logits
    targets = suffixes[:, 1:].masked_fill(masks[:, 1:] == 0, -100)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100
    )


def _shared_prefix_sft(model_path, output_dir, dataset, steps, learning_rate, batch_size, warmup_steps, seed, verbose):
    """AdamW (weight decay 0, gradient norm clipped to 1) with a cosine schedule over `shared_prefix_loss`, like
    `SFTConfig`'s defaults; one shuffled pass after another over the conversations."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = tokenize_conversations(tokenizer, dataset)
    length = common_prefix_length(rows)
    prefix = torch.tensor(rows[0][0][:length])
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    model.train()
    start, losses, every = time.perf_counter(), [], max(1, steps // 10)
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += torch.randperm(len(rows), generator=generator).tolist()
        batch = [rows[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(ids) for ids, _ in batch) - length
        suffixes = torch.full((len(batch), width), tokenizer.pad_token_id)
        masks = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, mask) in enumerate(batch):
            suffixes[row, : len(ids) - length] = torch.tensor(ids[length:])
            masks[row, : len(ids) - length] = torch.tensor(mask[length:])
        loss = shared_prefix_loss(model, prefix, suffixes, masks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if verbose and (step % every == 0 or step == steps):
            mean = sum(losses[-every:]) / len(losses[-every:])
            print(f"  SFT step {step}/{steps}: loss {mean:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
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
