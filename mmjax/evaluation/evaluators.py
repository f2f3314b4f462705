"""Evaluators: each turns a model's embeddings of an eval set into named metrics.

Each registry entry (`Evaluator`) says what it needs: model methods, what the eval data must
have (labels, class names), what to compute on the device for every eval batch besides the
embeddings, and whether it needs the image embeddings of labelled training examples. The
evaluation encodes the eval split once, collecting what the configured evaluators asked for,
and hands each an `EvalContext`. The preflight checks the needs before training; an evaluator
whose data need is not met is skipped with a line saying why. Metric functions are plain NumPy
so that they can be checked by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from mmjax import conventions
from mmjax.evaluation import caption_metrics, judge, metrics
from mmjax.losses import contrastive
from mmjax.models import decoding, image_tokenizer, text_to_image


@dataclasses.dataclass
class EvalContext:
    # Each modality's embeddings of the eval examples, by modality name (conventions.MODALITIES).
    embeddings: dict[str, np.ndarray]
    labels: np.ndarray
    class_names: Sequence[str]
    prompt_templates: Sequence[str]
    encode_texts: Callable[[Sequence[str]], np.ndarray]
    # The reference caption token rows, and what model-specific evaluators asked the trainer for
    # (`caption_tokens`, `itm_*`), row-aligned with the embeddings.
    tokens: np.ndarray | None = None
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    tokenizer: object = None
    # What evaluators leave for the report (examples, per-class numbers), by evaluator name.
    details: dict[str, dict] = dataclasses.field(default_factory=dict)
    # Every caption of every image (config.data.eval_captions_per_image > 1): embeddings and the
    # image each describes. Retrieval then counts any of an image's captions.
    all_text_embeddings: np.ndarray | None = None
    all_text_image: np.ndarray | None = None
    # Zero-shot picks among the classes the eval labels have (ImageNet-A and -R: 200 of 1,000).
    present_classes_only: bool = False
    # The run's EvalSettings (what the generation evaluator's judge is).
    settings: object = None

    @property
    def image_embeddings(self) -> np.ndarray:
        return self.embeddings["image"]

    @property
    def text_embeddings(self) -> np.ndarray:
        return self.embeddings["text"]

    @property
    def classified(self) -> tuple[str, ...]:
        """The modalities zero-shot and the probe classify: all but text."""
        return tuple(m for m in self.embeddings if m != "text")


def example_queries(count: int, num: int = 4) -> np.ndarray:
    """Indices of `num` queries spread over the eval set, for the report's examples."""
    return np.unique(np.linspace(0, count - 1, num).astype(int))


def evaluate_retrieval(context: EvalContext) -> dict[str, float]:
    """Recall@k both ways for every pair of the eval set's modalities (i2t, a2t, i2a...); with
    several captions per example, text queries and candidates are all of them. Examples whose
    captions are word for word the same are right answers for each other in every pair (an
    image and a sound described identically are as interchangeable as the two captions)."""
    present = [m for m in conventions.MODALITIES if m in context.embeddings]
    results = {"num_candidates": float(len(next(iter(context.embeddings.values()))))}
    groups = metrics.caption_groups(context.tokens)
    for i, first in enumerate(present):
        for second in present[i + 1:]:
            pair = (first, second)
            if second == "text" and context.all_text_embeddings is not None:
                results.update(metrics.retrieval_metrics(
                    context.embeddings[first], context.all_text_embeddings,
                    text_image=context.all_text_image, pair=pair))
                results["num_texts"] = float(len(context.all_text_image))
            else:
                results.update(metrics.retrieval_metrics(
                    context.embeddings[first], context.embeddings[second], pair=pair,
                    same_caption=groups))
    if "image" in context.embeddings and "text" in context.embeddings:  # the report's figures
        similarity = (
            metrics.l2_normalize(context.image_embeddings)
            @ metrics.l2_normalize(context.text_embeddings).T
        )
        queries = example_queries(len(similarity))
        context.details["retrieval"] = {
            "similarity": similarity[:32, :32], "queries": queries,
            "i2t_top5": np.argsort(-similarity[queries], axis=1, kind="stable")[:, :5],
            "t2i_top5": np.argsort(-similarity.T[queries], axis=1, kind="stable")[:, :5]}
    return results


def class_embeddings(context: EvalContext, class_names=None) -> np.ndarray:
    """One embedding per class: the normalised mean over prompt templates (CLIP's ensembling)."""
    class_names = context.class_names if class_names is None else class_names
    templates = list(context.prompt_templates) or ["{}"]
    prompts = [template.format(name) for name in class_names for template in templates]
    embeddings = metrics.l2_normalize(context.encode_texts(prompts))
    return metrics.l2_normalize(
        embeddings.reshape(len(class_names), len(templates), -1).mean(axis=1)
    )


