"""Scaling arithmetic: power-law fits and multipliers against closed forms, and the paired bootstrap on simulated
experiments whose true curves are known (its coverage), on hand-made grids and on a flat SFT."""

import math

import numpy as np
import pytest

from mathfactory.tasks.core.scaling import PowerLaw, bootstrap, curve, fit_power_law, multiplier

BIG = 10**9  # problems: clipping never binds on noiseless curves


@pytest.mark.parametrize("a, b", [(0.9, 0.3), (5.0, 0.5), (0.02, 0.1), (0.7, 1.2), (0.1, -0.2), (0.4, 0.0)])
def test_fit_recovers_a_and_b_on_noiseless_curves(a, b):
    sizes = [100, 300, 1000, 5000, 20000]
    law = fit_power_law(sizes, [a * d**-b for d in sizes], n=BIG)
    assert (law.a, law.b, law.r2) == pytest.approx((a, b, 1.0), rel=1e-9, abs=1e-12)


def test_fit_is_least_squares_in_log_log():
    # log e = 0, -1, -1 at log D = 0, 1, 2: slope -1/2, intercept -1/6, r2 = 1 - (1/6) / (2/3)
    law = fit_power_law([1, math.e, math.e**2], [1.0, math.exp(-1), math.exp(-1)], n=BIG)
    assert (law.a, law.b, law.r2) == pytest.approx((math.exp(-1 / 6), 0.5, 0.75))


def test_errors_of_0_and_1_count_as_half_a_problem():
    assert fit_power_law([10, 20], [0.0, 0.0], n=10).a == pytest.approx(0.05)
    assert fit_power_law([10, 20], [1.0, 1.0], n=10).a == pytest.approx(0.95)
    law = fit_power_law([10, 20], [0.0, 1.0], n=10)  # clipped to 1/20 and 19/20
    assert law.b == pytest.approx(-math.log(19) / math.log(2))


@pytest.mark.parametrize("a, b", [(0.9, 0.3), (2.0, 0.05), (0.3, 1.5), (0.2, -0.3)])
def test_inverse_and_call_round_trip(a, b):
    law = PowerLaw(a, b)
    for d in [1.0, 37.0, 1000.0, 1e6]:
        assert law.inverse(law(d)) == pytest.approx(d, rel=1e-9)
    for e in [0.01, 0.2, 0.5]:
        assert law(law.inverse(e)) == pytest.approx(e, rel=1e-9)
    assert PowerLaw(0.5, 1.0).inverse(0.05) == pytest.approx(10.0)


def test_a_flat_law_is_reached_never_below_it_and_anywhere_above_it():
    assert PowerLaw(0.4, 0.0).inverse(0.3) == math.inf
    assert PowerLaw(0.4, 0.0).inverse(0.5) == 0.0


