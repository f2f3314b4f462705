"""Trains a SentencePiece vocabulary on a dataset's captions.

    python -m input_pipeline.convert.make_vocab --input=shards:/data/my_shards:train \
        --output=/data/my_vocab --vocab_size=8000

writes /data/my_vocab.model (and .vocab, readable); use it with
`--config.tokenizer.name=sentencepiece --config.tokenizer.vocabulary_file=/data/my_vocab.model`.
`--input` is a dataset spec (shards:DIR[:SPLIT], tfds:NAME[:SPLIT]) or a text file with one
caption per line. The model uses mmjax's special ids: pad 0, bos 1, eos 2, unk 3.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import tensorflow as tf

from input_pipeline import datasets
from mmjax import paths


def captions(input_spec: str, *, data_dir: str | None = None,
             max_captions: int = 2_000_000) -> Iterator[str]:
    """Every caption of a dataset split (or lines of a text file), at most `max_captions`."""
    if not input_spec.startswith(("shards:", "tfds:")) and paths.isfile(input_spec):
        for count, line in enumerate(paths.read_text(input_spec).splitlines()):
            if count >= max_captions:
                return
            if line.strip():
                yield line
        return
    source = datasets.open_source(datasets.parse_spec(input_spec, "train"), data_dir)
    records = (tf.data.Dataset.range(source.num_examples).batch(256)
               .map(lambda indices: datasets.fetch_records(source, indices)).unbatch()
               .enumerate().map(lambda index, record: source.decode(record, index)["captions"],
                                num_parallel_calls=tf.data.AUTOTUNE).unbatch())
    count = 0
    for caption in records.as_numpy_iterator():
        text = caption.decode("utf-8", "replace")
        if text.strip():
            yield text
            count += 1
            if count >= max_captions:
                return


def train_vocabulary(input_spec: str, output_prefix: str, *, vocab_size: int,
                     model_type: str = "unigram", data_dir: str | None = None,
                     max_captions: int = 2_000_000, lowercase: bool = False) -> str:
    """Trains and writes OUTPUT_PREFIX.model (and .vocab; a gs:// prefix too); returns its path."""
    import sentencepiece

    # SentencePiece writes local files: for a bucket, into a temporary folder, then copied.
    local_prefix = (os.path.join(tempfile.mkdtemp(prefix="mmjax_vocab_"), "vocab")
                    if paths.is_cloud(output_prefix) else output_prefix)
    paths.makedirs(paths.dirname(paths.absolute(output_prefix)))
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=captions(input_spec, data_dir=data_dir, max_captions=max_captions),
        model_prefix=local_prefix, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        character_coverage=0.9995, hard_vocab_limit=False, minloglevel=2)
    if local_prefix != output_prefix:
        for suffix in (".model", ".vocab"):
            paths.copy(local_prefix + suffix, output_prefix + suffix)
    return output_prefix + ".model"


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("input", None, "shards:DIR[:SPLIT], tfds:NAME[:SPLIT] or a text file.",
                        required=True)
    flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.model and PREFIX.vocab.",
                        required=True)
    flags.DEFINE_integer("vocab_size", 8000, "Pieces in the vocabulary (at most; fewer if the "
                         "captions cannot fill it).")
    flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe", "char", "word"],
                      "SentencePiece's model type.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir for tfds: inputs.")
    flags.DEFINE_integer("max_captions", 2_000_000, "Train on at most this many captions.")
    flags.DEFINE_bool("lowercase", False, "Lower-case the text (in the model's normaliser).")
    FLAGS = flags.FLAGS

    def main(argv):
        del argv
        path = train_vocabulary(FLAGS.input, FLAGS.output, vocab_size=FLAGS.vocab_size,
                                model_type=FLAGS.model_type, data_dir=FLAGS.data_dir,
                                max_captions=FLAGS.max_captions, lowercase=FLAGS.lowercase)
        print(f"wrote {path}; use it with --config.tokenizer.name=sentencepiece "
              f"--config.tokenizer.vocabulary_file={path}")

    app.run(main)
