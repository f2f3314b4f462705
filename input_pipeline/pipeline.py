"""What the trainer asks of the input side: this process's train batches and the eval set."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from input_pipeline import audio, datasets, mixture, preprocess, prompts, video
from mmjax import conventions

# TensorFlow must not take GPU or TPU memory that JAX needs.
tf.config.set_visible_devices([], "GPU")


def _data_dir(config) -> str | None:
    return config.data.get("tfds_data_dir") or None


def _image_media(config, role: str) -> preprocess.Media:
    return preprocess.image_media(config.data[f"{role}_preprocess"],
                                  image_size=config.data.image_size,
                                  normalization=config.data.normalization)


def _audio_media(config, role: str) -> preprocess.Media:
    settings = config.data.audio
    return audio.spectrogram_media(
        settings[f"{role}_preprocess"], rate=settings.rate, frames=settings.frames,
        hop=settings.hop, frame_length=settings.frame_length, num_mels=settings.num_mels)


def _video_media(config, role: str) -> preprocess.Media:
    settings = config.data.video
    return video.clip_media(settings[f"{role}_preprocess"], frames=settings.frames,
                            stride=settings.stride, image_size=config.data.image_size)


# How each non-text modality's batch entry is made for the train or eval role.
MEDIA = {"image": _image_media, "audio": _audio_media, "video": _video_media}


def media(config, role: str) -> dict[str, preprocess.Media]:
    """The batch entries the model's non-text towers take, by batch key."""
    return {conventions.BATCH_KEYS[m]: MEDIA[m](config, role)
            for m in conventions.model_modalities(config.model) if m in MEDIA}


class TooManyBadExamples(RuntimeError):
    pass


class TrainBatches:
    """This process's train batches from a global input position on, counting bad examples.

    `position` is the global position of the next batch (saved with checkpoints: a resumed run
    continues with exactly the next batch, even with another global batch size). The pipeline
    skips bad records (see datasets.py); `skipped` counts them on this process and
    `skipped_records` names the most recent ones.
    """

    def __init__(self, config, tokenizer, *, start_position: int):
        self.source = mixture.open_spec(config.data.train, "train", _data_dir(config))
        self.seed = config.seed
        self.global_batch_size = config.batch_size
        self.max_attempts = datasets.MAX_ATTEMPTS
        dataset = datasets.train_dataset(
            self.source, tokenizer, global_batch_size=config.batch_size,
            image_size=config.data.image_size, seed=config.seed, start_position=start_position,
            process_index=jax.process_index(), process_count=jax.process_count(),
            max_attempts=self.max_attempts, media=media(config, "train"))
        self._iterator = dataset.as_numpy_iterator()
        self.position = start_position
        self.skipped = 0
        self.skipped_records: list[int] = []

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.position += self.global_batch_size
        attempts, skipped = batch.pop("attempt"), batch.pop("skipped")
        self.skipped += int(attempts.sum())
        bad = skipped[skipped >= 0]
        self.skipped_records = (self.skipped_records + [int(i) for i in bad])[-20:]
        if (attempts >= self.max_attempts).any():
            raise TooManyBadExamples(
                f"All {self.max_attempts} records tried for one batch position were bad "
                f"({self.describe(skipped[attempts >= self.max_attempts][0][:3])}, ...): the "
                f"data at {self.source.spec.name} is mostly unreadable. Check it (for shards, "
                "run make_shards again from the original files).")
        return batch

    def source_counts(self) -> dict[str, int]:
        """A mixture's examples so far from each source (the same on every process); {} for
        one source."""
        if not isinstance(self.source, mixture.MixtureSource):
            return {}
        return self.source.counts_before(self.position, self.seed)

    def describe(self, records) -> str:
        return ", ".join(self.source.describe(int(i)) for i in records)

    def check_bad_fraction(self, skipped: int, seen: int, max_fraction: float) -> None:
        """Stops the run when more than `max_fraction` of the examples read were bad; waits for
        enough examples (10 / max_fraction) that a few early bad ones do not stop it."""
        if max_fraction is None or seen < 10 / max(max_fraction, 1e-9):
            return
        if skipped > max_fraction * seen:
            raise TooManyBadExamples(
                f"{skipped} of {seen} examples read from {self.source.spec.name} were bad "
                f"({skipped / seen:.2%} > config.data.max_bad_fraction = {max_fraction:.2%}). "
                f"Recent ones on this process: "
                f"{self.describe(list(dict.fromkeys(reversed(self.skipped_records)))[:5])}. Fix "
                "or drop them (the log's 'Ignoring error' lines give the reason), or raise "
                "config.data.max_bad_fraction.")


