"""What an audio-text run on mmjax_sounds gets right and wrong, from its final checkpoint:
zero-shot accuracy on seen and held-out waveform-register pairs with the most common
confusions, and audio->text recall@1 counted both ways (identical captions as right answers,
as the evaluation does, and strictly: only the clip's own caption, ties against the query).

    python scripts/sounds_run_analysis.py --workdir=/tmp/sa_final

The test clips are synthesised in memory (input_pipeline/generated/sounds.py, as the TFDS build) and
go
through the run's eval audio chain.
"""

import collections
import os
import sys

import numpy as np
from absl import app, flags

# Run as `python scripts/NAME.py` from anywhere: the project is found beside this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from input_pipeline.generated import builder  # noqa: E402
from mmjax.evaluation import metrics  # noqa: E402

flags.DEFINE_string("workdir", None, "An audio-text run's workdir.", required=True)
flags.DEFINE_integer("num_test", 500, "Test clips (the default build's).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from input_pipeline import audio
    from input_pipeline.generated import sounds
    from mmjax import conventions, inference

    model = inference.load(FLAGS.workdir)
    settings = model.config.data.audio
    chain = audio.parse_ops(settings.eval_preprocess, rate=settings.rate, hop=settings.hop,
                            frame_length=settings.frame_length, num_mels=settings.num_mels,
                            samples=conventions.audio_samples(settings.frames, settings.hop,
                                                              settings.frame_length))
    examples = [sounds.render_example("test", i) for i in range(FLAGS.num_test)]
    spectrograms = np.stack([chain(tf.constant(builder.encode_wav(e["waveform"])),
                                   tf.constant([0, i]))["spectrogram"].numpy()
                             for i, e in enumerate(examples)])
    audio_embeddings = metrics.l2_normalize(model.encode_audio(spectrograms))
    captions = [e["caption"] for e in examples]
    text_embeddings = model.encode_text(captions)
    tokens = np.asarray(model.tokenizer(captions))
    labels = np.array([e["label"] for e in examples])
    unseen = np.array([e["unseen_combination"] for e in examples])

    classes = []
    for name in sounds.CLASS_NAMES:
        prompts = metrics.l2_normalize(model.encode_text(
            [t.format(name) for t in sounds.PROMPT_TEMPLATES]))
        classes.append(prompts.mean(axis=0))
    predicted = (audio_embeddings @ metrics.l2_normalize(np.stack(classes)).T).argmax(axis=1)
    correct = predicted == labels
    print(f"zero-shot top-1: all {correct.mean():.3f}, seen pairs {correct[~unseen].mean():.3f}, "
          f"held-out pairs {correct[unseen].mean():.3f}")
    confusions = collections.Counter((sounds.CLASS_NAMES[t], sounds.CLASS_NAMES[p])
                                     for t, p in zip(labels, predicted) if t != p)
    for (truth, guess), count in confusions.most_common(8):
        print(f"  {count:4d}  {truth} -> {guess}")

    for name, chosen in (("all", np.ones_like(unseen)), ("held-out", unseen)):
        groups = metrics.caption_groups(tokens[chosen])
        grouped = metrics.retrieval_metrics(audio_embeddings[chosen], text_embeddings[chosen],
                                               pair=("audio", "text"), same_caption=groups)
        strict = metrics.retrieval_metrics(audio_embeddings[chosen], text_embeddings[chosen],
                                              pair=("audio", "text"))
        ceiling = np.mean(np.bincount(groups)[groups] == 1)
        print(f"{name} ({chosen.sum()} clips): a2t R@1 {grouped['a2t_recall@1']:.3f} (chance "
              f"{grouped['caption_chance@1']:.3f}); strictly {strict['a2t_recall@1']:.3f} "
              f"(chance {1 / chosen.sum():.4f}, at most {ceiling:.3f}: clips whose caption "
              "has no copy)")


if __name__ == "__main__":
    app.run(main)
