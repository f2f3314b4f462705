"""Judging generated images with models trained on real images only.

A judge is an attribute classifier for mmjax_shapes images (a small ViT with a head for each of
colour, shape, count, size and position, trained on real images of every colour-shape pair,
rendered under a seed of their own, and their captions) and a CLIP trained by mmjax with another
seed, both fitted by `python -m mmjax.tools.fit_judge`. It is never used for guidance or
reranking: the generator does not see it.

For a set of images and the captions they were made from it reports, per attribute, the share
whose attribute the classifier reads as the caption says, separately for captions whose
colour-shape pair occurs in the judged model's training images (`seen`) and for those whose
pair never does (`held_out`); colour-shape is right when colour and shape both are. CLIP
R-precision ranks each image's caption among 99 other captions of the eval set by the CLIP's
similarity (chance 0.01). The Fréchet distance and KID compare the classifier's features of the
images with those of real training images; they are not Inception FID. The same numbers for
real test images (the real-vs-real baseline), tokenizer reconstructions, unconditional samples
and the nearest training image bound them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax import inference, paths
from mmjax.evaluation import metrics
from mmjax.models import layers
from mmjax.models.towers.image_tower import VisionTransformer, normalize_pixels
from mmjax.training import checkpoint

ATTRIBUTES = ("color", "shape", "count", "size", "position")
JUDGED = ("color_shape", "count", "size", "position")
R_PRECISION_CANDIDATES = 100
NORMALIZATION = "minus_one_one"  # the attribute classifier's pixels
# The attribute classifier's ViT, and what judges written before judge.json recorded one are.
CLASSIFIER_VARIANT = "mu/4"


def caption_attributes(caption: str) -> dict[str, str]:
    """mmjax_shapes' caption grammar, "{count} {size} {colour} {shape} {position}" ("two large
    red circles on the left"), read back into attributes (shapes singular)."""
    words = caption.split()
    if len(words) < 5:
        raise ValueError(f"{caption!r} is not an mmjax_shapes caption "
                         "('{count} {size} {colour} {shape} {position}').")
    shape = words[3]
    if words[0] != "one":  # plurals: circles, crosses
        shape = shape[:-2] if shape.endswith("sses") else shape[:-1]
    return {"count": words[0], "size": words[1], "color": words[2], "shape": shape,
            "position": " ".join(words[4:])}


class AttributeClassifier(nnx.Module):
    """A small ViT with a head per attribute, trained on real images only: each attribute is
    read on its own (colour apart from shape), so a colour-shape pair training never showed is
    read from a colour and a shape it did."""

    def __init__(self, image_size: int, num_classes: dict[str, int], *, rngs: nnx.Rngs,
                 variant: str = CLASSIFIER_VARIANT):

        self.tower = VisionTransformer(image_size=image_size, variant=variant, pooling="gap",
                                       rngs=rngs)
        self.tower.input_normalization = NORMALIZATION
        self.heads = nnx.Dict({a: layers.Dense(self.tower.width, k, ("embed", None), rngs=rngs)
                               for a, k in num_classes.items()})

    def __call__(self, images):
        """(pooled features [B, width], logits per attribute)."""
        pooled, _ = self.tower(images)
        return pooled, {a: head(pooled) for a, head in self.heads.items()}


def blur(x: jax.Array, weight) -> jax.Array:
    """Float images [B, H, W, C] blurred by the kernel [w, 1 - 2w, w] along height and width
    (edges wrap, so the sum is kept); `weight` a number or one per image, shaped [B, 1, 1, 1]."""
    for axis in (1, 2):
        x = weight * (jnp.roll(x, 1, axis) + jnp.roll(x, -1, axis)) + (1 - 2 * weight) * x
    return x


def degraded(images: jax.Array, rng: jax.Array, max_blur: float) -> jax.Array:
    """uint8 images -> normalised ones (NORMALIZATION), half of them blurred (`blur`) with w
    uniform in [0, max_blur]: a judge that learns from these reads a slightly soft shape as the
    shape it is, as people do, where one that saw only sharp images calls it something else."""

    pick, amount = jax.random.split(rng)
    w = jax.random.uniform(amount, (len(images), 1, 1, 1), maxval=max_blur)
    w = w * jax.random.bernoulli(pick, 0.5, (len(images), 1, 1, 1))
    return blur(normalize_pixels(images, NORMALIZATION), w)


