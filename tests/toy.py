"""The toy task with a learnable rule, and SmolLM2-135M-Instruct fine-tuned on it once per session:
what the GRPO learning test and the sweep test start from."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grove", "harbor", "island", "jade", "kettle"]


def toy_data(folder: Path) -> Path:
    """The learnable rule: train rows (SFT) have answers spread over A-D; every validation row's answer
    is C. GRPO trains on validation, so the policy must learn to prefer C, which SFT did not teach."""
    rng = random.Random(0)
    folder.mkdir(parents=True)

    def row(split: str, i: int, cop: int) -> str:
        opts = rng.sample(WORDS, 4)
        return json.dumps({"id": f"{split}-{i}", "question": f"Toy question {i}: which option?", "opa": opts[0],
                           "opb": opts[1], "opc": opts[2], "opd": opts[3], "cop": cop, "choice_type": "single",
                           "exp": None, "subject_name": "Toy", "topic_name": "toy"}) + "\n"

    (folder / "train.jsonl").write_text("".join(row("train", i, rng.randrange(4)) for i in range(160)))
    (folder / "validation.jsonl").write_text("".join(row("validation", i, 2) for i in range(64)))
    return folder


def toy_overrides(data: Path) -> list[str]:
    """SmolLM2 on the toy data, a 16-step SFT that teaches the format, GRPO on the always-C split."""
    return ["model.name=embedded:smollm2-135m-instruct", "data.source=local", f"data.path={data}", "data.layout=hf",
            "scaling.resources_per_worker={CPU: 2}", "rollout.num_cpus_per_actor=2", "sft.max_steps=16",
            "sft.learning_rate=0.0005", "sft.lora.r=16", "sft.lora.alpha=32", "grpo.split=validation",
            "grpo.prompts_per_step=2", "grpo.num_generations=4", "grpo.max_completion_length=32",
            "grpo.learning_rate=0.0002"]
