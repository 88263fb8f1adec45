"""A scaling experiment's arithmetic: error-vs-D_syn power laws, data multipliers and a paired bootstrap.

Setlur et al. 2024 fit each method's test error to the number of synthetic problems, e(D) = a * D^-b, and read
a method's worth as its data multiplier: how many times more D_syn SFT needs to reach the method's error. Every
cell (method, size, seed) is graded on ONE shared held-out set, so the bootstrap resamples problems jointly for
all cells (a hard problem stays hard for every method, which is what a multiplier's difference cancels) and
seeds jointly for all methods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Results = Mapping[str, Mapping[tuple[float, int], np.ndarray]]  # method -> (size, seed) -> per-problem correct


def clip(errors: np.ndarray, n: int) -> np.ndarray:
    """Errors into [1/(2n), 1 - 1/(2n)]. 0/n problems wrong says "under one in n", not "never": log 0 would
    pull the fit to -inf, so it counts as half a problem (the usual continuity correction); n/n is clipped alike
    so the two ends are treated the same, though log 1 itself is fine."""
    return np.clip(errors, 1 / (2 * n), 1 - 1 / (2 * n))


def _fit(log_d: np.ndarray, log_e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares log e = log a - b log D, row by row of log_e (..., S): (log a, b, r2)."""
    xc = log_d - log_d.mean()
    ybar = log_e.mean(axis=-1)
    slope = (log_e - ybar[..., None]) @ xc / (xc @ xc)
    resid = log_e - (ybar[..., None] + slope[..., None] * xc)
    ss_tot = ((log_e - ybar[..., None]) ** 2).sum(axis=-1)
    flat = ss_tot <= 1e-24 * log_e.shape[-1]  # equal up to rounding: a flat line fits them exactly
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(flat, 1.0, 1 - (resid**2).sum(axis=-1) / np.where(flat, 1.0, ss_tot))
    return ybar - slope * log_d.mean(), -slope, r2


