"""xk.activations over MNIST-5k against a plain forward pass, and its peak memory past the budget.

Speed: the machine's limit is the fastest plain ``torch.inference_mode`` forward over the 5,000
images (a pre-built tensor, no hooks, outputs discarded) over a sweep of batch sizes. The
contenders capture one layer: ``xk.activations`` (through ``Model.layer``: hooks, copies into
the result) on a Model with the limit's batch size (the capture's own cost) and with the
Model's automatic batch size (what a user gets), and the hand-written way (a forward hook
appending to a list, then ``torch.cat``). Every contender runs in the same process,
interleaved, several rounds; the table reports the median time and the median of the
per-round ratios to the limit (this machine is shared and noisy). Goal: ratio <= 1.2.

Memory: capture a layer whose activations are several times ``memory_budget``; the result is
spilled to disk and the growth of the peak resident memory during the call (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``, in a fresh process after a warm-up and
``malloc_trim``) must stay under the budget. The same capture held in memory shows the
contrast. Linux only.

Run: ``.venv/bin/python benchmarks/activations.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import xaikit as xk
from _report import machine_line, write_section
from xaikit.datasets import load_default_cnn, load_mnist
from xaikit.representations import activations

SWEEP = (32, 64, 128, 256, 512, 1024)
LAYERS = ("pool1", "relu3")  # a large activation map (12.5 KB per image) and a small vector
SPILL_LAYER = "relu1"  # 16 x 28 x 28 floats = 50 KB per image, 250 MB over MNIST-5k
MiB = 2**20


def plain_forward(net, X: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            net(X[i : i + batch])


def hand_hook(net, X: torch.Tensor, layer: str, batch: int) -> np.ndarray:
    kept = []
    module = dict(net.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out.detach()))
    try:
        plain_forward(net, X, batch)
    finally:
        handle.remove()
    return torch.cat(kept).numpy()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_delta(fn) -> tuple[float, object]:
    """Peak resident memory during ``fn()`` above the resident memory before it, in bytes."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    before = _status_kib("VmRSS")
    result = fn()
    return (_status_kib("VmHWM") - before) * 1024.0, result


def speed(net, X_np: np.ndarray, rounds: int) -> tuple[list[str], dict]:
    X_t = torch.from_numpy(X_np)
    best_batch: dict[int, int] = {}
    references = {layer: hand_hook(net, X_t, layer, 256) for layer in LAYERS}
    # The first call searches the Model's batch size (once per model object, then remembered
    # for the process); shown on its own.
    auto = xk.Model(net)
    first, acts = timed(lambda: activations(auto, X_np, layers=LAYERS[0]))
    np.testing.assert_allclose(acts[LAYERS[0]], references[LAYERS[0]], rtol=1e-4, atol=1e-5)
    chosen = sorted(set(auto.chosen_batch_sizes.values()))
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for _ in range(rounds):
        round_times = {}
        for b in SWEEP:
            round_times[f"plain forward, batch {b}"] = timed(
                lambda b=b: plain_forward(net, X_t, b)
            )[0]
        limit_name = min(round_times, key=round_times.get)
        batch = int(limit_name.rsplit(" ", 1)[1])
        best_batch[batch] = best_batch.get(batch, 0) + 1
        # The same batch as the limit: what the capture itself costs (hooks, copies, checks).
        same = xk.Model(net, batch_size=batch)
        for layer in LAYERS:
            t, acts = timed(lambda layer=layer, same=same: activations(same, X_np, layers=layer))
            np.testing.assert_allclose(acts[layer], references[layer], rtol=1e-4, atol=1e-5)
            round_times[f"xk.activations at the limit's batch, {layer}"] = t
            t, acts = timed(lambda layer=layer: activations(auto, X_np, layers=layer))
            np.testing.assert_allclose(acts[layer], references[layer], rtol=1e-4, atol=1e-5)
            round_times[f"xk.activations, auto batch size {chosen}, {layer}"] = t
            round_times[f"hand-written hook at the limit's batch, {layer}"] = timed(
                lambda layer=layer, batch=batch: hand_hook(net, X_t, layer, batch)
            )[0]
        t = timed(lambda same=same: activations(same, X_np, layers=LAYERS[0], pool="mean"))[0]
        round_times[f"xk.activations at the limit's batch, {LAYERS[0]}, pool='mean'"] = t
        limit = round_times[limit_name]
        for name, value in round_times.items():
            times.setdefault(name, []).append(value)
            ratios.setdefault(name, []).append(value / limit)
    lines = [
        f"| contender ({len(X_np):,} MNIST-5k images, CPU) | median s | x limit |",
        "|---|---:|---:|",
    ]
    for name in times:
        lines.append(
            f"| {name} | {statistics.median(times[name]):.3f} | "
            f"{statistics.median(ratios[name]):.2f} |"
        )
    lines.append(f"| xk.activations, {LAYERS[0]}, first call (batch-size search) | {first:.3f} | |")
    verdict = {name: statistics.median(ratios[name]) for name in times if name.startswith("xk.")}
    return lines, {"verdict": verdict, "best_batch": best_batch, "chosen": chosen}