def train_classifier(images: np.ndarray, labels: dict[str, np.ndarray],
                     num_classes: dict[str, int], *, steps: int = 1500, batch_size: int = 128,
                     learning_rate: float = 2e-3, max_blur: float = 0.0, seed: int = 0,
                     variant: str = CLASSIFIER_VARIANT) -> AttributeClassifier:
    """The summed cross-entropy of every attribute's head, AdamW, random batches; with
    `max_blur`, half of each batch blurred by a random amount up to it (`degraded`)."""
    import optax

    model = AttributeClassifier(images.shape[1], num_classes, rngs=nnx.Rngs(seed),
                                variant=variant)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10),
                                                  steps)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.05), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch_images, batch_labels, rng):
        if max_blur:
            batch_images = degraded(batch_images, rng, max_blur)

        def loss_fn(model):
            _, logits = model(batch_images)
            return sum(optax.softmax_cross_entropy_with_integer_labels(
                logits[a], batch_labels[a]).mean() for a in logits)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng, blur_key = np.random.default_rng(seed), jax.random.key(seed)
    for i in range(steps):
        rows = rng.integers(0, len(images), batch_size)
        step(model, optimizer, jnp.asarray(images[rows]),
             {a: jnp.asarray(v[rows]) for a, v in labels.items()},
             jax.random.fold_in(blur_key, i))
    return model


def attribute_labels(captions: list[str]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Each attribute's class index per caption, and the class names (sorted)."""
    attributes = [caption_attributes(c) for c in captions]
    names = {a: sorted({x[a] for x in attributes}) for a in ATTRIBUTES}
    return ({a: np.asarray([names[a].index(x[a]) for x in attributes]) for a in ATTRIBUTES},
            names)


def fit(images: np.ndarray, captions: list[str], *, bank_images: np.ndarray,
        bank_captions: list[str], steps: int = 1500, check_share: float = 0.1,
        max_blur: float = 1 / 3, variant: str = CLASSIFIER_VARIANT
        ) -> tuple[dict, dict]:
    """(arrays to save, each attribute's accuracy on the `check_share` of the images kept out of
    the classifier's training). The classifier learns from `images`, which should show every
    colour-shape pair (half of each batch blurred by up to `max_blur`: `degraded`); the bank
    (the judged model's training images) gives the nearest-image baseline and which pairs count
    as seen."""

    labels, names = attribute_labels(captions)
    held = np.arange(len(images)) % int(round(1 / check_share)) == 0
    model = train_classifier(images[~held], {a: v[~held] for a, v in labels.items()},
                             {a: len(n) for a, n in names.items()}, steps=steps,
                             max_blur=max_blur, variant=variant)
    _, logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images[held]))
    accuracy = {a: float((np.asarray(logits[a]).argmax(1) == labels[a][held]).mean())
                for a in ATTRIBUTES}
    arrays = {f"classifier/{n}": np.asarray(v) for n, v in
              checkpoint.flat_params(nnx.split(model, nnx.Param)[1]).items()}
    arrays.update({f"{a}/names": np.asarray(n) for a, n in names.items()})
    arrays.update(bank_images=bank_images, bank_captions=np.asarray(bank_captions))
    return arrays, accuracy


def save(judge_dir: str, arrays: dict, *, clip_workdir: str, data: str, classifier_data: str,
         check_accuracy: dict, classifier_variant: str = CLASSIFIER_VARIANT) -> None:
    """Writes what `fit` gave as JUDGE_DIR/judge.npz and JUDGE_DIR/judge.json."""
    paths.makedirs(judge_dir)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    paths.write_bytes(paths.join(judge_dir, "judge.npz"), buffer.getvalue())
    paths.write_text(paths.join(judge_dir, "judge.json"), json.dumps({
        "clip_workdir": paths.absolute(clip_workdir), "data": data,
        "examples": len(arrays["bank_images"]), "classifier_data": classifier_data,
        "classifier_variant": classifier_variant,
        "accuracy_on_kept_out_real_images": check_accuracy}, indent=2))


