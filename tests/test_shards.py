"""Users' own captioned images: make_shards, `shards:` specs, bad-example skipping, order."""

import json
import os

import numpy as np
import pytest

from conftest import USER_CORRUPT, USER_IMAGES, USER_TEST
from input_pipeline import datasets, pipeline, shards
from input_pipeline.convert import make_shards
from input_pipeline.generated import synthetic
from mmjax import text_tokenizers
from mmjax.training import checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCABULARY = os.path.join(REPO_ROOT, "input_pipeline", "shapes_vocabulary.txt")
NUM_CORRUPT, NUM_IMAGES, NUM_TEST = USER_CORRUPT, USER_IMAGES, USER_TEST


def test_make_shards_writes_every_image_with_all_its_captions(user_data):
    metadata = user_data["metadata"]
    with open(user_data["csv"]) as f:
        num_rows = sum(1 for _ in f) - 1
    train, test = metadata["splits"]["train"], metadata["splits"]["test"]
    assert (train["num_examples"], test["num_examples"]) == (NUM_IMAGES - NUM_TEST, NUM_TEST)
    assert train["num_captions"] + test["num_captions"] == num_rows
    assert train["files"] == [shards.shard_name("train", i, 3) for i in range(3)]
    assert all(os.path.exists(os.path.join(user_data["output"], n)) for n in train["files"])
    # A record holds the original bytes and every caption of its image.
    source = user_data["source"]
    record = shards.decode_record(source.fetch(np.array([5]))[0])
    key = record["key"].numpy().decode()
    with open(os.path.join(os.path.dirname(user_data["csv"]), key), "rb") as f:
        assert record["image"].numpy() == f.read()
    import csv
    with open(user_data["csv"]) as f:
        expected = [r["caption"] for r in csv.DictReader(f) if r["image"] == key]
    assert [c.decode() for c in record["captions"].numpy()] == expected
    assert int(record["id"]) == 5


def test_make_shards_is_safe_to_run_again(user_data, tmp_path, capsys):
    output = user_data["output"]
    before = {n: os.path.getmtime(os.path.join(output, n)) for n in os.listdir(output)}
    make_shards.make_shards(user_data["csv"], output, examples_per_shard=100, check_images=False)
    assert "nothing to do" in capsys.readouterr().out
    assert before == {n: os.path.getmtime(os.path.join(output, n)) for n in os.listdir(output)}
    # A different shard size rewrites: old files go, no staging folder is left behind.
    copy = tmp_path / "copy"
    make_shards.make_shards(user_data["csv"], str(copy), examples_per_shard=100, quiet=True)
    make_shards.make_shards(user_data["csv"], str(copy), examples_per_shard=1000, quiet=True)
    assert sorted(os.listdir(copy)) == ["metadata.json", "test-00000-of-00001.array_record",
                                        "train-00000-of-00001.array_record"]


def test_jsonl_and_folder_inputs(tmp_path):
    images = tmp_path / "folder" / "train"
    images.mkdir(parents=True)
    synthetic_dir = tmp_path / "raw"
    written = synthetic.write_captioned_images(str(synthetic_dir), 6, image_size=16)
    with open(tmp_path / "data.jsonl", "w") as f:
        for name in sorted(os.listdir(synthetic_dir / "images"))[:3]:
            f.write(json.dumps({"image": f"raw/images/{name}", "captions": ["one", "two"]}) + "\n")
        f.write(json.dumps({"image": "raw/images/missing.png", "caption": "gone"}) + "\n")
    metadata = make_shards.make_shards(str(tmp_path / "data.jsonl"), str(tmp_path / "out_jsonl"),
                                       quiet=True)
    assert metadata["splits"]["train"]["num_examples"] == 3
    assert metadata["splits"]["train"]["num_captions"] == 6
    assert metadata["left_out"]["unreadable"][0].startswith("raw/images/missing.png")
    for name in sorted(os.listdir(synthetic_dir / "images"))[:4]:
        os.replace(synthetic_dir / "images" / name, images / name)
        (images / (os.path.splitext(name)[0] + ".txt")).write_text("first caption\nsecond\n")
    (images / "uncaptioned.png").write_bytes(b"")
    metadata = make_shards.make_shards(str(tmp_path / "folder"), str(tmp_path / "out_folder"),
                                       quiet=True)
    assert metadata["splits"]["train"]["num_examples"] == 4
    assert metadata["splits"]["train"]["num_captions"] == 8
    assert metadata["left_out"]["no_caption_file"] == [os.path.join("train", "uncaptioned.png")]
    assert written["special"]  # the generator made its grayscale / RGBA / CMYK images


