"""Incremental inference for occlusion (Krypton: Nakandala, Kumar & Papakonstantinou 2019).

An occluding window changes a small part of the input, and through the leading convolutions,
poolings and pointwise layers of a CNN its effect stays local: only a region of each feature
map around the window changes. So the leading part of the network (the *prefix*) runs once on
the unoccluded input and its feature maps are kept; for each window only the changed region of
each map is recomputed, from the changed region of the map before it and the kept values
around it. The last prefix map, the *cut*, gets its changed region pasted into a copy, and the
rest of the network (the *suffix*) runs on it as usual. Nothing is approximated: every value
the suffix sees is the one plain occlusion computes, up to float rounding (the same sums in
another order).

How it works, per window position (all positions of a chunk at once, as one batch):

- the forward is read with torch.fx (``_graph.trace``) and run once on the input, recording
  every node's value. A node is *local* when it is a ``Conv2d`` (zero padding; any stride,
  dilation and groups), a ``MaxPool2d``, an ``AvgPool2d`` (without ``ceil_mode``; padding
  counted), an eval-mode ``BatchNorm2d`` with running statistics, a pointwise module or
  function (ReLU, GELU, SiLU, sigmoid, ...), or a sum/product of local maps of one shape with
  constants that do not vary over space; and all its inputs are local. A *cut* is a local node
  that every path from the input to the output passes through, with everything before it
  local. Of the cuts, the one with the lowest estimated cost (multiply-adds of the
  recomputed regions and the full suffix, plus the copies) is used;
- per node, the changed rows and columns of each window are propagated as intervals (a window
  op's output ``o`` reads inputs ``o*s - p + j*d``), and each node gets one region size for
  all windows (the largest), its start moved inward at the map's borders, so a chunk of
  windows is a batch of equally sized regions;
- a window op recomputes its region with its padding off, from the input rows and columns
  its region reads: the source's region where it has one, the kept full map elsewhere, and
  the layer's padding value (0, or -inf for max pooling) outside the map (the layer's padding,
  applied only at the map's real borders).

Where the structure does not allow it (no leading local layers, a callable, TorchScript, a
forward torch.fx cannot read, hooks on the leading layers, background rows as baseline), or
where it would save little, occlusion runs plainly and says why in ``e.info``.
"""

from __future__ import annotations

import inspect
import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from xaikit import layout
from xaikit._torch import (
    attribution_dtype,
    float_dtype,
    float_output,
    model_output,
    preserved_state,
    user_code_around_layers,
)
from xaikit.attribution._graph import Graph, _is_shape, hidden_updates, is_inplace, trace
from xaikit.model import Model

# Cost units for the choice of the cut: one multiply-add is 1; touching one element in a
# pointwise op, a gather or a copy costs more than a multiply-add in a convolution's GEMM.
POINT_COST = 4.0
GATHER_COST = 12.0
COPY_COST = 2.0
# "auto" runs incrementally only when the estimate is below this share of a plain forward, and
# only for forwards of at least this cost: below it the fixed cost of recomputing regions (tens
# of small operations per layer and batch) outweighs the saving (the 28 px MNIST CNN, about
# 1.5e6, took 0.012 s against 0.010 s plain; ResNet-18 at 224 px, about 2e9, 0.47x).
AUTO_RATIO = 0.8
AUTO_MIN_COST = 1e7
# Bytes of the largest per-window tensor times the windows of one chunk.
CHUNK_BYTES = 8 * 2**20
MAX_CHUNK = 256
_EMPTY = 1 << 40  # an empty interval is (+_EMPTY, -_EMPTY): min/max unions ignore it

_POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
_POINTWISE_FORWARDS = {cls.forward for cls in _POINTWISE_MODULES}
_POINTWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clip,
    torch.abs,
    torch.neg,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
}
_POINTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "clamp",
    "clip",
    "abs",
    "neg",
    "add",
    "sub",
    "mul",
    "div",
    "contiguous",
}


@dataclass
class _Local:
    """A local node: its kind, data inputs, recorded shape and, per spatial axis, geometry."""

    node: fx.Node
    kind: str  # "input", "window" or "pointwise"
    sources: list[fx.Node]
    shape: tuple[int, ...]  # (1, C, H, W) as recorded
    op: str = ""  # window ops: "conv", "max" or "avg"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)  # padding before the first element (top, left)
    fill: float = 0.0  # the padding value a window op reads outside its input
    macs: int = 0  # multiply-adds per output element (window ops)
    # Per axis: changed interval [lo, hi) per window position, region size and start.
    lo: list[np.ndarray] = field(default_factory=list)
    hi: list[np.ndarray] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    region: tuple[int, int] = (0, 0)
    start: list[np.ndarray] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.shape[1]

    def query(self) -> tuple[list[np.ndarray], tuple[int, int]]:
        """Window op: start per position and size, per axis, of the input its region reads."""
        starts = [self.start[a] * self.stride[a] - self.pad[a] for a in range(2)]
        size = tuple(
            (self.region[a] - 1) * self.stride[a] + (self.kernel[a] - 1) * self.dilation[a] + 1
            for a in range(2)
        )
        return starts, size


