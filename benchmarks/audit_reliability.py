"""Does the audit find planted shortcuts, at their place, and leave clean models alone, on
architectures and seeds its rules were not tuned on?

Architectures (``benchmarks/_models.py``, all 1x28x28 -> 10 logits): the SmallCNN, a
conv-conv-fc net of other widths (ConvNet), an MLP, a small ResNet and a small ViT. Shortcut
kinds (``make_shortcut_mnist``): a fixed checkerboard mark, a mark moved by up to 2 pixels per
image, a faint texture over the background of a region, a thin line. For each model the seed
draws the marked class, the place and the training seed; 85% of the class's training images
carry the shortcut. Clean models are trained on clean MNIST-5k and audited on the marked images
of one kind (the seed picks it), so the mark is in the data and only the model differs.

- found: the shortcut model's audit reports the marked class with a region at the planted
  one: IoU >= 0.5 with the planted box, or with it grown by a pixel on each side (a one-pixel
  line's box cannot be matched at pixel precision), or for a moving mark with its nominal box
  (the middle of its places); or a box inside the planted one (90% of it within the grown
  box) that covers at least a quarter of it, since a model may read only part of a texture;
  goal on held-out models >= 9/10 per kind;
- false alarm: a clean model with any finding, anywhere; goal on held-out models <= 1 in 10 per
  architecture. Regions reported as "distinctive evidence" are counted apart, not as findings.

The finding rules were first chosen on the **design** set (SmallCNN, ConvNet and MLP, seeds
0-2) and checked on a held-out set (all five architectures: 10 clean models each, and 2
shortcut models per kind each, seeds from 100), analysed once: moving marks 7/10 and lines 6/10
were found. That set then served to change the rules (secondary boxes, a lower share floor, a
wider sameness margin for patterns no other class reads) and is now the second design set,
**design 2**. The same happened to a second held-out set (seeds from 200, trained and explained
before that change, analysed once: it flagged two clean ViTs for their own strokes), which then
served to make a pattern that looks less alike need a larger lift: **design 3**. A third
held-out set (seeds from 300, analysed once: a small ResNet's thin 1s were background findings
on 3 of 10 clean models) served to leave the object's edge out of the background: **design 4**.
The rules of today are reported on a fourth **held-out** set built the same way (seeds from
400), trained and explained before the rules were fixed and analysed once after.

Models and relevance maps are cached (``$XAIKIT_CACHE_DIR/audit_reliability``), so a second run
only analyses. ``--build`` trains and explains without printing any finding. ``--save`` stores a
run's (or a ``--part``'s) results, and ``--combine`` writes the table from several such files, so
the analysis can run in parts side by side.

Run: ``.venv/bin/python benchmarks/audit_reliability.py [--set NAME]`` (``design``, ``design 2``,
``design 3``, ``design 4``, ``held-out`` or ``all``, the default and the only one written to the
docs).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from _models import MLP, ConvNet, SmallResNet, SmallViT
from _report import machine_line, write_section
from xaikit._cache import default_cache_dir, load_weights, save_weights
from xaikit.audit import audit
from xaikit.audit.analysis import iou, transplant_rates
from xaikit.datasets import SmallCNN, load_mnist, train_classifier
from xaikit.datasets.shortcuts import make_shortcut_mnist
from xaikit.model import as_model

ARCHITECTURES = {
    "SmallCNN": (SmallCNN, 6),  # (builder, epochs)
    "ConvNet": (ConvNet, 6),
    "MLP": (MLP, 6),
    "SmallResNet": (SmallResNet, 6),
    "SmallViT": (SmallViT, 10),
}
KINDS = ("mark", "moving_mark", "background", "line")
DESIGN_ARCHITECTURES = ("SmallCNN", "ConvNet", "MLP")
DESIGN_SEEDS = range(3)
# Each held-out set was analysed once with the rules of its day and then used to change them,
# so it is design data now: the first (seeds from 100) led to the secondary boxes, the second
# (seeds from 200) to the lift that grows as sameness falls (see xaikit.audit.analysis), the
# third (seeds from 300) to the object's edge left out of the background (xaikit.audit.shard).
# The rules of today are reported on a fourth held-out set, seeds from 400.
SECOND_DESIGN_CLEAN = range(100, 110)
SECOND_DESIGN_SHORTCUT = range(100, 102)
THIRD_DESIGN_CLEAN = range(200, 210)
THIRD_DESIGN_SHORTCUT = range(200, 202)
FOURTH_DESIGN_CLEAN = range(300, 310)
FOURTH_DESIGN_SHORTCUT = range(300, 302)
HELD_OUT_CLEAN = range(400, 410)
HELD_OUT_SHORTCUT = range(400, 402)
STEPS = 16  # Integrated Gradients (Gauss-Legendre) steps
IMAGES = 300  # audited training images

# Candidate places, near the corners and edge middles where a mark would not hide the digit.
PLACES = {
    "mark": [(y, x, y + 6, x + 6) for y, x in [(1, 1), (1, 11), (1, 21), (11, 1), (11, 21),
                                               (21, 1), (21, 11), (21, 21)]],
    # The nominal box; moved by up to 2 pixels, the mark covers the box grown by 2.
    "moving_mark": [(y, x, y + 6, x + 6) for y, x in [(2, 2), (2, 11), (2, 20), (11, 2),
                                                      (11, 20), (20, 2), (20, 11), (20, 20)]],
    "background": [(y, x, y + 12, x + 12) for y, x in [(0, 0), (0, 8), (0, 16), (8, 0),
                                                       (8, 16), (16, 0), (16, 8), (16, 16)]],
    "line": [(1, 3, 2, 13), (1, 15, 2, 25), (26, 3, 27, 13), (26, 15, 27, 25),
             (3, 1, 13, 2), (15, 1, 25, 2), (3, 26, 13, 27), (15, 26, 25, 27)],
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One audited model: an architecture, a kind (or "clean") and a seed."""

    architecture: str
    kind: str  # one of KINDS, or "clean"
    seed: int
    group: str  # "design" or "held out"
    clean_data: bool = False  # a clean model audited on clean images (else on marked ones)

    @property
    def data_kind(self) -> str:
        """The shortcut in the audited images (a clean model sees one kind's images)."""
        return KINDS[self.seed % len(KINDS)] if self.kind == "clean" else self.kind


