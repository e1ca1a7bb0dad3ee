"""The human end of evaluation: a printed table and a PNG of accuracy per head with 95% intervals."""

from __future__ import annotations

from pathlib import Path


def table(summary: dict) -> str:
    lines = [f"{'head':<6}{'n':>6}{'accuracy':>10}{'95% CI':>17}{'format':>8}{'p vs base':>11}"]
    for head, s in summary["heads"].items():
        lo, hi = s["ci95"]
        p = s.get("p_vs_base")
        lines.append(f"{head:<6}{s['n']:>6}{s['accuracy']:>10.1%}{f'[{lo:.1%}, {hi:.1%}]':>17}"
                     f"{s['format_compliance']:>8.0%}{'' if p is None else f'{p:.3g}':>11}")
    return "\n".join(lines)


def accuracy_plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(summary["heads"])
    acc = [summary["heads"][h]["accuracy"] for h in heads]
    err = [[a - summary["heads"][h]["ci95"][0] for h, a in zip(heads, acc)],
           [summary["heads"][h]["ci95"][1] - a for h, a in zip(heads, acc)]]
    fig, ax = plt.subplots(figsize=(4 + len(heads), 3.5))
    ax.bar(heads, acc, yerr=err, capsize=6, color=["#888888", "#4c72b0", "#dd8452"][: len(heads)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(f"{summary.get('dataset', 'validation')}: n={summary['heads'][heads[0]]['n']}")
    for i, a in enumerate(acc):
        ax.text(i, a + 0.02, f"{a:.1%}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
