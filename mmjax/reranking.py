"""Best of N for text-to-image: draw `config.generation.candidates` images for a caption and keep
the one a contrastive model (a CLIP, SigLIP or CoCa run, `config.generation.rerank_with`) finds
closest to it, as DALL-E kept the best of its samples by CLIP's score.

The chooser must not be the judge's CLIP (mmjax/judge.py), which would then score images picked
for pleasing it; the preflight refuses that. The evaluation reports each guidance scale's first
candidate beside the chosen one, and two baselines chosen the same way: unconditional samples
(what the choosing alone does) and the nearest training images.
"""

from __future__ import annotations

import functools
import json
from typing import Sequence

import numpy as np

from mmjax import paths

# The models (config.model.name) that embed images and texts in one space (trained with the
# clip or siglip loss), so that their cosines can choose.
CONTRASTIVE_MODELS = ("clip", "coca")


@functools.lru_cache(maxsize=2)
def load_reranker(workdir: str):
    """The chooser: an mmjax.inference.InferenceModel of a contrastive run."""
    from mmjax import inference

    try:
        return inference.load(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"config.generation.rerank_with ({workdir}, read from {paths.absolute('.')}): {e} "
            "Or draw one image a caption (candidates=1), which needs no chooser.") from e


def best_of(reranker, candidates: np.ndarray, captions: Sequence[str],
            text_embeddings: np.ndarray | None = None):
    """(uint8 [N, H, W, 3]: for each caption the candidate [N, K, H, W, 3] whose image embedding
    has the highest cosine with the caption's, and those cosines [N, K]). `text_embeddings`:
    the reranker's of `captions`, when the caller already has them."""
    from mmjax.evaluators import normalize

    count, per_caption = candidates.shape[:2]
    if text_embeddings is None:
        text_embeddings = reranker.encode_text(list(captions))
    images = normalize(reranker.encode_image(
        candidates.reshape(count * per_caption, *candidates.shape[2:])))
    scores = np.einsum("nkd,nd->nk", images.reshape(count, per_caption, -1),
                       normalize(text_embeddings))
    return candidates[np.arange(count), scores.argmax(axis=1)], scores


def keep_one(candidates: np.ndarray, captions: Sequence[str], rerank_with: str | None):
    """uint8 [N, H, W, 3] from [N, K, H, W, 3]: the only candidate, or the best of K by the run
    at rerank_with."""
    if candidates.shape[1] == 1:
        return candidates[:, 0]
    return best_of(load_reranker(rerank_with), candidates, captions)[0]


def check(c, generation, judge_workdir: str | None, find) -> None:
    """Preflight: candidates is a positive count, and more than one has a contrastive run to
    choose by, which is not the judge's CLIP. `find` locates a workdir's checkpoint."""
    from mmjax import inference

    c.count("generation.candidates", 1, "set 1 (no choosing) or more, with "
            "config.generation.rerank_with")
    candidates, chooser = generation.get("candidates", 1), generation.get("rerank_with")
    if not isinstance(candidates, int) or candidates <= 1:
        return
    found = find(chooser) if chooser else None
    if not found:
        c.add("config.generation.rerank_with", f"{candidates} candidates a caption need a "
              "contrastive run to choose by, and " + ("none is set" if not chooser else
                                                      "it holds no mmjax checkpoint"),
              "give a CLIP or SigLIP run's workdir (not the judge's), or set "
              "config.generation.candidates=1")
        return
    try:
        model = inference.load_config(chooser).model.name
    except FileNotFoundError as e:
        c.add("config.generation.rerank_with", str(e).rstrip("."), "give a workdir written by "
              "mmjax")
        return
    if model not in CONTRASTIVE_MODELS:
        c.add("config.generation.rerank_with", f"the run at {chooser} (a {model!r} model) embeds "
              "no image and text in one space",
              f"give a {' or '.join(map(repr, CONTRASTIVE_MODELS))} run")
    judge_spec = paths.join(judge_workdir, "judge.json") if judge_workdir else None
    if judge_spec and paths.exists(judge_spec):
        judges_clip = json.loads(paths.read_text(judge_spec))["clip_workdir"]
        judges_found = find(judges_clip)
        if judges_found and judges_found[0] == found[0]:
            c.add("config.generation.rerank_with", f"is the judge's CLIP ({judges_clip}): it "
                  "would score the images it chose", "choose with another run (the judge is "
                  "never used for guidance or choosing)")
