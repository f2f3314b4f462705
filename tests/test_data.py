import os

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import datasets, preprocess, text
from input_pipeline.generated import builder, shapes
from mmjax import text_tokenizers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCABULARY = os.path.join(REPO_ROOT, "input_pipeline", "shapes_vocabulary.txt")


def test_rendered_image_shows_what_the_caption_says():
    for index in range(40):
        example = shapes.render_example("train", index)
        count_word, size, color, noun, *position = example["caption"].split()
        object_pixels = np.all(np.abs(example["image"].astype(int) - shapes.COLORS[color]) <= 25,
                               axis=-1)
        assert object_pixels.sum() > 30, example["caption"]
        ys, xs = np.nonzero(object_pixels)
        half = shapes.IMAGE_SIZE / 2
        where = " ".join(position)
        if where == "on the left":
            assert xs.mean() < half
        elif where == "on the right":
            assert xs.mean() > half
        elif where == "at the top":
            assert ys.mean() < half
        elif where == "at the bottom":
            assert ys.mean() > half
        assert noun.startswith(shapes.CLASS_NAMES[example["label"]].split()[1][:5])
        assert (count_word == "one") == (noun in shapes.SHAPES)


def test_held_out_pairs_appear_only_in_test():
    train_pairs = {
        shapes.CLASS_PAIRS[shapes.render_example("train", i)["label"]] for i in range(2000)
    }
    test_examples = [shapes.render_example("test", i) for i in range(400)]
    assert not train_pairs & set(shapes.HELD_OUT_PAIRS)
    unseen = [e for e in test_examples if e["unseen_combination"]]
    assert 0.15 < len(unseen) / len(test_examples) < 0.35
    assert all(shapes.CLASS_PAIRS[e["label"]] in shapes.HELD_OUT_PAIRS for e in unseen)


def test_rendering_is_deterministic_and_png_round_trips():
    a, b = shapes.render_example("test", 7), shapes.render_example("test", 7)
    np.testing.assert_array_equal(a["image"], b["image"])
    decoded = preprocess.decode_rgb(builder.encode_png(a["image"])).numpy()
    np.testing.assert_array_equal(decoded, a["image"])


def test_builder_writes_splits_with_labels(tfds_dir):
    builder = shapes.prepare(tfds_dir, "tiny")
    assert builder.info.splits["train"].num_examples == 512
    assert builder.info.splits["test"].num_examples == 128
    assert builder.info.features["label"].names == list(shapes.CLASS_NAMES)


def test_vocabulary_covers_every_caption_and_prompt():
    tokenizer = text_tokenizers.WordTokenizer(16, VOCABULARY)
    texts = [shapes.render_example("train", i)["caption"] for i in range(300)]
    texts += [t.format(n) for n in shapes.CLASS_NAMES for t in shapes.PROMPT_TEMPLATES]
    assert not (tokenizer(texts) == text_tokenizers.UNK_ID).any()


CLIP_BPE = os.path.join(REPO_ROOT, "tests", "fixtures", "bpe_simple_vocab_16e6.txt.gz")


@pytest.mark.parametrize("tokenizer", [text_tokenizers.WordTokenizer(8, VOCABULARY),
                                       text_tokenizers.ByteTokenizer(12),
                                       text_tokenizers.ClipBpeTokenizer(12, CLIP_BPE)],
                         ids=["words", "bytes", "clip_bpe"])
def test_in_graph_tokenizer_equals_python(tokenizer):
    texts = ["two large red circles on the left", "One SMALL Cyan square, in the center!",
             "an unknown word", "", "three three three three three three three three three"]
    tokenize = text.make_tokenize_fn(tokenizer)
    in_graph = tf.data.Dataset.from_tensor_slices(texts).map(tokenize)
    np.testing.assert_array_equal(np.stack(list(in_graph.as_numpy_iterator())), tokenizer(texts))


def test_truncation_keeps_end_of_text():
    ids = text_tokenizers.ByteTokenizer(6)(["abcdefgh"])[0]
    assert list(ids) == [text_tokenizers.BOS_ID, 101, 102, 103, 104, text_tokenizers.EOT_ID]