def test_bad_inputs_are_explained(tmp_path):
    (tmp_path / "bad.csv").write_text("path,text\na.png,hello\n")
    with pytest.raises(ValueError,
                       match=r"needs the columns image \(or audio, or video\) and caption"):
        make_shards.make_shards(str(tmp_path / "bad.csv"), str(tmp_path / "out"), quiet=True)
    with pytest.raises(FileNotFoundError, match="make_shards"):
        datasets.open_source(datasets.parse_spec(f"shards:{tmp_path}:train", "train"), None)


def _epoch(source, steps, batch_size=16, **kwargs):
    tokenizer = text_tokenizers.WordTokenizer(12, VOCABULARY)
    dataset = datasets.train_dataset(source, tokenizer, global_batch_size=batch_size,
                                     image_size=24, seed=5, **kwargs)
    return [batch for batch, _ in zip(dataset.as_numpy_iterator(), range(steps))]


def test_bad_examples_are_skipped_and_named_grayscale_rgba_cmyk_are_not(user_data):
    batches = _epoch(user_data["source"], 18)  # one epoch of the 288 train examples
    skipped = np.concatenate([b["skipped"].ravel() for b in batches])
    skipped = skipped[skipped >= 0]
    attempts = sum(int(b["attempt"].sum()) for b in batches)
    # Every corrupt record was met (at its own position) and skipped; nothing else was.
    assert set(skipped) == user_data["corrupt_ids"] and attempts == len(skipped)
    ids = np.concatenate([b["id"] for b in batches])
    assert not set(ids) & user_data["corrupt_ids"]
    assert len(ids) == 288 and len(set(ids)) >= 288 - attempts
    for kind, key in user_data["special"].items():
        assert user_data["key_to_id"][key] in ids, kind
    assert all(b["image"].shape == (16, 24, 24, 3) for b in batches)


def test_one_and_two_processes_read_the_same_global_batches_and_resume_at_the_next(user_data):
    source = user_data["source"]
    one = _epoch(source, 20)
    two = [_epoch(source, 20, process_index=p, process_count=2) for p in (0, 1)]
    for step in range(20):
        np.testing.assert_array_equal(one[step]["id"], np.concatenate(
            [two[0][step]["id"], two[1][step]["id"]]))
        np.testing.assert_array_equal(one[step]["image"], np.concatenate(
            [two[0][step]["image"], two[1][step]["image"]]))
    # Restored at the position after step 12 (as a checkpoint records it): the next batches.
    resumed = _epoch(source, 8, start_position=12 * 16)
    for step in range(8):
        np.testing.assert_array_equal(resumed[step]["id"], one[12 + step]["id"])
        np.testing.assert_array_equal(resumed[step]["tokens"], one[12 + step]["tokens"])
    # With another global batch size it continues at the same example.
    resumed_32 = _epoch(source, 1, batch_size=32, start_position=12 * 16)
    np.testing.assert_array_equal(resumed_32[0]["id"],
                                  np.concatenate([one[12]["id"], one[13]["id"]]))


def test_too_many_bad_examples_stop_the_run_naming_them(user_data, tiny_config):
    tiny_config.data.train = f"shards:{user_data['output']}:train"
    batches = pipeline.train_batches(
        tiny_config, text_tokenizers.build_tokenizer(tiny_config.tokenizer)
    )
    for _ in range(18):
        next(batches)
    assert batches.skipped == NUM_CORRUPT and batches.position == 288
    batches.check_bad_fraction(batches.skipped, 288, 0.02)  # within the limit: no error
    batches.check_bad_fraction(25, 999, 0.01)  # too few examples read to judge yet
    with pytest.raises(pipeline.TooManyBadExamples,
                       match=r"25 of 1000 examples.*\(images/0028[567]\.(jpg|png)\)"):
        batches.check_bad_fraction(25, 1000, 0.01)


