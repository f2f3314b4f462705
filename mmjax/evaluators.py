"""Evaluators: each turns a model's embeddings of an eval set into named metrics.

The trainer encodes the eval split once per evaluation and hands every evaluator named in
`config.evals` an `EvalContext`; evaluators that do not apply (zero-shot on a dataset with no
labels) return nothing. Metric functions are plain NumPy so that they can be checked by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def recall_at_k(similarity: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows whose matching column (the diagonal) is among the top k scores.

    Ties count against the query (a collapsed model that scores everything equal gets zero, not
    perfect, recall): the rank is the number of other columns scoring at least as high.
    """
    matching = np.diag(similarity)[:, None]
    rank = (similarity >= matching).sum(axis=1) - 1  # 0 when the match is strictly the best
    return {k: float((rank < k).mean()) for k in ks}


def retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                      ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->text and text->image recall@k where image i is paired with text i."""
    similarity = normalize(image_embeddings) @ normalize(text_embeddings).T
    metrics = {"num_candidates": float(similarity.shape[0])}
    for k, value in recall_at_k(similarity, ks).items():
        metrics[f"i2t_recall@{k}"] = value
    for k, value in recall_at_k(similarity.T, ks).items():
        metrics[f"t2i_recall@{k}"] = value
    return metrics


def zeroshot_metrics(image_embeddings: np.ndarray, class_embeddings: np.ndarray,
                     labels: np.ndarray) -> dict[str, float]:
    """Top-1 / top-5 accuracy of classifying images by their nearest class embedding."""
    scores = normalize(image_embeddings) @ normalize(class_embeddings).T
    order = np.argsort(-scores, axis=1, kind="stable")
    metrics = {"zeroshot_top1": float((order[:, 0] == labels).mean())}
    if scores.shape[1] > 5:
        metrics["zeroshot_top5"] = float((order[:, :5] == labels[:, None]).any(axis=1).mean())
    return metrics


@dataclasses.dataclass
class EvalContext:
    image_embeddings: np.ndarray
    text_embeddings: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]
    prompt_templates: Sequence[str]
    encode_texts: Callable[[Sequence[str]], np.ndarray]


def evaluate_retrieval(context: EvalContext) -> dict[str, float]:
    return retrieval_metrics(context.image_embeddings, context.text_embeddings)


def class_embeddings(context: EvalContext) -> np.ndarray:
    """One embedding per class: the normalised mean over prompt templates (CLIP's ensembling)."""
    templates = list(context.prompt_templates) or ["{}"]
    prompts = [template.format(name) for name in context.class_names for template in templates]
    embeddings = normalize(context.encode_texts(prompts))
    return normalize(embeddings.reshape(len(context.class_names), len(templates), -1).mean(axis=1))


def evaluate_zeroshot(context: EvalContext) -> dict[str, float]:
    if not context.class_names:
        return {}
    return zeroshot_metrics(context.image_embeddings, class_embeddings(context), context.labels)


EVALUATORS: dict[str, Callable[[EvalContext], dict[str, float]]] = {
    "retrieval": evaluate_retrieval,
    "zeroshot": evaluate_zeroshot,
}


def check_evaluator_names(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in EVALUATORS]
    if unknown:
        raise ValueError(f"config.evals names unknown evaluators {unknown}; valid names: "
                         f"{sorted(EVALUATORS)}.")
