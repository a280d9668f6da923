"""Small torch helpers shared by the core and the packages: state, devices, dtypes, diagnosis.

``preserved_state`` is the promise every call into a user's model keeps: eval mode for the
call, and every module's own training flag put back afterwards, also on error.
``input_mismatch`` turns a forward that failed on a wrong input into a sentence naming the
layer and, where the layers show it, the input shape the model expects.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def preserved_state(module: nn.Module | None) -> Iterator[None]:
    """Run in eval mode; restore every module's own training flag afterwards, even on error.

    Per module, not through ``train()``, which recurses and may be overridden by the user.
    """
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            set_training(m, False)
        yield
    finally:
        for m, flag in flags:
            set_training(m, flag)


def float_output(out: torch.Tensor) -> torch.Tensor:
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return None


def model_output(output: Any) -> Any:
    """The scores tensor in what a forward returned, or ``output`` unchanged when none is found.

    Hugging Face models return an output object with a ``logits`` field (also a mapping);
    others a tuple whose first tensor is the scores. A plain tensor is returned as it is.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return output


#: Values of each tensor a stamp samples, evenly spread.
STAMP_SAMPLES = 16


def tensor_stamp(tensors) -> tuple:
    """What tells whether tensors have changed since: storage, version counter, shape, dtype,
    and a few of their values.

    In-place changes bump the version counter (``optimizer.step``, ``load_state_dict``,
    ``p.mul_(2)`` under ``no_grad``) and new values through ``p.data = ...`` change the
    storage. An in-place change through ``p.data`` bumps nothing: the sampled values catch
    the ones that change a tensor throughout (re-initialising, scaling, copying weights in);
    a change of single values between the samples goes unseen.
    """
    stamps = []
    for t in tensors:
        if t is None:
            stamps.append(None)
            continue
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // STAMP_SAMPLES)][:STAMP_SAMPLES]
        # an inference tensor (made under torch.inference_mode, e.g. the weight an old-style
        # weight_norm hook recomputes there) has no version counter: its sample must do
        version = None if t.is_inference() else t._version
        stamps.append(
            (t.data_ptr(), version, tuple(t.shape), t.dtype, t.device, tuple(sample.tolist()))
        )
    return tuple(stamps)


def user_code_around_layers(module: nn.Module) -> str | None:
    """Why the layers of ``module`` may not compute what their classes say, or None: a forward
    replaced on a module instance (accelerate's ``add_hook_to_module``) or hooks registered
    for every module (``register_module_forward_hook``). Copies and re-traced layers would
    skip that code."""
    from torch.nn.modules import module as torch_module

    tables = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    if any(getattr(torch_module, name, None) for name in tables):
        return "hooks registered for every module run around its layers"
    for name, m in module.named_modules():
        if "forward" in vars(m) and not isinstance(m, torch.jit.ScriptModule):  # compiled
            return f"layer {name or type(m).__name__!r} has a forward replaced on the instance"
    return None


def module_stamp(module: nn.Module) -> tuple:
    """What tells whether a model has changed since: :func:`tensor_stamp` of its parameters
    and buffers, and its structure: which module object sits at each path (a swapped
    activation), each one's class and forward, and its plain settings (numbers, strings,
    flags, tensors held as plain attributes: a changed temperature or scale that the forward
    reads). The training flag is left out (calls set eval mode themselves). Caches of
    anything derived from a model (a channels-last copy, a traced graph) compare it.
    """
    structure = tuple(
        (name, id(m), type(m), getattr(type(m), "forward", None), _settings(m))
        for name, m in module.named_modules(remove_duplicate=False)
    )
    return structure, tensor_stamp([*module.parameters(), *module.buffers()])


_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def _settings(m: nn.Module) -> tuple:
    settings = [
        (key, tensor_stamp([value]) if isinstance(value, torch.Tensor) else value)
        for key, value in module_settings(m)
    ]
    callables = [  # e.g. an instance's own forward
        (key, id(value))
        for key, value in vars(m).items()
        if callable(value) and not isinstance(value, nn.Module) and key not in _MODULE_INTERNALS
    ]
    return tuple(settings + callables)


# What every nn.Module holds (hook tables, flags that hooks or compilation flip): not settings.
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}


def module_settings(m: nn.Module) -> list[tuple[str, Any]]:
    """A module's own attributes that can change what its forward computes, sorted by name:
    plain values (numbers, strings, flags, dtypes, devices, NumPy scalars and arrays, tuples,
    lists and dicts of them) and tensors held as plain attributes; not nn.Module's own
    bookkeeping. Tensors come as they are; NumPy values and what holds them as comparable
    stand-ins (:func:`_comparable`: an array's content digest), others as they are."""
    return [
        (key, value if isinstance(value, torch.Tensor) else _comparable(value))
        for key, value in sorted(vars(m).items())
        if key not in _MODULE_INTERNALS
        and (isinstance(value, torch.Tensor) or _plain_setting(value))
    ]