def evaluate_zeroshot(context: EvalContext) -> dict[str, float]:
    """Each classified modality's examples (images, clips) by their nearest class prompt
    embedding; metrics prefixed by the modality (conventions.METRIC_PREFIXES)."""
    names, labels = list(context.class_names), context.labels
    if context.present_classes_only:  # classify among those classes, labels renumbered
        present = np.unique(labels)
        names, labels = [names[c] for c in present], np.searchsorted(present, labels)
    classes = class_embeddings(context, names)
    results = {}
    for modality in context.classified:
        prefix = conventions.METRIC_PREFIXES[modality]
        embeddings = context.embeddings[modality]
        predicted = np.argmax(metrics.l2_normalize(embeddings) @ classes.T, axis=1)
        context.details[f"{prefix}zeroshot"] = {
            "class_names": names, "class_embeddings": classes,
            "per_class_accuracy": [float((predicted[labels == c] == c).mean())
                                   if (labels == c).any() else float("nan")
                                   for c in range(len(names))]}
        results.update({prefix + k: v for k, v in metrics.zeroshot_metrics(embeddings, classes,
                                                                   labels).items()})
    return results


def evaluate_captioning(context: EvalContext) -> dict[str, float]:
    """Greedy (or beam) captions against the references (token accuracy, exact match, BLEU-4,
    CIDEr), and the same for the constant-caption baseline: the eval split's most frequent
    caption predicted for every image."""
    references, eot_id = context.tokens, context.tokenizer.eot_id
    accuracy, exact = metrics.caption_token_accuracy(
        context.extra["caption_tokens"], references, eot_id
    )
    rows, counts = np.unique(references, axis=0, return_counts=True)
    constant = np.broadcast_to(rows[counts.argmax()], references.shape)
    baseline, baseline_exact = metrics.caption_token_accuracy(constant, references, eot_id)
    decode = context.tokenizer.decode
    reference_texts = [[decode(row)] for row in references]
    generated_texts = [decode(row) for row in context.extra["caption_tokens"]]
    constant_texts = [decode(rows[counts.argmax()])] * len(references)
    context.details["captioning"] = {"examples": [
        (reference_texts[i][0], generated_texts[i]) for i in example_queries(len(references), 8)]}
    return {"caption_token_accuracy": accuracy, "caption_exact_match": exact,
            "caption_bleu4": caption_metrics.bleu(generated_texts, reference_texts)[3],
            "caption_cider": caption_metrics.cider(generated_texts, reference_texts),
            "caption_baseline_token_accuracy": baseline,
            "caption_baseline_exact_match": baseline_exact,
            "caption_baseline_bleu4": caption_metrics.bleu(constant_texts, reference_texts)[3],
            "caption_baseline_cider": caption_metrics.cider(constant_texts, reference_texts)}


def evaluate_itm(context: EvalContext) -> dict[str, float]:
    """Image-text matching accuracy: each image with its caption (should say match) and with a
    differing caption (should say no match), the next one in the batch or the hardest one."""
    extra = context.extra
    has_negative = extra["itm_has_negative"].astype(bool)
    positives_right = extra["itm_positive"].argmax(1) == 1
    results = {}
    for name, key in (("itm_accuracy", "itm_negative"), ("itm_hard_accuracy", "itm_hard_negative")):
        negatives_right = (extra[key].argmax(1) == 0)[has_negative]
        results[name] = float((positives_right.sum() + negatives_right.sum())
                              / (len(positives_right) + len(negatives_right)))
    return results


def evaluate_classification(context: EvalContext) -> dict[str, float]:
    """Accuracy of a classification head (fine-tuned fusion model) on the eval labels."""
    return {"classification_accuracy":
            float((context.extra["class_logits"].argmax(1) == context.labels).mean())}


def evaluate_linear_probe(context: EvalContext) -> dict[str, float]:
    """A linear probe per classified modality, trained on the probe data's embeddings of it."""
    results = {}
    for modality in context.classified:
        prefix = conventions.METRIC_PREFIXES[modality]
        probe = metrics.linear_probe_metrics(context.extra[f"probe_{modality}"],
                                     context.extra["probe_labels"],
                                     context.embeddings[modality], context.labels)
        results.update({prefix + k: v for k, v in probe.items()})
    return results


