"""Token attributions on a real transformer: xaikit against Captum, shap and the limit, in one run.

Model: all-MiniLM-L6-v2 (the ``[text]`` extra) with xaikit's sentiment head, as a
``TextModel`` (content ids in, scores out). For each sentence: xaikit's token LIME, KernelSHAP
(token -> [MASK]) and Integrated Gradients on the embedding layer (pad baseline); Captum's
``Lime`` and ``KernelShap`` on the same ids, mask and sample count (``perturbations_per_eval``
32), Captum's ``LayerIntegratedGradients`` on the same layer, baseline and steps
(``internal_batch_size`` 50); shap's text explainer (``shap.Explainer`` with a
``maskers.Text`` of the same tokenizer, partition, ``max_evals`` = the sample count, batches of
32). The limit is the same number of forward passes (forward + backward to the embedding layer
for the gradient methods) at the best batch size of a sweep, hand-written. Contenders are
interleaved round by round; each round times every contender once next to its own limit, and
the table gives the median ratio over rounds (the machine is shared and noisy).

Run: ``.venv/bin/python benchmarks/text.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

import xaikit as xk
from _report import machine_line, write_section
from xaikit import text

SENTENCES = (
    "The movie was not good at all, and the actors looked bored.",
    "My neighbours were lovely people who always helped us.",
    "This book is a dreadful waste of time.",
)


def forward_limit(model: text.TextModel, ids: np.ndarray, passes: int, sweep, *, grad: bool):
    """Seconds for ``passes`` forwards (with ``grad``: forward + backward to the embedding
    output) of copies of ``ids`` at the best batch size of ``sweep``."""
    best = float("inf")
    for batch in sweep:
        x = torch.as_tensor(np.repeat(ids[None], min(batch, passes), axis=0))
        start = time.perf_counter()
        done = 0
        while done < passes:
            n = min(batch, passes - done)
            if grad:
                leaf = {}

                def hook(_m, _i, out, leaf=leaf):
                    leaf["v"] = out.detach().requires_grad_(True)
                    return leaf["v"]

                handle = model.tokens.register_forward_hook(hook)
                try:
                    with torch.enable_grad():
                        out = model(x[:n])
                        torch.autograd.grad(out[:, 1].sum(), leaf["v"])
                finally:
                    handle.remove()
            else:
                with torch.inference_mode():
                    model(x[:n])
            done += n
        best = min(best, time.perf_counter() - start)
    return best


def contenders(model: text.TextModel, hf_tokenizer, sentence: str, *, samples: int, steps: int):
    from captum.attr import KernelShap, LayerIntegratedGradients, Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    tok = model.tokenizer
    ids = tok.encode(sentence).ids
    m = len(ids)
    ids_t = torch.as_tensor(ids)[None]
    mask_t = torch.arange(m)[None]
    mask_id = tok.mask_id
    wrapped = xk.Model(model, batch_size=32)

    def forward(x):
        return model(x)

    def shap_f(texts):
        batch = tok.encode_batch([str(t) if str(t).strip() else "." for t in texts])
        with torch.inference_mode():
            return model(torch.as_tensor(batch))[:, 1].numpy()

    def shap_text():
        import shap

        masker = shap.maskers.Text(hf_tokenizer)
        explainer = shap.Explainer(shap_f, masker, silent=True)
        return explainer([sentence], max_evals=samples, batch_size=32)

    cosine = get_exp_kernel_similarity_function("cosine", kernel_width=0.25)
    pad = torch.full_like(ids_t, tok.pad_id)
    return ids, [
        ("lime", "xaikit", False, lambda: text.explain(
            wrapped, sentence, method="lime", target=1, samples=samples)),
        ("lime", "Captum Lime (per eval 32)", False, lambda: Lime(
            forward, similarity_func=cosine).attribute(
            ids_t, target=1, baselines=mask_id, feature_mask=mask_t, n_samples=samples,
            perturbations_per_eval=32)),
        ("kernel_shap", "xaikit", False, lambda: text.explain(
            wrapped, sentence, method="kernel_shap", target=1, samples=samples)),
        ("kernel_shap", "Captum KernelShap (per eval 32)", False, lambda: KernelShap(
            forward).attribute(ids_t, target=1, baselines=mask_id, feature_mask=mask_t,
                               n_samples=samples, perturbations_per_eval=32)),
        ("kernel_shap", "shap text explainer (partition)", False, shap_text),
        ("integrated_gradients", "xaikit", True, lambda: text.explain(
            wrapped, sentence, method="integrated_gradients", target=1, steps=steps)),
        ("integrated_gradients", "Captum LayerIntegratedGradients", True, lambda:
            LayerIntegratedGradients(forward, model.tokens).attribute(
                ids_t, baselines=pad, target=1, n_steps=steps, internal_batch_size=steps)),
    ]  # fmt: skip


def _forwards(method: str, who: str, result, *, samples: int, steps: int) -> int:
    """Model evaluations a contender needs for one sentence."""
    if method == "integrated_gradients":
        return steps
    if who == "xaikit":
        info = result.info
        return int(info["evaluations"] if "evaluations" in info else info["samples"])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one sentence, one round")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=len(SENTENCES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not text.available():
        raise SystemExit(f"benchmarks/text.py: {text.missing_message()}")
    model = text.load_minilm("sentiment")
    _, hf_tokenizer = text.load_encoder()
    sentences = SENTENCES[: 1 if args.quick else args.sentences]
    rounds = 1 if args.quick else args.rounds
    sweep = (8, 16, 32, 64)
    ratios: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    forwards: dict[tuple[str, str], list[int]] = {}
    for sentence in sentences:
        ids, cases = contenders(model, hf_tokenizer, sentence, samples=args.samples,
                                steps=args.steps)  # fmt: skip
        cases[0][3]()  # warm-up
        for _ in range(rounds):
            for method, who, grad, run in cases:
                start = time.perf_counter()
                result = run()
                took = time.perf_counter() - start
                passes = _forwards(method, who, result, samples=args.samples, steps=args.steps)
                limit = forward_limit(model, ids, passes, sweep, grad=grad)
                key = (method, who)
                ratios.setdefault(key, []).append(took / limit)
                seconds.setdefault(key, []).append(took)
                forwards.setdefault(key, []).append(passes)
                print(f"{method:22s} {who:34s} {passes:5d} {took:7.2f}s limit {limit:6.2f}s "
                      f"x{took / limit:.2f}", flush=True)  # fmt: skip
    header = [
        "| method | implementation | forwards per sentence | s per sentence | x limit (median) |",
        "|---|---|---:|---:|---:|",
    ]
    rows = [
        f"| {method} | {who} | {statistics.median(forwards[(method, who)]):.0f} | "
        f"{statistics.median(seconds[(method, who)]):.2f} | "
        f"{statistics.median(ratios[(method, who)]):.2f} |"
        for method, who in ratios
    ]
    note = (
        f"all-MiniLM-L6-v2 with xaikit's sentiment head; {len(sentences)} sentence(s) of "
        f"{', '.join(str(len(model.tokenizer.encode(s))) for s in sentences)} content tokens, "
        f"{rounds} interleaved round(s). LIME/KernelSHAP: {args.samples} samples, a removed "
        f"token becomes [MASK]; IG: {args.steps} Gauss-Legendre steps from the pad token's "
        "embedding. 'forwards' counts model evaluations (xaikit evaluates each distinct "
        "coalition once); the limit runs that many forwards (gradient methods: forward + "
        "backward to the embedding output) at the best batch size of 8-64, and 'x limit' is "
        "the median over rounds and sentences of seconds / limit measured next to each other."
    )
    body = "\n".join(header + rows)
    print(machine_line())
    print(body)
    print(note)
    write_section("text", f"{machine_line()}\n\n{body}\n\n{note}\n")


if __name__ == "__main__":
    main()
