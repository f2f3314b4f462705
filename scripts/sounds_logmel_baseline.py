"""The bar an audio model must clear on mmjax_sounds: logistic regression on each
clip's mean log-mel spectrogram (80 numbers), fitted on the training clips' waveform-register
labels with mmjax's linear probe (L-BFGS, C swept on held-out training clips), tested on the
test clips, separately for seen and held-out waveform-register pairs.

    python scripts/sounds_logmel_baseline.py --num_train=4000 --num_test=500 --out=/tmp/baseline

The clips are synthesised in memory (input_pipeline/generated/sounds.py, the same as the TFDS build)
and
go through the audio front end (decode_wav|log_mel). Prints a table and writes OUT/results.json.
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

# Run as `python scripts/NAME.py` from anywhere: the project is found beside this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline.generated import builder  # noqa: E402
from mmjax.evaluation import metrics  # noqa: E402

flags.DEFINE_integer("num_train", 4000, "Training clips (the default build's).")
flags.DEFINE_integer("num_test", 500, "Test clips (the default build's).")
flags.DEFINE_string("out", "/tmp/sounds_logmel_baseline", "Where results.json goes.")
FLAGS = flags.FLAGS


def mean_log_mel(split: str, count: int):
    """[count, 80] mean log-mel per clip, labels, held-out flags."""
    import tensorflow as tf

    from input_pipeline import audio
    from input_pipeline.generated import sounds

    chain = audio.parse_ops("decode_wav|log_mel", rate=sounds.RATE)
    features, labels, unseen = [], [], []
    for index in range(count):
        example = sounds.render_example(split, index)
        wav = builder.encode_wav(example["waveform"])
        spectrogram = chain(tf.constant(wav), tf.constant([0, index]))["spectrogram"]
        features.append(tf.reduce_mean(spectrogram, axis=0).numpy())
        labels.append(example["label"])
        unseen.append(example["unseen_combination"])
    return np.stack(features), np.asarray(labels), np.asarray(unseen)


def main(argv):
    del argv
    from input_pipeline.generated import sounds

    started = time.time()
    train_x, train_y, _ = mean_log_mel("train", FLAGS.num_train)
    test_x, test_y, test_unseen = mean_log_mel("test", FLAGS.num_test)
    rows = {}
    for name, rows_of in (("all test clips", np.ones_like(test_unseen)),
                          ("seen pairs", ~test_unseen), ("held-out pairs", test_unseen)):
        chosen = rows_of.astype(bool)
        result = metrics.linear_probe_metrics(train_x, train_y, test_x[chosen],
                                                  test_y[chosen])
        rows[name] = {"clips": int(chosen.sum()), "top1": result["linear_probe_top1"],
                      "C": result["linear_probe_c"]}
    chance = 1 / len(sounds.CLASS_NAMES)
    print(f"| test clips | count | top-1 (chance {chance:.3f}) |\n| --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['clips']} | {row['top1']:.3f} |")
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
        json.dump({"num_train": FLAGS.num_train, "num_test": FLAGS.num_test, "chance": chance,
                   "rows": rows, "seconds": time.time() - started}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
