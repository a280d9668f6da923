"""Audit throughput: images per second for MNIST-5k with Integrated Gradients.

Contenders, on the default clean MNIST CNN and all 5,000 MNIST-5k images:

- the limit: ``xk.explain(..., method="integrated_gradients", batch=True)`` one batch of
  ``shard_size`` images at a time, maps kept in memory (what the audit must do at least);
- ``xk.audit(backend="local")``: the same explanations plus pooling, the background masks,
  atomic shard files, hashing of model and data, the final read-back and analysis (SpRAy);
- ``xk.audit(backend="ray")`` with 1 and 2 workers on a local Ray started for the call
  (Ray's start-up is included, and also given on its own).

Goal: the local audit within 1.2x of the limit. Interleaved rounds (the machine is shared and
noisy); the ratio is the median of the per-round ratios. The cluster estimate uses the
measured time per shard and the driver's own time per shard (reading inputs, writing the
shard): with ``w`` workers the audit cannot go faster than one shard per driver-time.

``--methods``: only the explaining step, LRP, Grad-CAM and IG (``--steps``) against one
forward and one backward pass per image in a hand loop, on the MNIST CNN (``--images``) and on
a ResNet-50 at 224x224 with random weights (``--resnet50-images``, IG on
``--resnet50-ig-images`` of them; ``--no-resnet50`` skips it), with the hours a 1.28-million
image audit would take at each rate (section ``audit_methods``).

Run: ``.venv/bin/python benchmarks/audit.py [--images 5000] [--rounds 2] [--methods]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import xaikit as xk
from _report import machine_line, write_section
from xaikit.audit import _store, analyze, audit
from xaikit.datasets import load_default_cnn, load_mnist


def limit(model, X: np.ndarray, shard: int, params: dict) -> float:
    start = time.perf_counter()
    kept = []
    for s in range(0, len(X), shard):
        e = xk.explain(model, X[s : s + shard], method="integrated_gradients", batch=True, **params)
        kept.append(e.values)
    return time.perf_counter() - start


def run_audit(model, X, y, shard: int, params: dict, **kw) -> tuple[float, object]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        a = audit(model, X, labels=y, params=params, shard_size=shard, out=Path(out) / "a", **kw)
        return time.perf_counter() - start, a


def driver_seconds_per_shard(a, X: np.ndarray, shard: int) -> float:
    """What the driver itself does per shard: slice the inputs and write one shard atomically."""
    arrays = {
        "maps": a.maps[:shard],
        "background": a.background[:shard],
        "targets": a.targets[:shard],
        "predictions": a.predictions[:shard],
        "indices": np.arange(shard),
    }
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        for i in range(10):
            np.ascontiguousarray(X[:shard])
            _store.write_shard(Path(out) / f"shard-{i:05d}.npz", arrays)
        return (time.perf_counter() - start) / 10


def analysis_seconds(a, X: np.ndarray) -> float:
    """The audit's analysis alone, on the maps of a finished run."""
    start = time.perf_counter()
    analyze(
        maps=a.maps,
        background=a.background,
        targets=a.targets,
        predictions=a.predictions,
        labels=a.labels,
        pool=a.pool,
        input_shape=a.input_shape,
        examples=lambda i: X[i],
    )
    return time.perf_counter() - start


def ray_startup_seconds() -> float:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.shutdown()
    return time.perf_counter() - start


IMAGENET = 1_281_167  # images in ImageNet-1k's training set: the scale where an audit matters


