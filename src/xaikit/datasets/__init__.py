"""Embedded default data and models: MNIST-5k (clean and with a planted watermark), the
breast-cancer table, a small CNN trained on MNIST-5k, and a procedurally drawn shapes data set
with ground-truth masks. Nothing is downloaded at run time."""

from xaikit.datasets.mnist import (
    WATERMARK_CLASS,
    WATERMARK_FRACTION,
    WATERMARK_PATTERN,
    WATERMARK_REGION,
    load_mnist,
    load_watermark_mnist,
    stamp_watermark,
)
from xaikit.datasets.models import (
    SmallCNN,
    default_cache_dir,
    load_default_cnn,
    train_classifier,
    train_cnn,
)
from xaikit.datasets.shapes import (
    SHAPE_CLASSES,
    Shapes,
    ShapesCNN,
    load_shapes,
    load_shapes_cnn,
    make_shapes,
)
from xaikit.datasets.shortcuts import make_shortcut_mnist, train_shortcut_cnn
from xaikit.datasets.tabular import Table, load_breast_cancer_table

__all__ = [
    "SHAPE_CLASSES",
    "WATERMARK_CLASS",
    "WATERMARK_FRACTION",
    "WATERMARK_PATTERN",
    "WATERMARK_REGION",
    "Shapes",
    "ShapesCNN",
    "SmallCNN",
    "Table",
    "default_cache_dir",
    "load_breast_cancer_table",
    "load_default_cnn",
    "load_mnist",
    "load_shapes",
    "load_shapes_cnn",
    "load_watermark_mnist",
    "make_shapes",
    "make_shortcut_mnist",
    "stamp_watermark",
    "train_classifier",
    "train_cnn",
    "train_shortcut_cnn",
]
