"""Classification metrics over numpy arrays. MCC is the primary metric (GUE reports MCC).

Plain functions so the orchestrator, the CLI and tests compute exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    """cm[i, j] = number of examples with true label i predicted as j (int64, num_labels x num_labels)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in shape: {labels.shape} vs {preds.shape}")
    if labels.size and (min(labels.min(), preds.min()) < 0 or max(labels.max(), preds.max()) >= num_labels):
        raise ValueError(f"labels/preds must lie in [0, {num_labels}); got values outside that range")
    flat = np.bincount(labels * num_labels + preds, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float((labels == preds).mean()) if labels.size else 0.0


def mcc_from_cm(cm: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0.0 when undefined (constant predictions)."""
    cm = cm.astype(np.float64)
    t = cm.sum(axis=1)  # true counts per class
    p = cm.sum(axis=0)  # predicted counts per class
    c, s = np.trace(cm), cm.sum()
    cov_ytyp = c * s - t @ p
    cov_ypyp = s * s - p @ p
    cov_ytyt = s * s - t @ t
    denom = np.sqrt(cov_ytyt * cov_ypyp)
    # sklearn's convention: an undefined MCC (one row or column empty) is 0, i.e. "no better than chance"
    return float(cov_ytyp / denom) if denom > 0 else 0.0


def mcc(labels: np.ndarray, preds: np.ndarray, num_labels: int | None = None) -> float:
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    k = num_labels or int(max(labels.max(initial=0), preds.max(initial=0)) + 1)
    return mcc_from_cm(confusion_matrix(labels, preds, k))


def per_class_recall(cm: np.ndarray) -> list[float | None]:
    """Recall of each true class; None for a class absent from the labels (recall undefined)."""
    support = cm.sum(axis=1)
    return [float(cm[i, i] / support[i]) if support[i] else None for i in range(cm.shape[0])]


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_labels: int | None = None) -> float:
    """Unweighted mean of per-class F1 over classes present in labels or preds (sklearn's macro)."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    k = num_labels or int(max(labels.max(initial=0), preds.max(initial=0)) + 1)
    cm = confusion_matrix(labels, preds, k).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary AUROC from positive-class scores (rank statistic, ties count half); None if one class only."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if pos.size == 0 or neg.size == 0:
        return None
    # Mann-Whitney U via average ranks: exact, O(n log n), no sklearn dependency for a 5-line formula
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < scores.size:
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum_pos = ranks[labels == 1].sum()
    u = rank_sum_pos - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def classification_metrics(
    labels: np.ndarray,
    preds: np.ndarray,
    probs: np.ndarray | None,
    num_labels: int,
    label_names: Sequence[str] | None = None,
) -> dict:
    """All metrics in one JSON-safe dict: mcc, f1, accuracy, auroc (binary), per_class_recall, confusion_matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    cm = confusion_matrix(labels, preds, num_labels)
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    out: dict = {
        "mcc": mcc_from_cm(cm),
        "f1": macro_f1(labels, preds, num_labels),
        "accuracy": accuracy(labels, preds),
        "auroc": auroc(labels, np.asarray(probs)[:, 1]) if probs is not None and num_labels == 2 else None,
        "per_class_recall": dict(zip(names, per_class_recall(cm), strict=True)),
        "confusion_matrix": cm.tolist(),
        "n": int(labels.size),
    }
    return out