def plan(seed: int, kind: str) -> tuple[int, tuple[int, int, int, int]]:
    """The marked class and the (nominal) place the seed draws for a kind."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    target = int(rng.integers(10))
    places = PLACES[kind]
    return target, places[int(rng.integers(len(places)))]


def cases(which: str) -> list[Case]:
    out = []
    if which in ("design", "all"):
        for arch in DESIGN_ARCHITECTURES:
            for seed in DESIGN_SEEDS:
                out += [Case(arch, kind, seed, "design") for kind in ("clean", *KINDS)]
                out.append(Case(arch, "clean", seed, "design", clean_data=True))
    sets = [("design 2", SECOND_DESIGN_CLEAN, SECOND_DESIGN_SHORTCUT, "design 2 (first held out)"),
            ("design 3", THIRD_DESIGN_CLEAN, THIRD_DESIGN_SHORTCUT, "design 3 (second held out)"),
            ("design 4", FOURTH_DESIGN_CLEAN, FOURTH_DESIGN_SHORTCUT, "design 4 (third held out)"),
            ("held-out", HELD_OUT_CLEAN, HELD_OUT_SHORTCUT, "held out")]  # fmt: skip
    for name, clean_seeds, shortcut_seeds, group in sets:
        if which not in (name, "all"):
            continue
        for arch in ARCHITECTURES:
            out += [Case(arch, "clean", seed, group) for seed in clean_seeds]
            out += [Case(arch, "clean", seed, group, clean_data=True) for seed in clean_seeds]
            for seed in shortcut_seeds:
                out += [Case(arch, kind, seed, group) for kind in KINDS]
    return out


def located(found, planted, nominal=None) -> bool:
    """The finding points at the shortcut: IoU >= 0.5 with the planted box, with it grown by
    one pixel each way, or (a moving mark) with the mark's nominal box, the middle of its
    places; or the found box lies (90%) inside the grown box and covers a quarter of the
    planted one (a model may read only part of a texture or a mark)."""
    y0, x0, y1, x1 = planted
    grown = (max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, 28), min(x1 + 1, 28))
    boxes = [planted, grown] + ([nominal] if nominal is not None else [])
    if max(iou(found, box) for box in boxes) >= 0.5:
        return True
    return _overlap(found, grown) >= 0.9 * _area(found) and _overlap(
        found, planted
    ) >= 0.25 * _area(planted)


def _area(box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _overlap(a, b) -> int:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def run_case(case: Case, train_images: int, method: str = "integrated_gradients"):
    """Train (or load) the case's model and audit it; the audit's maps are cached by ``out``."""
    target, region = plan(case.seed, case.data_kind)
    data = make_shortcut_mnist(kind=case.data_kind, target=target, region=region, seed=case.seed)
    build, epochs = ARCHITECTURES[case.architecture]
    X_train, y_train = load_mnist("train") if case.kind == "clean" else (data.X, data.y)
    X_train, y_train = X_train[:train_images], y_train[:train_images]
    key = hashlib.sha256(np.ascontiguousarray(X_train)).hexdigest()[:12]
    name = f"{case.architecture}-{case.kind}-seed{case.seed}-ep{epochs}-{key}"
    folder = default_cache_dir() / "audit_reliability" / name
    model = build().eval()
    if not load_weights(model, folder / "model.pt", what="benchmark model"):
        model = train_classifier(build, X_train, y_train, seed=case.seed, epochs=epochs)
        save_weights(model, folder / "model.pt", what="benchmark model")
    x, y = load_mnist("train") if case.clean_data else (data.X, data.y)
    params = {"steps": STEPS} if method == "integrated_gradients" else {}
    run = f"ig{STEPS}" if method == "integrated_gradients" else method
    out = folder / (f"{run}-clean-images" if case.clean_data else run)
    result = audit(
        model, x[:IMAGES], labels=y[:IMAGES], method=method, params=params, out=out,
        progress=False,
    )  # fmt: skip
    if case.kind != "clean":  # does the model use its shortcut? (the truth, not the audit's)
        learned_lift[case] = _planted_lift(model, data, IMAGES)
    return result, data.target, data.region, region if case.data_kind == "moving_mark" else None


learned_lift: dict[Case, float] = {}
#: A shortcut counts as learned when pasting it (from the marked images, at the planted box)
#: into other classes' images makes this many more of them the class than the control.
LEARNED_LIFT = 0.1


def _planted_lift(model, data, n: int) -> float:
    """Transplant lift at the planted box with the marked images as donors."""
    wrapped = as_model(model)
    X, y, marked = data.X[:n], data.y[:n], data.marked[:n]
    rate, control = transplant_rates(
        lambda b: wrapped.scores(b, progress=False).argmax(axis=1),
        lambda i: X[np.asarray(i)],
        target=data.target,
        region=data.region,
        donors=np.flatnonzero(marked),
        recipients=np.flatnonzero(y != data.target),
    )
    return rate - control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set",
        default="all",
        choices=("design", "design 2", "design 3", "design 4", "held-out", "all"),
    )
    parser.add_argument("--part", default="1/1", help="k/n: only every n-th case from the k-th")
    parser.add_argument("--build", action="store_true", help="train and explain only")
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--methods", default="integrated_gradients,lrp",
        help="audit methods, comma-separated (the rules were chosen on integrated_gradients)",
    )  # fmt: skip
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--save", help="store this run's results in a JSON file (no table)")
    parser.add_argument(
        "--combine", nargs="+", metavar="FILE",
        help="print and write the table from --save files of runs (parts) done before",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    rows = []
    tally: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # found-or-flagged, total
    evidence: dict[tuple, int] = defaultdict(int)
    refused: dict[str, set] = defaultdict(set)
    k, n = (int(v) for v in args.part.split("/"))
    everything = list(itertools.product(args.methods.split(","), cases(args.set)))
    todo = list(enumerate(everything))[k - 1 :: n]
    if args.combine:
        todo, seconds = [], _combine(args.combine, rows, tally, evidence, refused)
    for index, (method, case) in todo:
        try:
            result, target, region, nominal = run_case(case, args.train_images, method)
        except ValueError as err:  # LRP refuses attention layers, before any work
            refused[method].add(f"{case.architecture} ({str(err).split(';')[0][:80]}...)")
            continue
        if args.build:
            print(f"built {case} {method} ({time.perf_counter() - began:.0f} s)", flush=True)
            continue
        group = case.group + ("" if method == "integrated_gradients" else f", {method}")
        case = dataclasses.replace(case, group=group)
        findings = result.findings
        distinctive = getattr(result, "evidence", [])
        for arch in (case.architecture, "all"):
            evidence[(case.group, arch, case.kind == "clean")] += len(distinctive)
        hit, learned = None, 0.0
        if case.kind == "clean" and case.clean_data:
            ok = bool(findings)
            _count(tally, (case.group, case.architecture, "clean"), ok)
        elif case.kind == "clean":
            ok = bool(findings)
            there = any(located(f.region, region, nominal) for f in findings)
            _count(tally, (case.group, case.architecture, "clean, marked images"), ok)
            _count(tally, (case.group, case.architecture, "clean, at the mark"), there)
        else:
            hits = [
                f for f in findings if f.target == target and located(f.region, region, nominal)
            ]
            hit = hits[0] if hits else None
            ok = hit is not None
            learned = learned_lift[dataclasses.replace(case, group=case.group.split(",")[0])]
            for arch in (case.architecture, "all"):
                _count(tally, (case.group, arch, case.kind), ok)
                if learned >= LEARNED_LIFT:
                    _count(tally, (case.group, arch, f"{case.kind}, learned"), ok)
        best = max((iou(f.region, region) for f in findings if f.target == target), default=0.0)
        others = [f"{f.target}:{f.region}" for f in findings if hit is None or f is not hit]
        model = case.kind
        if case.kind == "clean":
            model += " (clean images)" if case.clean_data else f" ({case.data_kind} images)"
        rows.append((index, method,
            f"| {case.group} | {case.architecture} | {model} | {case.seed} | {target} | "
            f"{region} | {'yes' if ok else 'no'} | {best:.2f} | "
            f"{hit.relevance_share if hit else 0:.2f} | {hit.kind if hit else '-'} | "
            f"{', '.join(others) or '-'} | {len(distinctive)} | "
            f"{'-' if case.kind == 'clean' else f'{learned:.2f}'} |"
        ))  # fmt: skip
        print(rows[-1][2], f"({time.perf_counter() - began:.0f} s)", flush=True)
    if args.build:
        return
    if not args.combine:
        seconds = time.perf_counter() - began
    if args.save:
        _save(args.save, rows, tally, evidence, refused, seconds)
        return
    sets = list(dict.fromkeys(case.group for case in cases("all")))
    rows.sort(key=lambda row: (row[1] != "integrated_gradients", _set_of(row, sets), row[0]))
    body = [
        *_summary(tally, evidence),
        "",
        "| set | architecture | model | seed | class | planted region | found / flagged | "
        "best IoU | share | finding kind | other findings | distinctive evidence | "
        "lift at the planted place |",
        "|---|---|---|---:|---:|---|---|---:|---:|---|---|---:|---:|",
        *(row[2] for row in rows),
    ]
    note = (
        f"Training: {args.train_images} MNIST-5k training images, Adam one-cycle, shifts of up "
        "to 2 px; epochs "
        + ", ".join(f"{a} {e}" for a, (_, e) in ARCHITECTURES.items())
        + f". Audit: Integrated Gradients ({STEPS} Gauss-Legendre steps; the rows without a "
        "method named) and LRP (default composite, epsilon_plus_flat; rows ', lrp', same rules, "
        f"not tuned on LRP maps) on the first {IMAGES} training images with their labels; "
        "findings as in docs/audit.md. 'found / flagged': "
        "for a shortcut model, its planted shortcut found and located; for a clean model, any "
        "finding at all (audited on clean images, and again on the marked images of one kind). "
        "Rules chosen on the design sets. 'design 2' was the first held-out set (analysed "
        "once with the first rules, IG rows: mark 9/10, moving mark 7/10, background 10/10, "
        "line 6/10, clean images 0-1/10 per architecture), then used to change them (boxes in "
        "rounds); 'design 3' the second (seeds from 200, analysed once with those rules: mark, "
        "moving mark and background 10/10, line 8/10, clean images 0-2/10 per architecture, "
        "the 2 a small ViT's own strokes), then used to change them again (a pattern less alike "
        "must sway the model more); 'design 4' the third (seeds from 300, analysed once with "
        "those rules: mark, background and line 10/10, moving mark 9/10, clean images 0/10 per "
        "architecture but 3/10 small ResNets, their thin 1s as background findings), then used "
        "to leave the object's edge out of the background; the 'held out' set (seeds from 400) "
        "was trained and explained before that change and analysed once after it. The "
        "'learned' columns and the 'lift at the "
        "planted place' (pasting the marked images' planted box into other classes' images, "
        "against the control: does the model use its shortcut; learned at "
        f">= {LEARNED_LIFT}) tell shortcuts the model never learned from misses of the audit. "
        f"Total {seconds:.0f} s of analysis (models and maps from the cache when there; parts "
        "run side by side count each)."
    )
    for method in sorted({key[0].partition(", ")[2] for key in tally} - {""}):
        analysed = dict.fromkeys(k[0].partition(", ")[0] for k in tally if k[0].endswith(method))
        note += f" {method} analysed on: {', '.join(analysed)}."
    for method, which in refused.items():
        note += f" {method} refused on: {', '.join(sorted(which))}."
    text = "\n".join(body)
    print(machine_line())
    print(text)
    print(note)
    if not args.no_write and args.set == "all":
        write_section("audit_reliability", f"{machine_line()}\n\n{text}\n\n{note}\n")


def _set_of(row, sets: list[str]) -> int:
    """Where a table row's set comes in ``sets`` (rows of several runs are merged)."""
    base = row[2].split(" | ")[0].removeprefix("| ").split(",")[0]
    return sets.index(base) if base in sets else len(sets)


