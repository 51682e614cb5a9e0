"""Shared-prefix caches for every cache layer type of transformers 5.x.

Scoring `n` siblings that share a prompt runs the prompt once and continues its cache `n` times. That needs the cache
repeated along the batch for the siblings, which `Cache.batch_repeat_interleave` does only for key/value layers: the
linear-attention layers of hybrid models (Gated DeltaNet in Qwen3-Next/Qwen3.5, short convolutions in LFM2, Mamba-2
in Granite-4/Falcon-H1/Nemotron-H/Bamba) keep convolution and recurrent states that it does not know. Hybrids also
need the continuation's `position_ids`, since their caches cannot always tell the prompt's length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import cache_utils


class _Absent:
    """Stands in for a cache layer class this transformers version does not define (nothing is an instance)."""


DynamicLayer = getattr(cache_utils, "DynamicLayer", _Absent)
DummyLayer = getattr(cache_utils, "DummyLayer", _Absent)
BaseQuantizedLayer = getattr(cache_utils, "BaseQuantizedLayer", _Absent)
LinearAttentionCacheLayerMixin = getattr(cache_utils, "LinearAttentionCacheLayerMixin", _Absent)


class UnsupportedCacheError(TypeError):
    """The cache holds a layer type whose state `repeat_prefix_cache` cannot repeat."""


def _repeat_linear_states(layer: LinearAttentionCacheLayerMixin, n: int) -> None:
    for states in (layer.conv_states, layer.recurrent_states):
        for idx, state in states.items():
            if state is not None:
                states[idx] = state.repeat_interleave(n, dim=0)


def repeat_prefix_cache(past, n: int) -> None:
    """Repeats, in place, every layer of a batch-1 prefix cache `n` times along the batch.

    Key/value layers (full, sliding-window, indexed) use their own `batch_repeat_interleave`; linear-attention layers
    (and the layers that combine both) have their convolution and recurrent states repeated here. Raises
    `UnsupportedCacheError` for any other layer type (static, offloaded or quantized caches), so that the caller can
    fall back to unshared scoring instead of continuing from a cache it did not repeat.
    """
    if not hasattr(past, "layers"):
        raise UnsupportedCacheError(f"cannot repeat a {type(past).__name__} cache")
    for layer in past.layers:
        known = isinstance(layer, DummyLayer)
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            _repeat_linear_states(layer, n)
            known = True
        if isinstance(layer, DynamicLayer) and not isinstance(layer, BaseQuantizedLayer):
            layer.batch_repeat_interleave(n)  # a combined layer resolves to DynamicLayer's, for its keys/values
            known = True
        if not known:
            raise UnsupportedCacheError(f"cannot repeat a {type(layer).__name__} cache layer")


def continuation_positions(prefix_length: int, completion: torch.Tensor) -> torch.Tensor:
    """`position_ids` of a right-padded `(n, T)` continuation of a `prefix_length`-token prefix."""
    width = completion.size(1)
    positions = torch.arange(prefix_length, prefix_length + width, device=completion.device)
    return positions.unsqueeze(0).expand(completion.size(0), -1)


# Model types whose cached continuation is known not to be exact: Jamba's Mamba-1 layers run a multi-token forward
# from a zero state, ignoring the cached one (only one-token decoding steps read it).
NOT_CONTINUABLE = {"jamba": "Jamba's Mamba layers ignore a cached state in multi-token forwards"}


def prefix_sharing_error(
    forward: Callable[..., tuple], vocab_size: int, device, model_type: str | None = None, rtol: float | None = None
) -> str | None:
    """Why shared-prefix scoring would not be exact for a model, or `None` if it is.

    Scores a 6-token prefix and two 4-token continuations both in full and from the repeated prefix cache, with
    `forward(**model_kwargs) -> (per-position outputs, cache)`. A cache that cannot be repeated, a forward that
    fails, or outputs that differ by more than `rtol` of their scale (by default 1e-5 for float32 outputs, 2e-2 for
    half precision; pass 2e-2 under mixed precision, whose rounding float32 outputs hide) are reasons, as is a `model_type` in
    `NOT_CONTINUABLE`.
    """
    if model_type in NOT_CONTINUABLE:
        return NOT_CONTINUABLE[model_type]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(vocab_size, 3), vocab_size, (2, 10), generator=generator).to(device)
    ids[1, :6] = ids[0, :6]
    prefix, completion = ids[:1, :6], ids[:, 6:]
    try:
        full, _ = forward(input_ids=ids, use_cache=False)
        first, past = forward(input_ids=prefix, use_cache=True)
        repeat_prefix_cache(past, 2)
        rest, _ = forward(
            input_ids=completion,
            attention_mask=torch.ones_like(ids),
            past_key_values=past,
            position_ids=continuation_positions(6, completion),
            use_cache=True,
        )
    except Exception as error:  # any failure of the cached path means: score unshared
        return f"{type(error).__name__}: {error}"
    if rtol is None:
        rtol = 1e-5 if full.dtype == torch.float32 else 2e-2
    shared = torch.cat([first[:, -1:].expand(2, 1, -1), rest], 1).float()
    reference = full[:, 5:].float()
    error = (shared - reference).abs().max().item()
    scale = reference.abs().max().item()
    if error > rtol * scale:
        return f"a cached continuation differs from the full forward by {error:.2e} (scale {scale:.2e})"
    return None
