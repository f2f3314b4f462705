"""Writes tests/fixtures/caption_metrics.json: captions and pycocoevalcap's BLEU / CIDEr for them.

Run once, in an environment with pycocoevalcap (its BLEU and CIDEr are pure Python):
    pip install pycocoevalcap==1.2 && python scripts/make_caption_metrics_fixture.py
"""

import json
import os
import random

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

WORDS = {
    "count": ["one", "two", "three", "a", "some"],
    "size": ["small", "large", "tiny", "big"],
    "color": ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "white"],
    "noun": ["circle", "square", "triangle", "cross", "shapes", "objects"],
    "place": ["on the left", "on the right", "at the top", "at the bottom", "in the center",
              "near the edge of the image"],
}


def caption(rng):
    words = [rng.choice(WORDS[k]) for k in ("count", "size", "color", "noun", "place")]
    if rng.random() < 0.3:
        words.insert(3, rng.choice(["bright", "dark", "pale"]))
    if rng.random() < 0.2:
        words = words[:rng.randint(1, len(words))]  # cut short
    return " ".join(words)


def main():
    rng = random.Random(0)
    references, hypotheses = [], []
    for _ in range(80):
        refs = [caption(rng) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.5:  # a hypothesis close to one reference
            words = rng.choice(refs).split()
            words[rng.randrange(len(words))] = rng.choice(WORDS["color"])
            hypothesis = " ".join(words)
        else:
            hypothesis = caption(rng)
        references.append(refs)
        hypotheses.append(hypothesis)
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [h] for i, h in enumerate(hypotheses)}
    bleu_scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider_score, _ = Cider().compute_score(gts, res)
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                       "fixtures", "caption_metrics.json")
    with open(out, "w") as f:
        json.dump({"hypotheses": hypotheses, "references": references,
                   "bleu": [float(b) for b in bleu_scores], "cider": float(cider_score),
                   "made_with": "pycocoevalcap 1.2"}, f, indent=1)
    print(f"wrote {out}: BLEU-4 {bleu_scores[3]:.4f}, CIDEr {cider_score:.4f}")


if __name__ == "__main__":
    main()
