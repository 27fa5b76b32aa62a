"""NAS U-Net genotypes: the derived architecture as data, its JSON file and its picture.

A genotype lists, for every down and up block, the three nodes; each node keeps two incoming
edges ``(source, BO)`` (source 0 = the previous input, 1 = the other input: pre-previous
block for down blocks, skip for up blocks, 2 + k = node k) and, in down blocks, the BO of its
D CU. JSON layout::

    {"format": "deepcens-nas-unet-genotype", "version": 1, "num_down": 3,
     "down": [{"nodes": [{"edges": [[0, "clstm"], [1, "clstm"]], "down": "avg_pool"}, ...]}, ...],
     "up":   [{"nodes": [{"edges": [[0, "up_conv"], [1, "conv"]]}, ...]}, ...]}

:func:`load_genotype` refuses a file that does not fit the search space with a
:class:`~deepcens.errors.DeepcensInputError` naming the file and the bad entry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from deepcens.errors import DeepcensInputError
from deepcens.modeling.dense.nas_ops import BO_SET_NAMES, BO_SETS
from deepcens.utils.atomic import atomic_save_bytes, atomic_save_json

FORMAT = "deepcens-nas-unet-genotype"
VERSION = 1
NODES = 3


@dataclass(frozen=True)
class NodeGene:
    edges: tuple[tuple[int, str], ...]  # two (source, BO) pairs
    down: str | None = None  # BO of the node's D CU (down blocks only)


@dataclass(frozen=True)
class BlockGene:
    nodes: tuple[NodeGene, ...]


def edge_kind(block_kind: str, source: int) -> str:
    """BO set of an edge: sources 0 / 1 are the block inputs, 2.. the earlier nodes."""
    if source >= 2:
        return "N"
    if block_kind == "down":
        return "T"
    return "U" if source == 0 else "N"


@dataclass(frozen=True)
class Genotype:
    down: tuple[BlockGene, ...]
    up: tuple[BlockGene, ...]

    def problems(self, num_down: int | None = None) -> list[str]:
        """Every way in which this genotype does not fit the search space (entry: problem)."""
        found = []
        n = len(self.down) if num_down is None else int(num_down)
        if len(self.down) != n:
            found.append(f"down: {len(self.down)} blocks, the network has {n}")
        if len(self.up) != n + 2:
            found.append(f"up: {len(self.up)} blocks, expected {n + 2} (num_down + 2)")
        for kind, blocks in (("down", self.down), ("up", self.up)):
            for b, block in enumerate(blocks):
                if len(block.nodes) != NODES:
                    found.append(f"{kind}[{b}].nodes: {len(block.nodes)} nodes, expected {NODES}")
                    continue
                for k, node in enumerate(block.nodes):
                    where = f"{kind}[{b}].nodes[{k}]"
                    sources = [source for source, _ in node.edges]
                    if len(node.edges) != 2:
                        found.append(f"{where}.edges: {len(node.edges)} edges, expected 2")
                    if len(set(sources)) != len(sources):
                        found.append(f"{where}.edges: source {sources} used twice")
                    for e, (source, op) in enumerate(node.edges):
                        if not isinstance(source, int) or not 0 <= source < 2 + k:
                            found.append(f"{where}.edges[{e}]: source {source!r} not in 0..{1 + k}")
                            continue
                        bo_set = edge_kind(kind, source)
                        if op not in BO_SETS[bo_set]:
                            found.append(f"{where}.edges[{e}]: {op!r} is not in the {BO_SET_NAMES[bo_set]} ({bo_set}) BO set "
                                         f"({', '.join(BO_SETS[bo_set])})")
                    if kind == "down" and node.down not in BO_SETS["D"]:
                        found.append(f"{where}.down: {node.down!r} is not in the down (D) BO set ({', '.join(BO_SETS['D'])})")
                    if kind == "up" and node.down is not None:
                        found.append(f"{where}.down: up blocks have no D CU")
        return found

    def check(self, num_down: int | None = None, path: str | None = None) -> None:
        """Raise :class:`DeepcensInputError` (naming ``path`` and the first bad entry) if it does not fit."""
        found = self.problems(num_down)
        if found:
            raise DeepcensInputError(path, f"genotype does not fit the search space: {found[0]}")

    def to_dict(self) -> dict:
        def block(kind: str, gene: BlockGene) -> dict:
            nodes = []
            for node in gene.nodes:
                entry: dict = {"edges": [[int(s), op] for s, op in node.edges]}
                if kind == "down":
                    entry["down"] = node.down
                nodes.append(entry)
            return {"nodes": nodes}

        return {"format": FORMAT, "version": VERSION, "num_down": len(self.down),
                "down": [block("down", b) for b in self.down], "up": [block("up", b) for b in self.up]}

    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> "Genotype":
        """Parse (and check) a genotype dict; bad structure raises naming ``path`` and the entry."""
        def fail(entry: str, problem: str) -> DeepcensInputError:
            return DeepcensInputError(path, f"genotype entry {entry}: {problem}")

        if not isinstance(data, dict):
            raise DeepcensInputError(path, "genotype must be a JSON object")
        if data.get("format") != FORMAT:
            raise fail("format", f"expected {FORMAT!r}, got {data.get('format')!r}")
        blocks: dict[str, list[BlockGene]] = {}
        for kind in ("down", "up"):
            if not isinstance(data.get(kind), list):
                raise fail(kind, "missing or not a list")
            blocks[kind] = []
            for b, block in enumerate(data[kind]):
                if not isinstance(block, dict) or not isinstance(block.get("nodes"), list):
                    raise fail(f"{kind}[{b}]", "expected {\"nodes\": [...]}")
                nodes = []
                for k, node in enumerate(block["nodes"]):
                    where = f"{kind}[{b}].nodes[{k}]"
                    edges = node.get("edges") if isinstance(node, dict) else None
                    if not isinstance(edges, list) or not all(isinstance(e, list) and len(e) == 2 for e in edges):
                        raise fail(f"{where}.edges", "expected a list of [source, operation] pairs")
                    pairs = []
                    for e, (source, op) in enumerate(edges):
                        if isinstance(source, bool) or not isinstance(source, int) or not isinstance(op, str):
                            raise fail(f"{where}.edges[{e}]", f"expected [integer source, operation name], got {[source, op]!r}")
                        pairs.append((source, op))
                    nodes.append(NodeGene(tuple(pairs), node.get("down")))
                blocks[kind].append(BlockGene(tuple(nodes)))
        genotype = cls(tuple(blocks["down"]), tuple(blocks["up"]))
        num_down = data.get("num_down", len(genotype.down))
        genotype.check(num_down, path)
        return genotype


def save_genotype(path: str, genotype: Genotype, extra: dict | None = None) -> None:
    """Write the genotype JSON atomically (``extra`` keys, e.g. the search iteration, are added)."""
    data = genotype.to_dict()
    data.update(extra or {})
    atomic_save_json(path, data, indent=1)


def load_genotype(path: str, num_down: int | None = None) -> Genotype:
    """Read and check a genotype JSON file (``MODEL.NAS.GENOTYPE``)."""
    if not os.path.isfile(path):
        raise DeepcensInputError(path, "genotype file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DeepcensInputError(path, f"cannot read genotype JSON ({type(exc).__name__}: {exc})") from None
    genotype = Genotype.from_dict(data, path)
    genotype.check(num_down, path)
    return genotype


# ---- picture -------------------------------------------------------------------------------------

def _draw_block(ax, kind: str, index: int, gene: BlockGene) -> None:
    inputs = ("prev", "pre-prev") if kind == "down" else ("prev up", "skip")
    positions = {0: (0.0, 3.0), 1: (0.0, 0.0), 2: (2.0, 2.3), 3: (3.4, 0.6), 4: (4.8, 2.5)}
    out_position = (6.4, 1.4)
    color = "#cfe2f3" if kind == "down" else "#f4cccc"
    for source, (x, y) in positions.items():
        label = inputs[source] if source < 2 else f"node {source - 2}"
        ax.text(x, y, label, ha="center", va="center", fontsize=7, zorder=3,
                bbox={"boxstyle": "round", "fc": "#eeeeee" if source < 2 else color, "ec": "#555555"})
    ax.text(*out_position, "concat", ha="center", va="center", fontsize=7, zorder=3,
            bbox={"boxstyle": "round", "fc": "#fff2cc", "ec": "#555555"})
    for k, node in enumerate(gene.nodes):
        tx, ty = positions[2 + k]
        for source, op in node.edges:
            sx, sy = positions[source]
            ax.annotate("", xy=(tx, ty), xytext=(sx, sy), zorder=1,
                        arrowprops={"arrowstyle": "->", "color": "#3c78d8" if source < 2 else "#666666", "lw": 1,
                                    "shrinkA": 14, "shrinkB": 14})
            fraction = 0.55 if source < 2 else 0.5
            ax.text(sx + fraction * (tx - sx), sy + fraction * (ty - sy), op, ha="center", va="center", fontsize=6,
                    zorder=2, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.annotate("", xy=out_position, xytext=(tx, ty), zorder=1,
                    arrowprops={"arrowstyle": "->", "color": "#cc0000" if kind == "down" else "#999999", "lw": 1,
                                "shrinkA": 14, "shrinkB": 16})
        if kind == "down":
            ax.text(tx, ty - 0.42, f"D: {node.down}", ha="center", va="top", fontsize=6, color="#cc0000", zorder=2)
    ax.set_xlim(-0.7, 7.0)
    ax.set_ylim(-0.6, 3.5)
    ax.set_title(f"{'down' if kind == 'down' else 'up'} block {index + 1}", fontsize=9)
    ax.axis("off")


def save_genotype_picture(path: str, genotype: Genotype, title: str = "") -> None:
    """PNG of every down and up cell of ``genotype``, BOs written on the edges (atomic write)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    columns = max(len(genotype.down), len(genotype.up))
    figure, axes = plt.subplots(2, columns, figsize=(4.2 * columns, 6.4), squeeze=False)
    for row, (kind, blocks) in enumerate((("down", genotype.down), ("up", genotype.up))):
        for column in range(columns):
            if column < len(blocks):
                _draw_block(axes[row][column], kind, column, blocks[column])
            else:
                axes[row][column].axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_save_bytes(path, buffer.getvalue())