def _plain_setting(value: Any) -> bool:
    if isinstance(value, (tuple, list, frozenset)):
        return all(_plain_setting(v) for v in value)
    if isinstance(value, dict):
        return all(_plain_setting(k) and _plain_setting(v) for k, v in value.items())
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufc"
    return isinstance(value, (*_PLAIN, np.generic))


# Arrays up to this size are compared by a digest of all their bytes; larger ones (rare as
# settings) by their shape and a sample of values (an edit between the samples goes unseen).
DIGEST_BYTES = 16 * 2**20


def _comparable(value: Any) -> Any:
    """A stand-in for a setting that compares equal exactly when the setting's value does,
    with a full, stable repr (the audit hashes it): plain values as they are."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        if data.nbytes <= DIGEST_BYTES:
            content = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()
        else:
            flat = data.reshape(-1)
            # no identity: the audit's model_code must be the same in another process
            content = tuple(flat[:: max(1, flat.size // STAMP_SAMPLES)].tolist())
        return ("ndarray", str(data.dtype), data.shape, content)
    if isinstance(value, np.generic):
        return ("numpy", str(value.dtype), value.item())
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), _comparable(v)) for k, v in value.items()))
    if isinstance(value, (tuple, list)):
        items = [_comparable(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value  # plain all through: as before (audit folders keep their hashes)
        return (type(value).__name__, tuple(items))
    return value


def is_torchscript(module: nn.Module | None) -> bool:
    """True for a scripted or traced module, which does not run Python forward hooks."""
    return isinstance(module, torch.jit.ScriptModule)


def set_training(module: nn.Module, flag: bool) -> None:
    if isinstance(module, torch.jit.ScriptModule):
        if module.training != flag:
            module.train(flag)  # script modules keep the flag on the C++ side
    else:
        module.training = flag  # per module, without train()'s recursion or user overrides


def module_device(module: nn.Module | None) -> torch.device:
    if module is None:
        return torch.device("cpu")
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def float_dtype(module: nn.Module | None) -> torch.dtype:
    if module is not None:
        for p in module.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return torch.float32


def attribution_dtype(module: nn.Module | None) -> torch.dtype:
    """The precision attributions are computed and returned in: float64 for a float64 model
    (its precision kept), float32 otherwise (a half-precision model's too)."""
    return torch.float64 if float_dtype(module) == torch.float64 else torch.float32


def attribution_tensor(x: Any, module: nn.Module | None, device: Any) -> torch.Tensor:
    """A batch as a tensor on ``device``, in ``module``'s attribution precision."""
    return torch.as_tensor(x, dtype=attribution_dtype(module), device=device)


def embedding_layer_name(module: nn.Module) -> str | None:
    """The path of the layer that embeds token ids: ``get_input_embeddings()`` (Hugging Face),
    else the only ``nn.Embedding``; None when there is none or several."""
    names = {id(m): name for name, m in module.named_modules()}
    declared = getattr(module, "embedding_layer", None)  # xaikit.text.TextModel says it
    if isinstance(declared, str) and declared in dict(module.named_modules()):
        return declared
    getter = getattr(module, "get_input_embeddings", None)
    if callable(getter):
        with contextlib.suppress(NotImplementedError):
            found = getter()
            if id(found) in names:
                return names[id(found)]
    embeddings = [name for name, m in module.named_modules() if isinstance(m, nn.Embedding)]
    return embeddings[0] if len(embeddings) == 1 else None


def has_embedding(module: nn.Module | None) -> bool:
    if module is None:
        return False
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in module.modules())


def input_mismatch(module: nn.Module, tensor: torch.Tensor) -> str | None:
    """Explain a failed forward by the layers' expectations, when they are clear.

    First the first layer's channel or feature count; else the layer where one item's forward
    fails, and, for an image model whose first linear layer takes a fixed number of features,
    the item shape that gives that number (found by running one blank item of other sizes
    through the layers before it).
    """
    if not tensor.dtype.is_floating_point:  # token ids: the model's own error says more
        return None
    hint = _first_layer_mismatch(module, tensor)
    if hint is not None or isinstance(module, torch.jit.ScriptModule):
        return hint
    with contextlib.suppress(Exception):  # a diagnosis must never hide the original error
        return _failing_layer_mismatch(module, tensor)
    return None