def _save(path, rows, tally, evidence, refused, seconds: float) -> None:
    """One run's results, for :func:`_combine` (runs in parts side by side)."""
    text = json.dumps({
        "rows": rows,
        "tally": [[list(key), value] for key, value in tally.items()],
        "evidence": [[list(key), value] for key, value in evidence.items()],
        "refused": {method: sorted(which) for method, which in refused.items()},
        "seconds": seconds,
    })  # fmt: skip
    Path(path).write_text(text)


def _combine(paths, rows, tally, evidence, refused) -> float:
    """Merge the :func:`_save` files of ``paths`` into the (empty) containers; total seconds.

    The summary lists the sets as one run would: each method's sets in the order they run.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    sets = list(dict.fromkeys(case.group for case in cases("all")))

    def order(item) -> tuple:  # ((set, architecture, column), counts)
        base, _, method = item[0][0].partition(", ")
        return (method, sets.index(base) if base in sets else len(sets))

    keyed = sorted(((tuple(k), v) for part in parts for k, v in part["tally"]), key=order)
    for key, (got, total) in keyed:
        tally[key][0] += got
        tally[key][1] += total
    for part in parts:
        rows += [tuple(row) for row in part["rows"]]
        for key, value in part["evidence"]:
            evidence[tuple(key)] += value
        for method, which in part["refused"].items():
            refused[method].update(which)
    return sum(part["seconds"] for part in parts)


def _count(tally, key, ok: bool) -> None:
    tally[key][0] += ok
    tally[key][1] += 1


def _summary(tally, evidence) -> list[str]:
    columns = {
        "clean": "clean models with a finding, clean images (goal <= 1/10)",
        "clean, marked images": "same, on marked images: any finding",
        "clean, at the mark": "at the planted place",
        **{k: f"{k} found (goal >= 9/10)" for k in KINDS},
        **{f"{k}, learned": f"{k} found, of those the model learned" for k in KINDS},
    }
    lines = [
        "| set | architecture | "
        + " | ".join(columns.values())
        + " | distinctive evidence (shortcut / clean models) |",
        "|---|---|" + "---:|" * (len(columns) + 1),
    ]
    for group in dict.fromkeys(key[0] for key in tally):
        for arch in (*ARCHITECTURES, "all"):
            cells = []
            for key in columns:
                got, n = tally.get((group, arch, key), (0, 0))
                cells.append(f"{got}/{n}" if n else "")
            if not any(cells):
                continue
            ev = f"{evidence.get((group, arch, False), 0)} / {evidence.get((group, arch, True), 0)}"
            lines.append(f"| {group} | {arch} | " + " | ".join(cells) + f" | {ev} |")
    return lines


if __name__ == "__main__":
    main()
