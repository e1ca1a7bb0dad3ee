"""The KV cache of the `hf` engine's decode loop (decode.py): one preallocated row ("slot") per running
sequence, each written at its own position, and the shared prompt prefix computed once per call."""

from __future__ import annotations

import os
from typing import Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache


class SlotCache(Cache):
    """One KV row per running sequence, each written at its own position. Rows [0, active) are the
    running ones; `update` returns only those rows and only up to the longest of them."""

    def __init__(self, model_config, rows: int, max_len: int, dtype: torch.dtype, device: torch.device):
        super().__init__(layers=[])
        text = model_config.get_text_config(decoder=True)
        if any(t != "full_attention" for t in (getattr(text, "layer_types", None) or ["full_attention"])):
            raise ValueError(f"the hf engine's decode loop handles full-attention decoders; "
                             f"{text.model_type} has {set(text.layer_types)} layers (use rollout.engine=vllm)")
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (rows, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(text.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(text.num_hidden_layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.active = 0
        self.span = 0

    def __len__(self) -> int:
        return len(self.keys)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        n = key_states.shape[0]
        rows = torch.arange(n, device=key_states.device)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[rows, :, self.lengths[:n]] = key_states[:, :, 0]
        values[rows, :, self.lengths[:n]] = value_states[:, :, 0]
        return keys[:n, :, :self.span], values[:n, :, :self.span]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.span

    def load(self, row: int, prefill: DynamicCache, prefill_row: int, spans: list[tuple[int, int]]) -> None:
        """Copy one prefilled prompt into a slot: the [start, stop) spans of its prefill row (shared
        prefix, then the prompt's own tokens past the padding), packed from position 0."""
        length = 0
        for start, stop in spans:
            for layer, (k, v) in enumerate(_layers(prefill)):
                self.keys[layer][row, :, length:length + stop - start] = k[prefill_row, :, start:stop]
                self.values[layer][row, :, length:length + stop - start] = v[prefill_row, :, start:stop]
            length += stop - start
        self.lengths[row] = length

    def move(self, src: int, dst: int) -> None:
        length = int(self.lengths[src])
        for keys, values in zip(self.keys, self.values):
            keys[dst, :, :length] = keys[src, :, :length]
            values[dst, :, :length] = values[src, :, :length]
        self.lengths[dst] = length


def _layers(cache: DynamicCache):
    layers = []
    for layer in cache.layers:
        if not isinstance(layer, CacheLayerMixin):  # a linear-attention state: no keys or values to copy into a slot
            raise ValueError(f"rollout.engine=hf cannot decode this model: its cache has a {type(layer).__name__} "
                             "layer, without the keys and values the slot cache copies (use rollout.engine=vllm)")
        layers.append((layer.keys, layer.values))
    return layers


class SharedPrefix:
    """The KV of the tokens every prompt of the call starts with (system prompt, instructions), computed
    once and copied into each admitted prompt's cache, as vLLM's prefix caching does. Half of each
    offline-sample prompt (65 of 134 tokens) is this shared prefix."""

    def __init__(self, model, prompts: list[list[int]], device):
        length = len(os.path.commonprefix(prompts))
        self.length = min(length, min(len(p) for p in prompts) - 1)  # every prompt keeps a token to prefill
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.length > 0:
            ids = torch.tensor([prompts[0][:self.length]], device=device)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self.layers = _layers(out.past_key_values)

    def cache_for(self, rows: int) -> Optional[DynamicCache]:
        if not self.length:
            return None
        cache = DynamicCache()
        for layer, (k, v) in enumerate(self.layers):
            cache.update(k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous(), layer)
        return cache
