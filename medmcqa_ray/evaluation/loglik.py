"""Log-likelihood scoring as lm-evaluation-harness's `medmcqa` task (0.4.13) does it, so that our figures
stand beside published MedMCQA numbers: its zero-shot prompt ("Question: ...\\nChoices:\\nA. ...\\nAnswer:",
no chat template), the four targets " A" .. " D" (its target delimiter, a space, then the letter), each
scored as the summed log-probability of its tokens after the prompt, and the highest one chosen (the
first on a tie, as numpy's argmax). Its `acc_norm` divides by the target's length in bytes, the same
for every target here, so it always equals `acc`.

Tokenisation follows lm-eval's causal-model path: trailing spaces of the context move to the
continuation, the pair is encoded whole with the tokenizer's default special tokens, and the
continuation is what follows the context's own encoding.
"""

from __future__ import annotations

from typing import Any

from medmcqa_ray.formatting import LETTERS

TARGET_DELIMITER = " "


def loglik_prompt(question: str, options: list[str]) -> str:
    prompt = "Question: " + question + "\nChoices:\n"
    for letter, option in zip(LETTERS, options):
        prompt += f"{letter}. {option}\n"
    return prompt + "Answer:"


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def choice_requests(question: str, options: list[str], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """One (context, continuation) pair of token ids per option, in letter order."""
    context = loglik_prompt(question, options)
    return [encode_pair(tokenizer, context, TARGET_DELIMITER + letter) for letter in LETTERS[:len(options)]]


def choose(logprobs: list[float]) -> str:
    return LETTERS[max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))]
