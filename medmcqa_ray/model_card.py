"""The README.md of an exported model, in the Hugging Face hub's format: YAML front matter (base model,
library, licence, tags, datasets), then how to prompt it, the base model, the data and its licence, the
training settings, and the eval table (both scorings with their 95% intervals, and the floors) from the
eval folder's summary.json. What the card cannot vouch for it says: no evaluation yet, or one made of
another adapter or config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import yaml

from medmcqa_ray.config import Config, resolved_dict
from medmcqa_ray.embedded import HUB_ORIGIN
from medmcqa_ray.evaluation.scores import EvalSummary
from medmcqa_ray.evaluation.summary import read_summary
from medmcqa_ray.formatting import LETTERS, system_message, user_message
from medmcqa_ray.layout import layout

MEDMCQA_HUB = "openlifescienceai/medmcqa"
MEDMCQA_LICENCE = ("MedMCQA (Pal et al., CHIL 2022): MIT licence in the official release "
                   "(https://github.com/medmcqa/medmcqa); its Hugging Face card states Apache-2.0")
DATA = {
    "sample": f"the MedMCQA sample bundled with medmcqa-ray (real MedMCQA rows). Licence: {MEDMCQA_LICENCE}.",
    "hub": f"MedMCQA from the Hugging Face hub. Licence: {MEDMCQA_LICENCE}.",
    "local": f"local files in MedMCQA's layout. Licence: that of those files (for MedMCQA itself: {MEDMCQA_LICENCE}).",
    "synthetic": ("medmcqa-ray's synthetic questions, written for this project in MedMCQA's schema: NOT MedMCQA "
                  "(textbook facts asked in templates; validation asks them in unseen phrasings). Licence: "
                  "Apache-2.0, as medmcqa-ray."),
}


def base_model_id(cfg: Config) -> Optional[str]:
    """The hub id of the base model, when it has one (a hub id, or an embedded copy of a hub model)."""
    name = cfg.model.name
    if name in HUB_ORIGIN:
        return HUB_ORIGIN[name][0]
    return None if name.startswith("embedded:") or Path(name).exists() else name


def base_licence(cfg: Config, base_path: Path) -> str:
    """The base model's licence: known for the embedded models, else the `license` of its own card where
    that card is on disk (a local folder, the hub cache), else `other` (the card says to look)."""
    if cfg.model.name in HUB_ORIGIN:
        return HUB_ORIGIN[cfg.model.name][1]
    if cfg.model.name.startswith("embedded:"):
        return "apache-2.0"  # random weights and SmolLM2's tokenizer, built by this package
    card = base_path / "README.md"
    if not card.is_file() and base_model_id(cfg):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(cfg.model.name, "README.md", revision=cfg.model.revision)
        card = Path(cached) if isinstance(cached, str) else card
    if card.is_file() and card.read_text().startswith("---"):
        front = yaml.safe_load(card.read_text().split("---", 2)[1]) or {}
        if isinstance(front.get("license"), str):
            return front["license"]
    return "other"


def front_matter(cfg: Config, head: str, licence: str) -> str:
    meta: dict = {}
    if base := base_model_id(cfg):
        meta["base_model"] = base
    meta |= {"library_name": "transformers", "license": licence, "pipeline_tag": "text-generation",
             "language": ["en"], "tags": ["medmcqa-ray", "medical", "multiple-choice", "lora", "merged", head]}
    if cfg.data.source in ("sample", "hub"):
        meta["datasets"] = [cfg.data.hub_id if cfg.data.source == "hub" else MEDMCQA_HUB]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def usage(cfg: Config) -> list[str]:
    m = cfg.format.markers
    example = user_message("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin B1", "Vitamin C", "Vitamin D"], cfg.format)
    messages = [{"role": "system", "content": system_message(cfg.format)}, {"role": "user", "content": example}]
    return ["## Use", "",
            f"Ask a question with four options (A-D) in the chat format below, then add `{m.reasoning_start}` after the "
            f"chat template's generation prompt: the model reasons, closes with `{m.reasoning_end}`, and answers "
            f"`{m.solution_start}X{m.solution_end}`. `generation_config.json` decodes greedily, as the evaluation did.", "",
            "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
            'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")',
            f"messages = {json.dumps(messages, indent=4, ensure_ascii=False)}",
            f"prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + {m.reasoning_start!r}",
            'inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")',
            "output = model.generate(**inputs)",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```", "", "vLLM serves the folder as it is: `vllm serve THIS_FOLDER` (or `vllm.LLM(model=\"THIS_FOLDER\")`). It takes "
            "the token budget and end tokens from `generation_config.json` but samples unless asked: pass `temperature=0` "
            "for the greedy answers evaluated below.", ""]


def base_section(cfg: Config, dtype: str, licence: str) -> list[str]:
    name = base_model_id(cfg) or cfg.model.name
    revision = f" (revision `{cfg.model.revision}`)" if cfg.model.revision else ""
    return ["## Base model", "", f"`{name}`{revision}, licence `{licence}`" + (" (see the base model's card)" if licence == "other" else "")
            + f". The adapter was merged with PEFT's `merge_and_unload` in {dtype}, the weights' dtype here.", ""]


def training_section(cfg: Config, head: Literal["sft", "grpo"], adapter: Path, adapter_config: dict) -> list[str]:
    """What trained the adapter: the stage manifests' figures (when they describe this adapter) and the
    config sections of the stages behind it."""
    from medmcqa_ray.training import grpo, sft

    lines = ["## Training", "", f"Data: {DATA[cfg.data.source]}", "",
             f"LoRA (from the adapter): r={adapter_config.get('r')}, alpha={adapter_config.get('lora_alpha')}, "
             f"targets {', '.join(sorted(adapter_config.get('target_modules') or []))}.", ""]
    stages: list[sft.SFTStage | grpo.GRPOStage] = [sft.STAGE] + ([grpo.STAGE] if head == "grpo" else [])
    for stage in stages:
        m = stage.previous(cfg)
        own = layout(cfg).adapter(stage.name)
        # The manifest beside this pipeline's checkpoint describes it, wherever output_dir has moved since.
        if m is None or (own != layout(cfg).trained_adapter(stage.name) and Path(m.adapter) != own):
            lines.append(f"- {stage.name}: no {stage.name} manifest in this output_dir describes the adapter (one named "
                         f"by adapters.{stage.name}, or an older run): the settings below are the config's, maybe not its.")
            continue
        if isinstance(m, sft.SFTManifest):
            figures = f"loss {_number(m.first_loss)} -> {_number(m.last_loss)} over {m.rows} train rows"
        else:
            figures = f"reward `correct` {_number(m.first_correct)} -> {_number(m.last_correct)}"
        same = "" if m.config_hash == stage.cache_key(cfg) else " (trained with other settings than those below: its manifest's config hash differs)"
        lines.append(f"- {stage.name}: {m.steps} steps, {figures}{same}.")
    sections = resolved_dict(cfg)
    shown = {s.name: sections[s.name] for s in stages} | ({"rewards": sections["rewards"]} if head == "grpo" else {})
    return lines + ["", "Settings (medmcqa-ray config):", "", "```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", ""]


def _number(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3f}"


def _fraction(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1%}"


def eval_table(summary: EvalSummary, head: str) -> list[str]:
    lines = ["| head | scoring | n | accuracy | 95% CI (Wilson) | format compliance | p vs always-majority |",
             "|---|---|---:|---:|---|---:|---:|"]
    for name, scorings in summary.heads.items():
        for scoring, s in scorings.items():
            label = f"**{name}** (this model)" if name == head else name
            p = "-" if s.p_vs_majority is None else f"{s.p_vs_majority:.3g}"
            lines.append(f"| {label} | {scoring} | {s.n} | {s.accuracy:.1%} | [{s.ci95[0]:.1%}, {s.ci95[1]:.1%}] | "
                         f"{_fraction(s.format_compliance)} | {p} |")
    floor = summary.floors.majority_letter
    return lines + ["", f"Floors: a uniform guess {summary.floors.uniform:.0%}; always answering {floor.letter} "
                        f"({floor.source}) {floor.accuracy:.1%} [{floor.ci95[0]:.1%}, {floor.ci95[1]:.1%}] of these {floor.n} questions."]


def eval_section(cfg: Config, head: Literal["sft", "grpo"], adapter: Path) -> list[str]:
    from medmcqa_ray.evaluation.stage import EVAL

    lines = ["## Evaluation", ""]
    summary = read_summary(layout(cfg).eval_dir)
    if summary is None or head not in summary.heads:
        return lines + [f"Not evaluated yet: `medmcqa-ray eval` scores the {head} head; export again to put its table here.", ""] + (
            eval_table(summary, head) + [""] if summary else [])
    split = f"file {Path(cfg.eval.input).name}" if cfg.eval.input else f"the {cfg.eval.split} split"
    lines.append(f"The {head} head (base model + this adapter, before the merge) on {split} "
                 f"({'MedMCQA' if cfg.data.source != 'synthetic' else 'synthetic, not MedMCQA'}): `generate` is greedy "
                 f"generation in the format above ({cfg.eval.max_new_tokens} new tokens at most), the answer read from "
                 f"the solution tag; `loglik` is lm-evaluation-harness's medmcqa prompt, the likeliest of "
                 f"{', '.join(f'` {x}`' for x in LETTERS)}.")
    m = EVAL.previous(cfg)
    if m is None or m.adapters.get(head) != str(adapter) or m.config_hash != EVAL.cache_key(cfg):
        lines.append("\n**Stale**: eval's manifest does not match this adapter and config; run `medmcqa-ray eval` again.")
    return lines + [""] + eval_table(summary, head) + [""]


def model_card(cfg: Config, head: Literal["sft", "grpo"], adapter: Path, adapter_sha: str, dtype: str, base_path: Path) -> str:
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    licence = base_licence(cfg, base_path)
    title = f"# {base_model_id(cfg) or cfg.model.name} + medmcqa-ray {head.upper()} adapter, merged"
    intro = (f"The base model with medmcqa-ray's {head} LoRA adapter merged into its weights: a plain transformers "
             "model (no PEFT needed) that answers medical multiple-choice questions, reasoning first. "
             f"Adapter sha256 (over its tensors) `{adapter_sha}`.")
    body = [title, "", intro, "", *usage(cfg), *base_section(cfg, dtype, licence),
            *training_section(cfg, head, adapter, adapter_config), *eval_section(cfg, head, adapter)]
    return front_matter(cfg, head, licence) + "\n" + "\n".join(body)
