"""Figures written beside the artifacts they show (PNG, matplotlib's Agg canvas, no display).

Uses ``matplotlib.figure.Figure`` with an explicit Agg canvas rather than ``pyplot``, so no
global backend or figure state is touched and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.artifacts import atomic_path
from toolchain.sensitivity import KINDS, group_key


def sensitivity_heatmap(sensitivity: Any, path: str | Path) -> Path:
    """Return ``path`` after writing a layers × (attn, ffn) heatmap of the group scores to it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = sensitivity.shape.num_layers
    grid = [[sensitivity.scores[group_key(layer, kind)] for kind in KINDS] for layer in range(layers)]
    fig = Figure(figsize=(3.6, 1.2 + 0.42 * layers), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(KINDS)), labels=list(KINDS))
    ax.set_yticks(range(layers), labels=[f"layer {layer}" for layer in range(layers)])
    low, high = min(min(row) for row in grid), max(max(row) for row in grid)
    for layer, row in enumerate(grid):
        for col, value in enumerate(row):
            bright = high > low and (value - low) / (high - low) > 0.5  # viridis is light at the top
            ax.text(col, layer, f"{value:.3g}", ha="center", va="center", fontsize=8,
                    color="black" if bright else "white")
    ax.set_title(f"sensitivity ({sensitivity.method})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.08)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
