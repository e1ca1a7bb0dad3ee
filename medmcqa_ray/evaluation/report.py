"""The human end of evaluation: a printed table (each head under each scoring, then the floors) and a
PNG of accuracy per head and scoring with 95% intervals and the floors drawn across."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from medmcqa_ray.config import Scoring
from medmcqa_ray.evaluation.scores import EvalSummary

SCORING_COLOURS = {Scoring.GENERATE: "#4c72b0", Scoring.LOGLIK: "#dd8452"}


def _p(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3g}"


def table(summary: EvalSummary) -> str:
    lines = [f"{'head':<6}{'scoring':<10}{'n':>5}{'accuracy':>10}{'95% CI':>17}{'format':>8}{'top letter':>12}"
             f"{'p vs base':>11}{'p vs sft':>10}{'p vs floor':>12}"]
    for head, scorings in summary.heads.items():
        for scoring, s in scorings.items():
            lo, hi = s.ci95
            top = max(s.choices, key=lambda letter: s.choices[letter]) if s.choices else "-"
            fmt = f"{s.format_compliance:.0%}" if s.format_compliance is not None else "-"
            share = f"{top} {s.top_choice_share:.0%}"
            lines.append(f"{head:<6}{scoring:<10}{s.n:>5}{s.accuracy:>10.1%}{f'[{lo:.1%}, {hi:.1%}]':>17}{fmt:>8}"
                         f"{share:>12}"
                         f"{_p(s.p_vs_base):>11}{_p(s.p_vs_sft):>10}{_p(s.p_vs_majority):>12}")
    m = summary.floors.majority_letter
    lines.append(f"floors: uniform guess {summary.floors.uniform:.1%}; always {m.letter} ({m.source}) "
                 f"{m.accuracy:.1%} of these {m.n} questions")
    return "\n".join(lines)


def accuracy_plot(summary: EvalSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(summary.heads)
    scorings = [s for s in SCORING_COLOURS if any(s in summary.heads[h] for h in heads)]
    width = 0.8 / max(1, len(scorings))
    fig, ax = plt.subplots(figsize=(4 + 1.5 * len(heads), 3.8))
    for k, scoring in enumerate(scorings):
        xs = [i + (k - (len(scorings) - 1) / 2) * width for i, h in enumerate(heads) if scoring in summary.heads[h]]
        stats = [summary.heads[h][scoring] for h in heads if scoring in summary.heads[h]]
        acc = [s.accuracy for s in stats]
        err = [[a - s.ci95[0] for a, s in zip(acc, stats)], [s.ci95[1] - a for a, s in zip(acc, stats)]]
        ax.bar(xs, acc, width, yerr=err, capsize=4, color=SCORING_COLOURS[scoring],
               label=f"{scoring} (n={stats[0].n})")
        for x, a in zip(xs, acc):
            ax.text(x, a + 0.02, f"{a:.0%}", ha="center", fontsize=8)
    f = summary.floors
    ax.axhline(f.uniform, color="#888888", linestyle=":", label=f"uniform guess {f.uniform:.0%}")
    m = f.majority_letter
    ax.axhline(m.accuracy, color="#c44e52", linestyle="--", label=f"always {m.letter} {m.accuracy:.0%}")
    ax.set_xticks(range(len(heads)), heads)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(summary.dataset, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
