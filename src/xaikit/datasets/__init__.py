"""Embedded default data and models: MNIST-5k (clean and with a planted watermark), the
breast-cancer table, and a small CNN trained on MNIST-5k. Nothing is downloaded at run time."""

from xaikit.datasets.mnist import (
    WATERMARK_CLASS,
    WATERMARK_FRACTION,
    WATERMARK_PATTERN,
    WATERMARK_REGION,
    load_mnist,
    load_watermark_mnist,
    stamp_watermark,
)
from xaikit.datasets.models import SmallCNN, default_cache_dir, load_default_cnn, train_cnn
from xaikit.datasets.tabular import Table, load_breast_cancer_table

__all__ = [
    "WATERMARK_CLASS",
    "WATERMARK_FRACTION",
    "WATERMARK_PATTERN",
    "WATERMARK_REGION",
    "SmallCNN",
    "Table",
    "default_cache_dir",
    "load_breast_cancer_table",
    "load_default_cnn",
    "load_mnist",
    "load_watermark_mnist",
    "stamp_watermark",
    "train_cnn",
]