def train_batches(config, tokenizer, *, start_position: int = 0) -> TrainBatches:
    return TrainBatches(config, tokenizer, start_position=start_position)


@dataclasses.dataclass
class EvalData:
    name: str
    dataset: tf.data.Dataset
    class_names: tuple[str, ...]
    prompt_templates: tuple[str, ...]
    num_examples: int
    # Labelled training examples, for evaluators that need them (the linear probe).
    probe: EvalData | None = None
    # Zero-shot among the classes present in the split only (ImageNet-A, -R).
    present_classes_only: bool = False
    # The dataset's name in clip_benchmark-style results ("imagenet1k", "mscoco_captions").
    benchmark_name: str = ""

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset.as_numpy_iterator()


def _split(config, tokenizer, spec: str, default_split: str, *, global_batch_size: int,
           max_examples: int | None, captions_per_image: int, name: str | None,
           where: str | None = None) -> EvalData:
    parsed = datasets.parse_spec(spec, default_split)
    source = datasets.open_source(parsed, _data_dir(config), where)
    if global_batch_size % jax.process_count():
        raise ValueError(f"The eval batch of {global_batch_size} is not divisible by the "
                         f"{jax.process_count()} processes.")
    dataset = datasets.eval_dataset(
        source, tokenizer, global_batch_size=global_batch_size, image_size=config.data.image_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        max_examples=max_examples, captions_per_image=captions_per_image,
        media=media(config, "eval"))
    return EvalData(name or parsed.short_name, dataset.cache(), source.adapter.class_names,
                    source.adapter.prompt_templates,
                    min(source.num_examples, max_examples or source.num_examples),
                    present_classes_only=source.adapter.present_classes_only,
                    benchmark_name=(parsed.kind == "tfds" and prompts.zeroshot(
                        parsed.name).clip_benchmark_name) or parsed.short_name)


