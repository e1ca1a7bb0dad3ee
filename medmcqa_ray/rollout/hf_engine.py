"""The `hf` rollout engine: a transformers model (plus LoRA adapter) on CPU or GPU, sampled by the
continuous-batching loop in decode.py.

Logprobs come from the RAW logits of each step, log-softmaxed, at the sampled token: they are the
policy's own probabilities, untouched by temperature, top-p or top-k, so they compare
directly with the learner's logprobs of the same tokens (`Sampling.tempered_logprobs` asks for
logits / temperature instead, the policy TRL's GRPO learner scores).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from medmcqa_ray.config import ModelSection, RolloutSection
from medmcqa_ray.models import load_model, load_tokenizer
from medmcqa_ray.rollout.decode import FORWARD_TOKENS, DecodeStats, decode, length_chunks
from medmcqa_ray.rollout.engine import RolloutEngine
from medmcqa_ray.rollout.types import AdapterUpdate, Completion, EngineHealth, Sampling


class HFEngine(RolloutEngine):
    last_stats: Optional[DecodeStats] = None
    scores_continuations = True

    def __init__(self, model_cfg: ModelSection, rollout_cfg: Optional[RolloutSection] = None, device: Optional[str] = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_cfg)
        self.model = load_model(model_cfg, self.device)
        self._peft_config: Optional[dict] = None
        self.max_rows = (rollout_cfg or RolloutSection()).max_batch_rows
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)

    # ----------------------------------------------------------------------------------- adapters

    def load_adapter(self, update: AdapterUpdate, weights: dict[str, Any]) -> None:
        from peft import get_peft_config, get_peft_model, set_peft_model_state_dict

        if update.peft_config != self._peft_config:
            # A new adapter shape (rank, targets): rebuild the LoRA layers on the untouched base.
            base = self.model.unload() if hasattr(self.model, "unload") else self.model
            self.model = get_peft_model(base, get_peft_config(dict(update.peft_config))).eval()
            self._peft_config = dict(update.peft_config)
        result = set_peft_model_state_dict(self.model, weights)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        unexpected = list(getattr(result, "unexpected_keys", []))
        if missing or unexpected:
            raise ValueError(f"adapter v{update.version} does not fit this model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        self.policy_version = update.version

    def use_base(self) -> None:
        if self._peft_config is not None:
            self.model = self.model.unload()  # the LoRA layers out, the base weights as they were
            self._peft_config = None
        self.policy_version = -1

    # --------------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        if not prompts:
            return []
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty:
            raise ValueError(f"prompt {empty[0]} has no tokens")
        sequences, self.last_stats = decode(self.model, prompts, sampling, self.eos_ids, self.pad_id, self.max_rows)
        results: list[list[Completion]] = [[] for _ in prompts]
        for seq in sequences:
            results[seq.prompt_index].append(Completion(
                prompt_index=seq.prompt_index, sample_index=seq.sample_index,
                text=self.tokenizer.decode(seq.token_ids, skip_special_tokens=True),
                token_ids=seq.token_ids, logprobs=seq.logprobs, finish_reason=seq.finish_reason,
                policy_version=self.policy_version,
            ))
        return results

    @torch.inference_mode()
    def continuation_logprobs(self, requests: list[tuple[list[int], list[int]]]) -> list[float]:
        """Right-padded batches of at most rollout.max_batch_rows sequences (right padding leaves every
        real token's position as in an unpadded pass). Requests that share a context and continue it by
        one token each (multiple-choice letters) share one forward pass of the context."""
        if bad := [i for i, (ctx, cont) in enumerate(requests) if not ctx or not cont]:
            raise ValueError(f"request {bad[0]} has an empty context or continuation")
        out = [0.0] * len(requests)
        # One forward sequence per group: a context shared by one-token continuations, or one request's
        # context + continuation (its last token is predicted, never fed).
        by_context: dict[tuple, list[int]] = {}
        for i, (ctx, cont) in enumerate(requests):
            by_context.setdefault(("shared", *ctx) if len(cont) == 1 else ("own", i), []).append(i)
        groups = [(requests[idx[0]][0] + requests[idx[0]][1][:-1], idx) for idx in by_context.values()]
        # In similar lengths: 64 validation questions in arrival order, each chunk padded to its longest,
        # took 20.4 s here; sorted, 9.5 s.
        for chunk in length_chunks(groups, lambda g: len(g[0]), self.max_rows, FORWARD_TOKENS):
            width = max(len(seq) for seq, _ in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (seq, _) in enumerate(chunk):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            # The logits at position p predict token p + 1: a continuation's tokens are predicted from its
            # context's last position on. Only those positions go through the LM head (the vocabulary
            # projection is a fifth of a 135M model's forward pass over every position), and only they
            # are normalised, in fp32.
            wanted = sorted({p for _, idx in chunk for i in idx
                             for p in range(len(requests[i][0]) - 1, len(requests[i][0]) - 1 + len(requests[i][1]))})
            column = {p: c for c, p in enumerate(wanted)}
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                logits_to_keep=torch.tensor(wanted, device=self.device)).logits
            for row, (seq, idx) in enumerate(chunk):
                for i in idx:
                    ctx, cont = requests[i]
                    at = logits[row, [column[p] for p in range(len(ctx) - 1, len(ctx) - 1 + len(cont))]].float().log_softmax(dim=-1)
                    out[i] = float(at[torch.arange(len(cont)), torch.tensor(cont)].sum())
        return out

    def health(self) -> EngineHealth:
        return super().health().model_copy(update={"adapter": self._peft_config is not None})
