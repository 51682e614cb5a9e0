"""The leakage boundary: references never reach the student side, secrets never reach the provider.

A provider returns references carrying a unique marker; the test scans every student-side artefact of real training
steps for it: generation inputs, the `prompt_ids`/`completion_ids` fed to the loss, the logged completion table, and
the saved model, tokenizer and config. The environment's tool results carry planted secrets (a card number, an
e-mail address, a password, an API key); the provider must only ever see them masked.
"""

from pathlib import Path

from datasets import Dataset
from test_tools_and_rollouts import ScriptedToolTrainer, final_answer_parity
from test_trainer import _args


MARKER = "ZZLEAKMARKER91"
SECRETS = ["4111 1111 1111 1111", "jane.doe@example.com", "hunter2-secret", "sk-live-0123456789abcdefABCDEF"]


class SecretEnv:
    def reset(self, **row):
        pass

    def lookup_flight(self, code: str) -> str:
        """Looks up the status of a flight.

        Args:
            code: The flight code, for example F1.

        Returns:
            The flight status with the booking record.
        """
        return (
            f'{{"flight": "{code}", "status": "delayed", "card_number": "{SECRETS[0]}", "email": "{SECRETS[1]}", '
            f'"password": "{SECRETS[2]}", "api_key": "{SECRETS[3]}"}}'
        )


def test_references_never_reach_the_student_and_secrets_never_reach_the_provider(tiny_model_path, tmp_path):
    seen_by_provider = []

    def provider(group):
        seen_by_provider.append(repr(group))
        return f"{MARKER} state checks: confirm the status; failed branches answer without looking it up."

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Is flight F{i} on time?"}]} for i in range(8)]
    )
    trainer = ScriptedToolTrainer(
        model=tiny_model_path,
        reward_funcs=final_answer_parity,
        args=_args(tmp_path, max_completion_length=256, max_tool_calling_iterations=2, max_resample_rounds=4),
        train_dataset=dataset,
        environment_factory=SecretEnv,
        credit_reference=provider,
    )
    tok = trainer.processing_class
    generation_inputs, loss_inputs = [], []
    original_generate = trainer._generate_single_turn
    original_loss = trainer.compute_loss

    def spy_generate(prompt_ids, *args, **kwargs):
        generation_inputs.extend(tok.decode(ids) for ids in prompt_ids)
        return original_generate(prompt_ids, *args, **kwargs)

    def spy_loss(model, inputs, *args, **kwargs):
        for key in ("prompt_ids", "completion_ids"):
            loss_inputs.extend(tok.decode(ids) for ids in inputs[key])
        return original_loss(model, inputs, *args, **kwargs)

    trainer._generate_single_turn = spy_generate
    trainer.compute_loss = spy_loss
    trainer.train()

    assert seen_by_provider, "the provider must have been called for at least one mixed group"
    assert generation_inputs and loss_inputs
    for text in generation_inputs + loss_inputs:
        assert MARKER not in text
    logged = repr(list(trainer._logs["prompt"])) + repr(list(trainer._logs["completion"]))
    assert "lookup_flight" in logged and MARKER not in logged
    # The tool results really did contain the secrets on the student side...
    assert any(SECRETS[1] in text for text in loss_inputs)
    # ...but the provider only ever saw them masked.
    for seen in seen_by_provider:
        for secret in SECRETS:
            assert secret not in seen, secret
        assert "delayed" in seen  # non-sensitive observations do reach it

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    assert any(p.name == "config.json" for p in files) and any("tokenizer" in p.name for p in files)
    for path in files:
        assert MARKER.encode() not in path.read_bytes(), path.name
