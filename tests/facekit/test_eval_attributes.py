"""Attribute metrics against a hand-computed 4 x 3 case, with and without an attribute mask."""

from __future__ import annotations

import numpy as np
import pytest

from corecompress_facekit.evaluation.attributes import (
    evaluate_attribute_predictions,
    evaluate_attributes,
    labels_to_bool,
    predictions_from_logits,
)

LOGITS = np.array(
    [[2.0, -1.0, 0.5],
     [-3.0, 1.0, -0.2],
     [1.0, 2.0, 0.0],   # logit 0 -> sigmoid 0.5, not > 0.5 -> absent
     [-1.0, -2.0, 3.0]]
)
LABELS = np.array(
    [[1, -1, -1],
     [1, 1, -1],
     [-1, 1, -1],
     [-1, -1, 1]]
)
# predictions [[1,0,1],[0,1,0],[1,1,0],[0,0,1]]
# a: TP 1 FP 1 FN 1 TN 1 -> acc .5,  P .5, R .5, F1 .5
# b: all right           -> acc 1,   P 1,  R 1,  F1 1
# c: TP 1 FP 1 FN 0 TN 2 -> acc .75, P .5, R 1,  F1 2/3


def test_metrics_by_hand() -> None:
    result = evaluate_attributes(LOGITS, LABELS, names=["a", "b", "c"])
    assert result.names == ("a", "b", "c")
    np.testing.assert_allclose(result.accuracy, [0.5, 1.0, 0.75])
    np.testing.assert_allclose(result.precision, [0.5, 1.0, 0.5])
    np.testing.assert_allclose(result.recall, [0.5, 1.0, 1.0])
    np.testing.assert_allclose(result.f1, [0.5, 1.0, 2 / 3])
    assert result.mean_accuracy == pytest.approx(9 / 12)  # 9 correct of N x A = 12
    assert result.macro_precision == pytest.approx(2 / 3)
    assert result.macro_recall == pytest.approx(5 / 6)
    assert result.macro_f1 == pytest.approx(13 / 18)  # mean of per-attribute F1
    assert result.n_samples == 4
    assert result.per_attribute()["c"] == pytest.approx({"accuracy": 0.75, "precision": 0.5, "recall": 1.0, "f1": 2 / 3})


def test_attribute_mask_restricts_every_number() -> None:
    result = evaluate_attributes(LOGITS, LABELS, names=["a", "b", "c"], attribute_mask=np.array([True, False, True]))
    assert result.names == ("a", "c")
    assert result.mean_accuracy == pytest.approx(5 / 8)
    assert result.macro_precision == pytest.approx(0.5)
    assert result.macro_recall == pytest.approx(0.75)
    assert result.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="selects no attribute"):
        evaluate_attributes(LOGITS, LABELS, attribute_mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="attribute_mask has 2 entries"):
        evaluate_attributes(LOGITS, LABELS, attribute_mask=np.ones(2, bool))


def test_zero_over_zero_counts_as_zero() -> None:
    predictions = np.array([[False, False], [False, False]])
    labels = np.array([[0, 1], [0, 0]])
    result = evaluate_attribute_predictions(predictions, labels)
    # attribute 0: never present, never predicted -> accuracy 1 but P = R = F1 = 0/0 := 0
    # attribute 1: present once, never predicted  -> P = 0/0 := 0, R = 0, F1 = 0
    np.testing.assert_allclose(result.accuracy, [1.0, 0.5])
    np.testing.assert_array_equal(result.precision, [0.0, 0.0])
    np.testing.assert_array_equal(result.recall, [0.0, 0.0])
    np.testing.assert_array_equal(result.f1, [0.0, 0.0])
    assert result.names == ("attr_0", "attr_1")


def test_two_way_softmax_predictions_and_ties() -> None:
    logits = np.array([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]])
    np.testing.assert_array_equal(predictions_from_logits(logits), [[True, False, False]])
    with pytest.raises(ValueError, match="logits must be"):
        predictions_from_logits(np.zeros((2, 3, 3)))


def test_label_encodings() -> None:
    np.testing.assert_array_equal(labels_to_bool(np.array([-1, 1, 1])), [False, True, True])
    np.testing.assert_array_equal(labels_to_bool(np.array([0, 1, 0])), [False, True, False])
    zero_one = evaluate_attributes(LOGITS, (LABELS + 1) // 2)
    assert zero_one.mean_accuracy == pytest.approx(9 / 12)
    with pytest.raises(ValueError, match="-1/1, 0/1"):
        labels_to_bool(np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match="must both be"):
        evaluate_attributes(LOGITS, LABELS[:, :2])