def methods_throughput(
    net, X: np.ndarray, *, shard: int, rounds: int, steps: int, ig_images: int
) -> tuple[list[str], dict[str, float]]:
    """Table rows: images per second of the audit's explaining step per method, and its limit.

    The limit is one forward and one backward pass per image in a hand loop (the target's
    logit differentiated, batches of the size the Model chose): what a one-pass method cannot
    beat; IG costs ``steps`` of them per image, so it runs on the first ``ig_images`` images
    only. Interleaved rounds; best time of each. Returns the rows and images/s per row.
    """
    import torch

    model = xk.Model(net)
    lrp_label = "LRP (epsilon_plus_flat)"
    epsilon_label = "LRP (epsilon)"
    ig_label = f"Integrated Gradients ({steps} steps)"
    contenders = {
        lrp_label: ("lrp", {}, X),
        epsilon_label: ("lrp", {"composite": "epsilon"}, X),
        "Grad-CAM": ("gradcam", {}, X),
        ig_label: ("integrated_gradients", {"steps": steps}, X[:ig_images]),
    }
    # Warm-up: batch sizes and layouts (searched for calls of more than a few items), and
    # allocations; every timed call then runs with what an audit's shards run with.
    for method, params, images in contenders.values():
        xk.explain(model, images[:64], method=method, batch=True, **params)
    sizes = [v for k, v in model.chosen_batch_sizes.items() if k[0] == "gradients"]
    size = sizes[0] if sizes else min(len(X), 8)  # up to 8 items run as one batch
    targets = model.predict(X)

    def hand_loop(memory_format=torch.contiguous_format) -> float:
        start = time.perf_counter()
        for s in range(0, len(X), size):
            xb = torch.as_tensor(X[s : s + size]).contiguous(memory_format=memory_format)
            xb.requires_grad_(True)
            out = net(xb)
            picked = out.gather(1, torch.as_tensor(targets[s : s + size])[:, None]).sum()
            torch.autograd.grad(picked, xb)
        return time.perf_counter() - start

    def explain(method: str, params: dict, images: np.ndarray) -> float:
        start = time.perf_counter()
        for s in range(0, len(images), shard):
            xk.explain(
                model,
                images[s : s + shard],
                method=method,
                target=targets[s : min(s + shard, len(images))],
                batch=True,
                **params,
            )
        return time.perf_counter() - start

    fast = "fast limit"
    times: dict[str, list[float]] = {"limit": [], fast: [], **{k: [] for k in contenders}}
    for _ in range(rounds):
        times["limit"].append(hand_loop())
        if X.ndim == 4:
            times[fast].append(hand_loop(torch.channels_last))
        for label, (method, params, images) in contenders.items():
            times[label].append(explain(method, params, images))
    per_image = {"limit": min(times["limit"]) / len(X)}
    if times[fast]:
        per_image[fast] = min(times[fast]) / len(X)
    per_image |= {k: min(times[k]) / len(images) for k, (_, _, images) in contenders.items()}
    counts = {"limit": len(X), fast: len(X)}
    counts |= {k: len(images) for k, (_, _, images) in contenders.items()}
    names = {
        "limit": "one forward + backward per image, hand loop (limit)",
        fast: "the same, channels-last inputs",
    }
    names |= {k: f"explain, {k}, one shard at a time" for k in contenders}
    rows = [
        f"| {names[k]} | {counts[k]} | {counts[k] * t:.2f} | {_rate(1 / t)} | "
        f"{t / per_image['limit']:.2f} | {IMAGENET * t / 3600:.2f} |"
        for k, t in per_image.items()
    ]
    summary = {
        "size": size,
        "lrp_vs_ig": per_image[ig_label] / per_image[lrp_label],
        "lrp_vs_limit": per_image[lrp_label] / per_image["limit"],
        "epsilon_vs_limit": per_image[epsilon_label] / per_image["limit"],
        "lrp_vs_fast": per_image[lrp_label] / per_image.get(fast, np.nan),
        # The gradient calls' memory layout, per input dtype (IG's points are tensors).
        "layouts": ", ".join(
            f"{key[2]} inputs {value}"
            for key, value in model.chosen_layouts.items()
            if key[0] == "gradients"
        )
        or "default (no search: calls of few items)",
    }
    return rows, summary


