"""LFW-style 10-fold verification against hand-computed cases and a plain-loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from corecompress_facekit.evaluation.verification import (
    evaluate_distances,
    evaluate_verification,
    fold_sizes,
    pair_distances,
    threshold_at_far,
)


def _interleave(genuine: list[float], impostor: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ordered g0, i0, g1, i1, ... so that fold k of a 20-pair set is (g_k, i_k)."""
    dist = np.ravel(np.column_stack([genuine, impostor]))
    same = np.ravel(np.column_stack([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]))
    return dist, same


def test_fold_sizes_follow_kfold_consecutive_split() -> None:
    assert fold_sizes(20) == (2,) * 10
    assert fold_sizes(23) == (3, 3, 3, 2, 2, 2, 2, 2, 2, 2)
    assert fold_sizes(6000) == (600,) * 10
    with pytest.raises(ValueError):
        fold_sizes(9, 10)


def test_hand_computed_thresholds_and_fold_accuracies() -> None:
    # genuine 0.305 and impostor 1.105 everywhere, except a hard genuine (1.005) in fold 2 and a
    # hard impostor (0.805) in fold 7. Worked out by hand:
    # * folds other than 2 and 7: training errors are 1 for t in (0.305, 0.805] and 1 for t in
    #   (1.005, 1.105] -> tie, the smallest wins: 0.31; the test fold is then right: 100 %;
    # * fold 2 (hard genuine held out): 0 training errors at 0.31; its genuine 1.005 is rejected: 50 %;
    # * fold 7 (hard impostor held out): the only error-free interval is (1.005, 1.105] -> 1.01;
    #   its impostor 0.805 < 1.01 is accepted: 50 %.
    genuine = [0.305] * 10
    impostor = [1.105] * 10
    genuine[2] = 1.005
    impostor[7] = 0.805
    dist, same = _interleave(genuine, impostor)
    result = evaluate_distances(dist, same)
    expected_thresholds = np.full(10, 0.31)
    expected_thresholds[7] = 1.01
    np.testing.assert_allclose(result.fold_thresholds, expected_thresholds, rtol=0, atol=1e-12)
    expected_acc = np.full(10, 100.0)
    expected_acc[[2, 7]] = 50.0
    np.testing.assert_allclose(result.fold_accuracies_pct, expected_acc)
    assert result.accuracy_mean_pct == pytest.approx(90.0)
    assert result.accuracy_std_pct == pytest.approx(20.0)  # population std of {100 x8, 50 x2}
    assert result.fold_sizes == (2,) * 10
    assert result.n_pairs == 20
    assert result.mean_norm is None


def test_uneven_folds_are_consecutive_with_larger_folds_first() -> None:
    # 23 pairs -> folds of 3,3,3,2,...: pair 2 belongs to fold 0 (pairs 0-2). A hard genuine there
    # makes fold 0 score 2/3; any other layout would put it in a fold of 2 (50 %).
    dist = np.where(np.arange(23) % 2 == 0, 0.305, 1.105)
    same = np.arange(23) % 2 == 0
    dist[2] = 2.5
    result = evaluate_distances(dist, same)
    expected = np.full(10, 100.0)
    expected[0] = 200.0 / 3.0
    np.testing.assert_allclose(result.fold_accuracies_pct, expected)
    assert result.fold_sizes == (3, 3, 3, 2, 2, 2, 2, 2, 2, 2)


def test_val_at_far_interpolates_the_training_far_like_insightface() -> None:
    # Impostors 0.9005 except fold 0's (0.3005); genuine 0.2 except folds 0 and 3 (0.6). FAR target 1e-3.
    # Fold 0: training impostors all at 0.9005 -> FAR jumps 0 -> 1 between grid points 0.900 and 0.901
    #   -> threshold 0.900 * 0.999 + 0.901 * 0.001 = 0.900001; test: genuine 0.6 and impostor 0.3005 accepted.
    # Folds 1-9: FAR jumps 0 -> 1/9 between 0.300 and 0.301 -> threshold 0.3 + 0.001 * 0.001 * 9 = 0.300009;
    #   fold 3's genuine 0.6 is rejected, every impostor 0.9005 rejected.
    genuine = [0.2] * 10
    impostor = [0.9005] * 10
    impostor[0] = 0.3005
    genuine[0] = genuine[3] = 0.6
    dist, same = _interleave(genuine, impostor)
    result = evaluate_distances(dist, same, far_target=1e-3)
    expected_thr = np.full(10, 0.300009)
    expected_thr[0] = 0.900001
    np.testing.assert_allclose(result.fold_val_thresholds, expected_thr, rtol=1e-9)
    expected_val = np.full(10, 100.0)
    expected_val[3] = 0.0
    np.testing.assert_allclose(result.fold_vals_pct, expected_val)
    assert result.val_mean_pct == pytest.approx(90.0)
    assert result.val_std_pct == pytest.approx(30.0)
    np.testing.assert_allclose(result.fold_fars, np.r_[1.0, np.zeros(9)])
    assert result.far_mean == pytest.approx(0.1)


