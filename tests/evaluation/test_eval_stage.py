"""baseline and eval on the tiny model: files, numbers, heads, and clear errors for bad inputs."""

import json
from pathlib import Path

import pytest

from medmcqa_ray.errors import StageError
from medmcqa_ray.evaluation.metrics import mcnemar_p, wilson_ci
from medmcqa_ray.pipeline import run_stage


def test_wilson_and_mcnemar():
    lo, hi = wilson_ci(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(0, 0) == (0.0, 0.0)
    assert mcnemar_p([True] * 10, [True] * 10) == 1.0
    assert mcnemar_p([False] * 12, [True] * 12) == pytest.approx(2 / 2**12)


def save_adapter(model_cfg, folder: Path, hidden_override=None):
    from peft import LoraConfig, get_peft_model

    from medmcqa_ray.models import load_model

    model = load_model(model_cfg, "cpu")
    if hidden_override:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(vocab_size=model.config.vocab_size, hidden_size=hidden_override,
                                             intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=2))
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    from medmcqa_ray.config import load_config

    from ..conftest import REPO

    out = tmp_path_factory.mktemp("eval")
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={out}"])
    run_stage("download", cfg)
    run_stage("prep", cfg)
    return cfg


@pytest.mark.slow
def test_baseline_then_eval_with_an_sft_adapter(prepared):
    from medmcqa_ray.config import load_config

    from ..conftest import REPO

    cfg = prepared
    m = run_stage("baseline", cfg)
    out = Path(cfg.output_dir) / "eval"
    summary = json.loads((out / "summary.json").read_text())
    base = summary["heads"]["base"]["generate"]
    assert base["n"] == 12 and 0 <= base["accuracy"] <= 1 and base["ci95"][0] <= base["accuracy"] <= base["ci95"][1]
    assert set(base["per_subject"]) and "format_compliance" in base
    lines = [json.loads(x) for x in (out / "eval_results.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {"id", "subject", "prompt", "generation", "extracted", "gold", "correct"} <= set(lines[0])
    assert all(r["prompt"].endswith("<start_working_out>") for r in lines)
    # A random model never closes its tags: incorrect and non-compliant, not a crash.
    assert base["format_compliance"] == 0.0
    # Log-likelihood (eval.scoring=both, the default): every row, the letter with the highest of four logprobs.
    loglik = summary["heads"]["base"]["loglik"]
    assert loglik["n"] == 12 and sum(loglik["choices"].values()) == 12
    for r in lines:
        assert len(r["logliks"]) == 4 and all(x < 0 for x in r["logliks"])
        assert r["loglik_choice"] == "ABCD"[r["logliks"].index(max(r["logliks"]))]
        assert r["loglik_correct"] == (r["loglik_choice"] == r["gold"])
    floors = summary["floors"]
    assert floors["uniform"] == 0.25 and floors["majority_letter"]["letter"] in "ABCD"
    assert floors["majority_letter"]["source"] == "train's most frequent" and floors["majority_letter"]["n"] == 12
    assert "floors: uniform guess 25.0%" in m.table() and "loglik" in m.table()
    assert (out / "accuracy.png").stat().st_size > 1000
    assert run_stage("baseline", cfg).skipped

    baseline = (out / "heads" / "base.jsonl").read_text()
    save_adapter(cfg.model, Path(cfg.output_dir) / "checkpoints" / "sft")
    m = run_stage("eval", cfg)
    assert m.heads == ["base", "sft"]  # no grpo adapter yet: that head is skipped
    # One engine scores both heads: it checks the SFT adapter at start, then takes it off for the base
    # head, whose answers are the baseline's to the last logprob.
    assert (out / "heads" / "base.jsonl").read_text() == baseline
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["heads"]) == {"base", "sft"}
    assert all("p_vs_base" in summary["heads"]["sft"][scoring] for scoring in ("generate", "loglik"))

    # Generation on the first rows only; log-likelihood alone.
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={cfg.output_dir}", "eval.generate_limit=5",
                                                        "eval.heads=[base]", f"eval.out_dir={out.parent / 'e-limit'}"])
    summary = run_stage("eval", cfg).summary
    assert summary.heads["base"]["generate"].n == 5 and summary.heads["base"]["loglik"].n == 12
    cfg = load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={cfg.output_dir}", "eval.scoring=loglik",
                                                        "eval.heads=[base]", f"eval.out_dir={out.parent / 'e-loglik'}"])
    summary = run_stage("eval", cfg).summary
    assert set(summary.heads["base"]) == {"loglik"}


@pytest.mark.slow
def test_bad_adapters_and_empty_sets_say_so(prepared, tmp_path):
    from medmcqa_ray.config import load_config

    from ..conftest import REPO

    base = [REPO / "configs" / "ci.yaml"]
    cfg = load_config(base, [f"output_dir={prepared.output_dir}", f"adapters.sft={tmp_path}", "eval.heads=[sft]",
                             f"eval.out_dir={tmp_path / 'e1'}"])
    with pytest.raises(StageError, match=f"adapters.sft: {tmp_path} is not a PEFT adapter"):
        run_stage("eval", cfg)

    other = save_adapter(prepared.model, tmp_path / "other", hidden_override=32)
    cfg = load_config(base, [f"output_dir={prepared.output_dir}", f"adapters.sft={other}", "eval.heads=[sft]",
                             f"eval.out_dir={tmp_path / 'e2'}"])
    with pytest.raises(Exception) as e:
        run_stage("eval", cfg)
    from medmcqa_ray.errors import user_error

    assert f"adapter {other} does not fit model" in str(user_error(e.value))

    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "t1", "prompt": [], "answer_label": None}) + "\n")
    cfg = load_config(base, [f"output_dir={prepared.output_dir}", f"eval.input={empty}", f"eval.out_dir={tmp_path / 'e3'}"])
    with pytest.raises(StageError, match="no labelled rows: nothing to evaluate"):
        run_stage("baseline", cfg)
