"""Feature visualisation: objective algebra, the optimisation loop, batching, generators, maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from _models import float64_batchnorm_cnn
from xaikit.datasets import SmallCNN
from xaikit.featureviz import (
    FilterActivations,
    Visualization,
    filter_activations,
    generator,
    train_generator,
    visualize,
)
from xaikit.featureviz import objectives as O
from xaikit.featureviz import param as P
from xaikit.featureviz import transforms as T
from xaikit.featureviz.objectives import Context

SHAPE = (1, 12, 12)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The machine is shared: small ops run faster on one intra-op thread than on two that spin.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _state(net: nn.Module):
    return (
        [m.training for m in net.modules()],
        [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
         for m in net.modules()],
        [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        [p.requires_grad for p in net.parameters()],
        {k: v.clone() for k, v in net.state_dict().items()},
    )  # fmt: skip


def _same_state(a, b) -> bool:
    flags_a, hooks_a, grads_a, req_a, sd_a = a
    flags_b, hooks_b, grads_b, req_b, sd_b = b
    grads_equal = all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(grads_a, grads_b, strict=True)
    )
    states_equal = all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    return (
        flags_a == flags_b
        and hooks_a == hooks_b
        and grads_equal
        and req_a == req_b
        and (states_equal)
    )


# ---------------------------------------------------------------------- objectives


def known_context() -> Context:
    g = torch.Generator().manual_seed(0)
    acts = {
        "conv": torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64),
        "fc": torch.randn(3, 7, generator=g, dtype=torch.float64),
    }
    output = torch.randn(3, 5, generator=g, dtype=torch.float64)
    image = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    return Context(acts, output, image, "logits")


def test_objective_parts_on_known_activations():
    c = known_context()
    a, out, x = c.activations["conv"], c.output, c.image
    torch.testing.assert_close(O.channel("conv", 2)(c), a[:, 2].sum(dim=(1, 2)))
    torch.testing.assert_close(O.channel("fc", 3)(c), c.activations["fc"][:, 3])
    torch.testing.assert_close(O.neuron("conv", 1)(c), a[:, 1, 2, 3])  # centre of 5x6
    torch.testing.assert_close(O.neuron("conv", 1, (4, 0))(c), a[:, 1, 4, 0])
    v = np.array([1.0, -2.0, 0.5, 0.0])
    want = (a * torch.from_numpy(v)[None, :, None, None]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(O.direction("conv", v)(c), want)
    torch.testing.assert_close(O.logit(4)(c), out[:, 4])
    torch.testing.assert_close(O.probability(4)(c), F.softmax(out, dim=1)[:, 4])
    torch.testing.assert_close(O.l1()(c), x.abs().sum(dim=(1, 2, 3)))
    torch.testing.assert_close(O.l2(center=0.5)(c), (x - 0.5).pow(2).sum(dim=(1, 2, 3)))
    tv = (x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(1, 2, 3)) + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().sum(dim=(1, 2, 3))
    torch.testing.assert_close(O.total_variation()(c), tv)
    flat = Context(c.activations, out, torch.full_like(x, 0.3), "logits")
    torch.testing.assert_close(O.blur()(flat), torch.zeros(3, dtype=torch.float64))
    assert (O.blur()(c) > 0).all()


def test_objective_arithmetic_combines_the_values():
    c = known_context()
    a, b = O.channel("conv", 0), O.logit(1)
    va, vb = a(c), b(c)
    torch.testing.assert_close((a + b)(c), va + vb)
    torch.testing.assert_close((a - 2 * b)(c), va - 2 * vb)
    torch.testing.assert_close((3 + a)(c), va + 3)
    torch.testing.assert_close((1 - a)(c), 1 - va)
    torch.testing.assert_close((a * b)(c), va * vb)
    torch.testing.assert_close((a / 4)(c), va / 4)
    torch.testing.assert_close((-a)(c), -va)
    torch.testing.assert_close(sum([a, b, a])(c), 2 * va + vb)


def test_combined_objective_reads_as_its_expression():
    a, b = O.channel("conv", 0), O.logit(1)
    combined = O.channel("conv", 0) - 0.01 * O.total_variation() + O.neuron("fc", 2)
    assert combined.layers == {"conv", "fc"}
    assert repr(combined) == "channel('conv', 0) - 0.01 * total_variation() + neuron('fc', 2)"
    assert repr(2 * (a + b)) == "2 * (channel('conv', 0) + logit(1))"


def test_diversity_is_lucids_negative_gram_similarity():
    c = known_context()
    a = c.activations["conv"]
    flat = a.reshape(3, 4, -1)
    grams = [F.normalize((f @ f.T).flatten(), dim=0) for f in flat]
    want = [-sum(float(grams[i] @ grams[j]) for j in range(3) if j != i) / 3 for i in range(3)]
    np.testing.assert_allclose(O.diversity("conv")(c).numpy(), want, rtol=1e-10)
    one = c.item(0)
    assert float(O.diversity("conv")(one)) == 0.0


def test_custom_objective_is_evaluated_as_given():
    c = known_context()
    custom = O.Objective(lambda ctx: ctx("fc")[:, 5] ** 2, layers=["fc"], name="fc5sq")
    torch.testing.assert_close(custom(c), c.activations["fc"][:, 5] ** 2)


def test_objective_must_return_one_value_per_item():
    bad = O.Objective(lambda ctx: ctx("fc").sum(), layers=["fc"], name="bad")
    with pytest.raises(ValueError, match=r"objective: bad must return one value per item"):
        bad(known_context())


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda: O.channel(3, 1), TypeError, "layer: expected a layer path"),
        (lambda: O.channel("conv", -1), ValueError, "index: expected a non-negative"),
        (lambda: O.channel("conv", 1.5), TypeError, "index: expected an int"),
        (lambda: O.logit("7"), TypeError, "target: expected an int"),
        (lambda: O.direction("conv", [[1.0]]), ValueError, "vector: expected a 1-D"),
        (lambda: O.channels("conv", []), ValueError, "indices: expected at least one"),
        (lambda: O.blur(sigma=0), ValueError, "sigma: expected a positive"),
        (lambda: O.channel("conv", 1) + "x", TypeError, "unsupported operand"),
    ],
)
def test_objective_arguments_checked_at_construction(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


# ---------------------------------------------------------------------- the optimisation loop


@pytest.mark.parametrize(
    "objective",
    [
        O.channel("conv2", 1),
        O.neuron("conv2", 2),
        O.logit(3),
        O.probability(0),
        O.direction("conv1", [1.0, -1.0, 0.5, 0.0]) - 0.01 * O.total_variation(),
    ],
    ids=repr,
)
def test_optimiser_raises_the_objective(objective):
    net = float64_batchnorm_cnn()
    v = visualize(net, objective, steps=30, lr=0.1, input_shape=SHAPE)
    assert isinstance(v, Visualization)
    assert v.images.shape == (1, *SHAPE) and v.history.shape == (30, 1)
    assert v.objective_values[0] > v.initial_values[0] + 1e-3
    assert v.images.min() >= 0.0 and v.images.max() <= 1.0


def _conv_bn_relu(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=inplace),
        nn.Flatten(), nn.Linear(4 * 12 * 12, 3),
    ).double()  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
    return net.eval()


def test_an_in_place_op_after_the_layer_does_not_change_its_objective():
    # The hook kept the layer's output itself, which the ReLU(inplace=True) then overwrote:
    # the objective read the ReLU's output (a BatchNorm channel could never go negative).
    kw = {"steps": 6, "lr": 0.1, "seed": 2, "input_shape": SHAPE}
    objective = -O.channel("1", 0)  # lower the BatchNorm's channel: below 0 only before ReLU
    in_place = visualize(_conv_bn_relu(True), objective, **kw)
    plain = visualize(_conv_bn_relu(False), objective, **kw)
    np.testing.assert_allclose(in_place.history, plain.history, rtol=1e-10)


@pytest.mark.parametrize("param", ["fourier", "pixels"])
def test_all_channels_batched_equals_one_at_a_time(param):
    net = float64_batchnorm_cnn()
    kw = {"steps": 8, "lr": 0.1, "param": param, "input_shape": SHAPE}
    batched = visualize(net, O.channels("conv2"), seed=5, **kw)
    assert batched.images.shape == (6, *SHAPE) and batched.seeds == [5, 6, 7, 8, 9, 10]
    for k in range(6):
        single = visualize(net, O.channel("conv2", k), seed=5 + k, **kw)
        np.testing.assert_allclose(batched.images[k], single.images[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(batched.history[:, k], single.history[:, 0], rtol=1e-10)
        np.testing.assert_allclose(batched.objective_values[k], single.objective_values[0])
    # The items really differ: different channels, different seeds.
    assert np.abs(batched.images[0] - batched.images[1]).max() > 1e-3


def test_a_list_of_objectives_with_seeds_matches_single_runs():
    net = float64_batchnorm_cnn()
    objectives = [O.logit(1) - 0.01 * O.l1(), O.logit(4)]
    batched = visualize(net, objectives, steps=6, seed=[3, 11], input_shape=SHAPE)
    for i, s in enumerate([3, 11]):
        single = visualize(net, objectives[i], steps=6, seed=s, input_shape=SHAPE)
        np.testing.assert_allclose(batched.images[i], single.images[0], atol=1e-10)


def test_a_batch_of_one_objective_starts_each_item_from_its_own_seed():
    net = float64_batchnorm_cnn()
    objective = O.channel("conv2", 0) + 0.5 * O.diversity("conv2")
    v = visualize(net, objective, batch=3, steps=5, seed=0, input_shape=SHAPE)
    assert v.images.shape == (3, *SHAPE) and v.seeds == [0, 1, 2]
    again = visualize(net, objective, batch=3, steps=5, seed=0, input_shape=SHAPE)
    np.testing.assert_array_equal(v.images, again.images)  # reproducible with the seed
    assert not np.allclose(v.images[0], v.images[1])


def test_images_stay_in_the_value_range_even_with_a_large_step():
    net = float64_batchnorm_cnn()
    v = visualize(
        net, O.logit(2), steps=40, lr=5.0, param="pixels", transforms=None,
        value_range=(-1.0, 2.0), input_shape=SHAPE,
    )  # fmt: skip
    assert v.images.min() >= -1.0 and v.images.max() <= 2.0
    assert v.images.max() - v.images.min() > 1.0  # it did move, to the range's ends


@pytest.mark.parametrize("param", ["fourier", "pixels"])
def test_start_images_are_the_starting_point(param):
    net = float64_batchnorm_cnn()
    start = np.random.default_rng(0).uniform(0.1, 0.9, size=(2, *SHAPE))
    v = visualize(net, O.logit(0), start=start, steps=1, lr=1e-9, param=param)
    np.testing.assert_allclose(v.images, start, atol=1e-6)
    assert v.images.shape == (2, *SHAPE)
    # One start image shared by every channel: the homework's "filter from an image".
    w = visualize(net, O.channels("conv1"), start=start[:1], steps=4, param=param)
    assert w.images.shape == (4, *SHAPE)
    assert (w.objective_values > w.initial_values).all()


def test_param_round_trip_for_three_channel_fourier():
    fourier = P.fourier()
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64) * 0.9 + 0.05
    raw = fourier.from_image(x, low=0.0, high=1.0)
    torch.testing.assert_close(fourier.image(raw, (3, 9, 10), low=0.0, high=1.0), x)


def test_default_transforms_keep_the_size():
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    chain = T.default(10)
    u = torch.rand(2, chain.draws, dtype=torch.float64)
    assert chain(x, u, fill=0.0).shape == x.shape


def test_transforms_that_do_nothing_give_the_input_exactly():
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    still = T.Transforms([T.pad(2), T.jitter(0), T.rotate(0), T.scale((1.0, 1.0))])
    out = still(x, torch.rand(2, still.draws, dtype=torch.float64), fill=0.0)
    torch.testing.assert_close(out, x)


def test_jitter_of_one_shifts_by_one_pixel_either_way():
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    shift = T.Transforms([T.pad(2), T.jitter(1)])
    moved = shift(x, torch.tensor([[0.99, 0.5], [0.0, 0.5]], dtype=torch.float64), fill=0.0)
    torch.testing.assert_close(moved[0, :, :, 1:], x[0, :, :, :-1])  # +1 pixel in x
    torch.testing.assert_close(moved[1, :, :, :-1], x[1, :, :, 1:])  # -1 pixel in x


def test_input_shape_inferred_from_the_first_convolution():
    torch.manual_seed(0)
    v = visualize(SmallCNN(), O.channel("conv1", 0), steps=2)
    assert v.images.shape == (1, 1, 28, 28)


def test_input_shape_error_when_it_cannot_be_guessed():
    with pytest.raises(ValueError, match=r"input_shape: could not infer"):
        visualize(float64_batchnorm_cnn(), O.logit(0), steps=2)


def test_flat_inputs_with_pixels():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    v = visualize(mlp, O.logit(1), steps=10, param="pixels")
    assert v.images.shape == (1, 6) and v.objective_values[0] > v.initial_values[0]
    with pytest.raises(ValueError, match="param: the Fourier parameterisation needs images"):
        visualize(mlp, O.logit(1), steps=2)


def test_plot_returns_a_figure():
    v = visualize(float64_batchnorm_cnn(), O.channels("conv1"), steps=2, input_shape=SHAPE)
    fig = v.plot()
    assert isinstance(fig, Figure) and len(fig.axes) >= 4


# ---------------------------------------------------------------------- the model untouched


def _visualize_succeeds(net):
    visualize(net, O.channel("conv2", 1) + O.logit(0), steps=3, input_shape=SHAPE)


def _forward_fails(net):
    net.calls, net.fail_after = 0, 3  # the probe, the start's value and a step pass, then fail
    try:
        with pytest.raises(RuntimeError, match="forward failed"):
            visualize(net, O.channel("conv2", 1), steps=5, input_shape=SHAPE)
    finally:
        net.fail_after = None


def _objective_fails(net):
    calls = []

    def flaky(ctx):
        calls.append(1)
        if len(calls) > 3:
            raise KeyError("objective failed")
        return ctx("conv2").sum(dim=(1, 2, 3))

    with pytest.raises(KeyError, match="objective failed"):
        visualize(net, O.Objective(flaky, layers=["conv2"]), steps=5, input_shape=SHAPE)


def _bad_index(net):
    with pytest.raises(ValueError, match="index:"):
        visualize(net, O.channel("conv2", 99), steps=5, input_shape=SHAPE)


@pytest.mark.parametrize(
    "run",
    [_visualize_succeeds, _forward_fails, _objective_fails, _bad_index],
    ids=["success", "forward fails", "objective fails", "bad channel index"],
)
def test_model_untouched_by_visualize(run):
    net = float64_batchnorm_cnn()
    net.train()
    net.relu1.eval()
    net.conv1.weight.requires_grad_(False)
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    before = _state(net)
    run(net)
    assert _same_state(before, _state(net))


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("objective", "pattern"),
    [
        (O.channel("conv3", 0), r"layer: no layer 'conv3' in the model; did you mean 'conv2'"),
        (O.channel("conv2", 6), r"index: expected a channel index in \[0, 6\) for layer 'conv2'"),
        (O.channels("conv2", [0, 7]), r"index: expected a channel index in \[0, 6\)"),
        (O.neuron("conv1", 0, (12, 0)), r"position: expected 2 index\(es\) within the spatial"),
        (O.direction("conv2", [1.0, 2.0]), r"vector: expected 6 weights"),
        (O.logit(5), r"target: expected a class index in \[0, 5\)"),
        (O.probability(9) - O.l1(), r"target: expected a class index in \[0, 5\)"),
    ],
    ids=repr,
)
def test_bad_objectives_fail_before_optimising(objective, pattern):
    net = float64_batchnorm_cnn()
    with pytest.raises(ValueError, match=pattern):
        visualize(net, objective, steps=50, input_shape=SHAPE)
    assert net.calls <= 1  # at most one checking forward pass, no optimisation step


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"steps": 0}, ValueError, "steps: expected a positive int"),
        ({"lr": -1.0}, ValueError, "lr: expected a positive number"),
        ({"param": "wavelet"}, ValueError, "param: expected 'fourier', 'pixels'"),
        ({"transforms": "lots"}, ValueError, "transforms: expected 'default'"),
        ({"seed": -1}, ValueError, "seed: expected a non-negative int"),
        ({"seed": [1, 2]}, ValueError, r"seed: expected 1 non-negative ints"),
        ({"value_range": (1.0, 0.0)}, ValueError, "value_range: expected"),
        ({"start": np.full((1, *SHAPE), 3.0)}, ValueError, "start: expected values in"),
        ({"start": np.zeros((1, 1, 5, 5))}, ValueError, r"start: expected items of shape"),
        ({"input_shape": (3, 12, 12)}, ValueError, r"input_shape: items of shape \(3, 12, 12\) do"),
        ({"generator": "G"}, TypeError, "generator: expected an nn.Module"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    kwargs = {"input_shape": SHAPE, "steps": 2, **kwargs}
    if "start" in kwargs:
        kwargs.pop("input_shape")
        if kwargs["start"].shape[-1] == 5:
            kwargs["input_shape"] = SHAPE
    with pytest.raises(error, match=pattern):
        visualize(float64_batchnorm_cnn(), O.logit(0), **kwargs)


def test_callable_models_are_refused():
    with pytest.raises(TypeError, match="model: feature visualisation needs gradients"):
        visualize(lambda x: np.zeros((len(x), 2)), O.logit(0))


# ---------------------------------------------------------------------- generators


class TinyGenerator(nn.Module):
    def __init__(self, latent_dim: int = 3, out=SHAPE, unflatten: bool = True) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        size = int(np.prod(out))
        layers = [nn.Linear(latent_dim, size), nn.Sigmoid()]
        if unflatten:
            layers.append(nn.Unflatten(1, out))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def test_generator_constrained_visualisation():
    torch.manual_seed(1)
    G = TinyGenerator().double()
    G.train()
    net = float64_batchnorm_cnn()
    before, before_g = _state(net), _state(G)
    kw = {"generator": G, "steps": 25, "lr": 0.1, "batch": 2, "transforms": None}
    v = visualize(net, 10 * O.logit(2), prior=0.0, **kw)
    assert v.latents.shape == (2, 3) and v.images.shape == (2, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(v.images, G(torch.from_numpy(v.latents)).numpy(), atol=1e-12)
    assert (v.objective_values > v.initial_values).all()
    assert _same_state(before, _state(net)) and _same_state(before_g, _state(G))
    # The prior ||z||^2 pulls the latents towards 0.
    held = visualize(net, 10 * O.logit(2), prior=10.0, **kw)
    assert np.linalg.norm(held.latents) < np.linalg.norm(v.latents)
    # start= latent vectors
    z0 = np.zeros((1, 3))
    w = visualize(net, O.logit(2), generator=G, start=z0, steps=1, lr=1e-9)
    np.testing.assert_allclose(w.latents, z0, atol=1e-8)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: TinyGenerator(unflatten=False), r"generator: items of shape \(144,\) do not fit"),
        (lambda: TinyGenerator(out=(3, 12, 12)), r"generator: items of shape \(3, 12, 12\) do not"),
        (lambda: nn.Sequential(nn.Conv2d(3, 1, 1)), r"generator: cannot tell the size"),
    ],
)
def test_generator_that_does_not_fit_the_model(make, pattern):
    net = float64_batchnorm_cnn()
    with pytest.raises(ValueError, match=pattern):
        visualize(net, O.logit(0), generator=make().double(), steps=2)


def test_generator_that_does_not_fit_the_default_cnn_names_its_shape():
    torch.manual_seed(0)
    G = TinyGenerator(out=(1, 20, 20))
    # The culprit, the items' shape once, the failing layer and the shape that fits.
    fits = (
        r"items of shape \(1, 20, 20\) do not fit the model: layer 'fc1'.*"
        r" expects items of shape \(1, 28"
    )
    with pytest.raises(ValueError, match=rf"^generator: {fits}"):
        visualize(SmallCNN(), O.logit(0), generator=G, steps=2)
    with pytest.raises(ValueError, match=rf"^input_shape: {fits}"):
        visualize(SmallCNN(), O.logit(0), input_shape=(1, 20, 20), steps=2)


GENERATOR_DATA = np.random.default_rng(0).random((96, 1, 6, 6), dtype=np.float32)
GENERATOR_OPTIONS = {"latent_dim": 3, "epochs": 2, "seed": 1}


def test_train_generator_is_deterministic_with_outputs_in_the_data_range():
    data, kw = GENERATOR_DATA, GENERATOR_OPTIONS
    a = train_generator(data, cache=False, **kw)
    b = train_generator(data, cache=False, **kw)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert a.latent_dim == 3 and not a.training
    z = torch.randn(4, 3)
    with torch.no_grad():
        out = a(z)
    assert out.shape == (4, 1, 6, 6)
    assert float(out.min()) >= float(data.min()) and float(out.max()) <= float(data.max())


def test_train_generator_caches_one_file_per_seed(tmp_path, monkeypatch):
    data, kw = GENERATOR_DATA, GENERATOR_OPTIONS
    a = train_generator(data, cache=False, **kw)
    z = torch.randn(4, 3)
    with torch.no_grad():
        out = a(z)
    c = train_generator(data, cache_dir=tmp_path, **kw)
    files = list(tmp_path.glob("generator-vae-z3-seed1-*.pt"))
    assert len(files) == 1
    torch.testing.assert_close(c(z).detach(), out)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setitem(generator._TRAINERS, "vae", no_training)
    d = train_generator(data, cache_dir=tmp_path, **kw)  # loads
    torch.testing.assert_close(d(z).detach(), out)
    with pytest.raises(AssertionError, match="trained again"):  # other seed: other key
        train_generator(data, cache_dir=tmp_path, latent_dim=3, epochs=2, seed=2)


def test_train_gan_is_deterministic():
    data = np.random.default_rng(0).random((64, 1, 4, 4), dtype=np.float32)
    a = train_generator(data, kind="gan", latent_dim=2, epochs=1, cache=False)
    b = train_generator(data, kind="gan", latent_dim=2, epochs=1, cache=False)
    z = torch.randn(3, 2)
    torch.testing.assert_close(a(z), b(z), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"kind": "flow"}, "kind: expected one of"),
        ({"latent_dim": 0}, "latent_dim: expected a positive int"),
        ({"data": np.zeros((1, 2))}, "data: expected at least 2 items"),
        ({"data": np.zeros((5, 2))}, "data: all values are equal"),
    ],
)
def test_train_generator_bad_input(kwargs, pattern):
    kwargs = {"data": np.random.default_rng(0).random((8, 4)), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        train_generator(cache=False, epochs=1, **kwargs)


# ---------------------------------------------------------------------- filter activations


def test_filter_activations_are_the_layers_output():
    net = float64_batchnorm_cnn()
    net.train()
    before = _state(net)
    x = np.random.default_rng(0).random((3, *SHAPE))
    fa = filter_activations(net, x, layer="conv2", channels=[1, 4])
    assert isinstance(fa, FilterActivations) and fa.maps.shape == (3, 2, 6, 6)
    net.eval()
    with torch.no_grad():
        h = net.conv2(net.pool(net.relu1(net.bn1(net.conv1(torch.from_numpy(x))))))
    net.train()
    np.testing.assert_allclose(fa.maps, h[:, [1, 4]].numpy(), rtol=1e-6, atol=1e-8)
    assert _same_state(before, _state(net))
    v = visualize(net, O.channels("conv2"), steps=2, input_shape=SHAPE)
    assert isinstance(fa.plot(visualization=v), Figure)
    assert isinstance(filter_activations(net, x, layer="conv1").plot(), Figure)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"layer": "conv9"}, r"layer: no layer 'conv9' in the model; did you mean"),
        ({"layer": "conv2", "channels": [6]}, r"channels: expected channel indices in \[0, 6\)"),
        ({"layer": "conv2", "channels": []}, "channels: expected at least one"),
    ],
)
def test_filter_activations_bad_input(kwargs, pattern):
    x = np.zeros((1, *SHAPE))
    with pytest.raises(ValueError, match=pattern):
        filter_activations(float64_batchnorm_cnn(), x, **kwargs)


def test_a_batch_level_term_on_per_item_objectives_is_refused():
    # channels(...) scores each item alone, where diversity is 0: the term was silently dropped
    with pytest.raises(ValueError, match=r"objective: 10 \* diversity\('conv2'\) compares"):
        O.channels("conv2", [0, 1]) + 10 * O.diversity("conv2")


def test_per_item_objectives_take_the_whole_arithmetic():
    # -, / and a number or objective on the left failed with bare TypeErrors
    net = float64_batchnorm_cnn()
    kw = {"steps": 3, "lr": 0.1, "seed": [4], "input_shape": SHAPE}
    one = visualize(net, O.channel("conv2", 1), **{**kw, "seed": 4}).initial_values[0]
    for objective, expected in [
        (-O.channels("conv2", [1]), -one),
        (O.channels("conv2", [1]) / 2, one / 2),
        (1 - O.channels("conv2", [1]), 1 - one),
    ]:
        assert visualize(net, objective, **kw).initial_values[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="layer: expected a layer path such as 'conv2', got an"):
        O.channel("", 0)
