"""scikit-learn's 8x8 digits, upsampled to MNIST's 28x28x1 so MNIST models apply unchanged.

Needs no data folder: the 1797 images ship inside the scikit-learn wheel.
"""

from __future__ import annotations

import numpy as np

from edgedl.data.base import Dataset, check_split, choose, subset_description
from edgedl.data.user import preset
from edgedl.errors import MissingDependencyError

CLASSES = [str(d) for d in range(10)]
SPLITS = ("official",)
SIZE = 28
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the split never changes; ``seed`` only picks a ``limit`` subset


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation weights W (out_size, in_size) for bilinear resizing with half-pixel centres.

    Output pixel i samples the input at (i + 0.5) * in_size / out_size - 0.5, clamped to the image
    (as TensorFlow's resize with half_pixel_centers=True and OpenCV's INTER_LINEAR do). A 2-D image
    resizes as ``W @ image @ W.T``.
    """
    position = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    left = np.floor(position).astype(int)
    right = np.minimum(left + 1, in_size - 1)
    frac = position - left
    w = np.zeros((out_size, in_size))
    w[np.arange(out_size), left] += 1 - frac
    w[np.arange(out_size), right] += frac
    return w


def upsample(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(N, h, w) -> (N, size, size) by bilinear interpolation, float32."""
    rows = bilinear_matrix(images.shape[1], size)
    cols = bilinear_matrix(images.shape[2], size)
    return np.einsum("ij,njk,lk->nil", rows, images, cols).astype(np.float32)


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """Indices (train, test): per class, a seeded shuffle with round(fraction * count) to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load(root=None, *, split: str, limit: int | None, seed: int, features=None) -> Dataset:
    """Load the digits; ``root`` is ignored (the data ships with scikit-learn)."""
    check_split("digits", split, SPLITS)
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise MissingDependencyError("scikit-learn", "keras") from e
    bunch = load_digits()
    images = bunch.images.astype(np.float64) / 16.0
    labels = bunch.target.astype(np.int64)
    parts = dict(zip(("train", "test"), stratified_split(labels)))
    arrays = {}
    for part, index in parts.items():
        if limit is not None:
            index = index[choose(labels[index], limit, seed)]
        arrays[part] = (upsample(images[index])[..., None], labels[index])
    return Dataset.from_parts(
        "digits", arrays,
        classes=list(CLASSES),
        split=split,
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        preprocessing={
            "input": "8x8 grayscale, integer levels 0..16",
            "scale": "x / 16",
            "resize": {"to": [SIZE, SIZE], "method": "bilinear, half-pixel centres"},
            "range": [0.0, 1.0],
            "layout": "NHWC",
            "dtype": "float32",
            "split": {"method": "stratified per class", "test_fraction": TEST_FRACTION, "seed": SPLIT_SEED},
            **preset("image folder", resize=(SIZE, SIZE), channels="gray", scale=1 / 16),  # files at 0..16 levels
        },
        subset=subset_description(limit, seed, interleaved=False),
    )
