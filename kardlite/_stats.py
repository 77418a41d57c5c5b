"""Small statistics shared by the package's reports (numpy only, torch-free)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CI_METHOD = "95% percentile bootstrap over questions (10,000 resamples, seed 0)"


def bootstrap_ci(correct: Sequence[bool], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of the accuracy, resampling questions; None for no questions.

    The same interval as the results pages' (``bench/distill/obqa_full.py``), so the numbers compare.

    Example:
        >>> bootstrap_ci([True, True, False, True])[1]
        1.0
    """
    if len(correct) == 0:
        return None
    arr = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
