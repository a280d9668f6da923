"""Model.scores on 10,000 MNIST images against a hand-written batched inference loop.

The machine's limit is the fastest hand-written ``torch.inference_mode`` loop over a
pre-built tensor, over a sweep of batch sizes. Every contender runs in the same process,
interleaved, several rounds; the table reports the median time and the median of the
per-round ratios to the limit (this machine is shared and noisy). Goal: ratio <= 1.10.

Run: ``make bench`` or ``.venv/bin/python benchmarks/model_throughput.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import xaikit as xk
from _report import machine_line, write_section
from xaikit.datasets import load_default_cnn, load_mnist

SWEEP = (32, 64, 128, 256, 512, 1024)


def hand_loop(net, X: torch.Tensor, batch: int, device, *, copy: bool = False) -> np.ndarray:
    """``copy=True`` feeds each batch as a copy of its own, as xk.Model does so that a forward
    that changes its input in place never reaches the caller's array (issue 16)."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            outs.append(net(X[i : i + batch].to(device, copy=copy)).cpu())
    return torch.cat(outs).numpy()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_default_cnn("clean").to(device).eval()
    train, _ = load_mnist("train")
    test, _ = load_mnist("test")
    pool = np.concatenate([train, test])
    X_np = np.ascontiguousarray(np.resize(pool, (args.n, *pool.shape[1:])))  # 10k real digits
    X_t = torch.from_numpy(X_np)

    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    reference = hand_loop(net, X_t, 256, device)
    persistent = xk.Model(net)  # keeps its chosen batch size across rounds
    for _ in range(args.rounds):
        round_times = {}
        for b in SWEEP:
            run = lambda b=b: hand_loop(net, X_t, b, device)  # noqa: E731
            round_times[f"hand loop, batch {b}"] = timed(run)[0]
        # A fresh Model pays for its batch-size search inside this call.
        t, out = timed(lambda: xk.Model(net).scores(X_np))
        np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)
        round_times["xk.Model.scores, first call (with search)"] = t
        round_times["xk.Model.scores, later calls"] = timed(lambda: persistent.scores(X_np))[0]
        fastest = min(SWEEP, key=lambda b: round_times[f"hand loop, batch {b}"])
        copied = timed(lambda b=fastest: hand_loop(net, X_t, b, device, copy=True))[0]
        round_times["hand loop, fastest batch, each batch copied"] = copied
        limit = min(
            v for k, v in round_times.items() if k.startswith("hand loop") and "copied" not in k
        )
        for name, value in round_times.items():
            times.setdefault(name, []).append(value)
            ratios.setdefault(name, []).append(value / limit)

    chosen = persistent.chosen_batch_sizes
    rows = [
        (name, statistics.median(times[name]), statistics.median(ratios[name])) for name in times
    ]
    header = f"| contender ({args.n:,} MNIST images, {device}) | median s | x limit |"
    lines = [header, "|---|---:|---:|"]
    lines += [f"| {name} | {sec:.3f} | {ratio:.2f} |" for name, sec, ratio in rows]
    body = "\n".join(lines)
    verdict = statistics.median(ratios["xk.Model.scores, first call (with search)"])
    copy_cost = statistics.median(ratios["hand loop, fastest batch, each batch copied"]) - 1
    summary = (
        f"Goal: xk.Model.scores within 1.10x of the best hand loop. First call (including the "
        f"batch-size search): {verdict:.2f}x; chosen batch sizes: {chosen}. "
        f"Median over {args.rounds} interleaved rounds; ratios taken per round. The copy of "
        f"each batch that keeps the caller's array out of the model's reach costs "
        f"{100 * copy_cost:+.1f}% of the limit."
    )
    print(machine_line())
    print(body)
    print(summary)
    write_section("model_throughput", f"{machine_line()}\n\n{body}\n\n{summary}\n")


if __name__ == "__main__":
    main()
