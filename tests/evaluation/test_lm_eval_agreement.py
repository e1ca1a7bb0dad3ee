"""Our log-likelihood scoring beside lm-evaluation-harness 0.4.13 itself: its `medmcqa` task (the task file
and prompt function as installed, pointed at local JSON rows instead of the hub), the embedded
SmolLM2-135M-Instruct, 200 real validation questions. The same choice on at least 99% of them and
accuracy within half a point, or our figures cannot stand beside published ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medmcqa_ray.pipeline import run_stage

from ..conftest import REPO

pytestmark = pytest.mark.slow
ROWS = 200


def lm_eval_task(folder: Path, rows: Path) -> str:
    """lm-eval's own medmcqa task, renamed and reading `rows` (HF layout, JSON lines)."""
    import lm_eval.tasks.medmcqa as installed

    source = Path(installed.__path__[0])
    text = (source / "medmcqa.yaml").read_text()
    config = yaml.safe_load(text.replace("!function utils_medmcqa.doc_to_text", "FUNCTION"))
    config |= {"task": "medmcqa_local", "dataset_path": "json", "dataset_kwargs": {"data_files": {"validation": str(rows)}},
               "training_split": None}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils_medmcqa.py").write_text((source / "utils_medmcqa.py").read_text())
    dumped = yaml.safe_dump(config, sort_keys=False).replace("FUNCTION", "!function utils_medmcqa.doc_to_text")
    (folder / "medmcqa_local.yaml").write_text(dumped)
    return "medmcqa_local"


def test_loglik_scoring_agrees_with_lm_eval(ray_session, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from medmcqa_ray.config import load_config
    from medmcqa_ray.data.sources import SAMPLE_DIR
    from medmcqa_ray.models import local_model_path

    out = tmp_path / "out"
    cfg = load_config([REPO / "configs" / "ci.yaml"], [
        f"output_dir={out}", "data.source=sample", "data.splits=[validation]", "model.name=embedded:smollm2-135m-instruct",
        "model.dtype=float32", "eval.scoring=loglik", f"eval.limit={ROWS}", "eval.batch_size=16"])
    for stage in ("download", "prep", "baseline"):
        run_stage(stage, cfg)
    ours = {r["id"]: r for r in map(json.loads, (out / "eval" / "heads" / "base.jsonl").read_text().splitlines())}
    assert len(ours) == ROWS

    # lm-eval on the same questions, as released (its prompt from the raw fields, not our cleaned ones).
    raw = [json.loads(line) for line in (SAMPLE_DIR / "validation.jsonl").read_text().splitlines()]
    rows = tmp_path / "validation.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in raw if r["id"] in ours))
    task = lm_eval_task(tmp_path / "tasks", rows)
    result = simple_evaluate(model="hf", model_args=f"pretrained={local_model_path(cfg.model)},dtype=float32,device=cpu",
                             tasks=[task], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                             batch_size=16, log_samples=True)
    theirs = {s["doc"]["id"]: "ABCD"[max(range(4), key=lambda i: (s["filtered_resps"][i][0], -i))]
              for s in result["samples"][task]}
    assert set(theirs) == set(ours)

    same = sum(theirs[i] == ours[i]["loglik_choice"] for i in ours) / len(ours)
    our_acc = sum(r["loglik_correct"] for r in ours.values()) / len(ours)
    their_acc = result["results"][task]["acc,none"]
    summary = {"rows": len(ours), "same_choice": same, "ours": our_acc, "lm_eval": their_acc,
               "differ": {i: (ours[i]["loglik_choice"], theirs[i]) for i in ours if theirs[i] != ours[i]["loglik_choice"]}}
    (tmp_path / "agreement.json").write_text(json.dumps(summary, indent=1))  # for a failing assertion's reader
    assert same >= 0.99, summary
    assert abs(our_acc - their_acc) <= 0.005, summary
