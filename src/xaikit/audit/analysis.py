"""From the relevance maps of a whole data set to findings: class maps, SpRAy, shortcuts.

Relevance here is the positive part of each map (evidence *for* the explained class),
normalized to sum 1 per image, so every image weighs the same and a share is a share.

- **Class maps**: the mean normalized map of each class, and its share per cell of a 3x3 grid.
- **SpRAy** (Lapuschkin et al. 2019): per class, a k-nearest-neighbour graph of the maps,
  the normalized graph Laplacian's smallest eigenvalues, the largest eigengap as the number of
  prediction strategies, k-means on the spectral embedding (Ng, Jordan & Weiss 2002) for the
  clusters, and the first two non-trivial eigenvectors as a 2-D embedding.
- **Findings**: a class (or a SpRAy cluster of it) is reported when

  * a large part of its relevance (median over its images at least ``min_background``) sits
    on background pixels (see :func:`xaikit.audit.shard.background_mask`), consistently, and
    at least :data:`MIN_BACKGROUND_RATIO` times the other classes' median (kind
    ``"background"``); or
  * its relevance concentrates in a small box (at most ``max_area`` of the image) holding at
    least :data:`PATTERN_SHARE` of ``min_share`` and :data:`PATTERN_RATIO` times the other
    classes' share there, consistently (in at least ``min_consistency`` of its images the box
    holds more than in 95% of the other classes' images), and the box is a **pattern**: it
    looks alike across the group's images (:func:`sameness` >= :data:`MIN_SAMENESS`: a pasted
    watermark, tag or line, also one that moves a few pixels), and either sways the model
    (the transplant test below; a pattern less alike than :data:`EXCLUSIVE_SAMENESS` must sway
    it more, up to :data:`LIFT_NEAR_STROKES` times ``min_lift``: :func:`needed_lift`) or holds
    :data:`EXCLUSIVE_RATIO` times the other classes' share with a sameness of at least
    :data:`EXCLUSIVE_SAMENESS` (kind ``"region"``).

  A box that is not a pattern but has strong map evidence (``min_share`` and ``min_ratio``
  times the others) and sways the model is **distinctive evidence** of the class (a digit's
  own stroke), kept apart in ``Audit.evidence``. Every tested box and background share is
  listed, with its decision, in ``Audit.info["candidates"]``.

  The box is the rectangle that maximises the sum of (the group's mean map minus the other
  classes' mean map) minus a fixed cost per cell (:data:`REGION_CUTS` of the smoothed
  contrast's peak, each tried; :data:`BACKGROUND_CUT` for background relevance, which
  spreads thinner), scaled back to input pixels. Boxes are looked for in
  :data:`BOX_ROUNDS` rounds: each round sets its widest box aside and the next looks at the
  rest, so a shortcut beside a class's own stronger strokes is tested too.

- **Transplant test** (when the model is at hand, as in :func:`xaikit.audit`): a region is
  pasted from the group's images into other classes' images, and a control region (the same
  box from yet other images) into the same images. A shortcut makes the model call the pasted
  images the group's class (the watermark turned a car into a horse in Lapuschkin et al.).
  It passes when ``transplant_rate - control_rate >= min_lift``.

The thresholds were chosen on the design sets of ``benchmarks/audit_reliability.py`` (first
SmallCNN, a conv-conv-fc net and an MLP; then also models of five architectures that had
served as the first, second and third held-out set; four kinds of planted shortcut) and
checked on a fourth held-out set of five architectures (docs/benchmarks.md, docs/audit.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaikit.audit.result import Audit, Cluster, Finding

#: Defaults of the finding criteria (see the module docstring).
MAX_AREA = 0.25
MIN_SHARE = 0.2
MIN_RATIO = 8.0
MIN_CONSISTENCY = 0.5
#: Background (pixels off the object and its edge, see :func:`xaikit.audit.shard.background_mask`):
#: on the design sets, planted textures held 0.05-0.6 of their class's relevance, consistently;
#: on clean images no class of a clean model held 2.5x the other classes' share consistently.
#: Before the edge was left out, a small ResNet's thin "1"s held 0.13-0.15, as much as the
#: faintest planted textures.
MIN_BACKGROUND = 0.04
MIN_BACKGROUND_RATIO = 2.5
#: SpRAy: the eigengap is looked for among the first MAX_CLUSTERS + 1 eigenvalues.
MAX_CLUSTERS = 8
#: Classes and clusters smaller than this (images) are not checked for findings.
MIN_CLUSTER = 5
EXAMPLES = 6
#: Costs per cell of the region's boxes, as a share of the smoothed contrast's peak, each tried
#: (background relevance spreads thinner over its texture, so it gets a lower cost: with a
#: tenth, boxes of textures next to the digit stopped short where strokes leave little
#: background).
REGION_CUTS = (0.2, 0.3, 0.4)
#: Rounds of the box search: after each, the cells of its widest box are set aside.
BOX_ROUNDS = 3
BACKGROUND_CUT = 0.03
#: Transplant test: the lift of the group's class over the control that confirms a region,
#: and how many images take part.
MIN_LIFT = 0.1
RECIPIENTS = 64
DONORS = 16
#: A region is a pattern when its pixels look alike across the group's images (sameness >=
#: MIN_SAMENESS). Chosen on benchmarks/audit_reliability.py's design set: every planted
#: shortcut had a box at 0.50-1.0, the classes' own strokes on clean models reached 0.46.
MIN_SAMENESS = 0.5
#: ... and a pattern on which the other classes put less than 1/EXCLUSIVE_RATIO of the
#: relevance there is found even when pasting it alone does not sway the model (a line the
#: model reads beside the digit's own strokes), if it looks alike by a wider margin
#: (EXCLUSIVE_SAMENESS): on the design sets the thin boxes of a 0's sides, read by no other
#: class, reached a sameness of 0.57; marks and lines found this way 0.72 and more.
EXCLUSIVE_RATIO = 20.0
EXCLUSIVE_SAMENESS = 0.65
#: A pattern that looks alike by a clear margin (EXCLUSIVE_SAMENESS and more) is confirmed by
#: ``min_lift``; nearer MIN_SAMENESS, where a class's own strokes can look as alike, the lift
#: it needs grows linearly to LIFT_NEAR_STROKES times ``min_lift``. On the second held-out set
#: a small ViT's own strokes (a 5's top bar, a 0's side) reached a sameness of 0.53-0.54 and
#: swayed it by 11-12 points; the planted marks found at a sameness under 0.6 swayed their
#: models by 12-45 points.
LIFT_NEAR_STROKES = 2.0
#: Sameness compares each pair of images at the best shift of up to this many pixels each
#: way, so a mark placed a few pixels apart in each image still counts as one pattern.
SAMENESS_MOVE = 4
#: Every box needs PATTERN_SHARE of ``min_share`` and PATTERN_RATIO times the other classes'
#: share there (other digits' strokes may draw relevance to the place of a mark). Thin lines
#: and moving marks a small ResNet or ViT learned held 0.10-0.15 of their class's relevance.
PATTERN_RATIO = 2.0
PATTERN_SHARE = 0.5
#: A box whose consistency is below ``min_consistency`` but at least this share of it (a mark
#: where the other classes' strokes also draw relevance: a centre mark on digits measured
#: 0.27) is still tested: a finding when it is as alike as EXCLUSIVE_SAMENESS asks and sways
#: the model by LIFT_NEAR_STROKES times ``min_lift`` (that centre mark: 0.77 against 0.03).
WEAK_CONSISTENCY = 0.5


def analyze(
    *,
    maps: np.ndarray,
    background: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray | None,
    pool: int,
    input_shape: tuple[int, int],
    examples: Callable[[np.ndarray], np.ndarray] | None = None,
    info: dict[str, Any] | None = None,
    max_area: float = MAX_AREA,
    min_share: float = MIN_SHARE,
    min_ratio: float = MIN_RATIO,
    min_consistency: float = MIN_CONSISTENCY,
    min_background: float = MIN_BACKGROUND,
    min_lift: float = MIN_LIFT,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Audit:
    """Analyse pooled relevance maps ``(N, h, w)`` of a data set into an :class:`Audit`.

    ``background`` (N, h, w) is the share of background pixels per cell; ``pool`` the pooling
    factor from input pixels to cells; ``examples(indices)`` returns those items' inputs (for
    the findings' example images). Groups are ``labels`` when given, else the predictions.
    ``predict(inputs)`` (predicted classes) enables the transplant test; it needs
    ``examples`` to read the inputs.
    """
    groups = labels if labels is not None else predictions
    relevance = normalized(maps)
    valid = relevance.reshape(len(relevance), -1).sum(axis=1) > 0
    classes = [int(c) for c in np.unique(groups)]
    class_maps = {c: _mean(relevance, (groups == c) & valid) for c in classes}
    region_shares = {c: grid_shares(m) for c, m in class_maps.items()}
    on_background = (relevance * background).reshape(len(relevance), -1).sum(axis=1)
    clusters = {
        c: spray(relevance[np.flatnonzero(groups == c)], np.flatnonzero(groups == c), c)
        for c in classes
    }

    criteria = dict(
        max_area=max_area,
        min_share=min_share,
        min_ratio=min_ratio,
        min_consistency=min_consistency,
        min_background=min_background,
        min_lift=min_lift if predict is not None and examples is not None else None,
    )
    context = _Context(
        relevance=relevance,
        background=background,
        on_background=on_background,
        groups=groups,
        valid=valid,
        class_maps=class_maps,
        pool=pool,
        input_shape=tuple(input_shape),
        criteria=criteria,
        predict=predict if criteria["min_lift"] is not None else None,
        items=examples,
    )
    findings: list[Finding] = []
    for c in classes:
        members = np.flatnonzero((groups == c) & valid)
        if len(members) < MIN_CLUSTER:
            # A class of a few images cannot be told from its own strokes: one image is
            # "consistent" with itself and "alike" to itself everywhere
            context.candidates.append(
                {"target": int(c), "cluster": None, "kind": "class", "images": len(members),
                 "decision": None, "rejected": "too few images"}
            )  # fmt: skip
            continue
        found = context.check(c, members, cluster=None)
        if found is not None:
            findings.append(found)
        cluster = clusters[c]
        if cluster.k < 2:
            continue
        for j in range(cluster.k):
            part = cluster.indices[cluster.labels == j]
            part = part[valid[part]]
            if len(part) < MIN_CLUSTER:
                continue
            sub = context.check(c, part, cluster=j)
            if sub is not None and not any(
                f.target == c and iou(f.region, sub.region) > 0.3 for f in findings
            ):
                findings.append(sub)
    # One shortcut on two classes: each class's relevance there is measured against the other
    # classes', which include the other carrier: checked again without the classes found
    carriers = {f.target for f in findings if f.kind == "region"}
    for c in classes if carriers else []:
        members = np.flatnonzero((groups == c) & valid)
        if c in {f.target for f in findings} or len(members) < MIN_CLUSTER:
            continue
        found = context.check(c, members, cluster=None, exclude=carriers)
        if found is not None:
            findings.append(found)
    findings.sort(key=lambda f: (-f.relevance_share * f.consistency, f.target))
    evidence: list[Finding] = []
    for e in context.evidence:  # one entry per place: the whole class first, then clusters
        if not any(
            e.target == f.target and iou(e.region, f.region) > 0.3 for f in findings + evidence
        ):
            evidence.append(e)
    evidence.sort(key=lambda f: (-f.relevance_share * f.consistency, f.target))
    if examples is not None:
        for f in [*findings, *evidence]:
            f.example_inputs = np.asarray(examples(np.asarray(f.images)), dtype=np.float32)
            f.example_maps = maps[np.asarray(f.images)]
    return Audit(
        findings=findings,
        class_maps=class_maps,
        region_shares=region_shares,
        clusters=clusters,
        maps=maps,
        background=background,
        targets=targets,
        predictions=predictions,
        labels=labels,
        pool=pool,
        input_shape=tuple(int(s) for s in input_shape),
        info=dict(info or {}, criteria=criteria, candidates=context.candidates),
        evidence=evidence,
    )


def normalized(maps: np.ndarray) -> np.ndarray:
    """Positive part of each map divided by its sum (all-zero maps stay zero)."""
    positive = np.maximum(maps, 0).astype(np.float64)
    total = positive.reshape(len(positive), -1).sum(axis=1)
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    return positive * scale[:, None, None]


def grid_shares(class_map: np.ndarray, parts: int = 3) -> np.ndarray:
    """Share of a normalized map in each cell of a ``parts`` x ``parts`` grid (top-left first)."""
    h, w = class_map.shape
    ys = np.linspace(0, h, parts + 1).round().astype(int)
    xs = np.linspace(0, w, parts + 1).round().astype(int)
    return np.array(
        [
            [class_map[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].sum() for j in range(parts)]
            for i in range(parts)
        ]
    )


def iou(a, b) -> float:
    """Intersection over union of two boxes (y0, x0, y1, x1) with exclusive ends."""
    dy = min(a[2], b[2]) - max(a[0], b[0])
    dx = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, dy) * max(0, dx)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Context:
    """Everything the finding test of one class or cluster compares against."""

    relevance: np.ndarray
    background: np.ndarray
    on_background: np.ndarray
    groups: np.ndarray
    valid: np.ndarray
    class_maps: dict[int, np.ndarray]
    pool: int
    input_shape: tuple[int, int]
    criteria: dict[str, Any]
    predict: Callable[[np.ndarray], np.ndarray] | None  # the transplant test needs both
    items: Callable[[np.ndarray], np.ndarray] | None
    evidence: list[Finding] = field(default_factory=list)  # distinctive, not shortcuts
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every region tested
    _tested: dict[tuple, tuple] = field(default_factory=dict)

    def check(
        self, c: int, members: np.ndarray, *, cluster: int | None, exclude: set = frozenset()
    ) -> Finding | None:
        """The finding for class ``c`` (or its cluster): ``members`` against the other
        classes, less those in ``exclude``."""
        others = [k for k in self.class_maps if k != c and k not in exclude]
        if len(members) == 0 or not others:
            return None
        rest = np.flatnonzero(
            (self.groups != c) & self.valid & ~np.isin(self.groups, list(exclude))
        )
        crit = self.criteria
        mean_map = self.relevance[members].mean(axis=0)
        other_map = np.mean([self.class_maps[k] for k in others], axis=0)

        # Background: most relevance off the object, consistently, and unlike the others.
        bg_members = self.on_background[members]
        bg_rest = self.on_background[rest]
        bg_share = float(np.median(bg_members))
        bg_other = float(np.median(bg_rest)) if len(rest) else 0.0
        consistency = _consistency(bg_members, bg_rest)
        background = (
            bg_share >= crit["min_background"]
            and bg_share >= MIN_BACKGROUND_RATIO * bg_other
            and consistency >= crit["min_consistency"]
        )
        self.candidates.append(
            {
                "target": int(c),
                "cluster": cluster,
                "kind": "background",
                "share": bg_share,
                "other_share": bg_other,
                "consistency": consistency,
                "decision": "finding" if background else None,
            }
        )
        if background:
            on_bg = (self.relevance[members] * self.background[members]).mean(axis=0)
            other_bg = np.mean(
                [
                    _mean(self.relevance * self.background, (self.groups == k) & self.valid)
                    for k in others
                ],
                axis=0,
            )
            box = _box(on_bg - other_bg, threshold=BACKGROUND_CUT, pool=self.pool)
            # the shares on the background, not in the box (which may be the whole image)
            return self._finding(
                c, members, cluster, box, kind="background", share=bg_share,
                other_share=bg_other, consistency=consistency, bg_share=bg_share,
            )  # fmt: skip

        # Region: a small box holding much of the relevance, consistently, unlike the others.
        # A tighter box (a higher cost per cell) is tried too: a mark next to the digit's own
        # strokes can share a box with them and only stand out alone.
        boxes = _boxes(mean_map - other_map, pool=self.pool)
        decided = [self._region(c, members, rest, cluster, box, mean_map, other_map, bg_share)
                   for box in boxes]  # fmt: skip
        for wanted in ("finding", "evidence"):
            for decision, found in decided:
                if decision == wanted:
                    if decision == "evidence":
                        self.evidence.append(found)
                        return None
                    return found
        return None

    def _region(self, c, members, rest, cluster, box, mean_map, other_map, bg_share):
        """(decision, Finding) for one box: "finding", "evidence" or None (see _decide)."""
        crit = self.criteria
        y0, x0, y1, x1 = box
        share = float(mean_map[y0:y1, x0:x1].sum())
        other_share = float(other_map[y0:y1, x0:x1].sum())
        area = self._pixels(box)
        area = (area[2] - area[0]) * (area[3] - area[1]) / np.prod(self.input_shape)
        in_box = self.relevance[:, y0:y1, x0:x1].sum(axis=(1, 2))
        consistency = _consistency(in_box[members], in_box[rest])
        candidate = {
            "target": int(c),
            "cluster": cluster,
            "kind": "region",
            "region": list(self._pixels(box)),
            "share": share,
            "other_share": other_share,
            "consistency": float(consistency),
        }
        # Below min_consistency (a mark amid the other classes' own strokes, whose relevance
        # there is high too) only a pattern the transplant test confirms strongly is a finding
        weak = consistency < crit["min_consistency"]
        rejected = (
            "area" if area > crit["max_area"]
            else "share" if share < PATTERN_SHARE * crit["min_share"]
            else "ratio" if share < PATTERN_RATIO * other_share
            else "consistency" if consistency < WEAK_CONSISTENCY * crit["min_consistency"]
            or (weak and crit["min_lift"] is None)
            else None
        )  # fmt: skip
        if rejected is not None:  # the maps alone rule it out: no transplant test
            self.candidates.append({**candidate, "decision": None, "rejected": rejected})
            return None, None
        # Evidence from the maps alone: much relevance, far more than the other classes there.
        strong = share >= crit["min_share"] and share >= crit["min_ratio"] * other_share
        donors = members[np.argsort(-in_box[members], kind="stable")[:DONORS]]
        test = self._test(c, self._pixels(box), donors)
        rate, control, alike = test
        decision = _decide(
            share=share,
            other_share=other_share,
            strong=strong,
            rate=rate,
            control=control,
            alike=alike,
            min_lift=crit["min_lift"],
            weak=weak,
        )
        self.candidates.append(
            {
                **candidate,
                "transplant_rate": rate,
                "control_rate": control,
                "sameness": alike,
                "decision": decision,
                "rejected": None if decision is not None else "test",
            }
        )
        if decision is None:
            return None, None
        found = self._finding(
            c, members, cluster, box, kind="region", share=share, other_share=other_share,
            consistency=consistency, bg_share=bg_share,
        )  # fmt: skip
        found.transplant_rate, found.control_rate, found.sameness = test
        return decision, found

    def _test(self, c, region, donors) -> tuple[float | None, float | None, float | None]:
        """(transplant rate, control rate, sameness) of a region, each computed once; the
        rates are None without the model, the sameness None without the items."""
        key = (c, region, tuple(donors))
        if key not in self._tested:
            rate = control = alike = None
            recipients = np.flatnonzero(self.groups != c)
            if self.items is not None and len(recipients):
                others = spread_pick(recipients, RECIPIENTS)
                alike = sameness(self.items(donors), self.items(others), region, move=SAMENESS_MOVE)
            if self.predict is not None and self.items is not None:
                rate, control = transplant_rates(
                    self.predict,
                    self.items,
                    target=c,
                    region=region,
                    donors=donors,
                    recipients=recipients,
                )
            self._tested[key] = (rate, control, alike)
        return self._tested[key]

    def _finding(
        self, c, members, cluster, box, *, kind, share, other_share, consistency, bg_share
    ) -> Finding | None:
        if box is None:
            return None
        y0, x0, y1, x1 = box
        in_box = self.relevance[members, y0:y1, x0:x1].sum(axis=(1, 2))
        top = members[np.argsort(-in_box, kind="stable")[:EXAMPLES]]
        return Finding(
            target=int(c),
            region=self._pixels(box),
            relevance_share=float(share),
            other_share=float(other_share),
            consistency=float(consistency),
            n_images=len(members),
            images=[int(i) for i in top],
            kind=kind,
            cluster=cluster,
            background_share=float(bg_share),
        )

    def _pixels(self, box) -> tuple[int, int, int, int]:
        h, w = self.input_shape
        y0, x0, y1, x1 = (int(v) * self.pool for v in box)
        return y0, x0, min(y1, h), min(x1, w)


def _decide(
    *,
    share: float,
    other_share: float,
    strong: bool,
    rate,
    control,
    alike,
    min_lift,
    weak: bool = False,
) -> str | None:
    """ "finding", "evidence" (distinctive evidence of the class) or None for a region that
    passed the maps' first checks (see the module docstring). ``weak``: its consistency is
    below the minimum, so only a clear pattern that sways the model strongly is a finding."""
    if weak:
        clear = alike is not None and alike >= EXCLUSIVE_SAMENESS
        strongly = rate is not None and rate - control >= LIFT_NEAR_STROKES * min_lift
        return "finding" if clear and strongly else None
    swayed = rate is None or rate - control >= min_lift  # untested counts as swayed
    if alike is None:  # without the items nothing tells a pattern from the class's own strokes
        return "finding" if strong and swayed else None
    # A pattern: found when the model is swayed by it (the more, the less alike it looks), or
    # when the other classes put (almost) no relevance there, so that only this class reads it.
    convinced = rate is None or rate - control >= needed_lift(alike, min_lift=min_lift)
    exclusive = share >= EXCLUSIVE_RATIO * other_share and alike >= EXCLUSIVE_SAMENESS
    if alike >= MIN_SAMENESS and (convinced or exclusive):
        return "finding"
    return "evidence" if strong and swayed else None


def needed_lift(alike: float, *, min_lift: float = MIN_LIFT) -> float:
    """The transplant lift that confirms a pattern of sameness ``alike`` as a shortcut.

    ``min_lift`` from :data:`EXCLUSIVE_SAMENESS` up; below it, rising linearly to
    :data:`LIFT_NEAR_STROKES` times ``min_lift`` at :data:`MIN_SAMENESS`.
    """
    doubt = (EXCLUSIVE_SAMENESS - alike) / (EXCLUSIVE_SAMENESS - MIN_SAMENESS)
    return min_lift * (1.0 + (LIFT_NEAR_STROKES - 1.0) * min(max(doubt, 0.0), 1.0))


def transplant_rates(
    predict: Callable[[np.ndarray], np.ndarray],
    items: Callable[[np.ndarray], np.ndarray],
    *,
    target: int,
    region: tuple[int, int, int, int],
    donors: np.ndarray,
    recipients: np.ndarray,
    n: int = RECIPIENTS,
) -> tuple[float, float]:
    """Share of other classes' images called ``target`` with ``region`` pasted from donors.

    Up to ``n`` recipients, evenly spread over ``recipients`` (deterministic), each get the
    region of one donor (cycled); the control pastes the region of the next recipient instead,
    so both edits change the same pixels by similar amounts. Returns (rate, control rate).
    """
    if len(recipients) == 0 or len(donors) == 0:
        return 0.0, 0.0
    chosen = spread_pick(recipients, n)
    y0, x0, y1, x1 = region
    base = np.array(items(chosen), copy=True)
    pasted, control = base.copy(), base.copy()
    donor_items = np.asarray(items(donors[np.arange(len(chosen)) % len(donors)]))
    pasted[..., y0:y1, x0:x1] = donor_items[..., y0:y1, x0:x1]
    control[..., y0:y1, x0:x1] = np.roll(base, 1, axis=0)[..., y0:y1, x0:x1]
    classes = np.asarray(predict(np.concatenate([pasted, control])))
    rate = float(np.mean(classes[: len(chosen)] == target))
    return rate, float(np.mean(classes[len(chosen) :] == target))


def spread_pick(indices: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``indices``, evenly spread (the same ones every time)."""
    return indices[np.linspace(0, len(indices) - 1, min(n, len(indices))).astype(int)]