def test_bad_dataset_specs_are_explained():
    with pytest.raises(ValueError, match="tfds:NAME"):
        datasets.parse_spec("coco", "train")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        datasets.open_source(datasets.parse_spec("tfds:mnist", "train"), "/nonexistent")


def _ids(source, tokenizer, steps, **kwargs):
    dataset = datasets.train_dataset(source, tokenizer, global_batch_size=16, image_size=16,
                                     seed=3, **kwargs)
    return [batch["id"] for batch, _ in zip(dataset.as_numpy_iterator(), range(steps))]


def test_train_order_is_seeded_split_by_process_and_resumable(tfds_dir):
    source = datasets.open_source(datasets.parse_spec("tfds:mmjax_shapes/tiny:train", "train"),
                                         tfds_dir)
    tokenizer = text_tokenizers.WordTokenizer(12, VOCABULARY)
    one_process = _ids(source, tokenizer, 40)
    np.testing.assert_array_equal(np.stack(one_process), np.stack(_ids(source, tokenizer, 40)))
    # 40 steps x 16 = 640 positions > 512 examples: the first epoch is a permutation.
    first_epoch = np.concatenate(one_process)[:512]
    assert sorted(first_epoch) == list(range(512))
    halves = [_ids(source, tokenizer, 40, process_index=p, process_count=2) for p in (0, 1)]
    np.testing.assert_array_equal(
        np.stack(one_process), np.concatenate([np.stack(halves[0]), np.stack(halves[1])], axis=1)
    )
    resumed = _ids(source, tokenizer, 5, start_position=35 * 16)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(one_process[35:]))


def test_eval_pass_pads_the_last_batch(tfds_dir):
    source = datasets.open_source(datasets.parse_spec("tfds:mmjax_shapes/tiny:test", "test"),
                                         tfds_dir)
    tokenizer = text_tokenizers.WordTokenizer(12, VOCABULARY)
    batches = list(datasets.eval_dataset(source, tokenizer, global_batch_size=48,
                                         image_size=16).as_numpy_iterator())
    assert len(batches) == 3  # 128 examples -> 48 + 48 + 32 real, 16 padding
    valid = np.concatenate([b["valid"] for b in batches])
    ids = np.concatenate([b["id"] for b in batches])[valid]
    assert valid.sum() == 128 and sorted(ids) == list(range(128))


def test_vqa_view_asks_questions_the_image_answers(tfds_dir):
    """mmjax_shapes_vqa: the same records, one question per image, its answer as the label."""
    from input_pipeline import datasets
    from input_pipeline.generated import shapes
    from mmjax import text_tokenizers

    source = datasets.open_source(datasets.parse_spec("tfds:mmjax_shapes_vqa/tiny:test",
                                                             "test"), tfds_dir)
    captions = datasets.open_source(datasets.parse_spec("tfds:mmjax_shapes/tiny:test",
                                                               "test"), tfds_dir)
    kinds_seen = set()
    for index in range(30):
        vqa = source.decode(source.fetch(np.array([index]))[0], index)
        plain = captions.decode(captions.fetch(np.array([index]))[0], index)
        words = plain["captions"][0].numpy().decode().split()
        kind = int(vqa["id"]) % 5
        kinds_seen.add(kind)
        assert vqa["captions"][0].numpy().decode() == shapes.VQA_QUESTIONS[kind]
        singular = {plural: shape for shape, plural in shapes.PLURALS.items()}
        expected = {0: words[2], 1: singular.get(words[3], words[3]), 2: words[0],
                    3: " ".join(words[4:]), 4: words[1]}[kind]
        assert shapes.VQA_ANSWERS[int(vqa["label"])] == expected
    assert kinds_seen == set(range(5))
    vocabulary = text_tokenizers.WordTokenizer(12, os.path.join(
        os.path.dirname(datasets.__file__), "shapes_vocabulary.txt"))
    assert not (vocabulary(list(shapes.VQA_QUESTIONS)) == text_tokenizers.UNK_ID).any()
    from configs import smoke_vqa
    assert smoke_vqa.NUM_ANSWERS == len(shapes.VQA_ANSWERS)
