"""Sampling decode loop for the `hf` engine: continuous batching over a slot KV cache.

Why not `model.generate`: on the 2-core CPU, generating 8 prompts x 4 samples x 128 tokens with
`generate` kept every finished sample in the batch until the longest one ended (28% of the batch
slots did useful work), grew its KV cache by concatenation (22% of a decode step), and drew each
token with `torch.multinomial` (32 ms a step at 32 rows, as long as the model's matmuls). Here:

- every running sequence owns a row ("slot") of a preallocated KV cache (slot_cache.py) and writes at
  its own position, so sequences of different lengths need no padding, a finished one is replaced at once by
  the next waiting sample (prefilled, its KV copied in), and the batch stays full;
- the model is the same transformers model (adapter included) called step by step with explicit
  position ids and a 4D mask; the logits processors are transformers' own warpers;
- tokens are drawn by inverse-CDF from the processed probabilities: the same categorical
  distribution `multinomial` samples, at the cost of block sums and one short cumsum.

Logprobs are log-softmax of the RAW logits at the sampled token (see hf_engine.py), or of logits /
temperature with `Sampling.tempered_logprobs`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from medmcqa_ray.rollout.slot_cache import SharedPrefix, SlotCache
from medmcqa_ray.rollout.types import Sampling


T = TypeVar("T")
FORWARD_TOKENS = 2048
"""Padded tokens per prefill or scoring forward pass. On 2 CPU cores SmolLM2-135M's throughput is flat from
1,024 to 4,096 (8 to 32 rows of 128) and lower for one or two rows; a larger pass only holds more activations."""


def length_chunks(items: list[T], length: Callable[[T], int], max_rows: int,
                  max_tokens: int = FORWARD_TOKENS) -> list[list[T]]:
    """`items` in chunks of similar length, for right- or left-padded forward passes: sorted by length, then
    cut where rows x the longest would pass max_tokens (or rows pass max_rows). Few short items stay in one
    chunk; a long tail gets its own instead of padding everything to its length. Each chunk keeps the
    items' own order, so when one chunk holds them all nothing changes (a seeded sampler draws as before)."""
    chunks: list[list[int]] = []
    for i in sorted(range(len(items)), key=lambda i: length(items[i])):
        if chunks and len(chunks[-1]) < max_rows and (len(chunks[-1]) + 1) * length(items[i]) <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return [[items[i] for i in sorted(chunk)] for chunk in sorted(chunks, key=min)]


@dataclass
class Sequence:
    prompt_index: int
    sample_index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: Optional[str] = None


def warpers(sampling: Sampling) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if sampling.temperature not in (0, 1):
        procs.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        procs.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1:
        procs.append(TopPLogitsWarper(sampling.top_p))
    return procs


