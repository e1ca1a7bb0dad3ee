"""The hf engine's continuation log-probabilities (log-likelihood scoring): batched, right-padded, one
shared forward pass for one-token choices, yet equal to scoring each request alone; the lm-eval prompt
and encoding they are fed."""

from __future__ import annotations

import pytest
import torch

from medmcqa_ray.config import ModelSection, RolloutSection
from medmcqa_ray.evaluation.loglik import choice_requests, choose, encode_pair, loglik_prompt

TINY = ModelSection(name="embedded:tiny-random-smollm2")


@pytest.fixture(scope="module")
def engine():
    from medmcqa_ray.rollout.hf_engine import HFEngine

    return HFEngine(TINY, RolloutSection(max_batch_rows=3), device="cpu")


def alone(engine, ctx: list[int], cont: list[int]) -> float:
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logprobs = torch.log_softmax(engine.model(input_ids=ids).logits.float(), dim=-1)[0]
    return float(sum(logprobs[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


def test_batched_scores_equal_each_request_alone(engine):
    tok = engine.tokenizer
    questions = [("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"]),
                 ("Drug of choice for absence seizures:", ["Ethosuximide", "Phenytoin", "Carbamazepine", "Lithium"])]
    requests = [pair for q, opts in questions for pair in choice_requests(q, opts, tok)]
    requests.append((tok.encode("The antidote of paracetamol poisoning is"), tok.encode(" N-acetylcysteine")))
    # A context longer than half a forward pass's token budget goes alone, the short ones together.
    requests.insert(4, (tok.encode("History: " + "the patient reports no complaints today. " * 160 + "Answer:"), tok.encode(" B")))
    assert len(requests[4][0]) > 1100
    assert all(len(cont) == 1 for _, cont in requests[:9]) and len(requests[9][1]) > 1
    scores = engine.continuation_logprobs(requests)  # 3 rows at most: shared contexts and own ones, in chunks
    expected = [alone(engine, ctx, cont) for ctx, cont in requests]
    assert scores == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="request 0 has an empty"):
        engine.continuation_logprobs([([], [1])])


def test_lm_eval_prompt_encoding_and_choice(engine):
    prompt = loglik_prompt("Q?", ["a", "b", "c", "d"])
    assert prompt == "Question: Q?\nChoices:\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    ctx, cont = encode_pair(engine.tokenizer, "Answer: ", "A")  # the trailing space moves to the target
    assert engine.tokenizer.decode(ctx) == "Answer:" and engine.tokenizer.decode(cont) == " A"
    assert choose([-3.0, -1.0, -1.0, -2.0]) == "B"  # the first of a tie, as numpy's argmax