@dataclass(frozen=True)
class PowerLaw:
    """e(D) = a * D^-b; b > 0 when more data helps."""

    a: float
    b: float
    r2: float = math.nan  # of the log-log fit

    def __call__(self, d: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.asarray(d, dtype=float) ** -self.b

    def inverse(self, e: float | np.ndarray) -> float | np.ndarray:
        """The D at which the law reaches error e > 0, (a / e)^(1/b); for b = 0 the limit: inf below a, 0 above."""
        with np.errstate(divide="ignore", over="ignore"):
            return (self.a / np.asarray(e, dtype=float)) ** np.divide(1.0, self.b)


def fit_power_law(sizes: Sequence[float], errors: Sequence[float], *, n: int) -> PowerLaw:
    """The log-log least-squares fit of errors (rates in [0, 1] on n problems, clipped by `clip`) to sizes."""
    d, e = np.asarray(sizes, dtype=float), np.asarray(errors, dtype=float)
    if d.shape != e.shape or d.ndim != 1:
        raise ValueError(f"need as many sizes as errors, got {d.shape} and {e.shape}")
    if np.unique(d).size < 2:
        raise ValueError(f"a power law needs at least 2 distinct sizes, got {sorted(set(d.tolist()))}")
    if not (d > 0).all():
        raise ValueError(f"sizes must be positive, got {d.tolist()}")
    if not ((e >= 0) & (e <= 1)).all():
        raise ValueError(f"errors must be rates in [0, 1], got {e.tolist()}")
    if n < 1:
        raise ValueError(f"need n >= 1 evaluation problems, got {n}")
    log_a, b, r2 = _fit(np.log(d), np.log(clip(e, n)))
    return PowerLaw(float(np.exp(log_a)), float(b), float(r2))


def _multipliers(sft_a, sft_b, error, size):
    """`multiplier`, elementwise over arrays of SFT fits and method errors at one size."""
    sft_a, sft_b, error = (np.asarray(v, dtype=float) for v in (sft_a, sft_b, error))  # numpy: inf, no raise
    sft_at = sft_a * size**-sft_b
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        m = (sft_a / error) ** (1 / sft_b) / size
    flat = np.where(error < sft_at, np.inf, np.where(error > sft_at, 0.0, 1.0))
    return np.where(sft_b > 0, m, flat)


def multiplier(sft: PowerLaw, method: PowerLaw, size: float) -> float:
    """sft.inverse(method(size)) / size: how many times the D_syn SFT needs to match the method at D_syn = size
    (> 1: the method is worth more than its data). An SFT fit that does not improve with data (b <= 0) has no
    such D; it gives inf if the method beats SFT at size (no SFT data is enough), 0 if it does worse (less
    than its data already does as well), 1 at a tie. These are the limits as b -> 0+, and huge multipliers
    overflow to inf, tiny ones to 0, alike. Never raises; nan only from nan inputs."""
    return float(_multipliers(sft.a, sft.b, float(method(size)), float(size)))


def curve(results: Results, method: str) -> tuple[np.ndarray, np.ndarray]:
    """A method's sizes (ascending) and error at each, averaged over seeds and problems."""
    cells = results[method]
    sizes = sorted({size for size, _ in cells})
    errors = [1 - np.mean([np.mean(cells[s, seed]) for z, seed in cells if z == s]) for s in sizes]
    return np.asarray(sizes, dtype=float), np.asarray(errors)


def _grid(results: Results) -> tuple[list, int, dict[str, tuple[list, np.ndarray]]]:
    """Seeds, problem count and per method (sizes, correct as (size, seed, problem) floats), checked to be a full
    grid: every cell has every seed and the same problems, or resampling them jointly would mean nothing."""
    seeds = sorted({seed for cells in results.values() for _, seed in cells})
    ns = {np.asarray(c).shape for cells in results.values() for c in cells.values()}
    if len(ns) != 1 or len(next(iter(ns))) != 1:
        raise ValueError(f"every cell must grade the same 1-D list of problems, got shapes {sorted(ns)}")
    grids = {}
    for method, cells in results.items():
        sizes = sorted({size for size, _ in cells})
        missing = [(s, seed) for s in sizes for seed in seeds if (s, seed) not in cells]
        if missing:
            raise ValueError(f"{method} lacks cells {missing}: every method and size needs seeds {seeds}")
        grids[method] = sizes, np.asarray([[cells[s, seed] for seed in seeds] for s in sizes], dtype=float)
    return seeds, next(iter(ns))[0], grids


def _counts(draws: np.ndarray, k: int) -> np.ndarray:
    """How often each of 0..k-1 occurs in each row of draws (R, m): (R, k) resampling weights."""
    rows = draws + k * np.arange(draws.shape[0])[:, None]
    return np.bincount(rows.ravel(), minlength=draws.shape[0] * k).reshape(draws.shape[0], k).astype(float)


def _interval(values: np.ndarray, level: float) -> list[float]:
    """The percentile interval of the replicates that are not nan; inf ranks last, so taken as order statistics
    (no interpolation, which would give inf - inf)."""
    kept = values[~np.isnan(values)]
    if not kept.size:
        return [math.nan, math.nan]
    q = [(1 - level) / 2, (1 + level) / 2]
    return [float(v) for v in np.quantile(kept, q, method="inverted_cdf")]


def bootstrap(results: Results, sizes: float | Sequence[float], *, baseline: str = "sft", n_boot: int = 1000,
              rng_seed: int = 0, level: float = 0.95) -> dict:
    """Point estimates from the full data and percentile intervals from a paired bootstrap: each replicate draws
    problems and seeds with replacement, the same draw for every cell, and refits every method. Per method: a,
    b, b_ci, r2, error / error_ci per size; per other method also multiplier / multiplier_ci / multiplier_finite
    (the fraction of finite replicates) at each of `sizes` within the sizes it was evaluated at (a method with no
    pairs in the smallest cells has no fit there to read a multiplier from), and gain / gain_ci, its paired
    pass@1 gain over the baseline at each size both were evaluated at."""
    if baseline not in results:
        raise ValueError(f"no {baseline!r} among methods {sorted(results)}: multipliers are relative to it")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    at = [sizes] if np.isscalar(sizes) else list(sizes)
    seeds, n, grids = _grid(results)
    rng = np.random.default_rng(rng_seed)
    problems = _counts(rng.integers(0, n, (n_boot, n)), n)  # (R, n)
    seed_w = _counts(rng.integers(0, len(seeds), (n_boot, len(seeds))), len(seeds))  # (R, K)
    out: dict = {"n_boot": n_boot, "level": level, "n_problems": n, "seeds": seeds, "baseline": baseline,
                 "methods": {}}
    fits, boots = {}, {}
    for method, (d, x) in grids.items():
        fits[method] = fit_power_law(d, 1 - x.mean(axis=(1, 2)), n=n)
        right = (x.reshape(-1, n) @ problems.T).reshape(len(d), len(seeds), n_boot)  # (S, K, R)
        errors = 1 - np.einsum("skr,rk->rs", right, seed_w) / (n * len(seeds))  # (R, S)
        log_a, b, _ = _fit(np.log(np.asarray(d, dtype=float)), np.log(clip(errors, n)))
        boots[method] = np.exp(log_a), b, errors
        law = fits[method]
        out["methods"][method] = {
            "a": law.a, "b": law.b, "b_ci": _interval(b, level), "r2": law.r2,
            "error": {s: float(1 - x[i].mean()) for i, s in enumerate(d)},
            "error_ci": {s: _interval(errors[:, i], level) for i, s in enumerate(d)},
        }
    sft, (sft_a, sft_b, sft_errors) = fits[baseline], boots[baseline]
    base_row = out["methods"][baseline]
    for method, row in out["methods"].items():
        if method == baseline:
            continue
        a, b, errors = boots[method]
        # The paired gain over the baseline at each size it shares: pass@1 points won, same problems and seeds.
        d, base_d = grids[method][0], grids[baseline][0]
        both = [s for s in d if s in base_d]
        row["gain"] = {s: base_row["error"][s] - row["error"][s] for s in both}
        row["gain_ci"] = {s: _interval(sft_errors[:, base_d.index(s)] - errors[:, d.index(s)], level) for s in both}
        inside = [s for s in at if min(d) <= float(s) <= max(d)]
        reps = {s: _multipliers(sft_a, sft_b, a * float(s) ** -b, float(s)) for s in inside}
        row["multiplier"] = {s: multiplier(sft, fits[method], s) for s in inside}
        row["multiplier_ci"] = {s: _interval(r, level) for s, r in reps.items()}
        row["multiplier_finite"] = {s: float(np.isfinite(r).mean()) for s, r in reps.items()}
    return out
