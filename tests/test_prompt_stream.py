"""Dynamic sampling over an iterable (streaming) `train_dataset`: the bounded resampling buffer and a training run."""

import pytest
from datasets import IterableDataset
from test_trainer import _args, fixed_reference

from trl_sgcd import SGCDGRPOTrainer
from trl_sgcd.prompt_stream import StreamingPromptSampler


class CountingStream:
    """An iterable that records how far it has been read and which epochs were set."""

    def __init__(self, n):
        self.n, self.read, self.epochs = n, 0, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        for i in range(self.n):
            self.read += 1
            yield {"x": i}


def test_buffer_is_bounded_and_each_epoch_draws_every_record_once():
    stream = CountingStream(25)
    sampler = StreamingPromptSampler(stream, buffer_size=4, seed=0)
    drawn = []
    for _ in range(5):
        drawn += [r["x"] for r in sampler.draw(5)]
        assert len(sampler) <= 4
        assert stream.read <= len(drawn) + 4  # never reads more than the buffer ahead of the draws
    assert sorted(drawn) == list(range(25))  # one epoch: every record exactly once
    assert drawn != list(range(25))  # shuffled
    next_epoch = [r["x"] for r in sampler.draw(25)]
    assert sorted(next_epoch) == list(range(25)) and stream.epochs == [0, 1] and sampler.epoch == 1


def test_draws_are_deterministic_in_the_seed_and_ordered_without_shuffle():
    def draws(seed, shuffle=True):
        sampler = StreamingPromptSampler(CountingStream(50), buffer_size=10, seed=seed, shuffle=shuffle)
        return [r["x"] for r in sampler.draw(30)]

    assert draws(1) == draws(1) and draws(1) != draws(2)
    assert draws(1, shuffle=False) == list(range(30))
    # A random draw only reaches as far into the stream as the buffer allows.
    assert max(draws(3)[:5]) < 10 + 5


def test_bad_buffer_and_empty_stream_raise(tmp_path):
    with pytest.raises(ValueError, match="buffer_size must be >= 1"):
        StreamingPromptSampler(CountingStream(3), buffer_size=0)
    with pytest.raises(ValueError, match="resample_buffer_size must be >= 1, got 0"):
        _args(tmp_path, resample_buffer_size=0)
    with pytest.raises(ValueError, match="yielded no records"):
        StreamingPromptSampler(CountingStream(0), buffer_size=3).draw(1)


def _stream(n=40):
    def rows():
        for i in range(n):
            yield {"prompt": [{"role": "user", "content": f"book flight F{i} for user u{i}"}], "task_id": f"t{i}"}

    return IterableDataset.from_generator(rows)


def half_solved_reward(completions, task_id, **kwargs):
    """Even tasks are always solved (never mixed), odd ones by a random policy about half the time."""
    return [
        1.0 if int(t[1:]) % 2 == 0 else float(len(c[0]["content"]) % 2 == 0)
        for c, t in zip(completions, task_id, strict=True)
    ]


def test_streaming_dataset_trains_with_dynamic_sampling(tiny_model_path, tmp_path):
    trainer = SGCDGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=half_solved_reward,
        args=_args(tmp_path, max_steps=3, resample_buffer_size=6, max_resample_rounds=4),
        train_dataset=_stream(),
        credit_reference=fixed_reference,
    )
    drawn, seen = [], []
    original_next, original_apply = trainer._next_local_batch, trainer._apply_credit

    def spy_next(local_rows):
        rows = original_next(local_rows)
        drawn.append([r["task_id"] for r in rows])
        return rows

    def spy_apply(output, rollouts):
        seen.append(rollouts)
        return original_apply(output, rollouts)

    trainer._next_local_batch, trainer._apply_credit = spy_next, spy_apply
    trainer.train()
    assert drawn, "the even tasks were never mixed, so some step must have resampled from the stream"
    n = trainer.num_generations
    for ids in drawn:
        groups = [ids[i : i + n] for i in range(0, len(ids), n)]
        assert all(len(set(g)) == 1 for g in groups)  # num_generations copies of one prompt
        assert len({g[0] for g in groups}) == len(groups)  # distinct prompts within a round
    assert len(seen) == 3
    for rollouts in seen:
        for g in range(rollouts.num_groups):
            rows = list(rollouts.group_rows(g))
            assert len({str(rollouts.prompts[r]) for r in rows}) == 1
    assert sum(len(r.mixed_groups()) for r in seen) > 0
    rounds = [h["sgcd/sampling/rounds"] for h in trainer.state.log_history if "sgcd/sampling/rounds" in h]
    assert max(rounds) > 1
    assert len(trainer._prompt_stream) <= 6
