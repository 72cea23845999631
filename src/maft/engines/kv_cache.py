"""A key/value cache for in-process generation that does not copy itself at every decoding step.

transformers' default ``DynamicCache`` appends a step's keys and values with ``torch.cat``: every step
copies the whole cache, so decoding reads and writes it about three times per token (the copy's read and
write, then attention's read). When the model is small next to its context, as the embedded model is
(0.5M parameters, prompts of 100-400 tokens), that traffic is most of the decoding time on a CPU.
``StaticCache`` writes in place but attends over its whole preallocated length.

:class:`GrowingCache` keeps each layer's keys and values in a buffer with spare room, writes a step in
place and hands attention a view of the filled part only. The buffer doubles when full (amortised O(1)
copies per token; at most twice the filled size, as ``torch.cat``'s transient peak already is), never
past ``max_length`` when it is given. It is used only for models whose layers all attend to the whole
sequence (:func:`growing_cache_for`); the others keep transformers' cache. The values attended to are
exactly those ``DynamicCache`` would hold, so generated text is unchanged (tested token for token).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

#: Spare positions allocated past the first update (the prompt), before doubling takes over.
HEADROOM = 64


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys`` and ``values`` are views of preallocated buffers."""

    def __init__(self, max_length: int | None = None) -> None:
        super().__init__()
        self.max_length = max_length
        self._keys: torch.Tensor | None = None  # [batch, heads, capacity, head_dim]
        self._values: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._keys = self._values = None
        old = self.get_seq_length()
        new = old + key_states.shape[-2]
        if self._keys is None or new > self._keys.shape[-2] or not self._owns_view():
            self._reallocate(old, new, key_states, value_states)
        assert self._keys is not None and self._values is not None
        self._keys[..., old:new, :] = key_states
        self._values[..., old:new, :] = value_states
        self.keys = self._keys[..., :new, :]
        self.values = self._values[..., :new, :]
        return self.keys, self.values

    def _owns_view(self) -> bool:
        """Whether ``keys``/``values`` still view the buffers (``crop`` and :meth:`batch_select_indices` keep the
        views; a batch repetition replaces them with copies, which then become the new buffers' contents)."""
        assert self._keys is not None and self._values is not None
        return (
            self.keys.data_ptr() == self._keys.data_ptr()
            and self.values.data_ptr() == self._values.data_ptr()
            and self.keys.shape[0] == self._keys.shape[0]
        )

    def _reallocate(self, old: int, new: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        capacity = max(new + HEADROOM, 2 * old)
        if self.max_length is not None:
            capacity = max(new, min(capacity, self.max_length))
        self._keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        self._values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if old:
            self._keys[..., :old, :] = self.keys
            self._values[..., :old, :] = self.values

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        """Start from the buffers ``keys`` and ``values`` (``[batch, heads, capacity, head_dim]``), whose first
        ``filled`` positions are the cache (keys and values reused from earlier generations)."""
        self.lazy_initialization(keys, values)
        self._keys, self._values = keys, values
        self.keys, self.values = keys[..., :filled, :], values[..., :filled, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices``, moved to the front of the buffers: a selection copies the filled part
        once and needs no new buffer, where transformers' copy would make the next update allocate one and copy
        the cache again."""
        if self._keys is None or self._values is None or not self._owns_view():
            super().batch_select_indices(indices)
            return
        n, rows = self.keys.shape[-2], len(indices)
        self._keys[:rows, ..., :n, :] = self.keys[indices]  # the right side is a copy: any order of rows is safe
        self._values[:rows, ..., :n, :] = self.values[indices]
        self._keys, self._values = self._keys[:rows], self._values[:rows]
        self.keys, self.values = self._keys[..., :n, :], self._values[..., :n, :]

    def reset(self) -> None:
        self._keys = self._values = None
        super().reset()


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of :class:`GrowingLayer` (one per decoder layer, created on first use).

    ``max_length``: the longest sequence it will hold (prompt plus new tokens), to cap the buffers."""

    def __init__(self, max_length: int | None = None) -> None:
        Cache.__init__(self, layer_class_to_replicate=partial(GrowingLayer, max_length))

    def adopt(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], filled: int) -> None:
        """Start every layer from its buffers (:meth:`GrowingLayer.adopt`); the cache must be empty."""
        assert not self.layers, "adopt starts an empty cache"
        for k, v in zip(keys, values):
            layer = self.layer_class_to_replicate()
            layer.adopt(k, v, filled)
            self.layers.append(layer)


#: Generation-config settings that count from the start of a ``generate`` call (or its clock), so that a call
#: continuing another would restart them: forcing the end token at ``max_length``, ``min_new_tokens``, a length
#: penalty's start, tokens suppressed at the first step, a time limit.
PER_CALL_SETTINGS = (
    "forced_eos_token_id",
    "min_new_tokens",
    "exponential_decay_length_penalty",
    "begin_suppress_tokens",
    "max_time",
)


def continues_generation(model: torch.nn.Module) -> bool:
    """Whether ``model.generate`` can continue from a cache that an earlier call filled, giving the tokens one
    call would: not when the model's generation config names a cache implementation of its own (``generate``
    refuses a cache passed beside one, e.g. Gemma's hybrid cache), turns the cache off, or sets any of
    :data:`PER_CALL_SETTINGS`."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None:
        return False
    if generation_config.cache_implementation is not None or generation_config.use_cache is False:
        return False
    return all(getattr(generation_config, name, None) is None for name in PER_CALL_SETTINGS)


def growing_cache_for(model: torch.nn.Module, max_length: int | None = None) -> GrowingCache | None:
    """A :class:`GrowingCache` for ``model`` where transformers' own cache for it would be all plain
    ``DynamicLayer`` (full attention in every layer); None otherwise (sliding-window, chunked or
    linear-attention layers keep transformers' default cache, whose layers know their windows), and None
    where the model's generation config makes its own cache (:func:`continues_generation`)."""
    config = getattr(model, "config", None)
    if config is None or not continues_generation(model):
        return None
    layers = DynamicCache(config=config).layers
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return GrowingCache(max_length)