def test_training_on_own_unlabeled_shards_logs_the_exact_skipped_count(user_data, tiny_config,
                                                                       tmp_path, capsys):
    """README's "Your own data" command, shrunk: a user's captions with the bytes tokenizer and
    the default evaluators; the ones unlabeled data cannot feed are skipped, saying why."""
    from conftest import one_device_mesh
    from mmjax import train

    tiny_config.data.train = f"shards:{user_data['output']}:train"
    tiny_config.data.eval = f"shards:{user_data['output']}:test"
    tiny_config.tokenizer.update(name="bytes", context_length=64)
    tiny_config.evals = ("retrieval", "zeroshot", "linear_probe")
    tiny_config.data.eval_captions_per_image = 5  # each test image has 1-5 captions
    tiny_config.total_steps = 18  # one epoch
    tiny_config.checkpoint_every_steps = 9
    tiny_config.log_every_steps = 9
    workdir = str(tmp_path / "run")
    metrics = train.train_and_evaluate(tiny_config, workdir, mesh=one_device_mesh())
    assert metrics["eval/shards/num_candidates"] == NUM_TEST
    assert not [m for m in metrics if "zeroshot" in m or "probe" in m]
    printed = capsys.readouterr().out
    assert "Note: evaluator 'zeroshot' skipped: " in printed
    assert "Note: evaluator 'linear_probe' skipped: " in printed
    # Retrieval ranked every caption of the test images, not one per image.
    test_captions = user_data["metadata"]["splits"]["test"]["num_captions"]
    assert metrics["eval/shards/num_texts"] == test_captions > NUM_TEST
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = {r["step"]: r["data/skipped"] for r in map(json.loads, f) if "data/skipped" in r}
    # The same pipeline read on its own: what it skipped by steps 9 and 18.
    batches = pipeline.train_batches(
        tiny_config, text_tokenizers.build_tokenizer(tiny_config.tokenizer)
    )
    expected = {}
    for step in range(1, 19):
        next(batches)
        expected[step] = batches.skipped
    assert logged == {9: expected[9], 18: expected[18]}
    assert logged[18] >= NUM_CORRUPT
    # The input position is saved inside each checkpoint.
    final = checkpoint.saved_data_state(workdir, 18)
    assert final["position"] == 288 and final["skipped"] == logged[18]
    assert checkpoint.saved_data_state(workdir, 9)["position"] == 144


def _varied_captions(count, seed=0):
    """Captions a vocabulary trained on shapes has not seen: accents, CJK, emoji, digits, runs
    of spaces, punctuation, long ones that truncate."""
    rng = np.random.default_rng(seed)
    words = ["two", "large", "red", "circles", "café", "naïve", "日本語", "東京", "🙂", "x2",
             "1,024", "Hello!", "  spaced  ", "ÀÉÎ", "über", "e-mail", "(brackets)", "quote's"]
    return [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(count)]


def test_make_vocab_and_in_graph_sentencepiece_equal_python_on_1000_captions(user_data, tmp_path):
    import tensorflow as tf

    from input_pipeline import text
    from input_pipeline.convert import make_vocab

    path = make_vocab.train_vocabulary(f"shards:{user_data['output']}:train",
                                       str(tmp_path / "vocab"), vocab_size=120)
    tokenizer = text_tokenizers.build_tokenizer(dict(name="sentencepiece", context_length=24,
                                                vocabulary_file=path))
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eot_id) == (0, 1, 2)
    assert tokenizer.vocab_size <= 120
    train_captions = list(make_vocab.captions(f"shards:{user_data['output']}:train"))
    assert len(train_captions) == user_data["metadata"]["splits"]["train"]["num_captions"]
    texts = train_captions[:500] + _varied_captions(500)
    in_graph = tf.data.Dataset.from_tensor_slices(texts).map(text.make_tokenize_fn(tokenizer))
    python_ids = tokenizer(texts)
    np.testing.assert_array_equal(np.stack(list(in_graph.as_numpy_iterator())), python_ids)
    # Truncation keeps end-of-text; unseen characters are unk, not dropped.
    assert (python_ids[:, -1] != 0).sum() > 50
    assert all(row[-1] in (0, 2) for row in python_ids)
    assert (python_ids == 3).any()
    untruncated = [i for i in range(500) if python_ids[i, -1] == 0]
    assert [tokenizer.decode(python_ids[i]) for i in untruncated] == [train_captions[i]
                                                                      for i in untruncated]