def draw(logits: torch.Tensor, sampling: Sampling, procs: LogitsProcessorList,
         generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens for a (rows, vocab) block of raw logits, and their raw-logit logprobs."""
    logits = logits.float()
    scored = logits / sampling.temperature if sampling.tempered_logprobs and sampling.temperature not in (0, 1) else logits
    if sampling.temperature == 0:
        tokens = logits.argmax(-1)
    elif procs:
        # The warpers() builds never read input_ids, and transformers types scores as the legacy
        # FloatTensor class, which a float32 tensor is at runtime but not to mypy.
        tokens = sample_inverse_cdf(procs(None, logits.clone()).softmax(-1), generator)  # type: ignore[arg-type]
    else:
        # Plain temperature-1 sampling: exp(logits - max) is both the unnormalised distribution the
        # sampler needs and the sum behind the logsumexp, one pass over the vocabulary for both.
        top = logits.amax(-1, keepdim=True)
        weights = (logits - top).exp_()
        tokens = sample_inverse_cdf(weights, generator)
        lse = top.squeeze(-1) + weights.sum(-1).log()
        return tokens, logits.gather(-1, tokens[:, None]).squeeze(-1) - lse
    return tokens, scored.gather(-1, tokens[:, None]).squeeze(-1) - scored.logsumexp(-1)


def sample_inverse_cdf(weights: torch.Tensor, generator: Optional[torch.Generator], block: int = 256) -> torch.Tensor:
    """One index per row with probability proportional to `weights` (rows, vocab), by inverse CDF in
    two levels: pick a block of `block` tokens from the block sums, then a token inside it. The same
    categorical draw as a cumsum over the whole vocabulary, but a row-wise cumsum over 49k entries is
    a sequential scan (21 ms a step at 128 rows here) where the block sums vectorise. `right=True`
    never lands on a zero-weight entry, so tokens removed by top-k/top-p are never drawn."""
    rows, vocab = weights.shape
    pad = (-vocab) % block
    blocks = (torch.nn.functional.pad(weights, (0, pad)) if pad else weights).view(rows, -1, block)
    block_cdf = blocks.sum(-1).cumsum(-1)
    u = torch.rand(rows, 1, generator=generator, device=weights.device) * block_cdf[:, -1:]
    # Rounding can put u a hair past a cumsum's end: take the last block / entry with weight then.
    b = torch.minimum(torch.searchsorted(block_cdf, u, right=True), _last_positive(block_cdf))
    before = torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks[torch.arange(rows, device=weights.device), b.squeeze(-1)].cumsum(-1)
    j = torch.searchsorted(inner, u - before, right=True)
    return (b * block + torch.minimum(j, _last_positive(inner))).squeeze(-1)


def _last_positive(cdf: torch.Tensor) -> torch.Tensor:
    """Per row, the index where a cumsum reaches its total: the last entry with non-zero weight."""
    return (cdf < cdf[:, -1:]).sum(-1, keepdim=True)


@dataclass
class DecodeStats:
    """Where a decode call's time went (benchmarks/rollout.py prints these)."""

    prompt_tokens: int = 0
    prefix_tokens_reused: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    row_steps: int = 0

    @property
    def mean_rows(self) -> float:
        return self.row_steps / max(self.steps, 1)


@torch.inference_mode()
def decode(model, prompts: list[list[int]], sampling: Sampling, eos_ids: set[int], pad_id: int,
           max_rows: int) -> tuple[list[Sequence], DecodeStats]:
    """Sample `sampling.n` completions for each tokenised prompt, at most `max_rows` sequences at a
    time. Returns them in (prompt, sample) order."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n = sampling.n if sampling.temperature else 1  # greedy samples are identical: decode one, copy it
    # No more slots than this call has sequences: the cache is zero-filled on every call, and 128 slots of
    # SmolLM2-135M for a GRPO step's 8 samples were 1.5 GB (0.4 s) in bf16.
    rows = max(min(max_rows, len(prompts) * n), n)
    cache = SlotCache(model.config, rows, max(len(p) for p in prompts) + sampling.max_new_tokens, dtype, device)
    procs = warpers(sampling)
    generator = torch.Generator(device=device).manual_seed(sampling.seed) if sampling.seed is not None else None
    eos = torch.tensor(sorted(eos_ids), device=device)
    stats = DecodeStats(prompt_tokens=sum(map(len, prompts)))
    clock = time.perf_counter()
    prefix = SharedPrefix(model, prompts, device)

    waiting = deque(range(len(prompts)))
    running: list[Sequence] = []
    pending = torch.empty(0, dtype=torch.long, device=device)  # each running row's last token, not yet cached
    done: list[Sequence] = []

    def admit() -> None:
        """Prefill as many waiting prompts as have free slots for their n samples; draw their first tokens."""
        take: list[int] = []
        while waiting and len(running) + (len(take) + 1) * n <= rows:
            take.append(waiting.popleft())
        # Prefilled in chunks of similar length: 64 evaluation prompts left-padded to their longest took
        # 19.4 s to prefill here, in chunks 12.2 s.
        for part in length_chunks(take, lambda i: len(prompts[i]) - prefix.length, rows):
            prefill(part)

    def prefill(take: list[int]) -> None:
        """Prefill these prompts in one left-padded pass over the shared prefix's KV."""
        nonlocal pending
        p = prefix.length
        suffixes = [prompts[i][p:] for i in take]
        width = max(map(len, suffixes))
        ids = torch.full((len(take), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(take), p + width), dtype=torch.long, device=device)
        mask[:, :p] = 1
        for j, suffix in enumerate(suffixes):  # left padding, so every prompt's last token is the last column
            ids[j, width - len(suffix):] = torch.tensor(suffix, device=device)
            mask[j, p + width - len(suffix):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=prefix.cache_for(len(take)),
                    use_cache=True, logits_to_keep=1)
        start = len(running)
        for j, (i, suffix) in enumerate(zip(take, suffixes)):
            for s in range(n):
                cache.load(len(running), out.past_key_values, j, [(0, p), (p + width - len(suffix), p + width)])
                running.append(Sequence(i, s))
        stats.prefix_tokens_reused += p * len(take)
        tokens, logprobs = draw(out.logits[:, -1].repeat_interleave(n, 0), sampling, procs, generator)
        pending = torch.cat([pending, _record(running, start, tokens, logprobs, eos, sampling.max_new_tokens)])

    while waiting or running:
        # Finished rows leave; running rows from the end move into their slots, so rows [0, active)
        # stay dense and a move costs one row's copy, not a shift of everything behind it.
        alive = [r for r, seq in enumerate(running) if seq.finish_reason is None]
        if len(alive) < len(running):
            done.extend(seq for seq in running if seq.finish_reason is not None)
            order = list(range(len(running)))
            holes = [r for r in range(len(alive)) if running[r].finish_reason is not None]
            movers = [r for r in alive if r >= len(alive)]
            for dst, src in zip(holes, movers):
                cache.move(src, dst)
                order[dst] = src
            running = [running[r] for r in order[:len(alive)]]
            pending = pending[torch.tensor(order[:len(alive)], dtype=torch.long, device=device)]
        if waiting and len(running) + n <= rows:
            now = time.perf_counter()
            stats.decode_s += now - clock
            admit()
            clock = time.perf_counter()
            stats.prefill_s += clock - now
            continue  # new rows may have finished at their first token
        if not running:
            break
        active = len(running)
        stats.steps += 1
        stats.row_steps += active
        lengths = cache.lengths[:active]
        cache.span = int(lengths.max()) + 1
        slots = torch.arange(cache.span, device=device)
        mask = torch.where(slots[None, :] <= lengths[:, None], 0.0, torch.finfo(dtype).min).to(dtype)
        out = model(input_ids=pending[:, None], attention_mask=mask[:, None, None, :],
                    position_ids=lengths[:, None].clone(), past_key_values=cache, use_cache=True)
        cache.lengths[:active] += 1
        tokens, logprobs = draw(out.logits[:, -1], sampling, procs, generator)
        pending = _record(running, 0, tokens, logprobs, eos, sampling.max_new_tokens)
    stats.decode_s += time.perf_counter() - clock

    done.sort(key=lambda s: (s.prompt_index, s.sample_index))
    if n < sampling.n:
        done = [Sequence(s.prompt_index, k, list(s.token_ids), list(s.logprobs), s.finish_reason)
                for s in done for k in range(sampling.n)]
    return done, stats


def _record(running: list[Sequence], start: int, tokens: torch.Tensor, logprobs: torch.Tensor,
            eos: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Append one sampled token to rows [start, start+len(tokens)) and mark the ones that finished."""
    stops = torch.isin(tokens, eos).tolist()
    for seq, token, lp, stop in zip(running[start:], tokens.tolist(), logprobs.tolist(), stops):
        seq.token_ids.append(token)
        seq.logprobs.append(lp)
        if stop:
            seq.finish_reason = "stop"
        elif len(seq.token_ids) >= max_new_tokens:
            seq.finish_reason = "length"
    return tokens

