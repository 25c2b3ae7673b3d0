"""Agreement of pseudo-domain labels with true domains: NMI, ARI, purity."""

from __future__ import annotations

import numpy as np


def contingency(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Counts table, rows = predicted groups, columns = true groups."""
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pred: np.ndarray, true: np.ndarray) -> float:
    """Normalised mutual information (arithmetic-mean normalisation)."""
    table = contingency(pred, true)
    n = table.sum()
    pi, pj = table.sum(1), table.sum(0)
    nz = table > 0
    mi = float((table[nz] / n * np.log(table[nz] * n / np.outer(pi, pj)[nz])).sum())
    h = (_entropy(pi) + _entropy(pj)) / 2
    return 1.0 if h == 0 else max(0.0, mi / h)


def ari(pred: np.ndarray, true: np.ndarray) -> float:
    """Adjusted Rand index (Hubert and Arabie)."""
    table = contingency(pred, true)
    comb = lambda x: x * (x - 1) / 2.0  # noqa: E731
    index = comb(table).sum()
    a, b = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = a * b / comb(table.sum())
    top = (a + b) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def purity(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of images whose predicted group's majority true domain is theirs."""
    table = contingency(pred, true)
    return float(table.max(1).sum() / table.sum())


def agreement(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """All three scores, rounded for display and metadata."""
    return {"nmi": round(nmi(pred, true), 4), "ari": round(ari(pred, true), 4), "purity": round(purity(pred, true), 4)}
