"""NAS U-Net (Zhu & Meijering 2021): searched non-repeatable down / up blocks, ConvLSTM over frames.

Macro network (paper Sec. 2.1.1, Fig. 1) for ``num_down`` = n down blocks and n + 2 up blocks:

- the frame pair (t-1, t) comes in as ``frames * INPUT_CHANNELS`` channels (oldest first);
  everything up to the last down block runs on both frames (stacked in the batch), so that
  the ConvLSTM (T) CUs carry their state over the pair;
- a fixed stem: two stride-2 3x3 convs, each followed by GroupNorm + ReLU, whose outputs
  (1/2 and 1/4 resolution) are the two inputs of the first down block;
- down block k: inputs = outputs of the previous and pre-previous blocks; output at half the
  resolution, 3 x 16 channels; up block k: inputs = previous up block output (upsampled by
  its U CUs) and the horizontally corresponding down-path map (down block, stem outputs and,
  for the last up block, the input frame t itself); output 3 x 16 channels;
- a segmentation head (3x3 conv, softmax: 2 or 4 classes) and a marker head (3x3 conv,
  sigmoid, 1 channel) at full resolution, on frame t.

Micro structure (Sec. 2.1.2, Fig. 3): :class:`Block` holds 3 nodes; node k sums CUs on edges
from both block inputs and from every earlier node. In the supernet every edge has a CU with
all BOs of its set and BO parameters, and every node CU parameters over its incoming edges
(Sec. 2.2); a derived network (from a :class:`~deepcens.modeling.dense.nas_genotype.Genotype`)
keeps one BO per CU and two edges per node.

Search modes of the supernet (``MODEL.NAS.SEARCH.MODE``): ``binary`` (ProxylessNAS, Cai et al.
2019: a weight step runs one sampled BO per CU and two sampled edges per node; an
architecture step runs two sampled BOs per CU behind binary gates whose straight-through
gradient reaches the BO / CU parameters) and ``all_paths`` (DARTS: softmax-weighted sums of
every BO and every edge). In eval mode the supernet runs its currently derived architecture.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from detectron2.config import CfgNode, configurable
from torch import nn
from torch.nn import functional as F

from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
from deepcens.modeling.dense.nas_genotype import BlockGene, Genotype, NodeGene, edge_kind, load_genotype
from deepcens.modeling.dense.nas_ops import BO_SETS, FactorizedReduce, OpSettings, Preprocess, group_norm, make_bo

NODES_PER_BLOCK = 3
SEARCH_MODES = ("binary", "all_paths")


@dataclass
class SearchState:
    """How the supernet runs this forward pass (training only)."""

    mode: str  # binary | all_paths
    phase: str  # weight | arch
    generator: torch.Generator
    bo_evaluations: int = 0  # basic operations run in this pass (paths alive in memory)


class ComputingUnit(nn.Module):
    """A CU: all BOs of one set mixed by softmax BO parameters (search), or the one kept BO."""

    def __init__(self, kind: str, settings: OpSettings, op: str | None = None):
        super().__init__()
        self.kind = kind
        self.candidates = BO_SETS[kind] if op is None else (op,)
        self.ops = nn.ModuleDict({name: make_bo(name, settings) for name in self.candidates})
        self.searching = op is None and len(self.candidates) > 1
        if self.searching:
            self.arch_bo = nn.Parameter(torch.zeros(len(self.candidates)))  # BO parameters

    def _run(self, index: int, x: torch.Tensor, steps: int, search: SearchState | None) -> torch.Tensor:
        if search is not None:
            search.bo_evaluations += 1
        op = self.ops[self.candidates[index]]
        return op(x, steps) if self.kind == "T" else op(x)

    def best(self) -> str:
        return self.candidates[int(self.arch_bo.argmax())] if self.searching else self.candidates[0]

    def forward(self, x: torch.Tensor, steps: int, search: SearchState | None) -> torch.Tensor:
        if not self.searching:
            return self._run(0, x, steps, search)
        if search is None:
            return self._run(int(self.arch_bo.argmax()), x, steps, search)
        probabilities = F.softmax(self.arch_bo, dim=0)
        if search.mode == "all_paths":
            return sum(p * self._run(i, x, steps, search) for i, p in enumerate(probabilities))
        if search.phase == "weight":
            index = int(torch.multinomial(probabilities.detach(), 1, generator=search.generator))
            return self._run(index, x, steps, search)
        # architecture step: two sampled paths, a binary gate between them (ProxylessNAS)
        pair = torch.multinomial(probabilities.detach(), 2, replacement=False, generator=search.generator)
        sub = F.softmax(self.arch_bo[pair], dim=0)
        chosen = int(torch.multinomial(sub.detach(), 1, generator=search.generator))
        out = 0.0
        for position, index in enumerate(pair.tolist()):
            gate = float(position == chosen) - sub[position].detach() + sub[position]
            out = out + gate * self._run(index, x, steps, search)
        return out


class Block(nn.Module):
    """A down or up block: two preprocessed inputs, three nodes, one output (3 x channels)."""

    def __init__(self, kind: str, prev_channels: int, other_channels: int, settings: OpSettings,
                 gene: BlockGene | None = None):
        super().__init__()
        c, groups = settings.channels, settings.gn_groups
        self.kind = kind
        self.searching = gene is None
        self.preprocess_prev = Preprocess(prev_channels, c, groups)
        # down: the pre-previous input has twice the resolution; up: the skip has the output's
        self.preprocess_other = (FactorizedReduce(other_channels, c, groups) if kind == "down"
                                 else Preprocess(other_channels, c, groups))
        self.sources: list[list[int]] = []
        self.edges = nn.ModuleDict()
        for node in range(NODES_PER_BLOCK):
            if gene is None:
                sources = list(range(2 + node))
                ops: list[str | None] = [None] * len(sources)
            else:
                sources = [source for source, _ in gene.nodes[node].edges]
                ops = [op for _, op in gene.nodes[node].edges]
            self.sources.append(sources)
            for source, op in zip(sources, ops):
                self.edges[f"{node}_{source}"] = ComputingUnit(edge_kind(kind, source), settings, op)
        if kind == "down":
            self.down = nn.ModuleList(
                ComputingUnit("D", settings, None if gene is None else gene.nodes[node].down)
                for node in range(NODES_PER_BLOCK))
        if self.searching:  # CU parameters, one per incoming edge of each node
            self.arch_cu = nn.ParameterList(nn.Parameter(torch.zeros(2 + node)) for node in range(NODES_PER_BLOCK))

    def _node(self, node: int, states: list[torch.Tensor], steps: int, search: SearchState | None) -> torch.Tensor:
        def edge(source: int) -> torch.Tensor:
            return self.edges[f"{node}_{source}"](states[source], steps, search)

        if not self.searching:
            return sum(edge(source) for source in self.sources[node])
        logits = self.arch_cu[node]
        if search is None:
            return sum(edge(source) for source in self.strongest_sources(node))
        probabilities = F.softmax(logits, dim=0)
        if search.mode == "all_paths":
            return sum(p * edge(source) for source, p in enumerate(probabilities))
        pair = torch.multinomial(probabilities.detach(), 2, replacement=False, generator=search.generator)
        if search.phase == "weight":
            return sum(edge(source) for source in sorted(pair.tolist()))
        sub = F.softmax(logits[pair], dim=0)  # straight-through: forward value 1, gradient to the CU parameters
        return sum((1.0 + sub[k] - sub[k].detach()) * edge(source) for k, source in enumerate(pair.tolist()))

    def strongest_sources(self, node: int) -> list[int]:
        """The two incoming edges with the largest CU parameters (sorted by source)."""
        if not self.searching:
            return list(self.sources[node])
        return sorted(torch.topk(self.arch_cu[node].detach(), 2).indices.tolist())

    def derive(self) -> BlockGene:
        nodes = []
        for node in range(NODES_PER_BLOCK):
            edges = tuple((source, self.edges[f"{node}_{source}"].best()) for source in self.strongest_sources(node))
            down = self.down[node].best() if self.kind == "down" else None
            nodes.append(NodeGene(edges, down))
        return BlockGene(tuple(nodes))

    def forward(self, prev: torch.Tensor, other: torch.Tensor, steps: int, search: SearchState | None) -> torch.Tensor:
        states = [self.preprocess_prev(prev), self.preprocess_other(other)]
        for node in range(NODES_PER_BLOCK):
            states.append(self._node(node, states, steps, search))
        nodes = states[2:]
        if self.kind == "down":
            nodes = [self.down[k](x, steps, search) for k, x in enumerate(nodes)]
        return torch.cat(nodes, dim=1)


@DENSE_NETWORK_REGISTRY.register()
class NasUNet(nn.Module):
    """The NAS U-Net supernet (``genotype`` None) or a derived network; see the module docstring.

    ``forward(x)`` takes ``(B, frames * in_channels, H, W)`` (H, W multiples of
    ``size_divisibility``) and returns ``(segmentation logits (B, num_classes, H, W),
    marker logits (B, 1, H, W))`` for the last frame.
    """

    @configurable
    def __init__(self, *, genotype: Genotype | None = None, in_channels: int = 1, num_classes: int = 2,
                 num_down: int = 3, frames: int = 2, settings: OpSettings = OpSettings(),
                 search_mode: str = "binary"):
        super().__init__()
        if search_mode not in SEARCH_MODES:
            raise ValueError(f"MODEL.NAS.SEARCH.MODE must be one of {SEARCH_MODES}, got {search_mode!r}")
        if genotype is not None:
            genotype.check(num_down)
        c, groups = settings.channels, settings.gn_groups
        self.genotype = genotype
        self.in_channels, self.frames, self.num_down = int(in_channels), int(frames), int(num_down)
        self.size_divisibility = 2 ** (num_down + 2)
        self.search_mode = search_mode
        self.search_phase = "weight"
        self.generator = torch.Generator().manual_seed(0)
        self.last_bo_evaluations = 0
        self.stem = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, c, 3, stride=2, padding=1, bias=False), group_norm(c, groups), nn.ReLU()),
            nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), group_norm(c, groups), nn.ReLU()),
        ])
        width = NODES_PER_BLOCK * c
        down_inputs = [(c, c)] + [(width, c)] + [(width, width)] * (num_down - 2)
        self.down_blocks = nn.ModuleList(
            Block("down", prev, other, settings, None if genotype is None else genotype.down[k])
            for k, (prev, other) in enumerate(down_inputs[:num_down]))
        skip_channels = [width] * (num_down - 1) + [c, c, in_channels]
        self.up_blocks = nn.ModuleList(
            Block("up", width, skip, settings, None if genotype is None else genotype.up[k])
            for k, skip in enumerate(skip_channels))
        self.segmentation_head = nn.Conv2d(width, num_classes, 3, padding=1)
        self.marker_head = nn.Conv2d(width, 1, 3, padding=1)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        n = cfg.MODEL.NAS
        path = n.GENOTYPE
        return {
            "genotype": load_genotype(path, n.NUM_DOWN) if path else None,
            "in_channels": cfg.MODEL.DENSE.INPUT_CHANNELS,
            "num_classes": cfg.MODEL.DENSE.NUM_OUTPUTS,
            "num_down": n.NUM_DOWN,
            "frames": n.FRAMES,
            "settings": OpSettings(n.CHANNELS, n.GN_GROUPS, n.DILATION, n.SE_REDUCTION, n.SHUFFLE_GROUPS),
            "search_mode": n.SEARCH.MODE,
        }

    # ---- search interface ----------------------------------------------------------------------
    @property
    def is_supernet(self) -> bool:
        return self.genotype is None

    def arch_parameters(self) -> list[nn.Parameter]:
        """BO and CU parameters (empty for a derived network)."""
        return [p for name, p in self.named_parameters() if ".arch_" in f".{name}"]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Kernel parameters (everything but the architecture parameters)."""
        return [p for name, p in self.named_parameters() if ".arch_" not in f".{name}"]

    def begin_step(self, phase: str, seed: int) -> None:
        """Next training forward passes run the ``weight`` or ``arch`` phase with paths drawn from ``seed``."""
        if phase not in ("weight", "arch"):
            raise ValueError(f"search phase must be weight or arch, got {phase!r}")
        self.search_phase = phase
        self.generator.manual_seed(int(seed))

    def derive(self) -> Genotype:
        """The derived architecture: argmax BO per CU, the two strongest incoming CUs per node."""
        return Genotype(tuple(b.derive() for b in self.down_blocks), tuple(b.derive() for b in self.up_blocks))

    def architecture_weights(self) -> dict[str, list[float]]:
        """Softmax of every BO / CU parameter vector, by parameter name (for logging)."""
        return {name: F.softmax(p.detach(), dim=0).tolist() for name, p in self.named_parameters() if ".arch_" in f".{name}"}

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = x.shape
        steps = self.frames
        if x.shape[1] != steps * self.in_channels:
            raise ValueError(f"NAS U-Net takes {steps} frames x {self.in_channels} channels, got {x.shape[1]} channels")
        search = None
        if self.training and self.is_supernet:
            search = SearchState(self.search_mode, self.search_phase, self.generator)
        sequence = x.reshape(batch, steps, self.in_channels, height, width).transpose(0, 1)
        sequence = sequence.reshape(steps * batch, self.in_channels, height, width)
        s0 = self.stem[0](sequence)
        s1 = self.stem[1](s0)
        features = [s0, s1]
        prev, other = s1, s0
        for block in self.down_blocks:
            out = block(prev, other, steps, search)
            other, prev = prev, out
            features.append(out)
        last = (steps - 1) * batch
        skips = [x[:, (steps - 1) * self.in_channels:]] + [f[last:] for f in features]
        y = features[-1][last:]
        for k, block in enumerate(self.up_blocks):
            y = block(y, skips[-(k + 2)], 1, search)
        if search is not None:
            self.last_bo_evaluations = search.bo_evaluations
        return self.segmentation_head(y), self.marker_head(y)
