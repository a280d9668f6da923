"""Load the model a user brings to the ``xaikit`` command.

- ``path/to/file.py:factory``: the file is imported and ``factory()`` (a function or an
  ``nn.Module`` class) builds the network; ``weights=`` fills it from a ``.safetensors`` file
  or a torch state dict read with ``torch.load(weights_only=True)`` (never a pickle).
- A TorchScript file (``torch.jit.save``): ``.pt``, ``.pth``, ``.ts``, ...
- An ONNX file (``.onnx``), run with onnxruntime (the ``onnx`` extra): no gradients, so only
  the perturbation methods (occlusion, RISE, LIME, KernelSHAP).
- A pickled scikit-learn model (``.pkl``, ``.pickle``, ``.joblib``), only with
  ``trust_pickle=True``: unpickling runs whatever code the file's author put in it. A pickled
  ``nn.Module`` (pickled, or saved whole with ``torch.save(model)``) is loaded the same way, as
  a PyTorch model returning logits.

Torch files are checked against their declared sizes (zip members) before they are read, see
:mod:`xaikit._files`. Every failure is a :class:`~xaikit.loading.LoadError` naming ``model``
or ``weights``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xaikit import _files
from xaikit._validation import one_line
from xaikit.loading.errors import LoadError, checked

__all__ = ["PICKLE_SUFFIXES", "LoadedModel", "OnnxModel", "load_model"]

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


@dataclass
class LoadedModel:
    """A user's model, ready for :class:`xaikit.Model`.

    Attributes
    ----------
    model : nn.Module or callable
        What to pass to ``xk.explain`` and friends.
    kind : {"torch", "torchscript", "onnx", "sklearn"}
    source : str
        The ``--model`` argument, for messages and the report.
    output : str or None
        What the model returns (``"logits"`` or ``"probabilities"``), for :class:`xaikit.Model`;
        None lets it decide (a scikit-learn model: ``predict_proba`` gives probabilities, a
        ``decision_function`` raw scores).
    """

    model: Any
    kind: str
    source: str
    output: str | None = "logits"

    @property
    def has_gradients(self) -> bool:
        """Whether gradient methods (saliency, IG, Grad-CAM, feature visualisation) can run."""
        return self.kind in ("torch", "torchscript")

    @property
    def input_channels(self) -> int | None:
        """Channels of the images the model takes (to read images in the right mode): its first
        2-D convolution's, or the C of an ONNX model's declared (N, C, H, W) input; else None."""
        if isinstance(self.model, OnnxModel):
            shape = self.model.input_shape
            ok = len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0
            return shape[1] if ok else None
        if not isinstance(self.model, nn.Module):
            return None
        for module in self.model.modules():
            if isinstance(module, nn.Conv2d):
                return int(module.in_channels)
            if getattr(module, "original_name", None) == "Conv2d":  # inside TorchScript
                if hasattr(module, "in_channels"):  # scripted: the attributes are kept
                    return int(module.in_channels)
                weight = getattr(module, "weight", None)  # traced: (out, in / groups, kh, kw)
                if isinstance(weight, torch.Tensor) and weight.ndim == 4:
                    groups = _traced_groups(module)
                    return None if groups is None else int(weight.shape[1]) * groups
        return None


def _traced_groups(module) -> int | None:
    """The ``groups`` of a traced TorchScript convolution, read from the constant its graph
    passes to ``aten::_convolution`` (a traced module keeps no ``groups`` attribute); None when
    the graph does not say."""
    try:
        for node in module.graph.nodes():
            if node.kind() == "aten::_convolution":  # (input, weight, bias, ..., groups, ...)
                groups = node.inputsAt(8).toIValue()
                return int(groups) if isinstance(groups, int) and groups > 0 else None
            if node.kind() == "aten::conv2d":  # (input, weight, bias, stride, pad, dil, groups)
                groups = node.inputsAt(6).toIValue()
                return int(groups) if isinstance(groups, int) and groups > 0 else None
    except (AttributeError, RuntimeError, IndexError):
        return None
    return None


def load_model(
    spec: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    output: str | None = None,
    random_weights: bool = False,
    device: str | None = None,
) -> LoadedModel:
    """Load a user's model from ``spec`` (see the module docstring for the forms it takes).

    Parameters
    ----------
    spec : str or path
        ``file.py:factory``, a TorchScript file, an ONNX file or a pickle (with
        ``trust_pickle``).
    weights : path, optional
        A ``.safetensors`` file or a torch state dict, for ``file.py:factory`` only.
    trust_pickle : bool
        Allow loading a pickled scikit-learn model or torch module (pickles can run code when
        loaded).
    output : {"logits", "probabilities", ...}, optional
        What the model returns; default ``"logits"`` for PyTorch and ONNX models,
        xaikit.Model's choice for scikit-learn models (probabilities from ``predict_proba``).
    random_weights : bool
        Accept a factory whose network comes out with random weights and no ``weights`` file
        (a sanity check on an untrained network). Without it such a factory is refused: it
        would explain an untrained network. A factory is taken to initialise randomly when two
        calls under different random seeds give different weights.
    device : str, optional
        Where a PyTorch model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``); the
        loaded network is moved there. Default: where it was loaded (the CPU).

    Raises
    ------
    LoadError
        One line naming ``model`` or ``weights``.
    """
    text = os.fspath(spec)
    file, _, factory = text.rpartition(":") if _is_factory_spec(text) else (text, "", "")
    path = Path(file)
    if factory == "" and path.suffix == ".py":
        raise LoadError(
            f"model: {text!r} names a Python file without a factory; write {text}:make_model "
            "(a function or nn.Module class that builds the network)"
        )
    if path.is_dir():
        raise LoadError(f"model: {file!r} is a directory, not a model file")
    if not path.is_file():
        raise LoadError(f"model: no file {file!r}")
    if weights is not None and not factory:
        raise LoadError(
            "weights: only with --model file.py:factory (TorchScript, ONNX and pickled models "
            "carry their weights)"
        )
    suffix = path.suffix.lower()
    if factory:
        module = _from_factory(path, factory, text)
        if weights is not None:
            _load_weights(module, Path(weights), source=text)
        elif not random_weights and _initialises_randomly(path, factory, text, module):
            raise LoadError(
                f"weights: {text}() builds a network with random weights; give its trained "
                "weights with --weights FILE, or pass --random-weights to explain it untrained"
            )
        loaded = LoadedModel(module.eval(), "torch", text)
    elif suffix == ".onnx":
        loaded = LoadedModel(OnnxModel(path), "onnx", text)
    elif suffix in PICKLE_SUFFIXES:
        obj = _from_pickle(path, trust=trust_pickle)
        if isinstance(obj, nn.Module):  # a pickled network returns what it returns: logits
            loaded = LoadedModel(obj.eval(), "torch", text)
        else:
            loaded = LoadedModel(obj, "sklearn", text, output=None)
    else:
        module = _from_torchscript(path, trust_pickle=trust_pickle)
        kind = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "torch"
        loaded = LoadedModel(module, kind, text)
    if output is not None:
        loaded.output = output
    if device is not None:
        _move(loaded, device)
    return loaded


def _initialises_randomly(path: Path, factory: str, text: str, module: nn.Module) -> bool:
    """Whether a second call of the factory under another seed gives other weights."""
    with torch.random.fork_rng(devices=[]):  # the user's random state is left as it was
        torch.manual_seed(torch.initial_seed() + 1)
        other = _from_factory(path, factory, text)
    theirs = other.state_dict()
    return any(
        k in theirs
        and v.dtype.is_floating_point
        and v.shape == theirs[k].shape
        and not torch.equal(v, theirs[k])
        for k, v in module.state_dict().items()
    )


def _move(loaded: LoadedModel, device: str) -> None:
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise LoadError(
            f"device: {device!r} is not a torch device; expected cpu, cuda, cuda:N or mps"
        ) from err
    if loaded.kind not in ("torch", "torchscript"):
        if where.type != "cpu":
            raise LoadError(f"device: a {loaded.kind} model runs on the CPU only, got {device!r}")
        return
    if where.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device: {device!r} asked for, but this torch has no CUDA device")
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise LoadError(f"device: {device!r} asked for, but MPS is not available here")
    loaded.model = loaded.model.to(where)


def _is_factory_spec(text: str) -> bool:
    head, sep, tail = text.rpartition(":")
    return bool(sep) and head.endswith(".py") and tail.isidentifier()


def _from_factory(path: Path, factory: str, text: str) -> nn.Module:
    # Importing the user's file runs it: that is what they asked for by naming their own code.
    # The module's name is part of the model's identity (an audit's manifest hashes the class's
    # qualified name), so it must be the same in every process: not Python's salted hash().
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    name = f"_xaikit_user_{digest[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"model: cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # a script's sys.exit() is a failure, not an exit
        sys.modules.pop(name, None)
        raise LoadError(f"model: importing {str(path)!r} failed: {_failure(err)}") from err
    builder = getattr(module, factory, None)
    if builder is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise LoadError(f"model: {str(path)!r} has no {factory!r}; it defines {found}")
    if not callable(builder):
        raise LoadError(f"model: {text!r} is a {type(builder).__name__}, not a factory")
    try:
        built = builder()
    except (Exception, SystemExit) as err:
        raise LoadError(f"model: {text}() failed: {_failure(err)}") from err
    if not isinstance(built, nn.Module):
        raise LoadError(f"model: {text}() returned {type(built).__name__}, not a torch.nn.Module")
    return built


def _load_weights(module: nn.Module, path: Path, *, source: str) -> None:
    if not path.is_file():
        raise LoadError(f"weights: no file {str(path)!r}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            checked(_files.check_zip, path, name="weights")
            with warnings.catch_warnings():  # torch warns about foreign pickles: one line only
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except LoadError:
        raise
    except Exception as err:  # safetensors, zipfile, pickle and torch raise many kinds
        raise LoadError(
            f"weights: {str(path)!r} is not a safetensors file or a torch state dict "
            f"readable with weights_only=True ({type(err).__name__})"
        ) from err
    state = _state_dict(state, path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch: " + "; ".join(mismatched[:3]))
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise LoadError(
            f"weights: {str(path)!r} does not fit the model from {source}: " + "; ".join(parts)
        )
    module.load_state_dict(state)


def _state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, also inside the usual checkpoint wrappers."""
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):  # a training checkpoint around the weights
                state = state[key]
                break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise LoadError(
            f"weights: {str(path)!r} holds {type(state).__name__}, not a state dict of tensors"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _from_torchscript(path: Path, *, trust_pickle: bool = False) -> nn.Module:
    """A TorchScript file or, with ``trust_pickle``, a whole module saved by ``torch.save``."""
    checked(_files.check_zip, path, name="model")
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users have files
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises several kinds for a file that is no TorchScript
        cause = err
    # Not TorchScript: say what it is, when we can tell without running any code.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        state = None
    if isinstance(state, dict):
        raise LoadError(
            f"model: {str(path)!r} holds weights (a state dict), not a model; pass the "
            f"architecture as --model file.py:factory and this file as --weights"
        ) from cause
    if state is None and _pickled_module(path):
        if trust_pickle:
            return _torch_pickle(path)
        raise LoadError(
            f"model: {str(path)!r} is a whole torch module saved with torch.save(model), a "
            "pickle, which runs any code it holds when loaded; pass --trust-pickle only if you "
            "trust whoever made it (its class must be importable), or save it as TorchScript "
            "(torch.jit.script(model).save(...)) or its state dict for --model file.py:factory "
            "--weights"
        ) from cause
    raise LoadError(
        f"model: {str(path)!r} is not a model file: expected file.py:factory, a TorchScript file, "
        "an ONNX file (.onnx) or a pickled scikit-learn model (.pkl, with --trust-pickle)"
    ) from cause


def _pickled_module(path: Path) -> bool:
    """Whether a torch.save zip pickles a torch module, read from its opcodes (nothing run)."""
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                return False
            data = archive.read(name)  # its size was checked with the rest of the zip
        strings = {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except Exception:  # not a zip, or a damaged pickle: not something we can name
        return False
    # Every module pickles its __dict__, whose keys name its parameters and submodules.
    return {"_parameters", "_modules"} <= strings


def _torch_pickle(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)  # the user trusts it
    except Exception as err:
        raise LoadError(
            f"model: {str(path)!r} is a pickled torch module that cannot be loaded "
            f"({one_line(err, with_type=True)[:200]}); its class must be importable here"
        ) from err
    if not isinstance(obj, nn.Module):
        raise LoadError(f"model: {str(path)!r} holds a {type(obj).__name__}, not a torch module")
    return obj


def _from_pickle(path: Path, *, trust: bool) -> Any:
    if not trust:
        raise LoadError(
            f"model: {str(path)!r} is a pickle, which runs any code it holds when loaded; pass "
            "--trust-pickle only if you trust whoever made it"
        )
    try:
        if path.suffix.lower() == ".joblib":
            import joblib

            obj = joblib.load(path)
        else:
            with path.open("rb") as handle:
                obj = pickle.load(handle)  # the user trusts this file
    except Exception as err:
        raise LoadError(
            f"model: {str(path)!r} is not a readable pickle ({one_line(err, with_type=True)})"
        ) from err
    if not (callable(getattr(obj, "predict_proba", None)) or callable(obj)):
        raise LoadError(
            f"model: {str(path)!r} holds a {type(obj).__name__}, not a model with predict_proba"
        )
    return obj


class OnnxModel:
    """An ONNX model as a callable on NumPy batches (onnxruntime, CPU).

    A model exported with a fixed batch size is fed that many items at a time (the last chunk
    padded and cut back), so ``xk.Model`` can still batch freely.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise LoadError(
                "model: ONNX files need onnxruntime; install the extra: pip install 'xaikit[onnx]'"
            ) from err
        self.path = str(path)
        try:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only: no warnings on stderr per run
            self.session = onnxruntime.InferenceSession(
                self.path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise LoadError(
                f"model: {self.path!r} is not an ONNX model onnxruntime can run "
                f"({one_line(err, with_type=True)[:160]})"
            ) from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise LoadError(f"model: {self.path!r} takes {len(inputs)} inputs; xaikit needs one")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.dtype = np.float64 if "double" in inputs[0].type else np.float32
        first = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        self._check_items(x)
        if self.fixed_batch is None:
            return self._run(x)
        size, outs = self.fixed_batch, []
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            n = len(chunk)
            if n < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
            outs.append(self._run(chunk)[:n])
        return np.concatenate(outs)

    # Its errors name no argument: xk.Model, which calls it, puts "x: the model refused a batch
    # of shape ...:" before them.
    def _check_items(self, x: np.ndarray) -> None:
        """Refuse items whose shape the model's declared input rules out, naming both."""
        if not self.input_shape:
            return
        want = self.input_shape[1:]
        if len(want) != x.ndim - 1 or any(
            isinstance(w, int) and w > 0 and w != h for w, h in zip(want, x.shape[1:], strict=True)
        ):
            declared = ", ".join(str(d) if d else "?" for d in self.input_shape)
            raise ValueError(
                f"the ONNX model {self.path!r} takes inputs of shape ({declared}), not items of "
                f"shape {x.shape[1:]}"
            )

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run(None, {self.input_name: x})[0]
        except Exception as err:  # onnxruntime's own kinds, with a "[ONNXRuntimeError] : 2 :"
            reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", one_line(err))
            raise ValueError(
                f"the ONNX model {self.path!r} failed to run on it: {reason[:200]}"
            ) from err
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path!r})"


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def _failure(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return f"it called sys.exit({err.code!r})"
    return one_line(err, with_type=True)
