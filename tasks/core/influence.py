"""Projected gradient features of seed-text pairs + a reference set -> influence per seed text, and the top share.

LESS (Xia et al., 2024) as JiuZhang3.0 uses it: per-example gradients are L2-normalized (so long and short pairs
weigh the same), averaged per seed text, and compared by cosine with the mean normalized gradient of the
target-style reference pairs. Features come from `mathfactory.tasks.models.influence.gradient_features`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; an all-zero row stays zero (it has no direction to count)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def influence_scores(
    features: np.ndarray, groups: Sequence[str], reference: np.ndarray
) -> dict[str, tuple[float, int]]:
    """group -> (cosine of its mean normalized feature row with the reference's, number of its rows)."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(groups):
        raise ValueError(f"features must be one row per group label: {features.shape} vs {len(groups)} labels")
    if len(reference) == 0:
        raise ValueError("the reference set is empty: there is no target direction to score against")
    target = _unit_rows(reference).mean(axis=0)
    unit = _unit_rows(features)
    labels, inverse, counts = np.unique(np.asarray(groups, dtype=object), return_inverse=True, return_counts=True)
    sums = np.zeros((len(labels), unit.shape[1]))
    np.add.at(sums, inverse, unit)
    # Cosine is scale-free, so the sum stands in for the mean.
    return {str(g): (_cosine(s, target), int(n)) for g, s, n in zip(labels, sums, counts, strict=True)}


def select_top(scores: dict[str, float], fraction: float) -> list[str]:
    """The round(fraction * n) most influential ids (at least one if fraction > 0), most influential first;
    ties go to the smaller id, so the choice never depends on the order scores arrive in."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ranked = sorted(scores, key=lambda g: (-scores[g], g))
    return ranked[: max(1, round(fraction * len(ranked)))] if fraction > 0 else []
