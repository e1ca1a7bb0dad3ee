"""The hf engine's continuous-batching decode loop against transformers itself: same greedy tokens as
`generate`, logprobs of a plain forward pass, and the sampled distribution of the processed logits."""

import os

import pytest
import torch
from scipy.stats import chisquare
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

from medmcqa_ray.config import ModelSection
from medmcqa_ray.models import load_model, load_tokenizer
from medmcqa_ray.rollout.decode import decode, sample_inverse_cdf
from medmcqa_ray.rollout.types import Sampling

SYSTEM = "<|im_start|>system\nYou are a medical expert. Answer in as few words as the question needs.<|im_end|>\n<|im_start|>user\n"
QUESTIONS = ["Which vitamin prevents scurvy? One word.", "Explain in detail how the kidney filters blood.",
             "Is insulin a hormone? Yes or no.", "Which nerve supplies the deltoid muscle?", "Describe the heart."]


def chat_prompts(tok) -> list[list[int]]:
    return [tok(SYSTEM + q + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            for q in QUESTIONS]


@pytest.fixture(scope="module")
def tiny():
    """The random model: fast, with spread-out logits for the distribution tests (greedy, it only
    ever says a newline, so greedy equivalence is checked on the real model below)."""
    cfg = ModelSection(name="embedded:tiny-random-smollm2")
    model, tok = load_model(cfg, "cpu"), load_tokenizer(cfg)
    return model, tok, chat_prompts(tok), {tok.eos_token_id}


@pytest.fixture(scope="module")
def smollm():
    cfg = ModelSection(name="embedded:smollm2-135m-instruct")
    model, tok = load_model(cfg, "cpu"), load_tokenizer(cfg)
    return model, tok, chat_prompts(tok), {tok.eos_token_id}


def reference(model, prompt: list[int], steps: int, eos: set[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=steps, eos_token_id=sorted(eos), pad_token_id=0)
    ids = out[0, len(prompt):].tolist()
    stop = next((i for i, t in enumerate(ids) if t in eos), None)
    return ids if stop is None else ids[:stop + 1]


def forward_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    return logits.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1).tolist()


def test_greedy_matches_generate_through_refills_and_shared_prefix(smollm):
    """SmolLM2-135M-Instruct, two slots for five prompts: slots are refilled and compacted as answers
    end; the shared system prompt is prefilled once. Every completion is token for token what
    `generate` gives for its prompt alone, with the logprobs of a plain forward pass."""
    model, _, prompts, eos = smollm
    sequences, stats = decode(model, prompts, Sampling(n=1, temperature=0, max_new_tokens=24), eos, 0, max_rows=2)
    assert stats.prefix_tokens_reused == len(prompts) * len(os.path.commonprefix(prompts)) > 0
    assert [(s.prompt_index, s.sample_index) for s in sequences] == [(i, 0) for i in range(len(prompts))]
    finish = set()
    for seq, prompt in zip(sequences, prompts):
        assert seq.token_ids == reference(model, prompt, 24, eos)
        assert seq.logprobs == pytest.approx(forward_logprobs(model, prompt, seq.token_ids), abs=1e-4)
        finish.add(seq.finish_reason)
    assert finish == {"stop", "length"}  # both kinds of ending took place


def test_samples_follow_the_processed_distribution(tiny):
    """First tokens of 3,000 samples (temperature 0.7, top-k 5) against the probabilities transformers'
    own warpers give: a chi-square test, so a biased sampler fails it."""
    model, _, prompts, eos = tiny
    sampling = Sampling(n=3000, temperature=0.7, top_k=5, max_new_tokens=1, seed=3)
    sequences, _ = decode(model, prompts[:1], sampling, eos, 0, max_rows=64)
    with torch.no_grad():
        logits = model(torch.tensor(prompts[:1])).logits[:, -1].float()
    procs = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)])
    probs = procs(None, logits).softmax(-1)[0]
    support = probs.nonzero().squeeze(-1).tolist()
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in sequences]), minlength=probs.numel())
    assert counts.sum() == counts[support].sum() == 3000  # nothing outside the top 5
    kept = probs[support].double()  # float64: chisquare wants the totals to agree to 1.5e-8
    expected = (kept / kept.sum() * 3000).tolist()
    assert chisquare(counts[support].tolist(), expected).pvalue > 1e-3
    # Logprobs stay the raw policy's, not the tempered or truncated one.
    raw = logits.log_softmax(-1)[0]
    assert all(abs(s.logprobs[0] - raw[s.token_ids[0]].item()) < 1e-5 for s in sequences[:50])


def test_seed_fixes_samples_and_slot_count_does_not_matter_for_greedy(tiny):
    model, _, prompts, eos = tiny
    sampling = Sampling(n=3, temperature=1.0, max_new_tokens=8, seed=11)
    first, _ = decode(model, prompts, sampling, eos, 0, max_rows=6)
    again, _ = decode(model, prompts, sampling, eos, 0, max_rows=6)
    other, _ = decode(model, prompts, sampling.model_copy(update={"seed": 12}), eos, 0, max_rows=6)
    assert [s.token_ids for s in first] == [s.token_ids for s in again]
    assert [s.token_ids for s in first] != [s.token_ids for s in other]
    greedy = Sampling(n=1, temperature=0, max_new_tokens=8)
    wide, _ = decode(model, prompts, greedy, eos, 0, max_rows=64)
    narrow, _ = decode(model, prompts, greedy, eos, 0, max_rows=1)
    assert [s.token_ids for s in wide] == [s.token_ids for s in narrow]


def test_inverse_cdf_sampler_matches_the_categorical_distribution():
    """The two-level sampler against known probabilities on tokens that sit at block edges, in the
    ragged last block, and beside zero-weight tokens: chi-square, and zero-weight tokens never drawn."""
    vocab = 49152 + 17
    support = torch.tensor([0, 255, 256, 257, 1000, 30000, vocab - 1])
    probs = torch.tensor([0.05, 0.2, 0.1, 0.3, 0.05, 0.15, 0.15])
    weights = torch.zeros(vocab)
    weights[support] = probs * 3.0  # unnormalised on purpose
    draws = torch.cat([sample_inverse_cdf(weights.expand(500, -1), torch.Generator().manual_seed(k))
                       for k in range(40)])
    counts = torch.bincount(draws, minlength=vocab)
    assert counts[support].sum() == counts.sum() == 20000
    assert chisquare(counts[support].tolist(), (probs * 20000).tolist()).pvalue > 1e-3