def _rate(per_second: float) -> str:
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def methods_section(args, mnist_net, mnist_X: np.ndarray) -> str:
    """The ``audit_methods`` section: the MNIST CNN and, unless skipped, a ResNet-50."""
    header = [
        "| model | contender | images | seconds | images/s | x limit | hours for 1.28 M images |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    load_before = os.getloadavg()[0]
    rows, mnist = methods_throughput(
        mnist_net,
        mnist_X,
        shard=args.shard,
        rounds=args.rounds,
        steps=args.steps,
        ig_images=len(mnist_X),
    )
    lines = header + [f"| MNIST SmallCNN | {r[2:]}" for r in rows]
    notes = [
        f"MNIST: {len(mnist_X)} MNIST-5k images, default clean SmallCNN, shards of {args.shard}, "
        f"batches of {mnist['size']}; LRP {mnist['lrp_vs_limit']:.2f}x the limit and "
        f"{mnist['lrp_vs_ig']:.0f}x the images per second of IG ({args.steps} steps)."
    ]
    if not args.no_resnet50:
        import torch

        from _models import resnet50

        net = resnet50(0)
        generator = torch.Generator().manual_seed(0)
        X = torch.rand(args.resnet50_images, 3, 224, 224, generator=generator).numpy()
        rows, big = methods_throughput(
            net,
            X,
            shard=args.shard,
            rounds=args.rounds,
            steps=args.steps,
            ig_images=args.resnet50_ig_images,
        )
        lines += [f"| ResNet-50, 224x224 | {r[2:]}" for r in rows]
        notes.append(
            f"ResNet-50 (random weights, seed 0, eval mode; 53 BatchNorms merged into their "
            f"convolutions, 16 residual additions): {len(X)} random 224x224 images "
            f"({args.resnet50_ig_images} for IG: {args.steps} passes per image), batches of "
            f"{big['size']}; LRP {big['lrp_vs_limit']:.2f}x the limit and "
            f"{big['lrp_vs_ig']:.0f}x the images per second of IG; the all-epsilon composite "
            f"{big['epsilon_vs_limit']:.2f}x. The default composite's cost over the limit is "
            "the z-plus rule's second convolution per layer (its positive weights, for the "
            "denominators): its backward is a forward and a transposed convolution per layer "
            "where the limit's is one, so its convolutions alone cost about 1.45x the limit's "
            "(a profile of the default layout: 1.40 s against 0.98 s on 8 images). The epsilon "
            "rule propagates with the "
            "layer's own weights and outputs and needs no second convolution. The BatchNorms "
            "cost LRP nothing: they are merged into their convolutions, in the forward pass too. "
            f"Layouts the gradient calls' search chose: {big['layouts']}; the limit runs the "
            "model as it is (NCHW); against the same loop with channels-last inputs, LRP takes "
            f"{big['lrp_vs_fast']:.2f}x."
        )
    notes.append(
        f"Best of {args.rounds} interleaved rounds per model; hours are for ImageNet-1k's "
        f"{IMAGENET:,} training images on this machine. Grad-CAM's backward stops at its "
        "layer, so it can cost less than the limit. Load average (1 min) before "
        f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}."
    )
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shard", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="IG steps (paper default 50)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--methods",
        action="store_true",
        help="only the explaining step: LRP, Grad-CAM and IG against one forward+backward per "
        "image, on the MNIST CNN and a ResNet-50",
    )
    parser.add_argument("--no-resnet50", action="store_true", help="--methods: MNIST only")
    parser.add_argument("--resnet50-images", type=int, default=32)
    parser.add_argument(
        "--resnet50-ig-images", type=int, default=2, help="IG's images on ResNet-50 (costly)"
    )
    args = parser.parse_args()
    model = load_default_cnn("clean")
    X_train, y_train = load_mnist("train")
    X_test, y_test = load_mnist("test")
    X = np.concatenate([X_train, X_test])[: args.images]
    y = np.concatenate([y_train, y_test])[: args.images]
    if args.methods:
        text = f"{machine_line()}\n\n" + methods_section(args, model, X)
        print(text)
        if not args.no_write:
            write_section("audit_methods", text)
        return
    params = {"steps": args.steps}
    n = len(X)
    # Warm-up: the batch-size search and allocations, outside every timing.
    xk.explain(model, X[:64], method="integrated_gradients", batch=True, **params)

    limits, locals_, ratios = [], [], []
    a = None
    for r in range(args.rounds):
        t_limit = limit(model, X, args.shard, params)
        t_local, a = run_audit(model, X, y, args.shard, params)
        limits.append(t_limit)
        locals_.append(t_local)
        ratios.append(t_local / t_limit)
        print(
            f"round {r}: limit {t_limit:.1f} s, local audit {t_local:.1f} s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    rows = [
        f"| explain(batch=True), one shard at a time (limit) | {min(limits):.1f} | "
        f"{n / min(limits):.0f} | 1.00 |",
        f"| audit, local | {min(locals_):.1f} | {n / min(locals_):.0f} | {np.median(ratios):.2f} |",
    ]
    ray_times: dict[int, float] = {}
    startup = None
    if not args.no_ray:
        startup = ray_startup_seconds()
        for workers in (1, 2):
            t, b = run_audit(model, X, y, args.shard, params, backend="ray", workers=workers)
            ray_times[workers] = t
            same = [(f.target, f.region) for f in b.findings] == [
                (f.target, f.region) for f in a.findings
            ]
            rows.append(
                f"| audit, Ray, {workers} worker{'s' if workers > 1 else ''} (start-up included) "
                f"| {t:.1f} | {n / t:.0f} | {t / min(limits):.2f} |"
            )
            print(rows[-1], "findings equal to local:", same, flush=True)
    shards = -(-n // args.shard)
    per_shard = min(limits) / shards
    driver = driver_seconds_per_shard(a, X, args.shard)
    analysis = analysis_seconds(a, X)
    added = (
        f"Work the audit adds to explaining, timed on its own (less noisy than the ratio on a "
        f"shared machine): writing and reading the shards {driver * shards:.2f} s, analysis "
        f"(class maps, SpRAy, findings) {analysis:.2f} s, i.e. "
        f"{(driver * shards + analysis) / min(limits):.1%} of the limit."
    )
    header = ["| contender | seconds | images/s | x limit |", "|---|---:|---:|---:|"]
    body = "\n".join(header + rows)
    scale = (
        f"Per shard of {args.shard} images: {per_shard:.2f} s of explaining on one worker, "
        f"{driver * 1000:.1f} ms of driver work (slice the inputs, write the shard). Shards are "
        "independent, so on a cluster the audit scales with the number of workers (each loads "
        "the model once) until the driver's serial part is the bottleneck: at most about "
        f"{per_shard / driver:.0f} workers busy at once here; beyond that, larger shards. "
        "Ray's object transfer of a shard (inputs in, pooled maps out, under 2 MB) adds "
        "milliseconds per shard on a LAN."
    )
    if startup is not None:
        scale += (
            f" Ray start-up on its own: {startup:.1f} s; 1 -> 2 workers (start-up included): "
            f"{ray_times[1] / ray_times[2]:.2f}x. Each actor uses one thread, while the local "
            f"run uses all {os.cpu_count()} cores through torch's threads."
        )
    note = (
        f"{n} MNIST-5k images, default clean SmallCNN, Integrated Gradients ({args.steps} "
        f"Gauss-Legendre steps), shards of {args.shard}; median ratio of {args.rounds} "
        "interleaved rounds, best time shown. Goal: local audit within 1.2x of the limit."
    )
    print(machine_line())
    print(body)
    print(added)
    print(scale)
    print(note)
    if not args.no_write:
        write_section("audit", f"{machine_line()}\n\n{body}\n\n{added}\n\n{scale}\n\n{note}\n")


if __name__ == "__main__":
    main()
