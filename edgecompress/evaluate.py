"""Classification metrics computed the same way for every runtime: PyTorch, ONNX Runtime,
the RKNN simulator. Torch-free: it takes logits as numpy arrays."""

from __future__ import annotations

import math

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened (1.0 for two zero arrays)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 and nb == 0:
        return 1.0
    return float(a64 @ b64) / max(float(na * nb), 1e-300)


def accuracy_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct`` out of ``n``, in percent
    (``z=1.96``: 95%). Unlike the normal approximation it stays inside 0..100 and is not
    zero-width at 0% or 100%, which is where small, easy test sets live.

    >>> [round(v, 1) for v in accuracy_interval(50, 100)]
    [40.4, 59.6]
    """
    if n <= 0:
        raise ValueError(f"accuracy_interval: n must be positive, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"accuracy_interval: correct must be in 0..{n}, got {correct}")
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half) * 100, min(1.0, centre + half) * 100


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None = None
) -> dict[str, float]:
    """top-1/top-5 (%), top-1's 95% Wilson interval (``top1_ci_low``, ``top1_ci_high``, %),
    the number of ``samples``, mean cross-entropy, and — against a reference model's logits
    on the same inputs — prediction agreement (%) and mean per-sample cosine similarity.

    Accuracy saturates on easy data; loss, agreement and cosine keep moving.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels)
    k = min(5, logits.shape[1])
    topk = np.argsort(-logits, axis=1)[:, :k]
    correct = int((topk[:, 0] == labels).sum())
    low, high = accuracy_interval(correct, len(labels))
    out = {
        "top1": correct / len(labels) * 100,
        "top1_ci_low": low,
        "top1_ci_high": high,
        "top5": float((topk == labels[:, None]).any(axis=1).mean() * 100),
        "loss": float(-_log_softmax(logits)[np.arange(len(labels)), labels].mean()),
        "samples": len(labels),
    }
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64).reshape(len(labels), -1)
        out["agreement"] = float((ref.argmax(1) == logits.argmax(1)).mean() * 100)
        num = (ref * logits).sum(1)
        den = np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(logits, axis=1), 1e-300)
        out["cosine"] = float((num / den).mean())
    return out
