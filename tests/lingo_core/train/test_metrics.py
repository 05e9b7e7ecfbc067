"""Metrics against values computed by hand."""

import math

import numpy as np
import pytest

from lingo_core.train.metrics import (
    accuracy,
    auroc,
    classification_metrics,
    confusion_matrix,
    macro_f1,
    mcc,
    per_class_recall,
)

# y = [1,1,1,0,0,0,0,0], p = [1,1,0,0,0,0,1,1]: TP=2 FN=1 TN=3 FP=2
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
P = np.array([1, 1, 0, 0, 0, 0, 1, 1])


def test_confusion_matrix_counts():
    assert confusion_matrix(Y, P, 2).tolist() == [[3, 2], [1, 2]]


def test_binary_mcc_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6-2)/sqrt(4*3*5*4)
    assert mcc(Y, P) == pytest.approx(4 / math.sqrt(240))


def test_mcc_perfect_inverse_and_constant():
    assert mcc(Y, Y) == pytest.approx(1.0)
    assert mcc(Y, 1 - Y) == pytest.approx(-1.0)
    assert mcc(Y, np.zeros_like(Y)) == 0.0  # undefined -> 0, never NaN


def test_multiclass_mcc_matches_gorodkin_formula():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    # cm = [[1,1,0],[0,2,0],[1,0,1]]; c=4, s=6, t=[2,2,2], p=[2,3,1]
    num = 4 * 6 - (2 * 2 + 2 * 3 + 2 * 1)
    den = math.sqrt((36 - 12) * (36 - (4 + 9 + 1)))
    assert mcc(y, p) == pytest.approx(num / den)


def test_f1_accuracy_recall_by_hand():
    # class 1: P=2/4, R=2/3 -> F1=4/7; class 0: P=3/4, R=3/5 -> F1=2/3
    assert macro_f1(Y, P) == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert accuracy(Y, P) == pytest.approx(5 / 8)
    assert per_class_recall(confusion_matrix(Y, P, 2)) == pytest.approx([3 / 5, 2 / 3])


def test_auroc_by_hand_with_ties_and_single_class():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(y, s) == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered correctly
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts half
    assert auroc(np.array([1, 1]), np.array([0.2, 0.9])) is None


def test_classification_metrics_bundle():
    probs = np.stack([1 - P * 0.8, P * 0.8], axis=1)
    m = classification_metrics(Y, P, probs, 2, ["neg", "pos"])
    assert m["mcc"] == pytest.approx(mcc(Y, P))
    assert m["per_class_recall"] == pytest.approx({"neg": 0.6, "pos": 2 / 3})
    assert m["confusion_matrix"] == [[3, 2], [1, 2]]
    assert m["n"] == 8 and m["auroc"] is not None
    three = classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), None, 3)
    assert three["auroc"] is None and three["per_class_recall"]["2"] == 0.0
