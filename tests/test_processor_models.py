"""A multimodal processor as processing class with text-only prompts (as Qwen3.5 hub checkpoints load): dynamic
sampling and the teacher pass work, and only image prompts are refused."""

from importlib import resources

import pytest
import torch
from datasets import Dataset
from PIL import Image
from test_architectures import tiny_args
from transformers import (
    AutoProcessor,
    GenerationConfig,
    LlavaProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from trl_sgcd import SGCDGRPOTrainer
from trl_sgcd.tiny_model import build_tokenizer, tiny_config


def parity_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def fixed_reference(group):
    return "State checks: verify the user first. Failed branches: answering without a lookup."


@pytest.fixture(scope="module")
def processor_model(tmp_path_factory):
    """A tiny Qwen3.5 checkpoint as the hub ships it: `Qwen3_5ForConditionalGeneration` (a one-block vision tower)
    saved with a multimodal processor (tokenizer + image processor) and Qwen3.5's chat template."""
    path = tmp_path_factory.mktemp("processor-model")
    tokenizer = build_tokenizer(vocab_size=300)
    vision_tokens = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": vision_tokens}, replace_extra_special_tokens=False)
    template = resources.files("trl").joinpath("chat_templates/qwen3_5_nothink.jinja").read_text()
    tokenizer.chat_template = template
    text = tiny_config(
        "qwen3_5_text", len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    image, video, start, end = tokenizer.convert_tokens_to_ids(vision_tokens)
    config = Qwen3_5Config(
        text_config=text.to_dict(),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64),
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(path)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(),
        tokenizer=tokenizer,
        chat_template=template,
        image_token="<|image_pad|>",
    )
    processor.save_pretrained(path)
    return str(path)


def _args(tmp_path, **overrides):
    return tiny_args(tmp_path, **(dict(max_steps=2) | overrides))


def _dataset(n=16):
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"book flight F{i}"}]} for i in range(n)])


def test_text_prompts_train_with_a_processor(processor_model, tmp_path):
    trainer = SGCDGRPOTrainer(
        model=processor_model,  # loaded as TRL loads a hub id: the checkpoint's architecture and AutoProcessor
        reward_funcs=parity_reward,
        args=_args(tmp_path),
        train_dataset=_dataset(),
        credit_reference=fixed_reference,
    )
    assert isinstance(trainer.processing_class, LlavaProcessor) and trainer._is_vlm and trainer.args.dynamic_sampling
    assert type(trainer.model).__name__ == "Qwen3_5ForConditionalGeneration"
    scored = []
    score = trainer._score

    def spy(*args, **kwargs):
        scored.append(score(*args, **kwargs))
        return scored[-1]

    trainer._score = spy
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "sgcd/weights/max" in h]
    assert logs and all(h["sgcd/sampling/rounds"] >= 1 for h in logs)
    assert any(h["sgcd/weights/max"] > 1 for h in logs)
    # The teacher pass ran on the processor's text: every teacher prompt carries the reference block.
    assert scored and all(s.teacher_tokens > 0 for s in scored)
    assert trainer._share_prefix is True


def test_image_prompts_with_dynamic_sampling_are_refused(processor_model, tmp_path):
    image = Image.new("RGB", (8, 8))
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "what is it?"}], "image": image}] * 4)
    with pytest.raises(ValueError, match="image inputs"):
        SGCDGRPOTrainer(
            model=processor_model,
            reward_funcs=parity_reward,
            args=_args(tmp_path),
            train_dataset=dataset,
            processing_class=AutoProcessor.from_pretrained(processor_model),
        )
