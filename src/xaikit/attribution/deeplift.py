"""DeepLIFT with the rescale rule, and DeepLiftShap (DeepLIFT averaged over background rows).

DeepLIFT (Shrikumar et al. 2017) explains F(x) - F(x') by differences from a reference x':
linear operations pass multipliers like gradients, and every nonlinearity y = f(z) multiplies by
the secant (f(z) - f(z')) / (z - z') instead of its slope (the rescale rule). Attributions are
(x - x') times the multipliers and sum to F(x) - F(x') exactly.

Each item runs through the model next to its reference, as two adjacent rows of one batch
(an even number of rows per batch keeps the pairs together), through :meth:`Model.gradients`;
hooks on the nonlinear modules, removed when the call ends, replace their backward with the
secant computed from the pair. Max pooling uses the rule Captum uses (the difference of the
pooled outputs sent to both rows' maxima), so results equal Captum's ``DeepLift``. The
forward is read with torch.fx first (:mod:`xaikit.attribution._graph`), so nonlinearities
called as functions (``F.relu``, ``torch.sigmoid``) get the rule too; a nonlinearity the graph
has no rule for is refused by name before anything is computed.

References: Shrikumar, Greenside & Kundaje (2017), "Learning important features through
propagating activation differences", ICML, arXiv:1704.02685; Lundberg & Lee (2017), "A unified
approach to interpreting model predictions", NeurIPS (DeepSHAP: DeepLIFT over background data).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from xaikit._torch import attribution_tensor, float_dtype
from xaikit.attribution import _graph
from xaikit.attribution.perturbation import CHUNK_BYTES
from xaikit.attribution.registry import Attribution, register
from xaikit.baselines import make_baseline
from xaikit.model import Model

# Below this input difference a unit uses its gradient instead of the secant (Captum's eps).
EPS = 1e-10


@register(
    "deeplift",
    needs_gradients=True,
    needs_hooks=True,
    reference="Shrikumar et al. 2017, arXiv:1704.02685",
)
def deeplift(
    model: Model, x: np.ndarray, targets: np.ndarray, *, baseline=0.0, seed: int | None = 0
) -> Attribution:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017) against one reference per item.

    ``baseline``: a number, ``"mean"``, ``"blur"`` or ``"noise"`` (per item, see
    :func:`xaikit.baselines.make_baseline`; ``seed`` draws the noise), an array of one input's
    shape, or one reference per item ``(N, *x.shape)``. Attributions sum to F(x) - F(x'); the
    gap is reported per item in ``info["completeness_gap"]``.
    """
    xt = attribution_tensor(np.asarray(x), model.module, model.device)
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.detach().cpu().numpy()
    arr = np.asarray(baseline) if not isinstance(baseline, str) else None
    if arr is not None and arr.shape == x.shape:
        references = arr
    elif isinstance(baseline, str):
        references = np.stack(
            [make_baseline(item, baseline, seed=seed, background=False).values for item in x]
        )
    else:
        references = make_baseline(x[0], baseline, background=False).values[None]
    refs = torch.as_tensor(np.asarray(references), dtype=xt.dtype, device=xt.device)
    per_item = len(refs) == len(xt)
    return _rescaled(
        model, xt, targets, lambda items, _r: refs[items] if per_item else refs[[0] * len(items)], 1
    )


@register(
    "deeplift_shap",
    needs_gradients=True,
    needs_hooks=True,
    reference="Lundberg & Lee 2017, arXiv:1705.07874",
)
def deeplift_shap(
    model: Model, x: np.ndarray, targets: np.ndarray, *, baseline=None
) -> Attribution:
    """DeepLiftShap: DeepLIFT averaged over background rows as references (Lundberg & Lee 2017).

    ``baseline``: background data ``(R, *x.shape)``; each item is explained against every row
    and the attributions averaged, so they sum to F(x) - mean_r F(x'_r).
    """
    if baseline is None:
        raise ValueError("baseline: deeplift_shap needs background data (R, *x.shape)")
    rows = make_baseline(x[0], baseline, background=True).values
    xt = attribution_tensor(np.asarray(x), model.module, model.device)
    background = torch.as_tensor(np.asarray(rows), dtype=xt.dtype, device=xt.device)
    return _rescaled(model, xt, targets, lambda _items, r: background[r], len(background))


