"""Text models: tokenizer, token attributions, attention, embeddings and probing a transformer.

Tests on tiny models built here need only torch; the tests on the real transformer
(all-MiniLM-L6-v2 from the ``[text]`` extra) are skipped, with the reason, when it is missing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xaikit as xk
from xaikit import text

needs_extra = pytest.mark.skipif(not text.available(), reason=text.missing_message())

WORDS = [
    *("the", "movie", "was", "not", "good", "bad", "great"),
    *("plot", "actors", "boring", "and", "but", "very"),
]


class BagOfWords(nn.Module):
    """score = bias + sum of one weight per token: a linear model of the kept tokens."""

    def __init__(self, weights: np.ndarray, bias: float = 0.5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(weights), 1)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.as_tensor(weights, dtype=torch.float32)[:, None])
        self.bias = bias

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        score = self.embedding(ids)[..., 0].sum(dim=1) + self.bias
        return torch.stack([score, -score], dim=1)


@pytest.fixture(scope="module")
def tiny():
    tok = text.Tokenizer.from_words(WORDS)
    weights = np.random.default_rng(0).normal(size=tok.vocab_size)
    weights[: tok.mask_id + 1] = 0.0  # [PAD], [UNK], [CLS], [SEP], [MASK] carry nothing
    return BagOfWords(weights), tok, weights


SENTENCE = "the plot was very boring and the actors bad but the movie great"


# ---------------------------------------------------------------------- tokenizer and bad input


def test_tokenizer_maps_content_ids_back_to_their_text(tiny):
    _, tok, _ = tiny
    enc = tok.encode("The movie was NOT good")
    assert enc.tokens == ["the", "movie", "was", "not", "good"]
    assert enc.ids.tolist() == [5, 6, 7, 8, 9]  # after [PAD] [UNK] [CLS] [SEP] [MASK]
    assert tok.tokens(enc.ids) == enc.tokens
    batch = tok.encode_batch(["the movie", "good"], unknown="ignore")
    np.testing.assert_array_equal(batch, [[5, 6], [9, text.DELETED]])


@pytest.mark.parametrize("empty", ["", "   \n"])
def test_empty_text_is_refused(tiny, empty):
    _, tok, _ = tiny
    with pytest.raises(ValueError, match="text: expected a non-empty string"):
        tok.encode(empty)


def test_non_string_text_is_refused(tiny):
    _, tok, _ = tiny
    with pytest.raises(TypeError, match="text: expected a string"):
        tok.encode(["the movie"])


def test_unknown_words_warn_by_name_or_raise(tiny):
    _, tok, _ = tiny
    with pytest.warns(
        UserWarning, match=r"2 word\(s\) not in the vocabulary.*'zebra', 'xylophone'"
    ):
        enc = tok.encode("the zebra movie xylophone")
    assert enc.unknown == ["zebra", "xylophone"]
    assert enc.tokens == ["the", "[UNK]", "movie", "[UNK]"]
    with pytest.raises(ValueError, match="text: 1 word"):
        tok.encode("zebra", unknown="error")


def test_long_text_is_truncated_with_a_warning_or_refused():
    tok = text.Tokenizer.from_words(WORDS, max_length=10)
    long = " ".join(["good"] * 12)
    with pytest.warns(UserWarning, match=r"12 tokens exceed the model's limit of 8 content tokens"):
        enc = tok.encode(long)
    assert len(enc) == 8 and enc.truncated == 4
    with pytest.raises(ValueError, match=r"text: 12 tokens exceed.*truncate=True"):
        tok.encode(long, truncate=False)


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"method": "gradcam"}, ValueError, "method: expected one of"),
        ({"method": "lime", "removal": "blank"}, ValueError, "removal: expected one of"),
        ({"method": "lime", "removal": "delete"}, ValueError,
         "removal: 'delete' needs a TextModel"),
        ({"method": "lime", "tokenizer": None}, TypeError, "tokenizer: expected a Tokenizer"),
    ],
    ids=["image method", "unknown removal", "delete without a TextModel", "no tokenizer"],
)  # fmt: skip
def test_explain_refuses_a_bad_argument_by_name(tiny, options, error, pattern):
    model, tok, _ = tiny
    kwargs = {"tokenizer": tok, **options}
    if kwargs["tokenizer"] is None:
        del kwargs["tokenizer"]
    with pytest.raises(error, match=pattern):
        text.explain(model, "good", **kwargs)


# ---------------------------------------------------------------------- attributions, tiny models


def test_token_lime_recovers_bag_of_words_weights(tiny):
    model, tok, weights = tiny
    e = text.explain(model, SENTENCE, tokenizer=tok, method="lime", samples=2000, target=0)
    truth = weights[tok.encode(SENTENCE).ids]
    assert e.tokens == SENTENCE.split()
    corr = np.corrcoef(e.values, truth)[0, 1]
    assert corr > 0.99, corr
    assert e.info["r2"] > 0.99


@pytest.mark.parametrize("method", ["kernel_shap", "occlusion"])
def test_token_method_is_exact_on_a_linear_model(tiny, method):
    model, tok, weights = tiny
    truth = weights[tok.encode(SENTENCE).ids]  # removal by [MASK], whose weight is 0
    e = text.explain(model, SENTENCE, tokenizer=tok, method=method, target=0)
    np.testing.assert_allclose(e.values, truth, atol=1e-5)


def test_token_occlusion_window_spreads_the_drop_over_the_tokens_it_covers(tiny):
    model, tok, weights = tiny
    truth = weights[tok.encode(SENTENCE).ids]
    # a window of 3 tokens: each token gets the mean drop of the windows that cover it
    wide = text.explain(model, SENTENCE, tokenizer=tok, method="occlusion", target=0, window=3)
    assert wide.values.shape == truth.shape and not np.allclose(wide.values, truth)


def test_gradients_on_the_embedding_layer_of_a_tiny_model(tiny):
    model, tok, weights = tiny
    truth = weights[tok.encode(SENTENCE).ids]
    ig = text.explain(model, SENTENCE, tokenizer=tok, method="integrated_gradients", target=0)
    assert ig.params["layer"] == "embedding"  # found: the model's only nn.Embedding
    np.testing.assert_allclose(ig.values, truth, atol=1e-5)  # pad baseline: weight 0
    assert ig.info["completeness_gap"] < 1e-5
    sal = text.explain(model, SENTENCE, tokenizer=tok, method="saliency", target=0)
    np.testing.assert_allclose(sal.values, 1.0)  # d score / d embedding = 1 for every token


# ---------------------------------------------------------------------- the real transformer


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return text.load_minilm("sentiment", cache_dir=tmp_path_factory.mktemp("minilm"))


@needs_extra
def test_minilm_head_learns_the_generated_sentiment(minilm):
    assert float(minilm.head.held_out_accuracy) > 0.9
    pos, neg = xk.Model(minilm).predict(minilm.encode(["The movie was great.", "It was bad."]))
    assert (pos, neg) == (1, 0)


@needs_extra
def test_integrated_gradients_on_the_embedding_layer_is_complete(minilm):
    e = text.explain(minilm, "The movie was not good at all.", method="integrated_gradients")
    assert e.tokens == ["the", "movie", "was", "not", "good", "at", "all", "."]
    assert e.params["layer"] == "tokens"
    difference = e.info["output_difference"]
    assert abs(difference) > 1.0
    assert e.info["completeness_gap"] <= 0.01 * abs(difference)
    assert abs(e.values.sum() - difference) <= 0.01 * abs(difference)
    assert e.tokens[int(np.argmax(np.abs(e.values)))] in ("not", "good")


@needs_extra
@pytest.mark.parametrize(
    ("method", "params"), [("occlusion", {}), ("kernel_shap", {"samples": 64})]
)
def test_padding_in_a_batch_is_no_component(minilm, method, params):
    # Each -1 was a component: "removing" it put a real token there, so padding got values
    # and the real tokens' values changed with the length of the longest row.
    ids = minilm.encode(["The movie was not good at all.", "It was great."])
    batch = xk.explain(minilm, ids, batch=True, method=method, target=[1, 1], **params)
    alone = xk.explain(minilm, ids[1][ids[1] != text.DELETED], method=method, target=1, **params)
    n = len(alone.values)
    np.testing.assert_allclose(batch.values[1, :n], alone.values, rtol=1e-5, atol=1e-6)
    assert not batch.values[1, n:].any()


@needs_extra
def test_deleting_a_token_is_the_text_without_it(minilm):
    sentence = "The dogs were not lovely."
    e = text.explain(minilm, sentence, method="occlusion", removal="delete", target=1)
    m = xk.Model(minilm)
    full = m.scores(minilm.encode([sentence]))[0, 1]
    words = ["The dogs were lovely.", "The dogs not lovely.", "The were not lovely."]
    for text_without, position in zip(words, (3, 2, 1), strict=True):
        drop = full - m.scores(minilm.encode([text_without]))[0, 1]
        np.testing.assert_allclose(e.values[position], drop, rtol=1e-4, atol=1e-4)


@needs_extra
def test_attention_rows_sum_to_one_in_the_models_shape(minilm):
    a = text.attention(minilm, "The children were happy.")
    n_tokens = len(minilm.tokenizer.encode("The children were happy.")) + 2  # [CLS], [SEP]
    assert a.weights.shape == (6, 12, n_tokens, n_tokens)
    assert (minilm.n_layers, minilm.n_heads) == (6, 12)
    assert a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]"
    np.testing.assert_allclose(a.weights.sum(axis=-1), 1.0, atol=1e-5)
    r = a.rollout()
    np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-9)
    assert a.plot().axes and a.plot(layer=2, head=3).axes
    e = text.explain(minilm, "The children were happy.", method="attention_rollout")
    assert e.values.shape == (n_tokens - 2,) and np.all(e.values > 0)
    assert e.params == {"residual": True} and "Abnar" in e.info["reference"]


@needs_extra
def test_probes_beat_their_control_tasks_on_the_real_transformer(minilm):
    data = text.make_sentences(160, seed=1)
    results = text.probe_properties(minilm, data, properties=("negation", "sentiment"))
    negation, sentiment = results["negation"], results["sentiment"]
    assert max(negation.selectivity.values()) > 0.3
    assert max(sentiment.selectivity.values()) > 0.3
    # Sentiment needs the negation and the adjective together: not in the mean of the static
    # word embeddings (layer 0), but once the layers have mixed the tokens.
    assert sentiment.accuracy["pooled.0"] < 0.75
    assert max(sentiment.accuracy[k] for k in sentiment.layers[2:]) > 0.95


@needs_extra
def test_contextual_embeddings_separate_the_senses_of_a_word(minilm):
    sentences = [
        "I ate an apple today.", "The apple was sweet and red.", "She peeled the apple.",
        "Apple released a new phone.", "Apple stock fell again.", "He works at Apple.",
    ]  # fmt: skip
    we = text.word_embeddings(minilm, sentences, "apple", groups=["fruit"] * 3 + ["firm"] * 3)
    assert we.vectors.shape == (7, 6, 384)
    table = we.group_table()
    assert table[0]["ratio"] < 1.5 < max(row["ratio"] for row in table[1:])
    d = we.distances(3, metric="euclidean")
    assert d.shape == (6, 6) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    with pytest.raises(ValueError, match="'banana' is not in sentence 0"):
        text.word_embeddings(minilm, sentences, "banana")


@needs_extra
def test_bad_input_on_the_real_tokenizer(minilm):
    with pytest.raises(ValueError, match="text: expected a non-empty string"):
        text.explain(minilm, "", method="saliency")
    with pytest.warns(
        UserWarning, match=r"not in the vocabulary became the unknown token '\[UNK\]': '☃'"
    ):
        enc = minilm.tokenizer.encode("a ☃ movie")
    assert enc.tokens == ["a", "[UNK]", "movie"]
    long = "good " * 600
    with pytest.warns(UserWarning, match="600 tokens exceed the model's limit of 510 content"):
        assert len(minilm.encode(long)) == 510
    with pytest.raises(ValueError, match="truncate=True"):
        text.explain(minilm, long, method="saliency", truncate=False)
    with pytest.raises(ValueError, match="x: token id 99999 is outside the vocabulary"):
        minilm(torch.tensor([[99999]]))


def test_missing_extra_message_names_the_install_command():
    assert "pip install 'xaikit[text]'" in text.missing_message()


def test_no_warning_leaks_from_a_clean_explanation(tiny):
    model, tok, _ = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text.explain(model, "the movie was good", tokenizer=tok, method="occlusion")


def test_text_holding_dollars_is_drawn_verbatim():
    # Tokens, sentences and group names reach tick labels, titles and legends verbatim;
    # $...$ in them crashed the draw through matplotlib's mathtext.
    from matplotlib import cbook

    from xaikit.text.attention import Attention
    from xaikit.text.embeddings import WordEmbeddings

    tokens = ["[CLS]", r"$\undefinedmacro$", "$5", "[SEP]"]
    weights = np.full((2, 2, 4, 4), 0.25)
    a = Attention(weights=weights, tokens=tokens, text=r"costs $\undefinedmacro$")
    sentences = [r"a $\nope$ b", "c d", r"$e$ f", "g h"]
    w = WordEmbeddings(
        vectors=np.random.default_rng(0).normal(size=(3, 4, 5)), sentences=sentences,
        word=r"$\nope$", positions=[[1], [0], [0], [1]],
        groups=np.array([r"$\bad$", "_x", r"$\bad$", "_x"]),
    )  # fmt: skip
    figures = [a.plot(layer=0, head=1), a.plot(layer=1), a.plot(), a.plot_rollout(),
               w.plot_distances(1), w.plot_projection()]  # fmt: skip
    for fig in figures:
        fig.canvas.draw()
        shown = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
        assert not any(cbook.is_math_text(t) for t in shown)


def test_loading_minilm_leaves_the_global_random_state_alone():
    torch.manual_seed(7)
    text.load_minilm(None)
    after = torch.rand(3)
    torch.manual_seed(7)
    np.testing.assert_array_equal(after.numpy(), torch.rand(3).numpy())