def test_flip_sum_normalise_squared_distance_and_mean_norm_by_hand() -> None:
    emb = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [2.0, 2.0]])
    flips = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    # sums [4,0], [0,4] -> unit [1,0], [0,1] -> distance 2; sums [2,2], [2,2] -> distance 0
    dist, mean_norm = pair_distances(emb, flips)
    np.testing.assert_allclose(dist, [2.0, 0.0], atol=1e-12)
    # norms 3, 2, sqrt2, 2 sqrt2 and 1, 2, sqrt2, 0 -> (8 + 4 sqrt2) / 8
    assert mean_norm == pytest.approx(1.0 + np.sqrt(2.0) / 2.0)
    # without flips the rows are only normalised: [3,0]/[0,2] -> 2, [1,1]/[2,2] -> 0
    dist_plain, norm_plain = pair_distances(emb)
    np.testing.assert_allclose(dist_plain, [2.0, 0.0], atol=1e-12)
    assert norm_plain == pytest.approx((3 + 2 + np.sqrt(2) + 2 * np.sqrt(2)) / 4)


def test_input_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="interleaved"):
        pair_distances(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="flipped_embeddings"):
        pair_distances(np.ones((4, 2)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="flags"):
        evaluate_distances(np.zeros(20), np.zeros(19, bool))


def _old_scipy_slinear(fars: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """What ``interp1d(fars, thresholds, kind='slinear')(target)`` computed in SciPy versions that
    accepted repeated x: a degree-1 B-spline with knots [x0, x0..xn, xn] (stable sort = no-op)."""
    from scipy.interpolate import BSpline

    spline = BSpline.construct_fast(np.r_[fars[0], fars, fars[-1]], np.asarray(thresholds, float), 1)
    return float(spline(target))


def _old_scipy_slinear_many(fars: np.ndarray, thresholds: np.ndarray, targets: list[float]) -> np.ndarray:
    from scipy.interpolate import BSpline

    spline = BSpline.construct_fast(np.r_[fars[0], fars, fars[-1]], np.asarray(thresholds, float), 1)
    return spline(np.asarray(targets, dtype=float))


def test_threshold_at_far_matches_the_repeated_knot_spline() -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(3)
    thresholds = np.arange(0, 4, 0.001)[:60]
    for trial in range(60):
        fars = np.sort(rng.integers(0, 8, size=60)) / 7.0
        fars[0] = 0.0
        targets = [1e-3, fars[rng.integers(60)], fars[-1], float(rng.uniform(0, fars[-1]))]
        expected = _old_scipy_slinear_many(fars, thresholds, targets)
        got = [threshold_at_far(fars, thresholds, target) for target in targets]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=f"trial {trial}")
    # target not reached -> 0, as insightface; repeated last FAR hit exactly -> 0 (degenerate knot interval)
    assert threshold_at_far(np.array([0.0, 0.1, 0.2]), thresholds[:3], 0.5) == 0.0
    assert threshold_at_far(np.array([0.0, 0.2, 0.2]), thresholds[:3], 0.2) == 0.0
    assert threshold_at_far(np.array([0.0, 0.1, 0.2]), thresholds[:3], 0.2) == pytest.approx(thresholds[2])


def _reference_protocol(dist: np.ndarray, same: np.ndarray, far_target: float) -> dict[str, np.ndarray]:
    """A plain-loop rendering of the protocol, threshold by threshold and fold by fold."""
    folds = np.array_split(np.arange(dist.size), 10)
    cast = dist.dtype.type  # NumPy 1.x compared float32 arrays with float32-cast scalars
    grid, val_grid = np.arange(0, 4, 0.01), np.arange(0, 4, 0.001)
    out: dict[str, list[float]] = {"acc": [], "thr": [], "val": [], "far": [], "vthr": []}
    for test in folds:
        train = np.setdiff1d(np.arange(dist.size), test)
        acc_train = [np.mean((dist[train] < cast(t)) == same[train]) for t in grid]
        best = grid[int(np.argmax(acc_train))]
        out["thr"].append(best)
        out["acc"].append(np.mean((dist[test] < cast(best)) == same[test]))
        impostors = np.sort(dist[train][~same[train]])
        # FAR(t) = share of impostor distances < t, counted by binary search in the sorted distances
        far_train = np.searchsorted(impostors, val_grid.astype(dist.dtype), side="left") / impostors.size
        thr = _old_scipy_slinear(far_train, val_grid, far_target) if far_train.max() >= far_target else 0.0
        out["vthr"].append(thr)
        accepted = dist[test] < cast(thr)
        out["val"].append(np.mean(accepted[same[test]]))
        out["far"].append(np.mean(accepted[~same[test]]))
    return {key: np.array(values) for key, values in out.items()}


def test_vectorised_protocol_matches_plain_loops_on_random_embeddings() -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(7)
    n_pairs, dim = 300, 16
    same = rng.random(n_pairs) < 0.5
    emb = rng.normal(size=(2 * n_pairs, dim)).astype(np.float32)
    emb[1::2][same] = emb[0::2][same] + 0.8 * rng.normal(size=(int(same.sum()), dim)).astype(np.float32)
    flips = (emb + 0.3 * rng.normal(size=emb.shape)).astype(np.float32)
    result = evaluate_verification(emb, same, flips, far_target=0.05)
    dist, _ = pair_distances(emb, flips)
    assert dist.dtype == np.float32
    ref = _reference_protocol(dist, same, far_target=0.05)
    np.testing.assert_allclose(result.fold_thresholds, ref["thr"], atol=1e-12)
    np.testing.assert_allclose(result.fold_accuracies_pct, ref["acc"] * 100)
    np.testing.assert_allclose(result.fold_val_thresholds, ref["vthr"], atol=1e-12)
    np.testing.assert_allclose(result.fold_vals_pct, ref["val"] * 100)
    np.testing.assert_allclose(result.fold_fars, ref["far"])
    assert result.accuracy_std_pct == pytest.approx(np.std(ref["acc"]) * 100)
    assert 40.0 < result.accuracy_mean_pct < 100.0  # a non-trivial case: neither chance nor perfect