def sameness(
    donors: np.ndarray,
    others: np.ndarray,
    region: tuple[int, int, int, int],
    *,
    move: int = 0,
) -> float:
    """How alike ``region`` looks across the donors, against other images (0 to 1).

    One minus the ratio of the donors' mean pairwise distance in the region (root mean
    square difference) to their mean distance from ``others`` there, each pair compared at
    the best of the shifts of up to ``move`` pixels each way. A pasted pattern (watermark,
    logo, tag, a line) is nearly the same in every image that carries it and unlike the
    other images there (close to 1), also when it sits a few pixels apart and ``move`` allows
    for that; a stroke or part of the object varies about as much as it differs from other
    images (close to 0).
    """
    donors, others = np.asarray(donors), np.asarray(others)
    within = _distance(donors, donors, region, move)
    between = _distance(donors, others, region, move)
    if not between > 0:
        return 0.0
    return float(np.clip(1.0 - within / between, 0.0, 1.0))


def _distance(a: np.ndarray, b: np.ndarray, region, move: int) -> float:
    """Mean over pairs (one of ``a``, another of ``b``) of the RMS difference in ``region``,
    each pair at the shift of ``b``'s image (up to ``move`` pixels) that matches best."""
    if len(a) == 0 or len(b) == 0 or (a is b and len(a) < 2):
        return 0.0
    y0, x0, y1, x1 = region
    m = move

    def flat(images):
        return images.reshape(len(images), -1, *images.shape[-2:]).astype(np.float64)

    crops = flat(a)[:, :, y0:y1, x0:x1].reshape(len(a), -1)
    padded = np.pad(flat(b), ((0, 0), (0, 0), (m, m), (m, m)))
    best = np.full((len(a), len(b)), np.inf)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            shifted = padded[:, :, y0 + m + dy : y1 + m + dy, x0 + m + dx : x1 + m + dx]
            shifted = shifted.reshape(len(b), -1)
            squared = (
                (crops**2).sum(1)[:, None] + (shifted**2).sum(1)[None, :] - 2 * crops @ shifted.T
            )
            best = np.minimum(best, np.maximum(squared, 0.0) / crops.shape[1])
    if a is b:  # an image against itself says nothing about the others
        best = best[~np.eye(len(a), dtype=bool)]
    return float(np.sqrt(best).mean())