def eval_data(config, tokenizer, eval_set, *, global_batch_size: int,
              with_probe: bool = False) -> EvalData:
    """An eval set's split (mmjax.evaluation.eval_sets.EvalSet) in global batches of
    `global_batch_size` (the preflight's plan pads config.data.eval_batch_size to the batch
    devices); `with_probe` adds the first probe_examples of its probe data (the linear probe's
    training features)."""
    data = _split(config, tokenizer, eval_set.data, "test", global_batch_size=global_batch_size,
                  max_examples=eval_set.max_examples,
                  captions_per_image=eval_set.captions_per_image, name=eval_set.name,
                  where=eval_set.where)
    if with_probe:
        data.probe = _split(config, tokenizer, eval_set.probe_train, "train",
                            global_batch_size=global_batch_size,
                            max_examples=eval_set.probe_examples, captions_per_image=1,
                            name=None)
    return data


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What a sample of records spread over a dataset says of it, for the preflight
    (mmjax/preflight/data_checks.py)."""

    spec: str
    name: str  # as in metric names: eval/<name>/<metric>
    dataset: str  # DatasetSpec.dataset: for evaluators written for one dataset
    num_examples: int
    has_labels: bool
    class_names: tuple[str, ...]
    captions: tuple[str, ...]  # every caption of the sampled examples
    tokenized_with: dict | None = None  # shards tokenized at conversion: text_tokenizers.identity
    # What the sampled examples hold (conventions.MODALITIES); None when none could be read.
    modalities: tuple[str, ...] | None = None
    # The features a record stores (an eval set's `where` selects by one of them).
    features: tuple[str, ...] = ()
    # The most frames a sampled video stores (None: no videos).
    video_frames: int | None = None


def describe_data(config, spec: str, default_split: str,
                  sample_size: int = 256) -> DataFacts:
    """What the preflight checks of a dataset, from `sample_size` records spread over it: size,
    labels, class names, every caption of the sampled examples and what they hold (images,
    sounds). Bad records are left out
    (the pipeline skips them too)."""
    source = mixture.open_spec(spec, default_split, _data_dir(config))
    parsed = source.spec
    indices = np.unique(np.linspace(0, source.num_examples - 1, min(sample_size,
                                                                     source.num_examples))
                        .astype(np.int64))
    captions, labels, media, video_frames = [], [], set(), []
    for example in _decoded(source, indices):
        captions += [c.decode("utf-8") for c in example["captions"] if c.strip()]
        labels.append(int(example["label"]))
        media.update(m for m in MEDIA if m in example and len(example[m]))
        if "video" in example and len(example["video"]):
            video_frames.append(len(example["video"]))
    return DataFacts(
        spec=parsed.name if parsed.kind == "mix" else f"{parsed.kind}:{parsed.name}:{parsed.split}",
        name=parsed.short_name,
        dataset=parsed.dataset,
        num_examples=source.num_examples,
        has_labels=any(label >= 0 for label in labels),
        class_names=source.adapter.class_names, captions=tuple(captions),
        tokenized_with=source.tokenized_with,
        modalities=tuple(sorted(media)) + ("text",) if labels else None,
        # The stored features select eval examples (`where`); a mixture only trains.
        features=tuple(sorted(source.parse(tf.constant(source.fetch(indices[:1])[0])))
                       if source.num_examples and parsed.kind != "mix" else ()),
        video_frames=max(video_frames) if video_frames else None)


def _decoded(source: datasets.RecordSource, indices: np.ndarray) -> Iterator[dict]:
    """The records at `indices` decoded as the pipeline sees them, bad ones left out. One traced
    map, not an eager decode per record: eagerly, every record re-ran each op's dispatch (35 ms
    a record, seconds of every run's preflight)."""
    records = tf.constant(list(source.fetch(indices)), tf.string)

    def decode(index, record):
        example = source.decode(record, index)
        return {key: example[key] for key in ("captions", "label", *MEDIA) if key in example}

    try:
        dataset = tf.data.Dataset.from_tensor_slices((tf.constant(indices), records)).map(decode)
    except (tf.errors.OpError, ValueError):  # no record of this layout can be read
        return iter(())
    return dataset.ignore_errors().as_numpy_iterator()


def preprocess_error(config, chain: str, modality: str = "image") -> str | None:
    """What is wrong with an image, audio or video preprocessing chain, or None (for the
    preflight)."""
    try:
        if modality == "video":
            v = config.data.video
            video.clip_media(chain, frames=v.frames, stride=v.stride,
                             image_size=config.data.image_size)
            names = [op.split("(")[0].strip() for op in chain.split("|")]
            if not names or names[0] != "decode_frames":
                return f"Video chain {chain!r} must start with decode_frames"
        elif modality == "audio":
            a = config.data.audio
            audio.spectrogram_media(chain, rate=a.rate, frames=a.frames, hop=a.hop,
                                    frame_length=a.frame_length, num_mels=a.num_mels)
            if "log_mel" not in [op.split("(")[0].strip() for op in chain.split("|")]:
                return f"Audio chain {chain!r} gives no spectrogram: it needs a log_mel op"
        else:
            preprocess.parse_ops(chain, image_size=config.data.image_size,
                                 normalization=config.data.normalization)
    except (ValueError, TypeError) as e:
        return str(e)
    return None
