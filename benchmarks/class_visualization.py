"""Class visualisation on the default MNIST CNN: the lecture's claim made measurable.

For each digit 0-9 (``--repeats`` images each, one seed per image), images that maximise the
digit's logit ``y_c`` are made three ways (LECTURE.md rows 17-19):

(a) raw maximisation: pixels, no regulariser, no transforms;
(b) with regularisers: a Fourier image, random transforms, ``- 0.02 l1 - 0.05 TV``;
(c) with a generator: ``X* = G(z*)`` for a VAE trained by ``xk.train_generator`` on MNIST-5k
    train (and, for comparison, a GAN).

For each set: the default CNN's confidence in the target (softmax), the agreement of an
independently trained classifier of another architecture (an MLP on pixels, trained here on
MNIST-5k train, seeded) with the target, and the distance to the nearest training image.
Goals: (a)-(c) all reach mean model confidence >= 0.9; (c) independent agreement >= 0.9 while
(a) is near chance (0.1): raw maximisation finds noise that fools the model and nothing else.

Also timed: filter visualisation of every channel of every conv layer of the default CNN
(16 + 32 channels, 256 steps, default settings). Goal: under 60 s.

Run: ``.venv/bin/python benchmarks/class_visualization.py [--steps 256] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _report import machine_line, write_section
from xaikit.datasets import load_default_cnn, load_mnist
from xaikit.featureviz import objectives as O
from xaikit.featureviz import train_generator, visualize

L1, TV = 0.02, 0.05  # regulariser weights of setting (b)
PRIOR = 0.1  # weight of ||z||^2 in setting (c)


def train_mlp(X: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 20) -> nn.Module:
    """The independent judge: a 784-256-10 MLP on raw pixels (no convolution), seeded."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(X_t), generator=gen)
        for start in range(0, len(X_t), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(net(X_t[idx]), y_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def measure(images: np.ndarray, targets: np.ndarray, *, cnn, mlp, train_flat) -> dict:
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))
    t = torch.from_numpy(targets)
    with torch.no_grad():
        conf = F.softmax(cnn(x), dim=1)[torch.arange(len(x)), t].numpy()
        agree = (mlp(x).argmax(dim=1) == t).float().numpy()
        nearest = torch.cdist(x.reshape(len(x), -1), train_flat).min(dim=1).values.numpy()
    return {
        "conf": float(conf.mean()),
        "conf_min": float(conf.min()),
        "conf_share": float((conf >= 0.9).mean()),
        "agree": float(agree.mean()),
        "nearest": float(nearest.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="images per digit")
    parser.add_argument("--no-gan", action="store_true", help="skip the GAN comparison row")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    train_flat = torch.from_numpy(X.reshape(len(X), -1))
    cnn = load_default_cnn("clean")
    mlp = train_mlp(X, y, seed=0)
    targets = np.repeat(np.arange(10), args.repeats)
    kw = {"cnn": cnn, "mlp": mlp, "train_flat": train_flat}

    rows: list[tuple[str, dict, float]] = []
    reference = measure(X_test, y_test, **kw)
    rows.append(("real test digits (reference)", reference, float("nan")))

    def run(label: str, objective_of, **options) -> None:
        start = time.perf_counter()
        v = visualize(cnn, [objective_of(int(c)) for c in targets], steps=args.steps, **options)
        seconds = time.perf_counter() - start
        assert v.images.min() >= 0 and v.images.max() <= 1
        rows.append((label, measure(v.images, targets, **kw), seconds))

    run("(a) raw: pixels, no R(X), no transforms", O.logit, param="pixels", transforms=None)
    run(
        f"(b) Fourier + transforms - {L1} l1 - {TV} TV",
        lambda c: O.logit(c) - L1 * O.l1() - TV * O.total_variation(),
    )
    generator_seconds = {}
    kinds = ["vae"] if args.no_gan else ["vae", "gan"]
    with tempfile.TemporaryDirectory() as cache:  # trained here and timed, not read from a cache
        for kind in kinds:
            start = time.perf_counter()
            G = train_generator(X, kind=kind, seed=0, cache_dir=cache)
            generator_seconds[kind] = time.perf_counter() - start
            label = f"(c) generator G(z*): {kind.upper()}, prior {PRIOR} |z|^2"
            if kind == "gan":
                label += " (comparison)"
            run(label, O.logit, generator=G, prior=PRIOR)

    # Filter visualisation of every channel of every conv layer, each layer as one batch.
    start = time.perf_counter()
    filters = {layer: visualize(cnn, O.channels(layer)) for layer in ("conv1", "conv2")}
    filter_seconds = time.perf_counter() - start
    raised = np.mean(
        np.concatenate([v.objective_values > v.initial_values for v in filters.values()])
    )

    header = (
        f"| images (10 digits x {args.repeats}) | model confidence (mean / min / share >= 0.9) | "
        "independent MLP agrees | nearest training image (L2) | seconds |"
    )
    lines = [header, "|---|---|---|---|---|"]
    for label, m, seconds in rows:
        secs = "" if np.isnan(seconds) else f"{seconds:.1f}"
        lines.append(
            f"| {label} | {m['conf']:.3f} / {m['conf_min']:.3f} / {m['conf_share']:.2f} | "
            f"{m['agree']:.2f} | {m['nearest']:.2f} | {secs} |"
        )
    a, b, c = rows[1][1], rows[2][1], rows[3][1]
    goals = [
        ("(a)-(c) mean model confidence >= 0.9", all(r["conf"] >= 0.9 for r in (a, b, c))),
        ("(c) independent agreement >= 0.9", c["agree"] >= 0.9),
        ("(a) independent agreement near chance (<= 0.25)", a["agree"] <= 0.25),
        (f"all 48 conv filters visualised in < 60 s (took {filter_seconds:.1f} s)",
         filter_seconds < 60),
        (f"VAE trained on MNIST-5k in < 120 s (took {generator_seconds['vae']:.1f} s)",
         generator_seconds["vae"] < 120),
    ]  # fmt: skip
    if "gan" in generator_seconds:
        goals.append(
            (
                f"GAN trained on MNIST-5k in < 120 s (took {generator_seconds['gan']:.1f} s)",
                generator_seconds["gan"] < 120,
            )
        )
    text = "\n".join(
        [
            "Class visualisation on the default CNN (`load_default_cnn('clean')`), "
            f"{args.steps} Adam steps (lr 0.05), one seed per image; the independent judge is "
            f"a 784-256-10 MLP trained here on MNIST-5k train (test accuracy "
            f"{reference['agree']:.3f}).",
            "",
            *lines,
            "",
            f"Filter visualisation, conv1 (16) + conv2 (32) channels, default settings (Fourier, "
            f"transforms, {256} steps), one batch per layer: {filter_seconds:.1f} s; objective "
            f"raised for {raised:.0%} of the channels.",
            "",
            *[f"- goal {name}: {'met' if ok else 'MISSED'}" for name, ok in goals],
            "",
            machine_line(),
        ]
    )
    print(text)
    write_section("class_visualization", text)


if __name__ == "__main__":
    main()
