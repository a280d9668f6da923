"""Grad-CAM and attention rollout on vision transformers trained here, beside the shapes CNN.

A small ViT (Hugging Face ``ViTForImageClassification``, patch 4, 4 layers) and a small Swin
(``SwinForImageClassification``, patch 2, window 4) are trained from scratch on the shapes
training split (``xaikit.datasets.shapes``: the class is one shape among distractors, its mask
is the ground truth) and cached. On the first ``--n`` test images that all three models
classify correctly, each method's map is scored by pointing game, relevance mass and relevance
rank accuracy (Arras et al. 2022) with a 95% bootstrap interval, as in
``benchmarks/localization.py``; the CNN rows are computed here on the same images.

Run: ``.venv/bin/python benchmarks/localization_transformers.py [--n 100]`` (training takes
some minutes on a CPU the first time).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import xaikit as xk
from _report import machine_line, write_section
from faithfulness import cell
from localization import SCORES
from xaikit._cache import default_cache_dir, load_weights, save_weights
from xaikit.datasets.shapes import SHAPE_CLASSES, load_shapes, load_shapes_cnn

EPOCHS = 40
BATCH = 64
LR = 1e-3


def build(kind: str) -> torch.nn.Module:
    import transformers

    common = dict(num_channels=1, num_labels=len(SHAPE_CLASSES))
    if kind == "vit":
        config = transformers.ViTConfig(
            image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4,
            num_attention_heads=4, intermediate_size=128, **common,
        )  # fmt: skip
        config._attn_implementation = "eager"
        return transformers.ViTForImageClassification(config)
    config = transformers.SwinConfig(
        image_size=32, patch_size=2, embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 4],
        window_size=4, **common,
    )  # fmt: skip
    return transformers.SwinForImageClassification(config)


def trained(kind: str) -> torch.nn.Module:
    """The model trained on the shapes training split (AdamW, cosine schedule), cached."""
    torch.manual_seed(0)
    model = build(kind)
    path = default_cache_dir() / f"shapes-{kind}-e{EPOCHS}-b{BATCH}-lr{LR}.pt"
    if load_weights(model, path, what=f"shapes {kind}"):
        return model.eval()
    x, y, _ = load_shapes("train")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    steps = EPOCHS * math.ceil(len(x) / BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            batch = x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5  # shapes are symmetric
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = F.cross_entropy(model(batch).logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss) * len(idx)
        print(f"  {kind} epoch {epoch + 1}/{EPOCHS}: loss {total / len(x):.3f}", flush=True)
    model.eval()
    save_weights(model, path, what=f"shapes {kind}")
    return model


def accuracy(model, x, y) -> float:
    return float((xk.Model(model).predict(x) == y).mean())


def rows_for(name: str, model, x, masks, methods: list[str]) -> list:
    out = []
    targets = xk.Model(model).predict(x)
    for method in methods:
        start = time.perf_counter()
        e = xk.explain(model, x, method=method, target=targets, batch=True)
        seconds = time.perf_counter() - start
        scores = {
            metric: np.array([float(fn(v, m)) for v, m in zip(e.values, masks, strict=True)])
            for metric, fn in SCORES.items()
        }
        layer = e.params.get("layer")
        out.append((name, method + (f" at `{layer}`" if layer else ""), scores, seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    vit, swin, cnn = trained("vit"), trained("swin"), load_shapes_cnn().eval()
    x, y, masks = load_shapes("test")
    accuracies = {n: accuracy(m, x, y) for n, m in (("CNN", cnn), ("ViT", vit), ("Swin", swin))}
    right = np.ones(len(x), dtype=bool)
    for model in (cnn, vit, swin):
        right &= xk.Model(model).predict(x) == y
    keep = np.flatnonzero(right)[: args.n]
    xs, ms = x[keep], masks[keep]
    rows = [
        *rows_for("shapes CNN", cnn, xs, ms, ["gradcam", "gradcam++"]),
        *rows_for("ViT", vit, xs, ms, ["gradcam", "gradcam++", "attention_rollout"]),
        *rows_for("Swin", swin, xs, ms, ["gradcam", "gradcam++"]),
    ]
    lines = [
        machine_line(),
        "",
        f"Test accuracy: shapes CNN {accuracies['CNN']:.3f}, ViT {accuracies['ViT']:.3f}, "
        f"Swin {accuracies['Swin']:.3f} (ViT: patch 4, 4 layers of width 64; Swin: patch 2, "
        f"window 4, 3 stages; both trained here from scratch, {EPOCHS} epochs). "
        f"{len(keep)} test images that all three classify correctly; default layers; mean "
        "[95% bootstrap interval].",
        "",
        "| model | method | " + " | ".join(SCORES) + " | explain s |",
        "|---|---|---|---|---|---:|",
    ]
    for model_name, method, scores, seconds in rows:
        lines.append(
            f"| {model_name} | {method} | "
            + " | ".join(cell(scores[m]) for m in SCORES)
            + f" | {seconds:.1f} |"
        )
    lines.append(f"| | chance (mask share) | - | {ms.mean():.3f} | {ms.mean():.3f} | |")
    text = "\n".join(lines)
    print(text)
    write_section("localization_transformers", text)


if __name__ == "__main__":
    main()