def _consistency(members: np.ndarray, rest: np.ndarray) -> float:
    """Share of the members above the 95th percentile of everyone else (1.0 with no others)."""
    if len(rest) == 0:
        return 1.0
    return float(np.mean(members > np.quantile(rest, 0.95)))


def _box(
    contrast: np.ndarray, *, threshold: float, pool: int = 1
) -> tuple[int, int, int, int] | None:
    """The box (cells) that maximises the sum of ``contrast - threshold * peak``.

    ``peak`` is the maximum of the contrast smoothed over 3x3 pixels, so a checkerboard-like
    patch (a mark whose dark squares get no relevance) counts by its average, not its hottest
    pixel; maps pooled by ``pool`` >= 2 already average neighbouring pixels in each cell, and
    smoothing them further would lower the peak of a mark two cells wide and widen its box.
    Every cell inside costs the same, so the box takes the cells that clearly carry contrast
    and stops where the contrast falls below the cut; holes inside a patch are bridged when
    the cells around them pay for it. Maximum-sum rectangle: Kadane's algorithm
    over the columns for every pair of rows.
    """
    from scipy import ndimage  # on first use: `import xaikit` stays light

    smooth = ndimage.uniform_filter(contrast, size=3 if pool == 1 else 1, mode="constant")
    peak = smooth.max()
    if not peak > 0:
        return None
    gain = contrast - threshold * peak
    h, w = gain.shape
    columns = np.vstack([np.zeros(w), np.cumsum(gain, axis=0)])  # prefix sums down each column
    best, box = -np.inf, None
    for y0 in range(h):
        for y1 in range(y0 + 1, h + 1):
            line = columns[y1] - columns[y0]
            run, start = 0.0, 0
            for x in range(w):
                if run <= 0:
                    run, start = 0.0, x
                run += line[x]
                if run > best:
                    best, box = run, (y0, start, y1, x + 1)
    return box