@dataclasses.dataclass
class Judge:
    """The attribute classifier, the CLIP for R-precision, and the real training images."""

    classifier: AttributeClassifier
    names: dict[str, list[str]]
    clip: object  # mmjax.inference.InferenceModel
    seen_pairs: frozenset  # colour-shape pairs of the training images
    bank_images: np.ndarray  # real training images and captions: the nearest baseline
    bank_captions: list[str]

    @functools.cached_property
    def _classify(self):
        return nnx.jit(lambda model, images: model(images))

    def classify(self, images: np.ndarray, chunk: int = 256):
        """(the classifier's features, each attribute's predicted class name) per image."""
        features, read = [], {a: [] for a in self.names}
        for i in range(0, len(images), chunk):
            pooled, logits = self._classify(self.classifier, jnp.asarray(images[i:i + chunk]))
            features.append(np.asarray(pooled))
            for a in self.names:
                read[a].append(np.asarray(self.names[a])[np.asarray(logits[a]).argmax(1)])
        return np.concatenate(features), {a: np.concatenate(v) for a, v in read.items()}

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.classify(images)[0]

    def nearest_training_images(self, captions: list[str], count: int = 1) -> np.ndarray:
        """For each caption, the training image whose caption has the most words in the same
        places (the same caption when there is one); with count > 1, [N, count, ...]: the
        first `count` in that order, as candidates to choose from."""
        width = 8
        pad = lambda c: (c.split() + [""] * width)[:width]
        bank = np.asarray([pad(c) for c in self.bank_captions])
        rows = [np.argsort(-(bank == np.asarray(pad(c))[None]).sum(1), kind="stable")[:count]
                for c in captions]
        nearest = self.bank_images[np.asarray(rows, int)]
        return nearest[:, 0] if count == 1 else nearest


@functools.lru_cache(maxsize=2)
def load(judge_dir: str) -> Judge:
    """A judge written by mmjax.tools.fit_judge: judge.json (the CLIP's workdir) and judge.npz."""

    spec = json.loads(paths.read_text(paths.join(judge_dir, "judge.json")))
    arrays = dict(np.load(io.BytesIO(paths.read_bytes(paths.join(judge_dir, "judge.npz")))))
    names = {a: [str(n) for n in arrays[f"{a}/names"]] for a in ATTRIBUTES}
    images = arrays["bank_images"]
    classifier = AttributeClassifier(images.shape[1], {a: len(n) for a, n in names.items()},
                                     rngs=nnx.Rngs(0), variant=spec.get("classifier_variant",
                                                                        CLASSIFIER_VARIANT))
    graphdef, params = nnx.split(classifier, nnx.Param)
    loaded = {n.removeprefix("classifier/"): v for n, v in arrays.items()
              if n.startswith("classifier/")}
    params = checkpoint.merge_params(params, loaded, (), judge_dir, require_all_used=True)
    nnx.update(classifier, params)
    captions = [str(c) for c in arrays["bank_captions"]]
    seen = frozenset((caption_attributes(c)["color"], caption_attributes(c)["shape"])
                     for c in captions)
    return Judge(classifier, names, inference.load(spec["clip_workdir"]), seen, images, captions)


def blurred(images: np.ndarray, weight: float) -> np.ndarray:
    """uint8 images `blur`red by the kernel [w, 1 - 2w, w], rounded back to uint8."""
    out = blur(jnp.asarray(images, jnp.float32), weight)
    return np.asarray(jnp.clip(jnp.round(out), 0, 255)).astype(np.uint8)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), the square root through the
    eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric, so no complex parts)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean = np.sum((a.mean(0) - b.mean(0)) ** 2)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(mean + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0,
                                                                              None)).sum())


def kernel_inception_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, as KID defines it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1.0) ** 3
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1))
                 + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2 * kab.mean())


def r_precision(image_features: np.ndarray, text_features: np.ndarray, captions: list[str],
                seed: int = 0) -> float:
    """The share of images whose own caption the judge ranks first among it and 99 others drawn
    from `captions` (differing from it word for word)."""

    rng = np.random.default_rng(seed)
    images, texts = metrics.l2_normalize(image_features), metrics.l2_normalize(text_features)
    captions = np.asarray(captions)
    hits = 0
    for i in range(len(images)):
        others = np.nonzero(captions != captions[i])[0]
        drawn = rng.choice(others, min(R_PRECISION_CANDIDATES - 1, len(others)), replace=False)
        scores = texts[np.concatenate([[i], drawn])] @ images[i]
        hits += int(scores[0] > scores[1:].max())
    return hits / len(images)


