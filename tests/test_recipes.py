"""Every recipe in examples/recipes parses with its script's TrlParser; the CPU recipe trains end to end."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "examples" / "recipes"
SCRIPT = {  # recipe -> the example script it launches (named in the recipe's own header)
    "appworld_paper_8gpu.yaml": "appworld",
    "airline_tau3_8gpu.yaml": "airline",
    "airline_1gpu_lora_vllm.yaml": "airline",
    "cpu_tiny.yaml": "offline_airline",
}


CPU_ONLY = [] if torch.cuda.is_available() else ["--use_cpu", "True"]  # bf16 recipes validate on a CPU-only host


def _load(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_recipe_is_listed():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(SCRIPT)


@pytest.mark.parametrize("recipe", sorted(SCRIPT))
def test_recipe_parses_into_the_scripts_dataclasses(recipe):
    path = RECIPES / recipe
    assert f"examples/{SCRIPT[recipe]}.py" in path.read_text()  # the header says how to launch it
    values = yaml.safe_load(path.read_text())
    script_args, config, model_args = _load(SCRIPT[recipe]).parse(["--config", str(path), *CPU_ONLY])
    for key, value in values.items():  # every key lands in one of the three dataclasses with its value
        holder = next(d for d in (script_args, config, model_args) if hasattr(d, key))
        parsed = getattr(holder, key)
        parsed = getattr(parsed, "value", parsed)  # enums (report_to, save_strategy, ...)
        if key == "report_to" and value == "none":
            parsed, value = parsed or "none", "none"  # TrainingArguments normalizes "none" to []
        assert parsed == value or [parsed] == value or parsed == [value], (key, parsed, value)
    assert config.model_init_kwargs["dtype"] == model_args.dtype
    # the command line overrides the recipe
    _, overridden, _ = _load(SCRIPT[recipe]).parse(["--config", str(path), "--max_steps", "3", *CPU_ONLY])
    assert overridden.max_steps == 3


def test_paper_recipes_match_the_paper():
    _, appworld, model = _load("appworld").parse(["--config", str(RECIPES / "appworld_paper_8gpu.yaml"), *CPU_ONLY])
    assert (appworld.num_generations, appworld.per_device_train_batch_size * 8 // appworld.num_generations) == (8, 8)
    assert (appworld.learning_rate, appworld.max_steps, appworld.temperature) == (1e-6, 240, 1.0)
    assert (appworld.credit_gamma, appworld.credit_cap, model.model_name_or_path) == (1.0, 2.0, "Qwen/Qwen3.5-4B")
    _, airline, _ = _load("airline").parse(["--config", str(RECIPES / "airline_tau3_8gpu.yaml"), *CPU_ONLY])
    assert (airline.temperature, airline.top_p, airline.max_steps) == (0.4, 0.95, 120)
    _, lora, lora_model = _load("airline").parse(["--config", str(RECIPES / "airline_1gpu_lora_vllm.yaml"), *CPU_ONLY])
    assert lora_model.use_peft and lora.use_vllm and lora.vllm_mode == "colocate"
    steps = lora.per_device_train_batch_size * lora.gradient_accumulation_steps
    assert steps // lora.num_generations == 8


def test_cpu_recipe_trains(tmp_path):
    torch.set_num_threads(1)
    script = _load("offline_airline")
    trainer = script.main(
        ["--config", str(RECIPES / "cpu_tiny.yaml"), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
         "--disable_tqdm", "True"]
    )  # fmt: skip
    assert trainer.state.global_step == 1
    assert any("sgcd/weights/mean" in h for h in trainer.state.log_history)
    assert (tmp_path / "out" / "sft" / "config.json").exists()  # the recipe's warm start ran
    assert (tmp_path / "out" / "config.json").exists()


def test_model_config_flags_reach_the_trainer(tmp_path):
    torch.set_num_threads(1)
    script = _load("offline_airline")
    trainer = script.main(
        ["--config", str(RECIPES / "cpu_tiny.yaml"), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
         "--sft_examples", "0", "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
         "--disable_tqdm", "True"]
    )  # fmt: skip
    assert trainer.state.global_step == 1
    assert trainer.model.peft_config["default"].r == 4
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
