"""Fit a judge of generated mmjax_shapes images (mmjax/evaluation/judge.py).

    python -m input_pipeline.generated.judge_data --out=/tmp/judge_clip_data
    python main.py --config=configs/smoke.py --workdir=/tmp/judge_clip --config.seed=1 \
        --config.data.train=shards:/tmp/judge_clip_data/shards:train
    python -m mmjax.tools.fit_judge --clip_workdir=/tmp/judge_clip --out=/tmp/judge

The attribute classifier (a head each for colour, shape, count, size and position, read from the
captions) trains on --rendered real images of every colour-shape pair, held-out ones included,
drawn under a seed apart from the dataset's splits (input_pipeline.generated.shapes.render_any_pair)
and put through the CLIP run's own eval preprocessing, so at its image size: a judge must read the
pairs the judged model never saw. Half of each batch is softened by a random blur (up to
--max_blur), so that a shape drawn a little soft is still read as that shape (judge.degraded).
It is checked on a tenth of them kept out, sharp. The first
--examples images of --data (the judged model's training split) are kept as the bank the
nearest-training-image baseline draws from, and say which pairs count as seen. Writes
OUT/judge.json (the CLIP for R-precision, the check's accuracies) and OUT/judge.npz. Point a
text-to-image run at it with --config.judge.workdir=OUT. The CLIP should be trained with another
seed than anything it judges, on real images only: those the classifier learns from
(input_pipeline.generated.judge_data), so that it too knows the held-out pairs.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from input_pipeline.generated import shapes
from mmjax import inference
from mmjax.evaluation import judge, suite

flags.DEFINE_string("clip_workdir", None, "A CLIP run's workdir (trained with its own seed).")
flags.DEFINE_string("out", None, "Where the judge goes (a folder; gs:// works).")
flags.DEFINE_string("data", "tfds:mmjax_shapes:train", "The judged model's training data.")
flags.DEFINE_integer("examples", 20000, "How many of its images the bank keeps.")
flags.DEFINE_integer("rendered", 20000, "Images of every pair the classifier learns from.")
flags.DEFINE_integer("steps", 1500, "Training steps of the attribute classifier (batch 128).")
flags.DEFINE_float("max_blur", 1 / 3, "Blur half of each training batch by [w, 1 - 2w, w] "
                   "with w up to this (0: none).")
flags.DEFINE_string("classifier_variant", judge.CLASSIFIER_VARIANT,
                    "The attribute classifier's ViT (SIZE/PATCH).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: the CLIP run's).")
flags.mark_flags_as_required(["clip_workdir", "out"])
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv

    clip = inference.load(FLAGS.clip_workdir)
    config = clip.config
    if FLAGS.tfds_data_dir:
        config.data.tfds_data_dir = FLAGS.tfds_data_dir
    bank_images, bank_captions = suite.real_images(config, clip.tokenizer, FLAGS.data,
                                                   FLAGS.examples)
    if bank_images.dtype != np.uint8:
        raise ValueError(f"{FLAGS.data} gives {bank_images.dtype} images; the judge keeps uint8 "
                         "ones (an eval_preprocess that does not end with normalize).")
    images, captions = shapes.preprocessed_any_pairs(
        FLAGS.rendered, preprocess=config.data.eval_preprocess,
        image_size=config.data.image_size, normalization=config.data.normalization)
    arrays, accuracy = judge.fit(images, captions, bank_images=bank_images,
                                 bank_captions=bank_captions, steps=FLAGS.steps,
                                 max_blur=FLAGS.max_blur, variant=FLAGS.classifier_variant)
    judge.save(FLAGS.out, arrays, clip_workdir=FLAGS.clip_workdir, data=FLAGS.data,
               classifier_data=f"{FLAGS.rendered} rendered images of every colour-shape pair, "
                               f"half of each batch blurred with w up to {FLAGS.max_blur:.3g}",
               check_accuracy=accuracy, classifier_variant=FLAGS.classifier_variant)
    print("Accuracy on the rendered real images kept out of training:",
          ", ".join(f"{a} {v:.3f}" for a, v in accuracy.items()))
    print(f"Judge written to {FLAGS.out}: the classifier trained on {len(images)} rendered "
          f"images, the bank holds {len(bank_images)} of {FLAGS.data}.")


if __name__ == "__main__":
    app.run(main)

