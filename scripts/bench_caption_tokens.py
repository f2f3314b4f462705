"""Captions per second the input pipeline turns into CLIP BPE token ids, per core: tokenizing
while training (the Python tokenizer through tf.numpy_function, under the GIL) against shards
tokenized at conversion (`make_shards --tokenizer=clip_bpe`: ids read from the records).

    taskset -c 0 python scripts/bench_caption_tokens.py --workdir=/tmp/caption_tokens

Captions are 6-16 words drawn from CLIP's BPE vocabulary (few repeats, so the tokenizer's
cache helps little, as on web captions); only the text path is timed, images are not decoded.
Prints a table and writes WORKDIR/caption_tokens.json.
"""

import gzip
import io
import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "/tmp/caption_tokens", "Shards and results go here.")
flags.DEFINE_integer("captions", 20_000, "Captions (one per record).")
flags.DEFINE_integer("context_length", 77, "Tokens per caption.")
FLAGS = flags.FLAGS
MERGES = os.path.join(os.getcwd(), "tests", "fixtures", "bpe_simple_vocab_16e6.txt.gz")


def write_input(path: str, count: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    merges = gzip.open(MERGES).read().decode("utf-8").split("\n")[1:40_000]
    words = sorted({"".join(m.split()).replace("</w>", "") for m in merges
                    if m.endswith("</w>") and m.replace(" ", "").replace("</w>", "").isalpha()})
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    image = buffer.getvalue()
    captions = [" ".join(rng.choice(words, size=rng.integers(6, 17))) for _ in range(count)]
    pq.write_table(pa.Table.from_pydict({"key": [str(i) for i in range(count)],
                                         "caption": captions, "jpg": [image] * count}), path)


def captions_per_second(directory: str, tokenizer, stored: bool) -> float:
    import tensorflow as tf

    from input_pipeline import datasets, text

    source = datasets.open_source(datasets.parse_spec(f"shards:{directory}:train", "train"), None)
    assert source.stored_tokens(tokenizer) == stored
    tokenize = text.make_tokenize_fn(tokenizer)

    def tokens(serialized, index):
        example = source.decode(serialized, index)
        return example["caption_tokens"][0] if stored else tokenize(example["captions"][0])

    dataset = (tf.data.Dataset.range(source.num_examples).batch(256)
               .map(lambda i: (datasets.fetch_records(source, i), i)).unbatch()
               .map(tokens, num_parallel_calls=tf.data.AUTOTUNE).batch(256))
    next(iter(dataset))  # build the pipeline and its threads before timing
    start, count = time.perf_counter(), 0
    for batch in dataset:
        count += int(batch.shape[0])
    return count / (time.perf_counter() - start)


def main(argv):
    del argv
    from input_pipeline.convert import make_shards
    from mmjax import text_tokenizers

    os.makedirs(FLAGS.workdir, exist_ok=True)
    parquet = os.path.join(FLAGS.workdir, f"captions_{FLAGS.captions}.parquet")
    if not os.path.exists(parquet):
        write_input(parquet, FLAGS.captions)
    config = {"name": "clip_bpe", "context_length": FLAGS.context_length,
              "vocabulary_file": MERGES}
    tokenizer = text_tokenizers.build_tokenizer(config)
    plain, tokenized = (os.path.join(FLAGS.workdir, n) for n in ("plain", "tokenized"))
    make_shards.make_shards(parquet, plain, quiet=True, check_images=False)
    start = time.perf_counter()
    make_shards.make_shards(parquet, tokenized, quiet=True, check_images=False, tokenizer=config,
                            overwrite=True)
    conversion = time.perf_counter() - start
    cores = len(os.sched_getaffinity(0))
    rows = {"tokenized while training": captions_per_second(plain, tokenizer, False),
            "stored at conversion": captions_per_second(tokenized, tokenizer, True)}
    print(f"\nCLIP BPE ({FLAGS.context_length} tokens), {FLAGS.captions} captions, {cores} core(s)")
    print(f"{'pipeline':<28}{'captions/s':>12}{'per core':>10}")
    for name, rate in rows.items():
        print(f"{name:<28}{rate:>12.0f}{rate / cores:>10.0f}")
    ratio = rows["stored at conversion"] / rows["tokenized while training"]
    print(f"ratio {ratio:.1f}x; the conversion with --tokenizer took {conversion:.1f} s "
          f"({FLAGS.captions / conversion:.0f} captions/s, images not checked)")
    with open(os.path.join(FLAGS.workdir, "caption_tokens.json"), "w") as f:
        json.dump({"cores": cores, "captions": FLAGS.captions, "captions_per_sec": rows,
                   "ratio": ratio, "conversion_seconds": conversion}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
