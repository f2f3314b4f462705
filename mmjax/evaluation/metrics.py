"""Metrics from embeddings and predictions, in plain NumPy so that they can be checked by hand:
retrieval recall@k, classification accuracy, zero-shot and the linear probe's scores, caption
token accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmjax import conventions
from mmjax.evaluation import linear_probe


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def recall_at_k(similarity: np.ndarray, ks: Sequence[int],
                matches: np.ndarray | None = None) -> dict[int, float]:
    """Fraction of rows (queries) with a matching column among the top k scores.

    `matches[q, c]` marks the right answers (default: the diagonal); with several (an image's
    five COCO captions) the best-scoring one counts. Ties count against the query (a collapsed
    model that scores everything equal gets zero, not perfect, recall): the rank is the number
    of non-matching columns scoring at least as high as the best match.
    """
    if matches is None:
        matches = np.eye(*similarity.shape, dtype=bool)
    best_match = np.where(matches, similarity, -np.inf).max(axis=1, keepdims=True)
    rank = ((similarity >= best_match) & ~matches).sum(axis=1)
    return {k: float((rank < k).mean()) for k in ks}


def retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                      ks: Sequence[int] = (1, 5, 10), text_image: np.ndarray | None = None,
                      pair: tuple[str, str] = ("image", "text"),
                      same_caption: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k both ways between two modalities' embeddings (image->text and text->image by
    default; `pair` names them: ("audio", "text") gives a2t_ and t2a_). Text t describes image
    `text_image[t]` (default: text i describes image i); an image with several texts is found
    by any of them. `same_caption[i]` (row-aligned, one text per item): items with the same
    value have word-for-word the same caption, so each one's text is a right answer for the
    others (generated datasets repeat captions; ranking one copy above another is a coin toss,
    not an error); `caption_chance@1` is then recall@1 of a random ranking."""
    similarity = l2_normalize(image_embeddings) @ l2_normalize(text_embeddings).T
    metrics = {}
    if same_caption is not None:
        same_caption = np.asarray(same_caption)
        matches = same_caption[:, None] == same_caption[None, :]
        metrics["caption_chance@1"] = float(matches.mean())
    else:
        if text_image is None:
            text_image = np.arange(similarity.shape[1])
        matches = np.arange(similarity.shape[0])[:, None] == np.asarray(text_image)[None, :]
    a, b = (conventions.INITIALS[m] for m in pair)
    for k, value in recall_at_k(similarity, ks, matches).items():
        metrics[f"{a}2{b}_recall@{k}"] = value
    for k, value in recall_at_k(similarity.T, ks, matches.T).items():
        metrics[f"{b}2{a}_recall@{k}"] = value
    return metrics


def caption_groups(tokens: np.ndarray | None) -> np.ndarray | None:
    """Per token row, the index of its distinct caption (None without tokens)."""
    if tokens is None or len(tokens) == 0:
        return None
    return np.unique(np.asarray(tokens), axis=0, return_inverse=True)[1].reshape(-1)


def classification_metrics(scores: np.ndarray, labels: np.ndarray,
                           prefix: str) -> dict[str, float]:
    """Top-1, top-5 (with more than 5 classes) and mean per-class accuracy of class scores."""
    order = np.argsort(-scores, axis=1, kind="stable")
    correct = order[:, 0] == labels
    metrics = {f"{prefix}top1": float(correct.mean()),
               # Each class weighs the same, however many images it has.
               f"{prefix}mean_per_class": float(np.mean([correct[labels == c].mean()
                                                         for c in np.unique(labels)]))}
    if scores.shape[1] > 5:
        metrics[f"{prefix}top5"] = float((order[:, :5] == labels[:, None]).any(axis=1).mean())
    return metrics


def zeroshot_metrics(image_embeddings: np.ndarray, class_embeddings: np.ndarray,
                     labels: np.ndarray) -> dict[str, float]:
    """Classifying images by their nearest class embedding."""
    scores = l2_normalize(image_embeddings) @ l2_normalize(class_embeddings).T
    return classification_metrics(scores, labels, "zeroshot_")


def linear_probe_metrics(train_features: np.ndarray, train_labels: np.ndarray,
                         test_features: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    """The CLIP paper's linear probe (mmjax.evaluation.linear_probe) tested on the eval features,
    and the
    C its sweep chose."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores, c = linear_probe.fit_and_score(train_features, train_labels, test_features,
                                           num_classes)
    return {**classification_metrics(scores, test_labels, "linear_probe_"), "linear_probe_c": c}


def caption_token_accuracy(generated: np.ndarray, references: np.ndarray, eot_id: int):
    """Per-caption and overall token accuracy of generated rows against reference rows.

    Positions compared: those after the beginning-of-text token up to and including the
    reference's end-of-text (all of them if it has none), so stopping early and running on both
    count as errors. Returns (overall fraction of compared positions that match, exact matches).
    """
    positions = np.arange(references.shape[1])[None]
    is_eot = references == eot_id
    end = np.where(is_eot.any(1), is_eot.argmax(1), references.shape[1] - 1)[:, None]
    compared = (positions >= 1) & (positions <= end)
    same = (generated == references) & compared
    exact = same.sum(1) == compared.sum(1)
    return float(same.sum() / compared.sum()), float(exact.mean())