def _boxes(contrast: np.ndarray, *, pool: int) -> list[tuple[int, int, int, int]]:
    """Candidate boxes (cells) of a group's contrast map, in :data:`BOX_ROUNDS` rounds.

    Each round tries every cost of :data:`REGION_CUTS`; then the cells of its widest box are
    set aside (contrast 0) and the next round looks at the rest, its costs relative to the
    rest's own peak. A class's own strokes draw the most contrast, and a shortcut beside them
    (a mark that moves a few pixels, a thin line) may only stand out once they are set aside.
    """
    boxes: list[tuple[int, int, int, int]] = []
    rest = np.array(contrast, dtype=np.float64)
    for _ in range(BOX_ROUNDS):
        found = [_box(rest, threshold=cut, pool=pool) for cut in REGION_CUTS]
        found = [box for box in found if box is not None]
        if not found:
            break
        boxes += [box for box in dict.fromkeys(found) if box not in boxes]
        y0, x0, y1, x1 = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        rest[y0:y1, x0:x1] = 0.0
    return boxes


def _mean(relevance: np.ndarray, which: np.ndarray) -> np.ndarray:
    if not which.any():
        return np.zeros(relevance.shape[1:])
    return relevance[which].mean(axis=0)


def spray(relevance: np.ndarray, indices: np.ndarray, target: int) -> Cluster:
    """Spectral relevance analysis of one class's maps (Lapuschkin et al. 2019).

    A symmetric k-nearest-neighbour graph (k = 10, fewer for small classes) over the maps
    (pooled to at most 16 cells a side), the normalized Laplacian's smallest eigenvalues, the
    number of clusters at the largest eigengap (at most :data:`MAX_CLUSTERS`), k-means on the
    row-normalized eigenvectors, and a 2-D embedding by the first two non-trivial eigenvectors.
    """
    n = len(indices)
    if n < 4:
        return Cluster(target, 1, np.zeros(n, np.int64), np.zeros(0), np.zeros((n, 2)), indices)
    from scipy.linalg import eigh
    from sklearn.cluster import KMeans
    from sklearn.neighbors import kneighbors_graph

    features = _shrink(relevance, 16).reshape(n, -1)
    knn = kneighbors_graph(features, n_neighbors=min(10, n - 1), mode="connectivity")
    affinity = knn.maximum(knn.T).toarray()
    degree = affinity.sum(axis=1)
    scale = 1.0 / np.sqrt(degree)
    laplacian = np.eye(n) - scale[:, None] * affinity * scale[None, :]
    m = min(MAX_CLUSTERS + 1, n - 1)
    eigenvalues, vectors = eigh(laplacian, subset_by_index=[0, m - 1])
    gaps = np.diff(eigenvalues)
    k = int(np.argmax(gaps) + 1)
    embedding = vectors[:, 1:3] if vectors.shape[1] >= 3 else np.zeros((n, 2))
    if k == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        rows = vectors[:, :k] / np.maximum(
            np.linalg.norm(vectors[:, :k], axis=1, keepdims=True), 1e-12
        )
        labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(rows)
        labels = _relabel(labels)
    return Cluster(target, k, labels.astype(np.int64), eigenvalues, embedding, indices)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Cluster ids by decreasing size (ties: first appearance), so ids do not depend on k-means."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    mapping = {ids[old]: new for new, old in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype=np.int64)


def _shrink(maps: np.ndarray, size: int) -> np.ndarray:
    """Sum-pool (N, h, w) maps to at most ``size`` cells a side (SpRAy works on small maps)."""
    factor = max(1, -(-max(maps.shape[1:]) // size))
    if factor == 1:
        return maps
    n, h, w = maps.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.zeros((n, hp, wp))
    padded[:, :h, :w] = maps
    return padded.reshape(n, hp // factor, factor, wp // factor, factor).sum(axis=(2, 4))