def _rescaled(model: Model, xt: torch.Tensor, targets, reference, n_refs: int) -> Attribution:
    """Mean over references r of (x - x'_r) * multipliers, pair by pair through the Model.

    ``reference(items, r)`` gives the references of pairs (item, r), ``(b, *x.shape)``.
    """
    graph = _graph.trace(model.module, method="deeplift")
    plan = _graph.plan(graph, method="deeplift")  # refuses what has no rule, before computing
    one = xt[:1].to(float_dtype(model.module))
    _graph.refuse_hidden_updates(graph, model.module, one, method="deeplift")
    model = _even_batches(model)
    n = len(xt)
    total = n * n_refs
    values = torch.zeros_like(xt)
    f_x = torch.zeros(n, dtype=xt.dtype, device=xt.device)
    f_ref = torch.zeros(n, dtype=xt.dtype, device=xt.device)
    pair_bytes = 2 * max(1, xt[0].numel() * xt.element_size())
    chunk = max(1, CHUNK_BYTES // pair_bytes)
    target_t = torch.as_tensor(np.asarray(targets), device=xt.device)
    with _graph.rerun(model.module, graph, rescale_actions(plan, graph)):
        for start in range(0, total, chunk):
            flat = torch.arange(start, min(start + chunk, total), device=xt.device)
            items, r = flat // n_refs, flat % n_refs
            inputs, refs = xt[items], reference(items, r)
            # Adjacent rows: the item, then its reference.
            points = torch.stack([inputs, refs], dim=1).reshape(-1, *xt.shape[1:])
            pair_targets = target_t[items].repeat_interleave(2).cpu().numpy()
            scores, grads = model.gradients(points, pair_targets, as_numpy=False, check=False)
            index = torch.as_tensor(pair_targets, device=xt.device)[:, None]
            picked = scores.gather(1, index)[:, 0].to(xt.dtype)
            grads = grads.to(xt.dtype)  # a float64 model gives float64 gradients
            values.index_add_(0, items, (inputs - refs) * grads[0::2] / n_refs)
            f_x[items] = picked[0::2]
            f_ref.index_add_(0, items, picked[1::2] / n_refs)
    values_np = values.cpu().numpy()
    difference = (f_x - f_ref).cpu().numpy()
    gap = np.abs(values_np.reshape(n, -1).sum(axis=1) - difference)
    return Attribution(
        values=values_np, info={"completeness_gap": gap, "output_difference": difference}
    )


def _even_batches(model: Model) -> Model:
    """The model, batched so that no (item, reference) pair of rows is split: every batch an
    even number of rows (also when 10 rows at 8 would run as 2 x 5)."""
    paired = copy.copy(model)  # the same module, batch-size memo and settings
    paired._rows_per_group = 2
    return paired


# ---------------------------------------------------------------------- the rescale rule


def _multipliers(f, pooling: bool, x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor):
    """The rescale rule at one nonlinearity ``y = f(x)`` for interleaved (item, reference) rows."""
    if x.shape[0] % 2:
        raise RuntimeError("deeplift: a batch split an (item, reference) pair")
    with torch.enable_grad():
        probe = x.detach().requires_grad_(True)
        out = f(probe)
    dx = _pairwise(x[0::2] - x[1::2])
    if pooling:
        # Captum's maxpool rule: the larger of the two pooled outputs splits the output
        # difference into the item's and the reference's part, each sent to its own maxima.
        item, ref = y[0::2], y[1::2]
        top = torch.max(item, ref)
        dy = torch.stack([top - ref, item - top], dim=1).reshape(y.shape)
        (spread,) = torch.autograd.grad(out, probe, grad * dy, retain_graph=True)
        (plain,) = torch.autograd.grad(out, probe, grad)
        numerator = _pairwise(spread[0::2] + spread[1::2])
        return torch.where(dx.abs() < EPS, plain, numerator / dx)
    (plain,) = torch.autograd.grad(out, probe, grad)
    dy = _pairwise(y[0::2] - y[1::2])
    return torch.where(dx.abs() < EPS, plain, grad * dy / dx)


def _pairwise(per_pair: torch.Tensor) -> torch.Tensor:
    """One value per pair repeated for both rows of the pair."""
    return per_pair.repeat_interleave(2, dim=0)


class _Rescale(torch.autograd.Function):
    """Returns a nonlinearity's output unchanged; its backward applies the rescale rule."""

    @staticmethod
    def forward(ctx, x, y, f, pooling):
        ctx.save_for_backward(x, y)
        ctx.f, ctx.pooling = f, pooling
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return _multipliers(ctx.f, ctx.pooling, x, y, grad), None, None, None


def rescale_actions(plan: _graph.Plan, graph: _graph.Graph) -> dict:
    """What the rerun forward does at each nonlinearity (see :func:`_graph.rerun`)."""

    def rescale(node, args, kwargs, call):
        x = args[0].clone() if _graph.is_inplace(node, graph) else args[0]
        f = _graph.rerun_as(node, graph, args, kwargs)
        return _Rescale.apply(x, call(args, kwargs).detach(), f, node in plan.max_pools)

    return dict.fromkeys([*plan.elementwise, *plan.max_pools], rescale)
