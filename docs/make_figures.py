"""Draws the pictures in docs/img/ (run with: .venv/bin/python docs/make_figures.py [NAME ...])."""

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


def _box(ax, x, y, w, h, title, body="", color="#4c72b0", alpha=0.18, fs=10):
    """A rounded box with a bold title line and an optional smaller body; returns its edges."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, alpha=alpha, edgecolor=color, lw=1.4))
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor="none", edgecolor=color, lw=1.4))
    if body:
        ax.text(x + w / 2, y + h * 0.68, title, ha="center", va="center", fontsize=fs, weight="bold")
        ax.text(x + w / 2, y + h * 0.30, body, ha="center", va="center", fontsize=fs - 2, linespacing=1.25)
    else:
        ax.text(x + w / 2, y + h / 2, title, ha="center", va="center", fontsize=fs, weight="bold")
    return {"top": (x + w / 2, y + h), "bottom": (x + w / 2, y), "left": (x, y + h / 2), "right": (x + w, y + h / 2)}


def _arrow(ax, a, b, label="", dashed=False, color="#333333", label_dx=0.08, label_dy=0.0, ha="left"):
    ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.3,
                                                    ls="--" if dashed else "-", shrinkA=2, shrinkB=2))
    if label:
        ax.text((a[0] + b[0]) / 2 + label_dx, (a[1] + b[1]) / 2 + label_dy, label, fontsize=8, color=color,
                va="center", ha=ha)


def architecture() -> None:
    """docs/img/architecture.png: the layers and the one-way calls between them."""
    fig, ax = plt.subplots(figsize=(12, 7.8))
    blue, green, red, purple, grey = "#4c72b0", "#55a868", "#c44e52", "#8172b2", "#7f7f7f"
    # entry points
    cli = _box(ax, 0.2, 6.45, 2.3, 0.8, "cli/", "Typer CLI, one file per command", blue)
    app = _box(ax, 2.75, 6.45, 2.3, 0.8, "your code", "compatindex.open(...)", blue)
    trn = _box(ax, 5.3, 6.45, 2.5, 0.8, "trainer/ + evaluation.py", "upgrade, gate, metrics", blue)
    ax.text(0.2, 7.45, "entry points: above the facade, they reach an index only through it", fontsize=9, color=grey)
    # facade
    con = _box(ax, 0.2, 4.95, 3.0, 0.95, "connect.py: open()",
               "picks the backend, wraps it in an Index:\na path -> embedded\n"
               "qdrant://, qdrant+local:// -> Qdrant", green)
    fac = _box(ax, 3.5, 4.85, 4.3, 1.15, "Index facade (index.py)",
               "validation, version algebra, query-side projection,\n"
               "one representative per item, merge by score", green)
    # protocol
    pro = _box(ax, 2.0, 3.55, 4.6, 0.75, "Backend Protocol (backend.py)",
               "ShardQuery in, ShardHits out; writes, reads, verify", purple)
    # engines
    emb = _box(ax, 0.2, 2.1, 3.4, 0.85, "EmbeddedBackend (embedded/)", "one index folder, one writer", red)
    qd = _box(ax, 4.4, 2.1, 3.4, 0.85, "QdrantBackend (qdrant/)", "registry, items, search, url", red)
    # storage
    sto = _box(ax, 0.2, 0.35, 3.4, 1.15, "store.py + shards/",
               "LMDB store: the source of truth\nFAISS shards per version: derived\nlock.py, verify.py", grey)
    col = _box(ax, 4.4, 0.35, 3.4, 1.15, "Qdrant collections",
               "COLLECTION: a named vector per version\nCOLLECTION__registry: the versions", grey)
    # core, beside everything
    ax.add_patch(Rectangle((8.25, 0.35), 2.45, 6.9, facecolor="#dddddd", alpha=0.5, edgecolor=grey, lw=1.2))
    ax.text(9.475, 6.95, "core/", ha="center", fontsize=11, weight="bold")
    ax.text(9.475, 6.55, "pure functions and types,\nimported by every layer,\nimports none of them", ha="center",
            va="top", fontsize=8, linespacing=1.25)
    for i, (mod, what) in enumerate((("versions.py", "lineage, LCA, projection"), ("validate.py", "checks of inputs"),
                                     ("scoring.py", "Metric, Score"), ("merge.py", "top-k of hits"),
                                     ("records.py", "stored version form"), ("heads.py", "raw-vector heads"),
                                     ("packing.py", "msgpack trees"), ("datatypes.py", "Version, SearchResult"))):
        y = 5.55 - i * 0.6
        ax.text(8.45, y, mod, fontsize=9, family="monospace", va="center")
        ax.text(8.45, y - 0.22, what, fontsize=7.5, color="#444444", va="center")
    ax.text(8.45, 0.6, "beside it: errors.py,\nthe public errors", fontsize=8, color="#444444", va="center")
    # calls: one way, down
    _arrow(ax, cli["bottom"], (1.7, con["top"][1]))
    _arrow(ax, app["bottom"], (2.7, con["top"][1]))
    _arrow(ax, trn["bottom"], (trn["bottom"][0], fac["top"][1]), "an open Index", label_dx=0.1)
    _arrow(ax, con["right"], (fac["left"][0], con["right"][1]))
    _arrow(ax, (4.3, fac["bottom"][1]), (4.3, pro["top"][1]), "calls")
    _arrow(ax, (3.0, pro["bottom"][1]), (emb["top"][0], emb["top"][1]), "implemented by", dashed=True,
           label_dx=-0.15, ha="right")
    _arrow(ax, (5.6, pro["bottom"][1]), (qd["top"][0], qd["top"][1]), "implemented by", dashed=True)
    _arrow(ax, emb["bottom"], sto["top"])
    _arrow(ax, qd["bottom"], col["top"])
    _arrow(ax, emb["right"], qd["left"], "export\n(copy)", dashed=True, label_dx=0.0, label_dy=0.3, ha="center")
    ax.text(0.2, -0.05, "Solid arrows: calls, always downwards. Dashed: a Protocol's implementations, or a copy. "
            "No import cycles; no private name is imported across packages (tests/test_layering.py).",
            fontsize=8, color=grey)
    ax.set_xlim(0, 10.8)
    ax.set_ylim(-0.25, 7.7)
    ax.axis("off")
    ax.set_title("compatindex: layers and who calls whom", fontsize=12)
    fig.tight_layout()
    OUT.mkdir(exist_ok=True)
    fig.savefig(OUT / "architecture.png", dpi=110)


FIGURES = {"version_algebra": version_algebra, "architecture": architecture}

if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or list(FIGURES):  # e.g. `make_figures.py architecture` draws one
        FIGURES[name]()
