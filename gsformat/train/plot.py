"""A PNG of the loss (and cosine / logit scale) curves from metrics.jsonl."""
from __future__ import annotations

import json


def plot_metrics(jsonl: str, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(jsonl) if line.strip()]
    if not rows:
        return
    keys = [k for k in ("loss", "cos", "logit_scale", "lr") if k in rows[-1]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    axes = axes if len(keys) > 1 else [axes]
    for ax, key in zip(axes, keys):
        ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
