"""The `hf` rollout engine: transformers `generate`, batched with left padding, on CPU or GPU.

Logprobs come from the RAW logits of each step (`output_logits=True`), log-softmaxed, at the sampled
token: they are the policy's own probabilities, untouched by temperature, top-p, top-k or min-p, so
they compare directly with the learner's logprobs of the same tokens.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from medmcqa_ray.config import ModelConfig, RolloutConfig
from medmcqa_ray.models import load_model, load_tokenizer
from medmcqa_ray.rollout.engine import RolloutEngine
from medmcqa_ray.rollout.types import AdapterUpdate, Completion, Sampling

log = logging.getLogger(__name__)


class HFEngine(RolloutEngine):
    def __init__(self, model_cfg: ModelConfig, rollout_cfg: Optional[RolloutConfig] = None, device: Optional[str] = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_cfg)
        self.model = load_model(model_cfg, self.device)
        self._peft_config: Optional[dict] = None
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)

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
        if missing or getattr(result, "unexpected_keys", []):
            raise ValueError(f"adapter v{update.version} does not fit this model: missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]}")
        self.policy_version = update.version

    # --------------------------------------------------------------------------------- generation

    def _generation_kwargs(self, sampling: Sampling) -> dict:
        greedy = sampling.temperature == 0
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n, do_sample=not greedy,
            eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True, output_logits=True,
        )
        if not greedy:
            # Explicit values: a model's generation_config may carry its own top_k (often 50).
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                          min_p=sampling.min_p or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _shared_prefill(self, enc: dict, n: int) -> dict:
        """Run each prompt through the model once and give its n samples copies of the KV cache.
        `num_return_sequences` would prefill every prompt n times, which here cost 4x: 6.8 s of a
        31 s call at n=4. The sampled distribution is the same; only the prompt's compute is shared."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
        prefix = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                            use_cache=True)
        cache = prefix.past_key_values
        cache.batch_repeat_interleave(n)
        return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0),
                "past_key_values": cache}

    @torch.inference_mode()
    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]:
        if not prompts:
            return []
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs = self._generation_kwargs(sampling)
        inputs = dict(enc)
        if sampling.n > 1 and enc["input_ids"].shape[1] > 1:
            inputs, kwargs = self._shared_prefill(enc, sampling.n), kwargs | {"num_return_sequences": 1}
        generator_state = None
        if sampling.seed is not None:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(sampling.seed)
        try:
            out = self.model.generate(**inputs, **kwargs)
        finally:
            if generator_state is not None:
                torch.random.set_rng_state(generator_state)
        new_tokens = out.sequences[:, enc["input_ids"].shape[1]:]
        # Step by step: stacking (rows x steps x vocab) would cost hundreds of MB at 32 x 128 x 49k.
        chosen = torch.stack([step.float().log_softmax(-1).gather(-1, new_tokens[:, t:t + 1]).squeeze(-1)
                              for t, step in enumerate(out.logits)], dim=1)
        results: list[list[Completion]] = [[] for _ in prompts]
        for row in range(new_tokens.shape[0]):
            ids = new_tokens[row].tolist()
            stop = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
            length = len(ids) if stop is None else stop + 1  # keep the EOS token: it was sampled too
            prompt_index, sample_index = divmod(row, sampling.n)
            results[prompt_index].append(Completion(
                prompt_index=prompt_index, sample_index=sample_index,
                text=self.tokenizer.decode(ids[:length], skip_special_tokens=True),
                token_ids=ids[:length], logprobs=chosen[row, :length].tolist(),
                finish_reason="length" if stop is None else "stop", policy_version=self.policy_version,
            ))
        return results

    def health(self) -> dict[str, Any]:
        return super().health() | {"device": self.device, "adapter": self._peft_config is not None}