def read_as_captioned(judge: Judge, images: np.ndarray, captions: list[str]):
    """(the classifier's features, per attribute and for colour-shape (both right) whether it
    reads each image as its caption says)."""
    features, read = judge.classify(images)
    wanted = [caption_attributes(c) for c in captions]
    right = {a: read[a] == np.asarray([w[a] for w in wanted]) for a in ATTRIBUTES}
    right["color_shape"] = right["color"] & right["shape"]
    return features, right


def judge_images(judge: Judge, images: np.ndarray, captions: list[str],
                 reference_features: np.ndarray, text_features: np.ndarray) -> dict[str, float]:
    """Attribute accuracy (seen / held-out pairs), R-precision, and the Fréchet distance and KID
    of the judge's features of `images` (made for `captions`) from `reference_features` (real
    training images': real test images against them are the real-vs-real baseline)."""
    features, right = read_as_captioned(judge, images, captions)
    held_out = np.asarray([(w["color"], w["shape"]) not in judge.seen_pairs
                           for w in map(caption_attributes, captions)])
    results = {}
    for split, rows in (("seen", ~held_out), ("held_out", held_out)):
        for attribute in JUDGED:
            results[f"{attribute}_{split}"] = (float(right[attribute][rows].mean()) if rows.any()
                                               else float("nan"))
    results["r_precision"] = r_precision(judge.clip.encode_image(images), text_features,
                                         captions)
    results["frechet_distance"] = frechet_distance(features, reference_features)
    results["kid"] = kernel_inception_distance(features, reference_features)
    return results


MEASURES = tuple(f"{a}_{split}" for split in ("seen", "held_out") for a in JUDGED) + (
    "r_precision", "frechet_distance", "kid")


def metric_names(guidance_scales=(0, 1, 2, 3, 4)) -> tuple[str, ...]:
    """The generation evaluator's metrics: each measure of each source."""
    sources = ("real", "reconstructed", "nearest_training", "reranked_nearest_training",
               *(source_name(s, chosen) for s in guidance_scales for chosen in (False, True)))
    return tuple(f"{source}_{m}" for source in sources for m in MEASURES)


def source_name(guidance_scale: float, chosen: bool = False) -> str:
    """What the report calls samples at a guidance scale (0: the unconditional model): the
    first candidate, or (`chosen`) the best of them by the reranker (mmjax/inference.py)."""
    if guidance_scale == 0:
        return "reranked_unconditional" if chosen else "unconditional"
    return f"{'reranked' if chosen else 'generated'}_g{guidance_scale:g}"


def evaluate_generation(context) -> dict[str, float]:
    """The generation evaluator: the eval set's captions were turned into images at each of
    the run's guidance scales (context.extra, from text_to_image.generation_outputs); the judge
    at context.settings.judge_workdir scores the first candidate (and, with more, the
    reranker's choice) beside the real images, the tokenizer's reconstructions and the nearest
    training images."""
    settings = context.settings
    judge = load(settings.judge_workdir)
    captions = [context.tokenizer.decode(row) for row in context.tokens]
    text_features = judge.clip.encode_text(captions)
    drawn = np.random.default_rng(0).choice(len(judge.bank_images), min(
        len(captions), len(judge.bank_images)), replace=False)
    reference = judge.features(judge.bank_images[np.sort(drawn)])
    sources = {"real": context.extra["real_images"],
               "reconstructed": context.extra["reconstructed_images"],
               "nearest_training": judge.nearest_training_images(captions)}
    generation = settings.generation
    reranker = (inference.load_reranker(generation["rerank_with"])
                if generation.get("candidates", 1) > 1 else None)
    if reranker is not None:  # the baseline chosen as the samples are
        chooser_texts = reranker.encode_text(captions)
        choose = lambda images: inference.best_of(reranker, images, captions, chooser_texts)[0]
        sources["reranked_nearest_training"] = choose(
            judge.nearest_training_images(captions, generation["candidates"]))
    for scale in generation["guidance_scales"]:
        candidates = context.extra[f"generated_images@{scale:g}"]
        sources[source_name(scale)] = candidates[:, 0]
        if reranker is not None:
            sources[source_name(scale, True)] = choose(candidates)
    results = {}
    for source, images in sources.items():
        for name, value in judge_images(judge, images, captions, reference,
                                        text_features).items():
            results[f"{source}_{name}"] = value
    context.details["generation"] = {"captions": captions[:16],
                                     "images": {s: i[:16] for s, i in sources.items()}}
    return results