@pytest.mark.parametrize(
    "sizes, errors, kwargs, message",
    [
        ([10, 20, 30], [0.5, 0.4], {}, "as many sizes as errors"),
        ([10, 10, 10], [0.5, 0.4, 0.3], {}, "at least 2 distinct sizes"),
        ([10], [0.5], {}, "at least 2 distinct sizes"),
        ([0, 10], [0.5, 0.4], {}, "sizes must be positive"),
        ([-5, 10], [0.5, 0.4], {}, "sizes must be positive"),
        ([10, 20], [0.5, 1.2], {}, r"rates in \[0, 1\]"),
        ([10, 20], [-0.1, 0.4], {}, r"rates in \[0, 1\]"),
        ([10, 20], [float("nan"), 0.4], {}, r"rates in \[0, 1\]"),
        ([10, 20], [0.5, 0.4], {"n": 0}, "n >= 1"),
    ],
)
def test_fit_refuses(sizes, errors, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(sizes, errors, **{"n": 100, **kwargs})


@pytest.mark.parametrize("m", [8.0, 2.5, 1.0, 0.5])
@pytest.mark.parametrize("a, b", [(0.9, 0.3), (0.5, 0.7)])
def test_a_method_that_is_sft_on_m_times_the_data_has_multiplier_m_at_every_size(a, b, m):
    sft = PowerLaw(a, b)
    method = PowerLaw(a * m**-b, b)  # method(D) = sft(m D)
    for size in [10, 1000, 1e5]:
        assert method(size) == pytest.approx(sft(m * size))
        assert multiplier(sft, method, size) == pytest.approx(m, rel=1e-9)


def test_multiplier_with_different_exponents_is_the_closed_form():
    # method error at 100 is 100^-1 = 0.01; SFT (D^-1/2) reaches it at D = 10^4: 100 times the data
    assert multiplier(PowerLaw(1.0, 0.5), PowerLaw(1.0, 1.0), 100) == pytest.approx(100.0)
    for (a_s, b_s), (a_m, b_m) in [((0.9, 0.3), (0.8, 0.45)), ((0.6, 0.5), (0.7, 0.2)), ((1.0, 0.2), (0.5, 0.2))]:
        for size in [50, 1000, 64000]:
            closed = (a_s / a_m) ** (1 / b_s) * size ** (b_m / b_s - 1)
            assert multiplier(PowerLaw(a_s, b_s), PowerLaw(a_m, b_m), size) == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("sft_b", [0.0, -0.1])
def test_an_sft_that_does_not_improve_gives_inf_if_beaten_0_if_not_1_at_a_tie(sft_b):
    sft = PowerLaw(0.4, sft_b)
    assert multiplier(sft, PowerLaw(0.3, 0.2), 100) == math.inf
    assert multiplier(sft, PowerLaw(0.99, 0.0), 100) == 0.0
    assert multiplier(sft, PowerLaw(float(sft(100)), 0.0), 100) == 1.0


def test_a_barely_improving_sft_overflows_to_the_flat_rule():
    assert multiplier(PowerLaw(0.4, 1e-9), PowerLaw(0.3, 0.0), 100) == math.inf
    assert multiplier(PowerLaw(0.4, 1e-9), PowerLaw(0.5, 0.0), 100) == 0.0


def test_curve_averages_over_seeds_and_problems_by_ascending_size():
    results = {"sft": {(100, 0): np.array([1, 1, 0, 0], bool), (100, 1): np.array([1, 0, 0, 0], bool),
                       (10, 0): np.zeros(4, bool), (10, 1): np.array([1, 0, 0, 0], bool)}}
    sizes, errors = curve(results, "sft")
    assert sizes.tolist() == [10, 100]
    assert errors.tolist() == pytest.approx([7 / 8, 5 / 8])


# --- the bootstrap ---------------------------------------------------------------------------------------

SIZES = (1000, 2000, 4000)
AT = 2000  # where the multipliers are read
# The median problem's error per method; difficulty shifts every method's logit alike (that is the pairing).
LATENT = {"sft": lambda d: 0.5 * (d / 1000) ** -0.3,
          "rft": lambda d: 0.5 * (4 * d / 1000) ** -0.3,  # sft on 4x the data
          "dpo": lambda d: 0.45 * (d / 1000) ** -0.45}
# sd of a problem's / a training run's logit shift. Run noise this small is what 2 seeds can bound: resampling
# 2 seeds sees half their variance, so larger run noise under-covers (0.15: ~0.92), none over-covers (~0.98).
DIFFICULTY, SEED_NOISE = 2.0, 0.1


def _logit(p):
    return np.log(p / (1 - p))


def simulate(rng, n=500, seeds=2, methods=LATENT):
    """One experiment: problems drawn with a difficulty shared by every method, a logit shift per training run,
    a Bernoulli outcome per problem per run."""
    z = rng.normal(0, DIFFICULTY, n)
    return {m: {(d, s): rng.random(n) >= 1 / (1 + np.exp(-(_logit(e(d)) + z + rng.normal(0, SEED_NOISE))))
                for d in SIZES for s in range(seeds)} for m, e in methods.items()}


def truth():
    """The laws the fit estimates: log-log fits of the expected error at each size, over problem difficulty and
    run noise (Gauss-Hermite); the latent curves averaged over difficulty are not exact power laws."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    sd = math.hypot(DIFFICULTY, SEED_NOISE)
    expected = {m: [float(w @ (1 / (1 + np.exp(-(_logit(e(d)) + sd * x))))) / w.sum() for d in SIZES]
                for m, e in LATENT.items()}
    return {m: fit_power_law(SIZES, errs, n=BIG) for m, errs in expected.items()}


def test_the_95_percent_intervals_cover_the_true_exponents_and_multipliers_at_about_95_percent():
    laws = truth()
    targets = {**{f"{m} b": law.b for m, law in laws.items()},
               **{f"{m} multiplier": multiplier(laws["sft"], laws[m], AT) for m in ("rft", "dpo")}}
    hits = dict.fromkeys(targets, 0)
    rng, runs = np.random.default_rng(7), 200
    for i in range(runs):
        out = bootstrap(simulate(rng), AT, n_boot=200, rng_seed=i)["methods"]
        for key, true in targets.items():
            m, what = key.split()
            lo, hi = out[m]["b_ci"] if what == "b" else out[m]["multiplier_ci"][AT]
            hits[key] += lo <= true <= hi
    coverage = {key: h / runs for key, h in hits.items()}
    assert all(0.85 <= c <= 0.99 for c in coverage.values()), coverage  # 0.955 to 0.965 here


def test_a_method_identical_to_sft_is_worth_exactly_its_data_in_every_replicate():
    """Problems and seeds are drawn once per replicate for every cell: an unpaired draw would spread this."""
    results = simulate(np.random.default_rng(1), n=300, seeds=3, methods={"sft": LATENT["sft"]})
    results["copy"] = dict(results["sft"])
    out = bootstrap(results, [1000, 3000], n_boot=300)["methods"]
    assert out["copy"]["b_ci"] == out["sft"]["b_ci"]
    for size in (1000, 3000):
        assert out["copy"]["multiplier"][size] == pytest.approx(1.0)
        assert out["copy"]["multiplier_ci"][size] == pytest.approx([1.0, 1.0])
        assert out["copy"]["multiplier_finite"][size] == 1.0


def test_seeds_are_resampled():
    # every problem is right under seed 0 and wrong under seed 1: only drawing seeds can move the error
    cells = {(d, s): np.full(50, s == 0) for d in (10, 100) for s in (0, 1)}
    out = bootstrap({"sft": cells}, 10, n_boot=200)["methods"]["sft"]
    assert out["error"] == {10: 0.5, 100: 0.5}
    assert out["error_ci"] == {10: [0.0, 1.0], 100: [0.0, 1.0]}
    # replicates' errors are 0, 1/2, 1 with chances 1/4, 1/2, 1/4: the central 40 % is 1/2 alone
    assert bootstrap({"sft": cells}, 10, n_boot=200, level=0.4)["methods"]["sft"]["error_ci"][10] == [0.5, 0.5]


def test_point_estimates_are_the_full_data_fits_and_the_draws_are_fixed_by_rng_seed():
    results = simulate(np.random.default_rng(3), n=200)
    first, again = bootstrap(results, [1000, 4000], n_boot=100), bootstrap(results, [1000, 4000], n_boot=100)
    other = bootstrap(results, [1000, 4000], n_boot=100, rng_seed=1)
    assert first == again
    assert first["methods"]["dpo"]["b_ci"] != other["methods"]["dpo"]["b_ci"]
    laws = {m: fit_power_law(*curve(results, m), n=200) for m in LATENT}
    for m, law in laws.items():
        row = other["methods"][m]
        assert (row["a"], row["b"], row["r2"]) == pytest.approx((law.a, law.b, law.r2))
        assert list(row["error"].values()) == pytest.approx(list(curve(results, m)[1]))
    assert other["methods"]["rft"]["multiplier"][4000] == pytest.approx(multiplier(laws["sft"], laws["rft"], 4000))
    assert "multiplier" not in first["methods"]["sft"]
    assert (first["n_boot"], first["level"], first["n_problems"], first["seeds"]) == (100, 0.95, 200, [0, 1])


def test_replicates_where_sft_does_not_improve_are_counted_not_dropped():
    rng = np.random.default_rng(5)
    flat = {(d, s): rng.random(300) < 0.5 for d in SIZES for s in (0, 1)}  # sft: 50 % at every size
    better = {(d, s): rng.random(300) < 0.7 for d in SIZES for s in (0, 1)}
    out = bootstrap({"sft": flat, "rft": better}, 2000, n_boot=400)["methods"]["rft"]
    assert 0.0 < out["multiplier_finite"][2000] < 0.975  # some replicates' SFT fit has b <= 0: inf
    assert out["multiplier_ci"][2000][1] == math.inf
    # the same outcomes at every size: b = 0 in every replicate, so no replicate is finite
    same = {(d, s): flat[1000, s] for d in SIZES for s in (0, 1)}
    out = bootstrap({"sft": same, "rft": better}, 2000, n_boot=100)["methods"]["rft"]
    assert out["multiplier"][2000] == math.inf
    assert out["multiplier_finite"][2000] == 0.0
    assert out["multiplier_ci"][2000] == [math.inf, math.inf]


@pytest.mark.parametrize(
    "results, kwargs, message",
    [
        ({"rft": {(10, 0): np.ones(5, bool), (20, 0): np.ones(5, bool)}}, {}, "no 'sft' among methods"),
        ({"sft": {(10, 0): np.ones(5, bool), (20, 0): np.ones(5, bool), (20, 1): np.ones(5, bool)}}, {},
         r"lacks cells \[\(10, 1\)\]"),
        ({"sft": {(10, 0): np.ones(5, bool), (20, 0): np.ones(6, bool)}}, {}, "same 1-D list of problems"),
        ({"sft": {(10, 0): np.ones(5, bool), (20, 0): np.ones(5, bool)}}, {"level": 1.0}, "0 < level < 1"),
        ({"sft": {(10, 0): np.ones(5, bool), (20, 0): np.ones(5, bool)}}, {"n_boot": 0}, "n_boot >= 1"),
        ({"sft": {(10, 0): np.ones(5, bool), (10, 1): np.ones(5, bool)}}, {}, "at least 2 distinct sizes"),
    ],
)
def test_bootstrap_refuses(results, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap(results, 10, **kwargs)


def test_gain_is_the_paired_pass_at_1_difference_with_an_interval_that_pairs_problems():
    # rft gets exactly the problems sft gets plus 10 of the 100 that sft misses, at every size and seed. Paired, a
    # replicate's gain varies only with how often it draws those problems (sd ~0.03, a 95 % width ~0.12); unpaired,
    # the two errors' own noise (sd ~0.035 each) would make it ~0.19 wide.
    rng = np.random.default_rng(1)
    sft = {(s, seed): rng.random(100) < 0.3 + 0.1 * i for i, s in enumerate((10, 20, 40)) for seed in (0, 1)}
    rft = {}
    for key, c in sft.items():
        c = c.copy()
        c[np.flatnonzero(~c)[:10]] = True
        rft[key] = c
    out = bootstrap({"sft": sft, "rft": rft}, [20], n_boot=200)["methods"]["rft"]
    assert out["gain"] == pytest.approx({10: 0.1, 20: 0.1, 40: 0.1})
    assert all(lo <= 0.1 <= hi and hi - lo < 0.14 for lo, hi in out["gain_ci"].values())


def test_a_method_missing_the_smallest_sizes_gets_multipliers_and_gains_only_where_it_was_evaluated():
    # dpo had no pairs at |D_syn| = 1000 (a memorizing pi_sft samples no wrong answers there): it is fitted on the
    # two sizes it has, and read at them; extrapolating its two-point line down to 1000 would invent a number.
    rng = np.random.default_rng(2)
    results = simulate(rng, n=300, seeds=1)
    del results["dpo"][(1000, 0)]
    out = bootstrap(results, list(SIZES), n_boot=100)["methods"]
    assert set(out["dpo"]["multiplier"]) == set(out["dpo"]["multiplier_ci"]) == {2000, 4000}
    assert set(out["dpo"]["gain"]) == {2000, 4000} and set(out["rft"]["multiplier"]) == set(SIZES)
    # On its own two sizes the line passes through both points: the multiplier is SFT's fit inverted at the
    # method's observed error.
    sft = fit_power_law(SIZES, [out["sft"]["error"][s] for s in SIZES], n=300)
    assert out["dpo"]["multiplier"][4000] == pytest.approx(float(sft.inverse(out["dpo"]["error"][4000])) / 4000)