class _ForwardStopped(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a probe hook to end a diagnostic forward early."""


def _leaf_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if n and not list(m.children())]


def _failing_layer_mismatch(module: nn.Module, tensor: torch.Tensor) -> str | None:
    item = tensor[:1].detach().clone()
    entered: list[tuple[str, nn.Module, tuple]] = []
    handles = []
    for name, leaf in _leaf_modules(module):
        handles.append(
            leaf.register_forward_pre_hook(
                lambda mod, inputs, name=name: entered.append((name, mod, _shapes(inputs)))
            )
        )
        handles.append(leaf.register_forward_hook(lambda *_: _pop(entered)))
    try:
        with torch.inference_mode():
            module(item)
        return None  # one item runs: the failure lies elsewhere
    except Exception:
        if not entered:
            return None
    finally:
        for h in handles:
            h.remove()
    name, layer, shapes = entered[-1]
    got = shapes[0] if shapes else None
    item_shape = tuple(tensor.shape[1:])
    expected = _expected_item_shape(module, tensor)
    if expected == item_shape:
        expected = None
    if isinstance(layer, nn.Linear) and got is not None and got[-1] != layer.in_features:
        what = f"layer {name!r} (Linear) takes {layer.in_features} features, got {got[-1]}"
    elif isinstance(layer, _SHAPED) and expected is not None:
        what = f"layer {name!r} ({type(layer).__name__}) cannot take its input of shape {got}"
    else:
        # Any other failure is the model's own (a bug, a check of its own): it propagates
        # unchanged, unless the model runs at another input size, which names the input.
        if expected is None:
            return None
        what = f"the forward fails in layer {name!r} ({type(layer).__name__})"
    hint = f"items of shape {item_shape} do not fit the model: {what}"
    if expected is not None:
        hint += f"; the model expects items of shape {expected} (resize the input)"
    return hint


# Layers whose failure on a well-formed tensor comes from its shape
_SHAPED = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d,
)  # fmt: skip


def _pop(stack: list) -> None:
    stack.pop()  # returns None: a forward hook's return value would replace the output


def _shapes(inputs: tuple) -> tuple:
    return tuple(tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor))


def _expected_item_shape(module: nn.Module, tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The image size whose forward gives the first linear layer its feature count, if any.

    The features reaching that layer grow with the side, so doubling the side and then a
    bisection over square (or same-aspect) sizes finds it in about a dozen forwards of one
    blank item, each cut at the linear layer. Where they do not grow (adaptive pooling, a
    transformer's first Linear on tokens), any size may fit, and none is named.
    """
    if tensor.ndim != 4:
        return None
    first_linear = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if first_linear is None:
        return None
    channels, height, width = (int(s) for s in tensor.shape[1:])
    aspect = width / height

    def features(side: int) -> int:
        seen: list[int] = []

        def probe(_mod, inputs):
            # features of a flattened item (N, F); a Linear on maps or tokens gives no size
            seen.append(int(inputs[0].shape[-1]) if inputs[0].ndim == 2 else -1)
            raise _ForwardStopped

        handle = first_linear.register_forward_pre_hook(probe)
        blank = torch.zeros(
            (1, channels, side, max(1, round(side * aspect))),
            dtype=tensor.dtype,
            device=tensor.device,
        )
        try:
            with torch.inference_mode():
                module(blank)
        except _ForwardStopped:
            return seen[0]
        except Exception:
            return -1  # too small for the layers before it
        finally:
            handle.remove()
        return -1

    target = first_linear.in_features
    # Sides doubling from 8 until the features reach the count (the largest probe is at most
    # twice the answer, not 4096 pixels through every layer); then a bisection below it.
    ran: list[int] = []
    low, high = 1, None
    for side in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        count = features(side)
        if count < 0:
            if ran:
                return None  # runs at a smaller side, fails at a larger one: no single rule
            low = side + 1
            continue
        if ran and count <= ran[-1]:
            return None  # not growing with the side (adaptive pooling, a Linear on tokens)
        ran.append(count)
        if count >= target:
            high = side
            break
        low = side + 1
    if high is None:
        return None
    if len(ran) == 1 and features(2 * high) <= ran[0]:
        return None  # reached at the first side that runs: check the growth one side up
    while low < high:  # smallest side whose features reach the layer's count
        mid = (low + high) // 2
        if features(mid) >= target:
            high = mid
        else:
            low = mid + 1
    if features(low) != target:
        return None
    return (channels, low, max(1, round(low * aspect)))


def _first_layer_mismatch(module: nn.Module, tensor: torch.Tensor) -> str | None:
    first = next(
        (
            m
            for m in module.modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        ),
        None,
    )
    if isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        dims = len(first.kernel_size)  # by the kernel: a subclass (timm's StdConv2d) too
        if tensor.ndim != dims + 2:
            return f"expected a batch of {dims + 1}-D items (N, C, ...) for its first convolution"
        if tensor.shape[1] != first.in_channels:
            return (
                f"expected {first.in_channels} channel(s) for its first convolution, got "
                f"{tensor.shape[1]} (the first axis of an item)"
            )
    if isinstance(first, nn.Linear) and tensor.ndim == 2 and tensor.shape[1] != first.in_features:
        return f"expected {first.in_features} features per item for its first linear layer"
    return None
