"""ROC, AUC, EER, TAR@FAR and pair helpers against hand-computed cases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from corecompress_facekit.evaluation.roc import (
    _triu_pairs_from_linear,
    all_pairs,
    auc,
    equal_error_rate,
    evaluate_roc,
    pair_scores,
    roc_curve,
    tar_at_far,
)


def _scored(genuine: list[float], impostor: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[genuine, impostor], np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]


def test_curve_auc_and_eer_by_hand() -> None:
    scores, labels = _scored([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])
    curve = roc_curve(scores, labels)
    # thresholds inf, .9, .8, .7, .3, .2, .1
    np.testing.assert_allclose(curve.far, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.tar, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    # genuine 0.9 and 0.8 beat all 3 impostors, 0.3 beats 2 of them: U = 8/9
    assert auc(curve) == pytest.approx(8 / 9)
    # at threshold 0.7: FAR = 1/3 and FRR = 1 - 2/3 = 1/3
    eer, eer_threshold = equal_error_rate(curve)
    assert eer == pytest.approx(1 / 3)
    assert eer_threshold == 0.7


def test_ties_form_a_diagonal_step_and_auc_counts_them_half() -> None:
    scores, labels = _scored([0.9, 0.5], [0.5, 0.1])
    curve = roc_curve(scores, labels)
    np.testing.assert_allclose(curve.far, [0, 0, 0.5, 1])
    np.testing.assert_allclose(curve.tar, [0, 0.5, 1, 1])
    # comparisons: .9>.5, .9>.1, .5=.5 (1/2), .5>.1 -> 3.5 / 4
    assert auc(curve) == pytest.approx(0.875)
    # the diagonal tie segment (0, FRR .5) -> (.5, FRR 0) crosses FAR = FRR at 0.25
    eer, eer_threshold = equal_error_rate(curve)
    assert eer == pytest.approx(0.25)
    assert eer_threshold == 0.5


def test_eer_on_a_vertical_segment() -> None:
    scores, labels = _scored([0.9, 0.5, 0.4], [0.6, 0.3])
    # at 0.6: FAR .5, FRR 2/3; at 0.5: FAR .5, FRR 1/3 -> crossing at 0.5 on the vertical segment
    eer, eer_threshold = equal_error_rate(roc_curve(scores, labels))
    assert eer == pytest.approx(0.5)
    assert eer_threshold == 0.5


def test_auc_equals_mann_whitney_with_ties_on_random_integer_scores() -> None:
    rng = np.random.default_rng(0)
    genuine = rng.integers(0, 12, size=57)
    impostor = rng.integers(0, 9, size=83)
    diff = genuine[:, None] - impostor[None, :]
    u_statistic = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    scores, labels = _scored(list(genuine), list(impostor))
    assert np.sum(diff == 0) > 0  # the case has ties
    assert evaluate_roc(scores, labels).auc == pytest.approx(u_statistic, abs=1e-12)


GENUINE = [0.99, 0.9, 0.8, 0.7, 0.6]
IMPOSTOR = [0.95, 0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25, 0.15, 0.05]


def test_tar_at_far_at_most_rule_by_hand() -> None:
    curve = roc_curve(*_scored(GENUINE, IMPOSTOR))
    # FAR <= 0.1 allows one false accept (0.95): accept down to 0.9 -> TAR 2/5
    point = tar_at_far(curve, 0.1)
    assert (point.tar, point.far, point.threshold, point.reachable) == (0.4, 0.1, 0.9, True)
    # FAR <= 0.2: two false accepts -> down to 0.8 -> TAR 3/5
    assert tar_at_far(curve, 0.2).tar == pytest.approx(0.6)
    # FAR <= 0.15 still allows only one false accept
    assert tar_at_far(curve, 0.15).tar == pytest.approx(0.4)


def test_unreachable_far_is_flagged() -> None:
    curve = roc_curve(*_scored(GENUINE, IMPOSTOR))
    for rule in ("at_most", "closest"):
        point = tar_at_far(curve, 0.01, rule=rule)  # 0.01 < 1/10 impostor pairs
        assert not point.reachable
        assert np.isnan(point.tar) and np.isnan(point.far)
    result = evaluate_roc(*_scored(GENUINE, IMPOSTOR), far_targets=(0.1, 0.01))
    assert [p.reachable for p in result.tar_at_far] == [True, False]
    assert result.n_impostor == 10 and result.n_genuine == 5


def test_closest_rule_follows_insightface() -> None:
    curve = roc_curve(*_scored(GENUINE, IMPOSTOR), drop_intermediate=True)
    # target 0.18: FAR 0.2 is closest; of the points at FAR 0.2 the later (higher TAR) one is taken
    point = tar_at_far(curve, 0.18, rule="closest")
    assert (point.tar, point.far, point.threshold) == (0.6, 0.2, 0.8)
    # ... whereas the budget rule stays at FAR 0.1
    assert tar_at_far(curve, 0.18).tar == pytest.approx(0.4)
    # equidistant FARs (0.25 and 0.5 around 0.375): the larger FAR wins, like min() on the flipped ROC
    tie_curve = roc_curve(*_scored([0.9, 0.7, 0.5], [0.8, 0.6, 0.4, 0.2]), drop_intermediate=True)
    assert tar_at_far(tie_curve, 0.375, rule="closest").far == 0.5


def test_drop_intermediate_removes_collinear_points_like_sklearn() -> None:
    # each score holds one genuine and one impostor: points (0,0), (1/3,1/3), (2/3,2/3), (1,1)
    scores, labels = _scored([3.0, 2.0, 1.0], [3.0, 2.0, 1.0])
    np.testing.assert_allclose(roc_curve(scores, labels).far, [0, 1 / 3, 2 / 3, 1])
    dropped = roc_curve(scores, labels, drop_intermediate=True)
    np.testing.assert_allclose(dropped.far, [0, 1 / 3, 1])
    # so insightface's closest point to FAR 0.6 is (1/3, 1/3), not (2/3, 2/3)
    result = evaluate_roc(scores, labels, far_targets=(0.6,), rule="closest")
    assert result.tar_at_far[0].tar == pytest.approx(1 / 3)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="genuine and one impostor"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="rule"):
        tar_at_far(roc_curve(np.array([0.1, 0.2]), np.array([1, 0])), 0.5, rule="nearest")  # type: ignore[arg-type]


def test_pair_scores_are_cosines() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    scores = pair_scores(emb, np.array([[0, 1], [0, 2], [1, 2]]))
    np.testing.assert_allclose(scores, [0.0, 1 / np.sqrt(2), 1 / np.sqrt(2)])
    with pytest.raises(ValueError, match="zero norm"):
        pair_scores(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0, 1]]))


def test_all_pairs_small_set() -> None:
    pairs, genuine = all_pairs(np.array([0, 0, 1, 1, 1]))
    assert len(pairs) == 10
    assert [tuple(p) for p in pairs[genuine]] == [(0, 1), (2, 3), (2, 4), (3, 4)]
    capped, capped_genuine = all_pairs(np.array([0, 0, 1, 1, 1]), max_impostor_pairs=3, seed=1)
    assert capped_genuine.sum() == 4 and (~capped_genuine).sum() == 3
    full = {tuple(p) for p in pairs[~genuine]}
    assert {tuple(p) for p in capped[~capped_genuine]} <= full


def test_triu_linear_index_mapping_is_exact() -> None:
    for n in range(2, 41):
        i, j = np.triu_indices(n, k=1)
        got_i, got_j = _triu_pairs_from_linear(np.arange(n * (n - 1) // 2), n)
        np.testing.assert_array_equal(got_i, i)
        np.testing.assert_array_equal(got_j, j)
    n = 200_003
    index = np.random.default_rng(0).integers(0, n * (n - 1) // 2, size=10_000)
    i, j = _triu_pairs_from_linear(index, n)
    assert np.all((0 <= i) & (i < j) & (j < n))
    np.testing.assert_array_equal(i * (2 * n - i - 1) // 2 + (j - i - 1), index)


def test_all_pairs_sampling_branch_keeps_every_genuine_pair() -> None:
    labels = np.repeat(np.arange(100), 20)  # 2000 items: 19,000 genuine of 1,999,000 pairs
    pairs, genuine = all_pairs(labels, max_impostor_pairs=1000, seed=5)
    assert genuine.sum() == 100 * 190
    assert (~genuine).sum() == 1000
    assert np.all(pairs[:, 0] < pairs[:, 1])
    np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], genuine)
    assert len({tuple(p) for p in pairs}) == len(pairs)
    again, _ = all_pairs(labels, max_impostor_pairs=1000, seed=5)
    np.testing.assert_array_equal(pairs, again)


def _shared_data() -> Path:
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return Path(os.environ.get("CORECOMPRESS_SHARED_DATA", default))


def test_olivetti_pixel_cosine_roc_agrees_with_rank_statistic() -> None:
    """Real faces: raw-pixel cosine over all pairs of the Olivetti set; AUC must equal the rank-sum U."""
    path = _shared_data() / "olivetti" / "olivettifaces.mat"
    if not path.is_file():
        pytest.skip(f"Olivetti faces missing: {path}")
    from scipy.io import loadmat

    faces = loadmat(path)["faces"].T.reshape(400, 64, 64).transpose(0, 2, 1).astype(np.float64)
    faces = faces.reshape(400, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(400, 256)  # 4x4 pooled: quick
    labels = np.arange(400) // 10
    pairs, genuine = all_pairs(labels)
    assert genuine.sum() == 40 * 45
    scores = pair_scores(faces - faces.mean(axis=0), pairs)
    result = evaluate_roc(scores, genuine, far_targets=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5))
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties share their mean
    n_gen, n_imp = int(genuine.sum()), int((~genuine).sum())
    u_statistic = (ranks[genuine].sum() - n_gen * (n_gen + 1) / 2) / (n_gen * n_imp)
    assert result.auc == pytest.approx(u_statistic, abs=1e-9)
    assert result.auc > 0.8  # same-person pixels are far more alike than different-person pixels
    assert [p.reachable for p in result.tar_at_far] == [True, True, True, True, False]  # 78,000 impostors


def test_all_pairs_cap_with_scarce_impostors_terminates_and_is_exact() -> None:
    labels = np.r_[np.zeros(1000, int), [1, 2, 3]]  # 3,003 impostor pairs among 502,503
    pairs, genuine = all_pairs(labels, max_impostor_pairs=100, seed=2)
    assert genuine.sum() == 1000 * 999 // 2
    assert (~genuine).sum() == 100
    np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], genuine)