def matching_logits(model, batch, encoded) -> dict:
    """On the device: ITM logits of each eval image with its own caption, with the next
    example's caption that differs from it, and with the most similar differing caption."""
    import jax.numpy as jnp

    tokens, valid = batch["tokens"], batch["valid"].astype(bool)
    excluded = contrastive.same_caption(tokens) | ~valid[None, :]
    size = tokens.shape[0]
    # "Next differing": the first allowed column after the row's own, cyclically.
    offsets = (jnp.arange(size)[None, :] - jnp.arange(size)[:, None]) % size
    next_other = jnp.argmin(jnp.where(excluded, size, offsets), axis=1)
    similarity = model.memory_embedding(encoded) @ contrastive.l2_normalize(encoded["text"]).T
    hardest = jnp.argmax(jnp.where(excluded, -jnp.inf, similarity), axis=1)
    return {"itm_positive": model.match_logits(batch),
            "itm_negative": model.match_logits(batch, tokens[next_other]),
            "itm_hard_negative": model.match_logits(batch, tokens[hardest]),
            "itm_has_negative": ~jnp.all(excluded, axis=1)}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What device outputs read from the run: its tokenizer and caption beam size."""

    tokenizer: object
    beam_size: int = 1
    # Text-to-image: config.generation (decoding, the guidance scales to sample at), the judge.
    generation: dict = dataclasses.field(default_factory=dict)
    judge_workdir: str | None = None

    @classmethod
    def from_config(cls, config, tokenizer) -> EvalSettings:
        return cls(tokenizer=tokenizer, beam_size=int(config.caption.beam_size),
                   generation=config.generation.to_dict(), judge_workdir=config.judge.workdir)


@dataclasses.dataclass(frozen=True)
class Evaluator:
    compute: Callable[[EvalContext], dict[str, float]]
    # Model methods its device outputs call.
    model_methods: tuple[str, ...] = ()
    # What the eval data must have: "labels" (and, with needs_probe, the probe data too),
    # "class_names".
    data_needs: tuple[str, ...] = ()
    # On the device, per eval batch: (model, batch, encoded, EvalSettings) -> row-aligned arrays
    # for context.extra; `encoded` holds the batch's "image" and "text" embeddings.
    device_outputs: Callable | None = None
    # Needs embeddings and labels of training examples (context.extra["probe_<modality>"],
    # ["probe_labels"]).
    needs_probe: bool = False
    # The metrics it may report (logged as eval/<dataset>/<metric>).
    metrics: tuple[str, ...] = ()
    # Config fields (dotted) naming folders it reads, which must be set and exist, and the fix.
    config_paths: dict[str, str] = dataclasses.field(default_factory=dict)
    # The only datasets it can evaluate (TFDS names), for an evaluator written for one; empty:
    # any. The preflight refuses the others.
    datasets: tuple[str, ...] = ()


RECALL = tuple(f"{a}2{b}_recall@{k}" for a in conventions.INITIALS.values()
               for b in conventions.INITIALS.values() if a != b for k in (1, 5, 10))


def per_modality(*names: str) -> tuple[str, ...]:
    """Metric names as each classified modality reports them (zeroshot_top1,
    audio_zeroshot_top1)."""
    return tuple(prefix + name for prefix in conventions.METRIC_PREFIXES.values()
                 for name in names)


CAPTIONING = tuple(f"caption{kind}_{m}" for kind in ("", "_baseline")
                   for m in ("token_accuracy", "exact_match", "bleu4", "cider"))


EVALUATORS: dict[str, Evaluator] = {
    "retrieval": Evaluator(evaluate_retrieval, metrics=(
        "num_candidates", "num_texts", "caption_chance@1") + RECALL),
    "zeroshot": Evaluator(evaluate_zeroshot, data_needs=("class_names",), metrics=per_modality(
        "zeroshot_top1", "zeroshot_mean_per_class", "zeroshot_top5")),
    "captioning": Evaluator(
        evaluate_captioning, model_methods=("start_decoding", "decode_step"), metrics=CAPTIONING,
        device_outputs=lambda model, batch, encoded, settings: {"caption_tokens": decoding.caption(
            model, batch[conventions.BATCH_KEYS[model.captioned]], settings.tokenizer,
            settings.beam_size)}),
    "itm": Evaluator(evaluate_itm, model_methods=("match_logits",),
                     metrics=("itm_accuracy", "itm_hard_accuracy"),
                     device_outputs=lambda model, batch, encoded, settings: matching_logits(
                         model, batch, encoded)),
    "classification": Evaluator(
        evaluate_classification, model_methods=("classify",), data_needs=("labels",),
        metrics=("classification_accuracy",),
        device_outputs=lambda model, batch, encoded, settings: {
            "class_logits": model.classify(batch)}),
    "reconstruction": Evaluator(
        lambda context: image_tokenizer.reconstruction_metrics(context.extra),
        model_methods=("tokenize", "detokenize"),
        metrics=("reconstruction_mse", "reconstruction_psnr", "code_perplexity", "codes_used"),
        device_outputs=lambda model, batch, encoded, settings:
            image_tokenizer.reconstruction_errors(model, batch["image"])),
    "generation": Evaluator(
        judge.evaluate_generation, model_methods=("generate",), metrics=judge.metric_names(),
        datasets=("mmjax_shapes",),
        config_paths={"judge.workdir": "fit a judge on real images (python -m "
                      "mmjax.tools.fit_judge --clip_workdir=A_CLIP_RUN --out=DIR) and give DIR"},
        device_outputs=lambda model, batch, encoded, settings:
            text_to_image.generation_outputs(model, batch, settings)),
    "linear_probe": Evaluator(evaluate_linear_probe, data_needs=("labels",), needs_probe=True,
                              metrics=per_modality("linear_probe_top1", "linear_probe_top5",
                                                   "linear_probe_mean_per_class",
                                                   "linear_probe_c")),
}
