"""BLEU-1..4 and CIDEr(-D) as the COCO caption evaluation code (pycocoevalcap) computes them.

Inputs are already tokenised: lower-case words separated by spaces (coco-caption first runs the
PTB tokenizer, a Java program; mmjax's decoded captions are plain words already). Both metrics
are corpus-level: BLEU sums n-gram matches over all images before dividing, with the brevity
penalty from the reference length closest to each hypothesis; CIDEr weights n-grams by tf-idf
over the evaluated set's references, clips the hypothesis counts at the reference's, applies a
Gaussian length penalty (sigma 6) and averages 1- to 4-gram cosines x 10.
`tests/fixtures/caption_metrics.json` holds pycocoevalcap's values for a set of captions
(`scripts/make_caption_metrics_fixture.py`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def ngram_counts(sentence: str, n: int = 4) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                   for i in range(len(words) - k + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
         n: int = 4) -> list[float]:
    """Corpus BLEU-1..n, one hypothesis and one or more references per image."""
    correct, guess = [0] * n, [0] * n
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        max_counts: Counter = Counter()
        for ref in refs:
            for ngram, count in ngram_counts(ref, n).items():
                max_counts[ngram] = max(max_counts[ngram], count)
        length = len(hypothesis.split())
        # The closest reference length; ties go to the shorter one.
        reference_length += min((abs(len(r.split()) - length), len(r.split())) for r in refs)[1]
        hypothesis_length += length
        for k in range(n):
            guess[k] += max(0, length - k)
        for ngram, count in ngram_counts(hypothesis, n).items():
            correct[len(ngram) - 1] += min(max_counts[ngram], count)
    tiny, small = 1e-15, 1e-9  # coco-caption's guards against empty counts
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (hypothesis_length + tiny) / (reference_length + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
          sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (coco-caption's "CIDEr"): the mean over images."""
    reference_counts = [[ngram_counts(r, n) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in reference_counts:
        document_frequency.update({ngram for counts in refs for ngram in counts})
    log_images = np.log(float(len(reference_counts)))

    def tfidf(counts: Counter):
        vectors = [dict() for _ in range(n)]
        norms = [0.0] * n
        for ngram, term_frequency in counts.items():
            weight = term_frequency * (log_images - np.log(max(1.0, document_frequency[ngram])))
            vectors[len(ngram) - 1][ngram] = weight
            norms[len(ngram) - 1] += weight ** 2
        # coco-caption's "length" counts bigrams (words - 1); kept so that the values match.
        length = sum(c for g, c in counts.items() if len(g) == 2)
        return vectors, [math.sqrt(x) for x in norms], length

    scores = []
    for hypothesis, refs in zip(hypotheses, reference_counts, strict=True):
        vec, norm, length = tfidf(ngram_counts(hypothesis, n))
        total = np.zeros(n)
        for ref in refs:
            ref_vec, ref_norm, ref_length = tfidf(ref)
            for k in range(n):
                value = sum(min(weight, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0)
                            for g, weight in vec[k].items())
                if norm[k] != 0 and ref_norm[k] != 0:
                    value /= norm[k] * ref_norm[k]
                total[k] += value * np.e ** (-((length - ref_length) ** 2) / (2 * sigma ** 2))
        scores.append(np.mean(total) / len(refs) * 10.0)
    return float(np.mean(scores))
