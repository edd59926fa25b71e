"""Draws the pictures in docs/ (run with: .venv/bin/python docs/make_figures.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"


def version_algebra() -> None:
    fig, ax = plt.subplots(figsize=(10, 4.6))
    versions = [("v1", 64, None, 3.2, "#4c72b0"), ("v2", 80, "v1", 2.2, "#55a868"),
                ("v3", 96, "v2", 1.2, "#c44e52"), ("b2", 72, "v1", 0.2, "#8172b2")]
    scale = 0.075
    pos = {}
    for name, dim, parent, y, color in versions:
        x0 = 1.2
        # the parent's prefix block, then this version's extra dims
        if parent is None:
            ax.add_patch(Rectangle((x0, y), dim * scale, 0.55, color=color, alpha=0.85))
        else:
            pdim = dict((n, d) for n, d, *_ in versions)[parent]
            lca_color = dict((n, c) for n, _, _, _, c in versions)
            ax.add_patch(Rectangle((x0, y), 64 * scale, 0.55, color=lca_color["v1"], alpha=0.35))
            if pdim > 64:
                ax.add_patch(Rectangle((x0 + 64 * scale, y), (pdim - 64) * scale, 0.55, color=lca_color[parent], alpha=0.35))
            ax.add_patch(Rectangle((x0 + pdim * scale, y), (dim - pdim) * scale, 0.55, color=color, alpha=0.85))
        ax.text(0.2, y + 0.27, f"{name}\n d={dim}", va="center", fontsize=10, family="monospace")
        pos[name] = (x0 + dim * scale, y + 0.27)
    for x in (64, 80):
        ax.axvline(1.2 + x * scale, color="grey", lw=0.6, ls=":")
        ax.text(1.2 + x * scale, 3.95, f"{x}", ha="center", fontsize=8, color="grey")
    ax.text(8.9, 3.5, "v2 query  vs  v1 vector:\ncompare q[:64] with g\n(the query is cut, g is untouched)", fontsize=9)
    ax.text(8.9, 2.3, "v1 query  vs  v3 vector:\ncompare q with g[:64]\n(= pad q with zeros, search v3 shard)", fontsize=9)
    ax.text(8.9, 1.1, "b2 query  vs  v3 vector:\nboth cut to the LCA (v1): 64 dims", fontsize=9)
    ax.text(8.9, 0.15, "raw new-encoder h enters v-space as\nz = Q_v [h; 0]  (Q_v orthogonal:\nnew-to-new scores are unchanged)", fontsize=9)
    ax.set_xlim(0, 13.5)
    ax.set_ylim(-0.1, 4.2)
    ax.axis("off")
    ax.set_title("Prefix compatibility: each version's first d_parent coordinates live in its parent's space", fontsize=11)
    fig.tight_layout()
    OUT.mkdir(exist_ok=True)
    fig.savefig(OUT / "version_algebra.png", dpi=110)


if __name__ == "__main__":
    version_algebra()