def _trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so RSS shows what is really in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_child(budget: int | None) -> None:
    """Run in a fresh process: capture SPILL_LAYER and print the peak RSS growth (JSON)."""
    net = load_default_cnn("clean").eval()
    train, _ = load_mnist("train")
    test, _ = load_mnist("test")
    X_np = np.ascontiguousarray(np.concatenate([train, test]))
    activations(net, X_np[:64], layers=SPILL_LAYER)  # warm-up: batch-size search, allocator
    _trim()
    options = {} if budget is None else {"memory_budget": budget}
    delta, acts = peak_rss_delta(lambda: activations(net, X_np, layers=SPILL_LAYER, **options))
    print(json.dumps({"delta": delta, "spilled": acts.spilled, "bytes": acts[SPILL_LAYER].nbytes}))


def memory(budget: int) -> list[str]:
    rows = []
    for name, arg in (
        (f"memory_budget={budget / MiB:.0f} MiB (spilled to disk)", str(budget)),
        ("default budget (1 GiB, held in memory)", "default"),
    ):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", arg],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append((name, json.loads(out.strip().splitlines()[-1])))
    total = rows[0][1]["bytes"]
    lines = [
        f"| capture of {SPILL_LAYER} ({total / MiB:.0f} MiB of activations, fresh process) | "
        "peak RSS growth, MiB | on disk | under the budget |",
        "|---|---:|---|---|",
    ]
    for name, r in rows:
        under = ("yes" if r["delta"] < budget else "no") if r["spilled"] else ""
        lines.append(f"| {name} | {r['delta'] / MiB:.1f} | {r['spilled']} | {under} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget-mib", type=int, default=64)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(None if args.memory_child == "default" else int(args.memory_child))
        return

    net = load_default_cnn("clean").eval()
    train, _ = load_mnist("train")
    test, _ = load_mnist("test")
    X_np = np.ascontiguousarray(np.concatenate([train, test]))  # all 5,000 images

    speed_lines, found = speed(net, X_np, args.rounds)
    memory_lines = memory(args.budget_mib * MiB)
    verdict = "; ".join(f"{k}: {v:.2f}x" for k, v in found["verdict"].items())
    summary = (
        f"Goal: capturing a layer within 1.2x of the fastest plain forward over the same data. "
        f"Measured (median of per-round ratios over {args.rounds} interleaved rounds): "
        f"{verdict}. The limit's best batch size per round: {found['best_batch']}; the "
        f"Model's auto batch size in this process: {found['chosen']}. Goal: peak memory under "
        f"the budget when the activations exceed it (spilled to disk): second table, each "
        f"capture measured in a fresh process."
    )
    body = "\n".join(speed_lines) + "\n\n" + "\n".join(memory_lines)
    print(machine_line())
    print(body)
    print(summary)
    write_section("activations", f"{machine_line()}\n\n{body}\n\n{summary}\n")


if __name__ == "__main__":
    main()
