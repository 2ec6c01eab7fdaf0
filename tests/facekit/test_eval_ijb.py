"""IJB-B/C template aggregation, metadata readers and evaluation against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corecompress_facekit.evaluation.ijb import (
    DataFormatError,
    TemplatePairs,
    evaluate_ijb,
    read_landmarks_scores,
    read_template_media,
    read_template_pairs,
    template_features,
    template_pair_scores,
)


def test_two_templates_two_media_two_images_by_hand() -> None:
    features = np.array(
        [[1, 0], [3, 0], [0, 2], [0, 4],   # template 5: media 10 -> mean [2,0]; media 11 -> mean [0,3]
         [1, 1], [1, 1], [0, 0], [2, -2]],  # template 7: media 20 -> [1,1]; media 21 -> [1,-1]
        dtype=float,
    )
    templates = np.array([5, 5, 5, 5, 7, 7, 7, 7])
    medias = np.array([10, 10, 11, 11, 20, 20, 21, 21])
    ids, feats = template_features(features, templates, medias)
    np.testing.assert_array_equal(ids, [5, 7])
    np.testing.assert_allclose(feats[0], np.array([2, 3]) / np.sqrt(13))
    np.testing.assert_allclose(feats[1], [1, 0])
    score = template_pair_scores(ids, feats, np.array([5]), np.array([7]))
    np.testing.assert_allclose(score, [2 / np.sqrt(13)])


def test_media_are_averaged_before_summing_and_are_local_to_a_template() -> None:
    # template 1: three images of media 4 ([1,0] each) and one of media 9 ([0,1]):
    # media means [1,0] + [0,1] -> [1,1]/sqrt2 (a plain image mean would point at [3,1]).
    # template 2 reuses media id 4 for its own image [0,1]: it must not mix with template 1's media 4.
    features = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    ids, feats = template_features(features, np.array([1, 1, 1, 1, 2]), np.array([4, 4, 4, 9, 4]))
    np.testing.assert_allclose(feats[0], [1 / np.sqrt(2), 1 / np.sqrt(2)])
    np.testing.assert_allclose(feats[1], [0, 1])


def test_detector_scores_and_image_normalisation() -> None:
    features = np.array([[3.0, 0.0], [0.0, 1.0]])
    templates, medias, det = np.array([1, 1]), np.array([1, 2]), np.array([1.0, 2.0])
    _, weighted = template_features(features, templates, medias, detector_scores=det)
    np.testing.assert_allclose(weighted[0], np.array([3, 2]) / np.sqrt(13))  # [3,0]*1 + [0,1]*2
    _, both = template_features(features, templates, medias, detector_scores=det, normalize_images=True)
    np.testing.assert_allclose(both[0], np.array([1, 2]) / np.sqrt(5))  # [1,0]*1 + [0,1]*2
    with pytest.raises(DataFormatError, match="detector scores"):
        template_features(features, templates, medias, detector_scores=np.ones(3))


def test_evaluate_ijb_scores_pairs_and_applies_the_closest_rule() -> None:
    # single-image templates [1,0], [4,3]/5, [0,1], [3,4]/5 (image norms differ on purpose)
    features = np.array([[2.0, 0.0], [4.0, 3.0], [0.0, 0.5], [3.0, 4.0]])
    pairs = TemplatePairs(
        template1=np.array([0, 0, 1, 2, 0]),
        template2=np.array([1, 2, 3, 3, 3]),
        labels=np.array([True, False, False, True, False]),
    )
    # scores: genuine 0.8, 0.8; impostor 0.0, 0.96, 0.6 -> each genuine beats 2 of 3 impostors
    targets = (0.4, 0.9, 0.3)
    result = evaluate_ijb(features, np.arange(4), np.arange(4), pairs, far_targets=targets)
    assert result.auc == pytest.approx(2 / 3)
    closest_04, closest_09, closest_03 = result.tar_at_far
    # closest FAR to 0.4 is 1/3; of the two points at FAR 1/3 the later (threshold 0.8) accepts both genuine
    assert (closest_04.far, closest_04.tar, closest_04.threshold) == (pytest.approx(1 / 3), 1.0, pytest.approx(0.8))
    # closest FAR to 0.9 is 1 (not 2/3): the closest rule may exceed the FAR budget, "at_most" never does
    assert closest_09.far == 1.0 and closest_09.threshold == 0.0
    assert not closest_03.reachable  # 0.3 < 1/3 impostor pairs
    budget = evaluate_ijb(features, np.arange(4), np.arange(4), pairs, far_targets=targets, rule="at_most")
    assert budget.tar_at_far[1].far == pytest.approx(2 / 3) and budget.tar_at_far[1].threshold == pytest.approx(0.6)
    bad = TemplatePairs(np.array([0]), np.array([42]), np.array([True]))
    with pytest.raises(DataFormatError, match="template 42"):
        evaluate_ijb(features, np.arange(4), np.arange(4), bad)


def test_readers_tolerate_whitespace(tmp_path: Path) -> None:
    tid_mid = tmp_path / "ijbc_face_tid_mid.txt"
    tid_mid.write_text("1.jpg 1 69544\n2.jpg\t1  69544\n\n3.jpg 2 11 \n")
    meta = read_template_media(tid_mid)
    assert meta.images == ("1.jpg", "2.jpg", "3.jpg")
    np.testing.assert_array_equal(meta.templates, [1, 1, 2])
    np.testing.assert_array_equal(meta.medias, [69544, 69544, 11])

    pair_file = tmp_path / "ijbc_template_pair_label.txt"
    pair_file.write_text("1 11065 1\n  2 3 0\r\n")
    pairs = read_template_pairs(pair_file)
    np.testing.assert_array_equal(pairs.template1, [1, 2])
    np.testing.assert_array_equal(pairs.template2, [11065, 3])
    np.testing.assert_array_equal(pairs.labels, [True, False])

    lmk = tmp_path / "ijbc_name_5pts_score.txt"
    lmk.write_text("1.jpg 1 2 3 4 5 6 7 8 9 10 0.99\n")
    parsed = read_landmarks_scores(lmk)
    assert parsed.images == ("1.jpg",)
    np.testing.assert_allclose(parsed.landmarks[0], [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    np.testing.assert_allclose(parsed.scores, [0.99])


def test_readers_name_file_and_line_on_malformed_input(tmp_path: Path) -> None:
    path = tmp_path / "meta_face_tid_mid.txt"
    path.write_text("1.jpg 1 2\n2.jpg 1\n")
    with pytest.raises(DataFormatError, match=r"meta_face_tid_mid.txt:2: expected 3 fields"):
        read_template_media(path)
    path.write_text("1.jpg one 2\n")
    with pytest.raises(DataFormatError, match=r":1: template id 'one' is not an integer"):
        read_template_media(path)
    pair_path = tmp_path / "pairs_template_pair_label.txt"
    pair_path.write_text("1 2 1\n3 4 2\n")
    with pytest.raises(DataFormatError, match=r":2: label must be 0 or 1"):
        read_template_pairs(pair_path)
    pair_path.write_text("\n\n")
    with pytest.raises(DataFormatError, match="no data lines"):
        read_template_pairs(pair_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_template_pairs(tmp_path / "absent.txt")
    lmk = tmp_path / "x_name_5pts_score.txt"
    lmk.write_text("1.jpg 1 2 3 4 5 6 7 8 9 ten 0.5\n")
    with pytest.raises(DataFormatError, match=":1: landmarks and score must be numbers"):
        read_landmarks_scores(lmk)
