"""Metrics against hand-computed values, with scikit-learn as an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from fedxray.errors import FedxrayError
from fedxray.evaluation.metrics import (
    BINARY_CURVE,
    WeightedScorer,
    compute_metrics,
    confusion_matrix,
    metric_names,
    roc_auc,
    roc_curve,
)

CLASSES = ["normal", "bacterial", "viral"]

# Eight images worked through by hand below. Rows 4 and 7 are identical (ties in every score).
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # normal    -> normal
        [0.5, 0.3, 0.2],  # normal    -> normal
        [0.2, 0.6, 0.2],  # normal    -> bacterial
        [0.1, 0.8, 0.1],  # bacterial -> bacterial
        [0.3, 0.4, 0.3],  # bacterial -> bacterial
        [0.2, 0.3, 0.5],  # bacterial -> viral
        [0.1, 0.2, 0.7],  # viral     -> viral
        [0.3, 0.4, 0.3],  # viral     -> bacterial
    ]
)


def test_hand_computed_example():
    m = compute_metrics(Y, P, CLASSES)
    v = m.values
    # Confusion (rows true): [2 1 0; 0 2 1; 0 1 1]; true counts 3 3 2, predicted 2 4 2.
    assert m.confusion.tolist() == [[2, 1, 0], [0, 2, 1], [0, 1, 1]]
    assert m.support == [3, 3, 2]
    assert v["accuracy"] == pytest.approx(5 / 8)
    assert v["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m.per_class("normal")["precision"] == pytest.approx(1.0)
    assert m.per_class("bacterial")["precision"] == pytest.approx(1 / 2)
    assert m.per_class("viral")["recall"] == pytest.approx(1 / 2)
    assert m.per_class("normal")["f1"] == pytest.approx(4 / 5)  # 2*2 / (3 + 2)
    assert m.per_class("bacterial")["f1"] == pytest.approx(4 / 7)  # 2*2 / (3 + 4)
    assert v["macro_f1"] == pytest.approx(131 / 210)
    # Gorodkin: (c*s - sum p_k t_k) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = 18 / sqrt(40*42).
    assert v["mcc"] == pytest.approx(18 / math.sqrt(40 * 42))
    # Kappa: (c*s - sum p_k t_k) / (s^2 - sum p_k t_k) = 18 / 42.
    assert v["kappa"] == pytest.approx(3 / 7)
    # Normal vs rest at the argmax: all 5 abnormal predicted abnormal, 2 of 3 normal kept.
    assert v["sensitivity"] == pytest.approx(1.0)
    assert v["specificity"] == pytest.approx(2 / 3)
    # Mann-Whitney with ties counted half, pair by pair (see the scores in P):
    # normal: 5 + 5 + 2.5 of 15; bacterial: 5 + 3.5 + 2.5 of 15; viral: 6 + 4.5 of 12.
    assert m.per_class("normal")["roc_auc"] == pytest.approx(5 / 6)
    assert m.per_class("bacterial")["roc_auc"] == pytest.approx(11 / 15)
    assert m.per_class("viral")["roc_auc"] == pytest.approx(7 / 8)
    assert v["macro_roc_auc"] == pytest.approx((5 / 6 + 11 / 15 + 7 / 8) / 3)
    # Binary score 1 - p(normal) ranks exactly like p(normal) reversed.
    assert v["binary_roc_auc"] == pytest.approx(5 / 6)
    assert m.notes == []
    assert set(v) == set(metric_names(CLASSES))


def test_hand_computed_roc_curve():
    curve = compute_metrics(Y, P, CLASSES).roc[BINARY_CURVE]
    # Scores 1 - p(normal), descending: 0.9 (2 pos), 0.8 (1 pos, 1 neg), 0.7 (2 pos), 0.5, 0.3.
    assert curve.tpr == pytest.approx([0, 0.4, 0.6, 1, 1, 1])
    assert curve.fpr == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert curve.thresholds[0] == np.inf
    assert curve.thresholds[1:] == pytest.approx([0.9, 0.8, 0.7, 0.5, 0.3])
    assert curve.auc == pytest.approx(5 / 6)
    d = curve.to_dict()
    assert d["thresholds"][0] is None and len(d["fpr"]) == 6


def test_hand_example_matches_sklearn():
    m = compute_metrics(Y, P, CLASSES)
    pred = P.argmax(axis=1)
    assert m.values["mcc"] == pytest.approx(skm.matthews_corrcoef(Y, pred))
    assert m.values["kappa"] == pytest.approx(skm.cohen_kappa_score(Y, pred))
    assert m.values["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P, multi_class="ovr"))


def _random_case(seed: int, n: int = 300, k: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    logits = np.round(logits, 1)  # coarse scores: many ties
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_sklearn(seed):
    y, p = _random_case(seed)
    pred = p.argmax(axis=1)
    m = compute_metrics(y, p, CLASSES)
    v = m.values
    assert v["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert v["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert v["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert v["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert v["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert v["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert v["binary_roc_auc"] == pytest.approx(skm.roc_auc_score(y != 0, 1 - p[:, 0]))
    assert v["sensitivity"] == pytest.approx(skm.recall_score(y != 0, pred != 0))
    assert v["specificity"] == pytest.approx(skm.recall_score(y == 0, pred == 0))
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred)
    for j, c in enumerate(CLASSES):
        pc = m.per_class(c)
        assert pc["precision"] == pytest.approx(prec[j])
        assert pc["recall"] == pytest.approx(rec[j])
        assert pc["f1"] == pytest.approx(f1[j])
        assert pc["roc_auc"] == pytest.approx(skm.roc_auc_score(y == j, p[:, j]))
        fpr, tpr, thr = skm.roc_curve(y == j, p[:, j], drop_intermediate=False)
        curve = m.roc[c]
        np.testing.assert_allclose(curve.fpr, fpr)
        np.testing.assert_allclose(curve.tpr, tpr)
        np.testing.assert_allclose(curve.thresholds[1:], thr[1:])
        # Trapezoid area and the Mann-Whitney count agree, ties included.
        assert curve.auc == pytest.approx(pc["roc_auc"])
    assert m.confusion.tolist() == skm.confusion_matrix(y, pred).tolist()
    assert m.support == support.tolist()


def test_two_classes_match_sklearn_binary():
    y, p3 = _random_case(5, k=2)
    m = compute_metrics(y, p3, ["normal", "pneumonia"])
    # 1 - p(normal) and p(pneumonia) may differ in the last bit, which moves ties: compare
    # each with its own score.
    assert m.values["binary_roc_auc"] == pytest.approx(skm.roc_auc_score(y, 1 - p3[:, 0]))
    macro = (skm.roc_auc_score(y == 0, p3[:, 0]) + skm.roc_auc_score(y == 1, p3[:, 1])) / 2
    assert m.values["macro_roc_auc"] == pytest.approx(macro)
    assert m.values["sensitivity"] == pytest.approx(skm.recall_score(y, p3.argmax(1)))


def test_weights_equal_duplicated_images():
    # The bootstrap scores weights; a weight of 3 must act exactly like three copies.
    y, p = _random_case(7, n=60)
    w = np.random.default_rng(0).integers(0, 4, size=60)
    weighted = WeightedScorer(y, p, CLASSES)(w[None, :].astype(float))
    copies = compute_metrics(np.repeat(y, w), np.repeat(p, w, axis=0), CLASSES).values
    for name, value in copies.items():
        assert weighted[name][0] == pytest.approx(value), name


def test_roc_auc_ties_and_extremes():
    assert roc_auc([0, 1], [0.3, 0.3]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(1.0)
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.0)
    # pos 0.5 vs neg {0.5, 0.1}: tie (1/2) + win (1) over two pairs.
    assert roc_auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
    assert roc_auc([1, 1], [0.2, 0.4]) is None
    assert roc_curve([0, 0], [0.2, 0.4]) is None


def test_confusion_matrix_counts():
    assert confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3).tolist() == [
        [1, 0, 0],
        [0, 1, 1],
        [0, 0, 1],
    ]


def test_absent_class_gives_none_and_a_note():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = compute_metrics(y, p, CLASSES)
    v = m.values
    assert m.per_class("viral")["recall"] is None
    assert m.per_class("viral")["roc_auc"] is None
    assert m.roc["viral"] is None
    assert v["macro_roc_auc"] is None
    # Predicted 'viral' once, wrongly: precision 0 (defined), recall undefined.
    assert m.per_class("viral")["precision"] == 0.0
    assert m.per_class("viral")["f1"] == 0.0
    # Balanced accuracy over the classes present: (1/2 + 1) / 2.
    assert v["balanced_accuracy"] == pytest.approx(0.75)
    assert v["accuracy"] == pytest.approx(0.75)
    assert v["binary_roc_auc"] == pytest.approx(skm.roc_auc_score(y != 0, 1 - p[:, 0]))
    assert any("viral" in n and "macro ROC-AUC undefined" in n for n in m.notes)


def test_single_class_is_degenerate_not_a_crash():
    y = np.zeros(3, dtype=int)
    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = compute_metrics(y, p, CLASSES)
    v = m.values
    assert v["accuracy"] == pytest.approx(2 / 3)
    assert v["balanced_accuracy"] == pytest.approx(2 / 3)
    for name in ("mcc", "macro_roc_auc", "binary_roc_auc", "sensitivity"):
        assert v[name] is None, name
    assert v["specificity"] == pytest.approx(2 / 3)
    # Kappa is defined here (predictions vary): p_o = 2/3, p_e = 2/3 -> 0.
    assert v["kappa"] == pytest.approx(0.0)
    assert v["kappa"] == pytest.approx(skm.cohen_kappa_score(y, p.argmax(1)))
    assert any("MCC undefined" in n for n in m.notes)
    assert any("no abnormal image" in n for n in m.notes)
    assert any("no image was predicted viral" in n for n in m.notes)


def test_everything_one_class_kappa_undefined():
    y = np.zeros(2, dtype=int)
    p = np.array([[0.9, 0.1], [0.8, 0.2]])
    m = compute_metrics(y, p, ["normal", "pneumonia"])
    assert m.values["kappa"] is None and m.values["mcc"] is None
    assert m.values["accuracy"] == 1.0
    assert any("kappa undefined" in n for n in m.notes)


def test_no_normal_class_disables_binary_task():
    y, p = _random_case(3)
    m = compute_metrics(y, p, ["a", "b", "c"])
    for name in ("binary_roc_auc", "sensitivity", "specificity"):
        assert m.values[name] is None
    assert BINARY_CURVE not in m.roc
    assert any("no class named 'normal'" in n for n in m.notes)
    assert m.values["accuracy"] is not None


def test_hard_labels_have_no_auc():
    y = np.array([0, 1, 2, 2])
    hard = np.eye(3)[[0, 1, 1, 2]]
    m = compute_metrics(y, hard, CLASSES, hard=True)
    assert m.values["macro_roc_auc"] is None and m.values["roc_auc/viral"] is None
    assert m.values["accuracy"] == pytest.approx(0.75)
    assert m.roc == {}


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0], [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], "1 labels but 2 rows"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], "shape"),
        ([0, 3], [[1, 0, 0], [0, 1, 0]], "out of range"),
        ([0.0, 1.0], [[1, 0, 0], [0, 1, 0]], "integer"),
        ([0, 1], [[2.0, -1.0, 0.0], [0, 1, 0]], "[0, 1]"),
        ([0, 1], [[0.5, 0.2, 0.1], [0, 1, 0]], "sum to 1"),
        ([0, 1], [[np.nan, 0.5, 0.5], [0, 1, 0]], "NaN"),
        ([], np.zeros((0, 3)), "no images"),
    ],
)
def test_bad_inputs_are_clear_errors(y, p, message):
    with pytest.raises(FedxrayError) as e:
        compute_metrics(np.asarray(y), np.asarray(p, dtype=float), CLASSES)
    assert message in e.value.message


def test_logits_get_a_hint():
    with pytest.raises(FedxrayError) as e:
        compute_metrics(np.array([0, 1]), np.array([[0.9, 0.1, 0.3], [0.1, 0.9, 0.5]]), CLASSES)
    assert "softmax" in e.value.hint


def test_class_list_checked():
    with pytest.raises(FedxrayError, match="two classes"):
        compute_metrics(np.array([0]), np.array([[1.0]]), ["normal"])
    with pytest.raises(FedxrayError, match="repeat"):
        compute_metrics(np.array([0]), np.array([[1.0, 0.0]]), ["a", "a"])