@dataclass
class _Plan:
    """What incremental inference needs for one model, input shape, window and stride: the
    local nodes with their geometry, the prefix in forward order, the cut, the suffix module,
    the paddings of the kept maps, the windows per chunk; or only a note why there is none."""

    note: str
    locals: dict = field(default_factory=dict)
    order: list = field(default_factory=list)
    cut: fx.Node | None = None
    suffix: fx.GraphModule | None = None
    margins: dict = field(default_factory=dict)  # (node, fill) -> (top, bottom, left, right)
    chunk: int = 1
    kept: set = field(default_factory=set)  # nodes whose values on the unoccluded input are read
    prefix: set = field(default_factory=set)
    # Memory layout of the windows' batches, chosen on the first call by timing both (as the
    # Model's batch-size search does for plain score calls, xaikit.layout), and the suffix on
    # the channels-last copy of the model with the copy it was made for.
    layout: str | None = None
    channels_last: tuple | None = None

    @property
    def usable(self) -> bool:
        return self.cut is not None


class Incremental:
    """Scores of every window position of one occlusion call, by incremental inference.

    Built by :func:`prepare`; :meth:`scores` gives one item's ``(n_windows, K)`` scores.
    """

    def __init__(
        self,
        model: Model,
        graph: Graph,
        plan: _Plan,
        counts: list[int],
        covers: list[np.ndarray],
        first_values: dict,
    ) -> None:
        self.model = model
        self.graph = graph
        self.locals = plan.locals
        self.order = plan.order
        self.cut = plan.cut
        self.suffix = plan.suffix
        self.plan = plan
        self.modules = graph.modules  # the layers the regions run on (the copy's if channels-last)
        self.channels_last = False
        self.margins = plan.margins
        self.chunk = plan.chunk
        self.kept = plan.kept
        self.counts = counts
        self.dtype = float_dtype(model.module)
        # inputs and blends in float64 for a float64 model (its precision kept), else float32
        self.input_dtype = attribution_dtype(model.module)
        device = model.device
        self.covers = [torch.as_tensor(c, device=device) for c in covers]
        self.starts = {
            n: [torch.as_tensor(s, device=device) for s in info.start]
            for n, info in plan.locals.items()
        }
        self.constants: dict[fx.Node, Any] = {}
        # The kept values of the first item, recorded while planning (its first scores call).
        self.first_values: dict | None = first_values

    # ------------------------------------------------------------------ per item

    def scores(self, x: np.ndarray, baseline: Any) -> np.ndarray:
        """Scores ``(n_windows, K)`` of ``x`` with each window replaced by ``baseline``."""
        device = self.model.device
        with preserved_state(self.model.module), torch.inference_mode():
            values = self.first_values if self.first_values is not None else self._record(x)
            self.first_values = None
            self.constants = values
            maps = {}
            for (node, fill), (top, bottom, left, right) in self.margins.items():
                padded = values[node]
                if top or bottom or left or right:
                    padded = F.pad(padded, (left, right, top, bottom), value=fill)
                maps[node, fill] = _rows(padded)  # (H * W, C): one row per position
            cut_map = values[self.cut]
            del values
            # channels-last once per item: every chunk gathers its windows' crops from rows
            x_t = _channels_last(
                torch.as_tensor(np.asarray(x), dtype=self.input_dtype, device=device)
            )
            base = _channels_last(
                torch.as_tensor(
                    np.asarray(baseline, dtype=np.float64), dtype=self.input_dtype, device=device
                )
            )
            total = int(np.prod(self.counts))
            out = None
            for begin in range(0, total, self.chunk):
                flat = np.arange(begin, min(begin + self.chunk, total))
                if self.plan.layout is None:
                    scores = self._choose_layout(flat, x_t, base, maps, cut_map)
                else:
                    self._use_layout(self.plan.layout)
                    scores = self._chunk(flat, x_t, base, maps, cut_map)
                if out is None:
                    out = np.empty((total, scores.shape[1]), dtype=scores.dtype)
                out[begin : begin + len(flat)] = scores
        return out

    def _use_layout(self, name: str) -> None:
        """Run the regions and the suffix on the user's layers, or on their channels-last copy."""
        module = self.model.module
        self.channels_last = name == "channels_last"
        if not self.channels_last:
            self.modules, self.suffix = self.graph.modules, self.plan.suffix
            return
        # made again when the weights change; no in-place ReLU: regions are views of kept maps
        twin = layout.channels_last_copy(module, in_place=False)
        held = self.plan.channels_last
        if held is None or held[0] is not twin:
            held = (twin, _suffix(twin, self.graph, self.plan.prefix, self.cut))
            self.plan.channels_last = held
        self.modules = {path: m for path, m in twin.named_modules() if m is not twin}
        self.suffix = held[1]

    def _choose_layout(self, flat, x_t, base, maps, cut_map) -> np.ndarray:
        """Time the windows' first batch in both layouts (interleaved, best of two); keep
        channels-last when faster with scores equal to the default layout's."""
        if not layout.may_use_channels_last(
            self.model.module, x_t[None], self.model.forward_kwargs
        ):
            self.plan.layout = "contiguous"
            self._use_layout("contiguous")
            return self._chunk(flat, x_t, base, maps, cut_map)
        results, seconds = {}, {}
        for name in ("contiguous", "channels_last", "contiguous", "channels_last"):
            self._use_layout(name)
            start = time.perf_counter()
            try:
                results[name] = self._chunk(flat, x_t, base, maps, cut_map)
            except Exception:
                if name == "contiguous":
                    raise
                # the copy failed (a forward that reads a folded BatchNorm): the user's layers
                self.plan.layout = "contiguous"
                self._use_layout("contiguous")
                return results["contiguous"]
            seconds[name] = min(seconds.get(name, np.inf), time.perf_counter() - start)
        faster = seconds["channels_last"] <= layout.GAIN * seconds["contiguous"]
        same = layout.equal_scores(results["contiguous"], results["channels_last"])
        self.plan.layout = "channels_last" if faster and same else "contiguous"
        self._use_layout(self.plan.layout)
        return results[self.plan.layout]

    def _record(self, x: np.ndarray) -> dict:
        """The kept nodes' values on the unoccluded ``x`` (batch of one)."""
        x_t = torch.as_tensor(np.asarray(x), dtype=self.input_dtype, device=self.model.device)
        values, _ = _run_recorded(
            self.model.module, self.graph, x_t[None].to(self.dtype), keep=self.kept
        )
        return values

    def _chunk(self, flat: np.ndarray, x_t, base, maps: dict, cut_map) -> np.ndarray:
        positions = np.unravel_index(flat, self.counts)
        device = x_t.device
        pos = [torch.as_tensor(p, device=device) for p in positions]
        ph, pw = pos[-2], pos[-1]
        regions: dict[fx.Node, torch.Tensor] = {}
        starts: dict[fx.Node, tuple[torch.Tensor, torch.Tensor]] = {}
        for node in self.order:
            info = self.locals[node]
            start = (self.starts[node][0][ph], self.starts[node][1][pw])
            starts[node] = start
            if info.kind == "input":
                regions[node] = self._input_region(info, start, pos, x_t, base)
            elif info.kind == "window":
                regions[node] = self._window_region(info, start, regions, starts, maps)
            else:
                regions[node] = self._pointwise_region(info, start, regions, starts, maps)
        features = _paste(cut_map, regions[self.cut], starts[self.cut], self.channels_last)
        del regions
        out = model_output(self.suffix(features))
        if isinstance(out, torch.Tensor) and out.ndim == 1 and len(out) == len(flat):
            out = out[:, None]  # a regressor: one score per item
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(flat):
            raise ValueError(
                f"model: expected scores of shape (N, K) from its traced forward, got "
                f"{type(out).__name__}"
            )
        return float_output(out).cpu().numpy()

    def _input_region(self, info: _Local, start, pos, x_t, base) -> torch.Tensor:
        """The occluded input on its region: x blended with the baseline, as plain occlusion."""
        rh, rw = info.region
        rows = start[0][:, None] + torch.arange(rh, device=x_t.device)  # (B, rh)
        cols = start[1][:, None] + torch.arange(rw, device=x_t.device)  # (B, rw)
        x_crop = _gather(_rows(x_t[None]), x_t.shape[2], rows, cols)
        base_crop = (
            base if base.ndim == 0 else _gather(_rows(base[None]), base.shape[2], rows, cols)
        )
        cover_h = self.covers[-2][pos[-2][:, None], rows]  # (B, rh): rows the window covers
        cover_w = self.covers[-1][pos[-1][:, None], cols]
        occluded = cover_h[:, None, :, None] & cover_w[:, None, None, :]
        if len(self.covers) == 3:  # a full-rank window also slides over the channels
            occluded = occluded & self.covers[0][pos[0]][:, :, None, None]
        keep = (~occluded).to(self.input_dtype)
        return torch.lerp(base_crop, x_crop, keep).to(self.dtype)

    def _window_region(self, info: _Local, start, regions, starts, maps) -> torch.Tensor:
        """A convolution's or pooling's region, from what its region reads, padding off."""
        (source,) = info.sources
        q_start = tuple(start[a] * info.stride[a] - info.pad[a] for a in range(2))
        _, q_size = info.query()
        q = self._view(source, q_start, q_size, info.fill, regions, starts, maps)
        module = self.modules[info.node.target]
        if info.op == "conv":
            return F.conv2d(
                q, module.weight, module.bias, info.stride, 0, info.dilation, module.groups
            )
        if info.op == "max":
            return F.max_pool2d(q, info.kernel, info.stride, 0, info.dilation)
        return F.avg_pool2d(
            q, info.kernel, info.stride, 0, divisor_override=module.divisor_override
        )

    def _pointwise_region(self, info: _Local, start, regions, starts, maps) -> torch.Tensor:
        node = info.node
        inputs = {
            s: self._view(s, start, info.region, None, regions, starts, maps) for s in info.sources
        }
        first = node.args[0] if node.args else None
        copy = _mutates(node, self.graph)

        def arg(a):
            if isinstance(a, fx.Node):
                value = inputs[a] if a in inputs else self.constants[a]
                return value.clone() if copy and a is first else value
            return a

        args = tuple(arg(a) for a in node.args)
        kwargs = {k: arg(v) for k, v in node.kwargs.items()}
        if node.op == "call_module":
            return self.modules[node.target].forward(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _view(self, source, q_start, q_size, fill, regions, starts, maps) -> torch.Tensor:
        """The source's map on the query windows ``[q_start, q_start + q_size)`` per window:
        its recomputed region where it has one, its kept map elsewhere, ``fill`` outside it."""
        region = regions[source]
        s_start = starts[source]
        b, c, rh, rw = region.shape
        qh, qw = q_size
        device = region.device
        # Where the query's rows and columns fall in the region, and the region's in the query.
        rel_h = q_start[0][:, None] + torch.arange(qh, device=device) - s_start[0][:, None]
        rel_w = q_start[1][:, None] + torch.arange(qw, device=device) - s_start[1][:, None]
        if bool((rel_h >= 0).all() & (rel_h < rh).all() & (rel_w >= 0).all() & (rel_w < rw).all()):
            if qh == rh and qw == rw and not bool(rel_h[:, 0].any() | rel_w[:, 0].any()):
                return region  # the same rows and columns
            return _gather_each(region, rel_h, rel_w)  # a part of the region
        top, _, left, right = self.margins[source, fill]
        width = self.locals[source].size[1] + left + right
        rows = q_start[0][:, None] + torch.arange(qh, device=device) + top
        cols = q_start[1][:, None] + torch.arange(qw, device=device) + left
        index = (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)
        # One spare row at the end receives the region's positions outside the query.
        out = maps[source, fill].index_select(0, torch.cat([index, index[:1]]))
        to_h = s_start[0][:, None] - q_start[0][:, None] + torch.arange(rh, device=device)
        to_w = s_start[1][:, None] - q_start[1][:, None] + torch.arange(rw, device=device)
        inside = ((to_h >= 0) & (to_h < qh))[:, :, None] & ((to_w >= 0) & (to_w < qw))[:, None, :]
        batch = torch.arange(b, device=device)[:, None, None] * (qh * qw)
        dest = torch.where(inside, batch + to_h[:, :, None] * qw + to_w[:, None, :], b * qh * qw)
        out.index_copy_(0, dest.reshape(-1), _rows(region))
        return out[:-1].view(b, qh, qw, c).permute(0, 3, 1, 2)


def _rows(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(B, C, H, W)`` as contiguous rows ``(B * H * W, C)`` (a view for channels-last
    maps, else a copy: gathering rows from a strided view took 4-40x longer)."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).contiguous()


def _channels_last(image: torch.Tensor) -> torch.Tensor:
    """An image ``(C, H, W)`` with its channels innermost in memory (a scalar as it is)."""
    if image.ndim != 3:
        return image
    return image[None].contiguous(memory_format=torch.channels_last)[0]


def _gather(rows_map: torch.Tensor, width: int, rows: torch.Tensor, cols: torch.Tensor):
    """Windows ``(B, C, len(rows), len(cols))`` of one map given as rows ``(H * width, C)``;
    channels-last, so that each position's channels are copied in one piece."""
    b, qh = rows.shape
    qw = cols.shape[1]
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)
    out = rows_map.index_select(0, index)
    return out.view(b, qh, qw, rows_map.shape[1]).permute(0, 3, 1, 2)


def _gather_each(region: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    """Window ``b`` of ``region[b]`` (``(B, C, h, w)``) at its own rows and columns."""
    b, c, h, w = region.shape
    qh, qw = rows.shape[1], cols.shape[1]
    batch = torch.arange(b, device=region.device)[:, None, None] * (h * w)
    index = (batch + rows[:, :, None] * w + cols[:, None, :]).reshape(-1)
    out = _rows(region).index_select(0, index)
    return out.view(b, qh, qw, c).permute(0, 3, 1, 2)


def _paste(full: torch.Tensor, region: torch.Tensor, start, channels_last: bool) -> torch.Tensor:
    """Copies of ``full`` ``(1, C, H, W)``, copy ``b`` with ``region[b]`` pasted at its start
    (in the channels-last layout, or the default one)."""
    b = len(region)
    _, c, h, w = full.shape
    rh, rw = region.shape[-2:]
    rows = start[0][:, None] + torch.arange(rh, device=full.device)
    cols = start[1][:, None] + torch.arange(rw, device=full.device)
    at = rows[:, :, None] * w + cols[:, None, :]  # (B, rh, rw): positions in one map
    if channels_last:
        out = _rows(full).repeat(b, 1)  # (B * H * W, C)
        batch = torch.arange(b, device=full.device)[:, None, None] * (h * w)
        out.index_copy_(0, (batch + at).reshape(-1), _rows(region).to(out.dtype))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)
    out = full.expand(b, *full.shape[1:]).clone()
    index = at.reshape(b, 1, rh * rw).expand(b, c, -1)
    out.reshape(b, c, -1).scatter_(2, index, region.reshape(b, c, -1).to(out.dtype))
    return out


# ---------------------------------------------------------------------- planning


def prepare(
    model: Model,
    x: np.ndarray,
    f_x: np.ndarray,
    *,
    window: tuple[int, ...],
    stride: tuple[int, ...],
    counts: list[int],
    covers: list[np.ndarray],
    background: bool,
    mode: Any,
) -> tuple[Incremental | None, str]:
    """An :class:`Incremental` for this call, or None and why occlusion runs plainly."""
    if mode is False:
        return None, "turned off (incremental=False)"
    if model.module is None:
        return None, "the model is a callable on NumPy batches, whose layers cannot be read"
    if model.forward_kwargs:
        return None, "the model's forward takes forward_kwargs"
    if x.ndim != 4 or x.dtype.kind != "f":
        return None, "the inputs are not images (C, H, W)"
    if background:
        return None, "background rows as baseline"
    around = user_code_around_layers(model.module)
    if around is not None:  # the plan reads each layer's class, never that code
        return None, around
    with preserved_state(model.module):
        try:
            graph = trace(model.module, method="occlusion")
        except TypeError:
            return None, "a TorchScript model, whose forward torch.fx cannot read"
        except ValueError as err:
            cause = err.__cause__
            why = f" ({type(cause).__name__})" if cause is not None else ""
            return None, f"torch.fx cannot trace the model's forward{why}"
    placeholders = [n for n in graph.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None, "the model's forward takes more than one input"
    written = next((n.name for n in graph.graph.nodes if "out" in n.kwargs), None)
    if written is not None:  # its result may go unused while the write matters
        return None, f"the forward writes into a tensor through out= ({written!r})"
    dtype = float_dtype(model.module)
    key = (tuple(x.shape[1:]), dtype, str(model.device), tuple(window), tuple(stride), mode,
           model.batch_size, _hooked(graph))  # fmt: skip
    plan = graph.plans.get(("occlusion", key))
    if plan is not None and not plan.usable:
        return None, plan.note  # decided before: no forward needed
    # a copy of its own: a forward that writes into its input must not change x
    x0 = torch.tensor(x[0], dtype=attribution_dtype(model.module), device=model.device)
    x0 = x0[None].to(dtype)
    try:
        with preserved_state(model.module), torch.inference_mode():
            values, output = _run_recorded(model.module, graph, x0)
    except Exception as err:  # the model's own forward worked: the trace is not faithful
        return None, f"its traced forward fails ({type(err).__name__})"
    output = model_output(output)
    if not isinstance(output, torch.Tensor) or output.numel() != f_x[0].size:
        return None, "the traced forward does not give the model's scores"
    got = float_output(output).reshape(-1).cpu().numpy().astype(np.float64)
    want = f_x[0].astype(np.float64)
    if hidden_updates(graph, model.module, x0):
        return None, (
            "the forward updates a tensor in place (a += b) while another name still holds "
            "it, which the torch.fx trace reads as a new tensor"
        )
    if np.abs(got - want).max() > 1e-5 * max(1.0, np.abs(want).max()):
        edited = _edited_then_read(graph)
        if edited is not None:  # recorded values are kept as made: an edit is not seen later
            return None, (
                f"the forward changes a tensor in place ({edited!r}) and reads it afterwards, "
                "which the recorded maps cannot follow"
            )
        return None, "the traced forward does not give the model's scores"
    if plan is None:
        plan = _plan(model, graph, values, placeholders[0], window, stride, counts, mode)
        graph.plans["occlusion", key] = plan
    if not plan.usable:
        return None, plan.note
    first = {n: values[n] for n in plan.kept}
    return Incremental(model, graph, plan, counts, covers, first), plan.note


def _hooked(graph: Graph) -> tuple[str, ...]:
    """Modules with forward hooks (a plan is made anew when they change)."""
    return tuple(
        name for name, m in graph.modules.items() if m._forward_hooks or m._forward_pre_hooks
    )


def _plan(
    model: Model, graph: Graph, values: dict, placeholder, window, stride, counts, mode
) -> _Plan:
    """The cheapest cut and everything the windows' scores need, or why there is none."""
    locals_ = _local_nodes(graph, values, placeholder)
    if not any(info.kind == "window" for info in locals_.values()):
        return _Plan(_no_prefix_note(graph, placeholder, locals_))
    _geometry(locals_, placeholder, window, stride, counts, values[placeholder].shape[-2:])
    costs = _full_costs(graph, values)
    full = sum(costs.values())
    if mode == "auto" and full < AUTO_MIN_COST:
        return _Plan(
            f"a plain forward is cheap here (about {full:.1e} multiply-adds), so recomputing "
            "regions would cost more than it saves"
        )
    best = None
    for cut, prefix in _cuts(graph, locals_, placeholder):
        if not any(locals_[n].kind == "window" for n in prefix):
            continue
        cost = _prefix_cost(locals_, prefix, cut) + sum(
            c for n, c in costs.items() if n not in prefix
        )
        if best is None or cost < best[0]:
            best = (cost, cut, prefix)
    if best is None:
        return _Plan(_no_prefix_note(graph, placeholder, locals_))
    cost, cut, prefix = best
    ratio = cost / max(full, 1.0)
    if mode == "auto" and ratio > AUTO_RATIO:
        return _Plan(
            f"would save little here: estimated {ratio:.0%} of a plain forward per window "
            f"(through {_name(cut)!r})"
        )
    order = [n for n in graph.graph.nodes if n in prefix]
    margins = _margins(locals_, order)
    constants = {
        a for n in order for a in n.all_input_nodes if a not in locals_
    }  # parameters and values computed from them, read by pointwise nodes
    note = (
        f"recomputed the changed regions through {_name(cut)!r} ({len(order) - 1} operations), "
        f"the rest in full: estimated {ratio:.0%} of a plain forward per window"
    )
    return _Plan(
        note,
        locals=locals_,
        order=order,
        cut=cut,
        suffix=_suffix(model.module, graph, prefix, cut),
        margins=margins,
        chunk=_chunk_size(model, locals_, order, values, prefix, counts),
        kept={n for n, _ in margins} | {cut} | constants,
        prefix=prefix,
    )


class _Recorder(fx.Interpreter):
    """Runs the traced forward and keeps the values of ``keep`` (every node's when None);
    an operation that writes into its input works on a copy, so kept values stay as made."""

    def __init__(self, module: nn.Module, graph: Graph, keep: set | None) -> None:
        super().__init__(module, garbage_collect_values=keep is not None, graph=graph.graph)
        self.traced = graph
        self.keep = keep
        self.kept: dict = {}

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if _mutates(n, self.traced) and args and isinstance(args[0], torch.Tensor):
                args = (args[0].clone(), *args[1:])
            value = getattr(self, n.op)(n.target, args, kwargs)
        if self.keep is None or n in self.keep:
            self.kept[n] = value
        return value


def _run_recorded(
    module: nn.Module, graph: Graph, x: torch.Tensor, keep: set | None = None
) -> tuple[dict, Any]:
    """(the kept values, the output) of the traced forward on ``x``."""
    recorder = _Recorder(module, graph, keep)
    output = recorder.run(x)
    return recorder.kept, output


def _mutates(node: fx.Node, graph: Graph) -> bool:
    """Whether the node writes into its first argument: an in-place module, ``inplace=True``
    (by keyword or position), ``Tensor.add_``-style methods, ``torch.relu_``, item assignment."""
    if node.op in ("placeholder", "output", "get_attr"):
        return False
    if is_inplace(node, graph) or node.target is operator.setitem or "out" in node.kwargs:
        return True  # ``torch.add(a, b, out=a)`` writes too
    if node.op == "call_function" and callable(node.target):
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):  # builtins without a signature, or another call shape
            bound = None
        if bound is not None and bound.arguments.get("inplace") is True:
            return True
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.op != "call_module" and name.endswith("_") and not name.endswith("__")


def _edited_then_read(graph: Graph) -> str | None:
    """The first node that writes into its input while a later node reads that input."""
    nodes = list(graph.graph.nodes)
    for i, node in enumerate(nodes):
        if not _mutates(node, graph) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        if any(node.args[0] in later.all_input_nodes for later in nodes[i + 1 :]):
            return _name(node)
    return None


def _local_nodes(graph: Graph, values: dict, placeholder: fx.Node) -> dict[fx.Node, _Local]:
    """Local nodes in forward order: those through which a window's effect stays local."""
    x = values[placeholder]
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        return {}
    found = {placeholder: _Local(placeholder, "input", [], tuple(x.shape))}
    data = {placeholder}
    for node in graph.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        sources = [a for a in node.all_input_nodes if a in data]
        if not sources:
            continue
        data.add(node)
        if all(s in found for s in sources):
            info = _classify(node, sources, graph, values)
            if info is not None:
                found[node] = info
    return found


def _classify(node: fx.Node, sources: list, graph: Graph, values: dict) -> _Local | None:
    out = values.get(node)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or not out.is_floating_point():
        return None
    shape = tuple(out.shape)
    if node.op == "call_module":
        module = graph.modules[node.target]
        if module._forward_hooks or module._forward_pre_hooks:
            return None  # a hook may change what the layer gives: it must see the full map
        if len(node.args) != 1 or node.args[0] is not sources[0] or len(sources) != 1:
            return None
        if node.kwargs:
            return None
        window = _window_op(module)
        if window is not None:
            op, kernel, stride, dilation, pad, fill, macs = window
            return _Local(
                node, "window", sources, shape, op, kernel, stride, dilation, pad, fill, macs
            )
        pointwise = type(module).forward in _POINTWISE_FORWARDS or _batch_norm(module)
        if pointwise and tuple(values[sources[0]].shape) == shape:
            return _Local(node, "pointwise", sources, shape)
        return None
    if node.op == "call_function" and node.target not in _POINTWISE_FUNCTIONS:
        return None
    if node.op == "call_method" and node.target not in _POINTWISE_METHODS:
        return None
    if node.op not in ("call_function", "call_method"):
        return None
    top = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    if set(top) != set(node.all_input_nodes):
        return None  # a node inside a list or tuple argument
    for a in top:
        if a in sources:
            if tuple(values[a].shape) != shape:
                return None  # broadcasting between maps: not pointwise over space
        elif not _constant_over_space(values.get(a)):
            return None
    return _Local(node, "pointwise", sources, shape)


def _batch_norm(module: nn.Module) -> bool:
    """An eval-mode BatchNorm2d with running statistics: a per-channel affine map."""
    return (
        isinstance(module, nn.BatchNorm2d)
        and type(module).forward is nn.BatchNorm2d.forward
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def _constant_over_space(value: Any) -> bool:
    if isinstance(value, (int, float, bool)):
        return True
    if not isinstance(value, torch.Tensor):
        return False
    return all(s == 1 for s in value.shape[-2:])


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _window_op(module: nn.Module):
    """(op, kernel, stride, dilation, padding, fill, macs) of a local window module, or None."""
    kind = type(module).forward
    plain_conv = (
        type(module)._conv_forward is nn.Conv2d._conv_forward
        if isinstance(module, nn.Conv2d)
        else False
    )  # a weight-standardised subclass overrides _conv_forward, not forward
    if isinstance(module, nn.Conv2d) and kind is nn.Conv2d.forward and plain_conv:
        if module.padding_mode != "zeros":
            return None
        kernel, dilation = _pair(module.kernel_size), _pair(module.dilation)
        if isinstance(module.padding, str):  # "valid" or "same" (stride 1, padding in front)
            same = module.padding == "same"
            pad = tuple(
                (d * (k - 1)) // 2 if same else 0 for k, d in zip(kernel, dilation, strict=True)
            )
        else:
            pad = _pair(module.padding)
        macs = module.weight[0].numel()
        return "conv", kernel, _pair(module.stride), dilation, pad, 0.0, macs
    if isinstance(module, nn.MaxPool2d) and kind is nn.MaxPool2d.forward:
        if module.return_indices:
            return None
        kernel = _pair(module.kernel_size)
        return (
            "max",
            kernel,
            _pair(module.stride),
            _pair(module.dilation),
            _pair(module.padding),
            -math.inf,
            kernel[0] * kernel[1],
        )
    if isinstance(module, nn.AvgPool2d) and kind is nn.AvgPool2d.forward:
        pad = _pair(module.padding)
        if module.ceil_mode or (any(pad) and not module.count_include_pad):
            return None
        kernel = _pair(module.kernel_size)
        return ("avg", kernel, _pair(module.stride), (1, 1), pad, 0.0, kernel[0] * kernel[1])
    return None


def _geometry(locals_: dict, placeholder, window, stride, counts, spatial) -> None:
    """Changed intervals, region sizes and starts of every local node, per axis."""
    for node, info in locals_.items():
        info.size = tuple(int(s) for s in info.shape[-2:])
        if node is placeholder:
            info.lo = [np.arange(counts[-2 + a]) * stride[-2 + a] for a in range(2)]
            info.hi = [np.minimum(info.lo[a] + window[-2 + a], spatial[a]) for a in range(2)]
        elif info.kind == "window":
            src = locals_[info.sources[0]]
            info.lo, info.hi = [], []
            for a in range(2):
                reach = (info.kernel[a] - 1) * info.dilation[a]
                lo = -((-(src.lo[a] + info.pad[a] - reach)) // info.stride[a])
                hi = (src.hi[a] - 1 + info.pad[a]) // info.stride[a] + 1
                info.lo.append(np.maximum(lo, 0))
                info.hi.append(np.minimum(hi, info.size[a]))
        else:
            srcs = [locals_[s] for s in info.sources]
            info.lo = [np.min([s.lo[a] for s in srcs], axis=0) for a in range(2)]
            info.hi = [np.max([s.hi[a] for s in srcs], axis=0) for a in range(2)]
        spans = [np.maximum(info.hi[a] - info.lo[a], 1) for a in range(2)]
        info.region = tuple(min(int(spans[a].max()), info.size[a]) for a in range(2))
        info.start = [
            np.clip(np.minimum(info.lo[a], _EMPTY), 0, info.size[a] - info.region[a]).astype(
                np.int64
            )
            for a in range(2)
        ]


def _cuts(graph: Graph, locals_: dict, placeholder):
    """(cut, prefix) pairs: local nodes every path from the input passes through."""
    ancestors: dict[fx.Node, set] = {}
    for node in graph.graph.nodes:
        if node not in locals_:
            continue
        below = {node}
        for s in locals_[node].sources:
            below |= ancestors[s]
        ancestors[node] = below
    for node in graph.graph.nodes:
        if node not in locals_ or node is placeholder:
            continue
        prefix = ancestors[node]
        if all(set(n.users) <= prefix for n in prefix if n is not node):
            yield node, prefix


def _full_costs(graph: Graph, values: dict) -> dict[fx.Node, float]:
    """Estimated cost of every node of one plain forward (multiply-adds, element ops)."""
    costs = {}
    for node in graph.graph.nodes:
        out = values.get(node)
        if node.op in ("placeholder", "output", "get_attr") or not isinstance(out, torch.Tensor):
            continue
        module = graph.modules.get(node.target) if node.op == "call_module" else None
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            costs[node] = float(out.numel()) * weight[0].numel()
        else:
            costs[node] = float(out.numel()) * POINT_COST
    return costs


def _prefix_cost(locals_: dict, prefix: set, cut) -> float:
    """Estimated cost per window of the recomputed regions through ``cut`` and the paste."""
    cost = 0.0
    for node in prefix:
        info = locals_[node]
        area = info.channels * info.region[0] * info.region[1]
        if info.kind == "input":
            cost += area * GATHER_COST
        elif info.kind == "window":
            _, (qh, qw) = info.query()
            src = locals_[info.sources[0]]
            cost += area * info.macs + src.channels * qh * qw * GATHER_COST
        else:
            same = all(_same_region(locals_[s], info) for s in info.sources)
            cost += area * (POINT_COST + (0 if same else GATHER_COST * len(info.sources)))
    return cost + float(np.prod(locals_[cut].shape)) * COPY_COST


def _margins(locals_: dict, order: list) -> dict:
    """(source, fill) -> padding (top, bottom, left, right) its kept map needs for the
    queries of its consumers: every query window then lies inside the padded map."""
    margins: dict = {}
    for node in order:
        info = locals_[node]
        if info.kind == "input":
            continue
        if info.kind == "window":
            starts, size = info.query()
            fill, wanted = info.fill, [(info.sources[0], starts, size)]
        else:  # only sources whose region is not the node's own are read through a query
            fill = None
            wanted = [
                (s, info.start, info.region)
                for s in info.sources
                if not _same_region(locals_[s], info)
            ]
        for source, starts, size in wanted:
            src = locals_[source]
            pads = []
            for a in range(2):
                pads += [
                    max(0, -int(starts[a].min())),
                    max(0, int(starts[a].max()) + size[a] - src.size[a]),
                ]
            old = margins.get((source, fill), (0, 0, 0, 0))
            margins[source, fill] = tuple(max(p, o) for p, o in zip(pads, old, strict=True))
    return margins


def _same_region(a: _Local, b: _Local) -> bool:
    return a.region == b.region and all(
        np.array_equal(sa, sb) for sa, sb in zip(a.start, b.start, strict=True)
    )


def _suffix(module: nn.Module, graph: Graph, prefix: set, cut: fx.Node) -> fx.GraphModule:
    """The forward after ``cut``, as a module that takes the cut's map (the user's layers)."""
    new = fx.Graph()
    env = {cut: new.placeholder("features")}
    for node in graph.graph.nodes:
        if node in prefix:
            continue
        env[node] = new.node_copy(node, lambda a: env[a])
    suffix = fx.GraphModule(module, new)
    suffix.graph.eliminate_dead_code()
    suffix.recompile()
    return suffix


def _chunk_size(model: Model, locals_, order, values, prefix, counts) -> int:
    """Windows per chunk: the largest per-window tensor (a region, a query, a suffix map)
    times the chunk within ``CHUNK_BYTES``; the Model's own batch size when it has one."""
    if model.batch_size != "auto":
        return int(model.batch_size)
    sizes = []
    for node in order:
        info = locals_[node]
        sizes.append(info.channels * info.region[0] * info.region[1])
        if info.kind == "window":
            qh, qw = info.query()[1]
            sizes.append(locals_[info.sources[0]].channels * qh * qw)
    sizes += [
        v[0].numel()
        for n, v in values.items()
        if n not in prefix and n.op != "get_attr" and isinstance(v, torch.Tensor) and v.ndim >= 2
    ]
    size = CHUNK_BYTES // max(1, 4 * max(sizes))
    return int(max(1, min(MAX_CHUNK, size, int(np.prod(counts)))))


def _name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _no_prefix_note(graph: Graph, placeholder, locals_: dict) -> str:
    """Why there is no local prefix: the first operation on the input that is not local."""
    first = next(
        (
            n
            for n in graph.graph.nodes
            if n not in locals_
            and n.op not in ("get_attr",)
            and any(a in locals_ for a in n.all_input_nodes)
        ),
        None,
    )
    what = ""
    if first is not None and _is_shape(first):
        # a shape read leaves the input beside every layer: no layer has all paths through it
        return (
            "the forward reads the input's shape (x.shape or x.size()), so no layer lies on "
            "every path from the input: incremental inference cannot split the network"
        )
    if first is not None:
        kind = (
            type(graph.modules[first.target]).__name__
            if first.op == "call_module"
            else getattr(first.target, "__name__", str(first.target))
        )
        what = f" (the first operation that is not: {_name(first)!r}, {kind})"
    return (
        "no leading convolution or pooling layers through which a window's effect stays "
        f"local{what}"
    )
