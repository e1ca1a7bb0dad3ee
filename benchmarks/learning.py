"""Does our GRPO learn? SFT, then GRPO synchronous and one-step-off, on the synthetic sample, scored on its
held-out validation questions.

    python benchmarks/learning.py [--model embedded:smollm2-135m-instruct] [--sft-steps 120] [--grpo-steps 24]
                                  [--prompts 4] [--n 8] [--tokens 48] [--lr 1e-4] [--eval-limit 321]
                                  [--modes sync,one_step_off] [--set KEY=VALUE ...] [--out FILE] [--keep DIR]

The defaults are the best settings docs/learning.md found (run E7): SFT long enough that the letters follow
the reasoning, then GRPO at 1e-4 with dynamic sampling and the `consistent` reward on (WEIGHTS).

On real MedMCQA a 135M model has no knowledge to show (every head sits at the always-A floor,
docs/learning.md). The synthetic sample (`data.source=synthetic`) can show learning: its validation
questions ask the training facts with templates the model never trained on (321: three phrasings of each
of 107 facts). One SFT adapter is made (configs/local.yaml with the sizes above) and its head scored once;
each mode runs GRPO from it into its own output folder, and the eval stage scores the grpo head there by
generation (greedy, the reasoning format) on the same questions: accuracy with its Wilson interval,
McNemar's exact p of GRPO against its SFT start, the same comparison counted by fact (`by_fact`: the three
phrasings of a fact are not independent), the per-step reward curves, and each head's letter binding (how
often its reasoning names the gold option, how often its letter is the option its reasoning names). Prints
JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from json_report import print_report  # noqa: E402  (this folder)

from medmcqa_ray import metric_names as M  # noqa: E402
from medmcqa_ray.config import Config, load_config  # noqa: E402
from medmcqa_ray.data.formatted_rows import read_formatted  # noqa: E402
from medmcqa_ray.data.synthetic_sample import fact_of  # noqa: E402
from medmcqa_ray.evaluation.metrics import sign_test_p  # noqa: E402
from medmcqa_ray.formatting import LETTERS, named_option  # noqa: E402
from medmcqa_ray.layout import layout  # noqa: E402
from medmcqa_ray.pipeline import run_stage  # noqa: E402
from medmcqa_ray.rewards.components import reasoning_of  # noqa: E402
from medmcqa_ray.stage import steps_logging  # noqa: E402

MODES = {"sync": "grpo.max_off_policy_steps=0", "one_step_off": "grpo.max_off_policy_steps=1"}
# Every component named: a weights dict replaces the configured one whole.
WEIGHTS = "rewards.weights={format_exact: 1.0, format_approx: 0.5, correct: 2.0, similarity: 0.5, consistent: 2.0}"


def head_score(summary: dict, head: str) -> dict:
    s = summary["heads"][head]["generate"]
    keep = ("accuracy", "ci95", "n", "correct", "format_compliance", "p_vs_sft", "paired_n_vs_sft")
    return {k: s[k] for k in keep if k in s}


def letter_binding(cfg: Config, head: str) -> dict:
    """Where a head's letter comes from. Its reasoning names an option's text ("Scurvy results from a deficiency
    of Vitamin C."); the letter then is that option's or is not. A head can state the right fact and still give
    the wrong letter: accuracy is bounded by how often the reasoning names the gold option and no other
    (`names_gold`) and by how often the letter is the option the reasoning names (`letter_agrees`, over the
    `names_one_option` answers that name exactly one; the `consistent` reward's rule)."""
    options = {r["id"]: r["options"] for r in read_formatted(layout(cfg).eval_input, ["id", "options"]).to_pylist()}
    n = names_gold = names_one = agrees = 0
    for line in (layout(cfg).eval_dir / "heads" / f"{head}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("generation") is None:
            continue
        named = named_option(reasoning_of(r["generation"], cfg.format.markers), options[r["id"]])
        n += 1
        if named is not None:
            names_one += 1
            names_gold += LETTERS[named] == r["gold"]
            agrees += r["extracted"] == LETTERS[named]
    return {"n": n, "names_gold": round(names_gold / n, 3) if n else None, "names_one_option": names_one,
            "letter_agrees": round(agrees / names_one, 3) if names_one else None}


def by_fact(cfg: Config) -> dict:
    """GRPO against its SFT start counted by fact. The validation split asks each fact in three phrasings, and
    a head that learnt (or lost) a fact tends to answer all three alike, so McNemar over questions, which
    takes them as independent, can overstate the evidence. Here each fact's questions are one unit: a fact
    is gained where GRPO gets more of its questions right than SFT did, lost where fewer; the exact sign
    test on gained against lost facts is the p that stays honest under that dependence."""
    heads = {}
    for head in ("sft", "grpo"):
        lines = (layout(cfg).eval_dir / "heads" / f"{head}.jsonl").read_text().splitlines()
        heads[head] = {r["id"]: bool(r["correct"]) for r in map(json.loads, lines) if r.get("correct") is not None}
    change: dict[str, int] = {}
    for qid in heads["sft"].keys() & heads["grpo"].keys():
        fact = fact_of({"id": qid})
        change[fact] = change.get(fact, 0) + heads["grpo"][qid] - heads["sft"][qid]
    gained, lost = sum(d > 0 for d in change.values()), sum(d < 0 for d in change.values())
    return {"facts": len(change), "gained": gained, "lost": lost, "p": sign_test_p(gained, lost)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--sft-steps", type=int, default=120)
    ap.add_argument("--grpo-steps", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-limit", type=int, default=321,
                    help="validation questions: the synthetic sample has 321, three phrasings of each of 107 facts; "
                         "its first 107 are one phrasing of each")
    ap.add_argument("--modes", default="sync,one_step_off")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other config override")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--sft-from", type=Path, metavar="DIR",
                    help="start from a kept run's SFT output folder (DIR/out of an earlier --keep): its download, "
                         "prep and SFT stages are skipped where their manifests match these settings, re-run otherwise")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="run in DIR and keep it (each mode's output folder, its eval/heads/*.jsonl); default: a "
                         "temporary folder, removed at the end")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown mode: {sorted(unknown)}")

    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="learning-bench-"))
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        raise SystemExit(f"--keep {args.keep}: not empty")
    base_out = work / "out"
    # No selection split: nothing here is chosen (it reports held-out validation), and SFT keeps every
    # fact's two train phrasings, as the recorded results did.
    overrides = [f"model.name={args.model}", "data.source=synthetic", "data.selection_rows=0", "tracking.enabled=false",
                 f"sft.max_steps={args.sft_steps}", f"sft.save_steps={args.sft_steps}",
                 f"grpo.max_steps={args.grpo_steps}", f"grpo.save_steps={args.grpo_steps}",
                 f"grpo.prompts_per_step={args.prompts}", f"grpo.num_generations={args.n}",
                 f"grpo.max_completion_length={args.tokens}", f"grpo.learning_rate={args.lr}",
                 "eval.scoring=generate", f"eval.limit={args.eval_limit}", f"eval.generate_limit={args.eval_limit}",
                 f"eval.max_new_tokens={args.tokens}", "grpo.dynamic_sampling.enabled=true",
                 WEIGHTS, *args.set]
    report: dict = {"benchmark": "learning on the synthetic sample", "model": args.model, "cores": os.cpu_count(),
                    "settings": overrides, "modes": {}}
    start = time.monotonic()
    if args.sft_from:
        shutil.copytree(args.sft_from, base_out, symlinks=True, ignore=shutil.ignore_patterns("eval"))
    cfg = load_config([REPO / "configs" / "local.yaml"], [*overrides, "eval.heads=[sft]", f"output_dir={base_out}"])
    report["sft_skipped"] = [stage for stage in ("download", "prep", "sft") if run_stage(stage, cfg).skipped]
    # The SFT head is scored once, here: each mode starts from a copy of this folder, its eval/heads/sft.jsonl
    # included, and scores only its grpo head beside it (the summary pairs them question by question).
    run_stage("eval", cfg)
    report["sft_wall_s"] = round(time.monotonic() - start, 1)

    for mode in modes:
        print(f"[learning benchmark] {mode}: starting ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
        began = time.monotonic()
        out = work / f"out-{mode}"
        shutil.copytree(base_out, out, symlinks=True)
        cfg = load_config([REPO / "configs" / "local.yaml"],
                          [*overrides, MODES[mode], "eval.heads=[grpo]", f"output_dir={out}"])
        grpo = run_stage("grpo", cfg)
        run_stage("eval", cfg)
        summary = json.loads((layout(cfg).eval_dir / "summary.json").read_text())
        steps = steps_logging(grpo.history, M.CORRECT)
        report["sft"] = head_score(summary, "sft")  # the same adapter and questions in every mode
        report["sft_letter_binding"] = letter_binding(cfg, "sft")
        report["modes"][mode] = {
            "grpo": head_score(summary, "grpo"),
            "letter_binding": letter_binding(cfg, "grpo"),
            "by_fact": by_fact(cfg),
            "correct_curve": [round(h[M.CORRECT], 3) for h in steps],
            "reward_curve": [round(h[M.REWARD], 3) for h in steps],
            "policy_version_lag": [int(h[M.POLICY_VERSION_LAG]) for h in steps],
            "wall_s": round(time.monotonic() - began, 1),
        }
    done = report["modes"]
    report["grpo_beats_sft_p_lt_0_05"] = {m: bool(r["grpo"]["accuracy"] > report["sft"]["accuracy"]
                                               and r["grpo"].get("p_vs_sft", 1.0) < 0.05) for m, r in done.items()}
    report["grpo_beats_sft_by_fact_p_lt_0_05"] = {m: bool(r["by_fact"]["gained"] > r["by_fact"]["lost"]
                                                       and r["by_fact"]["p"] < 0.05) for m, r in done.items()}
    report["wall_s"] = round(time.monotonic() - start, 1)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report, args.out)


if __name__ == "__main__":
    main()
