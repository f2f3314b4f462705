"""Preprocessing ops, each eagerly and inside tf.data; TFDS adapters for other datasets."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import datasets, preprocess

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
SEED = tf.constant([3, 4], tf.int64)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def in_dataset(fn, *inputs):
    """fn applied inside tf.data's graph (not eagerly)."""
    dataset = tf.data.Dataset.from_tensors(inputs).map(fn)
    return next(iter(dataset.as_numpy_iterator()))


def both_ways(fn, *inputs):
    eager = fn(*inputs)
    eager = eager.numpy() if hasattr(eager, "numpy") else eager
    graph = in_dataset(fn, *inputs)
    np.testing.assert_array_equal(eager, graph)
    return eager


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "JPEG", "WEBP"])
def test_decode_formats_to_rgb(fmt):
    image = Image.fromarray(PIXELS)
    data = encode(image, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = both_ways(preprocess.decode_rgb, data)
    assert decoded.shape == (30, 40, 3) and decoded.dtype == np.uint8
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    tolerance = 0 if fmt in ("PNG", "BMP", "GIF") else 3
    assert np.abs(decoded.astype(int) - reference).mean() <= tolerance


def test_gif_first_frame_grayscale_rgba_cmyk_become_rgb():
    frames = [Image.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (10, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert both_ways(preprocess.decode_rgb, gif.getvalue()).mean() < 50  # frame 0, not 1
    gray = both_ways(preprocess.decode_rgb, encode(Image.fromarray(PIXELS).convert("L"), "PNG"))
    assert gray.shape == (30, 40, 3) and (gray[..., 0] == gray[..., 2]).all()
    rgba = Image.fromarray(np.dstack([PIXELS, np.full((30, 40), 7, np.uint8)]), "RGBA")
    np.testing.assert_array_equal(both_ways(preprocess.decode_rgb, encode(rgba, "PNG")), PIXELS)
    cmyk = encode(Image.fromarray(PIXELS).convert("CMYK"), "JPEG", quality=95)
    reference = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")).astype(int)
    assert np.abs(both_ways(preprocess.decode_rgb, cmyk).astype(int) - reference).mean() < 3


@pytest.mark.parametrize("data", [b"", b"not an image",
                                  encode(Image.fromarray(PIXELS), "JPEG")[:200]],
                         ids=["empty", "garbage", "truncated_jpeg"])
def test_bad_images_raise_eagerly_and_in_graph(data):
    with pytest.raises(tf.errors.InvalidArgumentError):
        preprocess.decode_rgb(data)
    with pytest.raises(tf.errors.InvalidArgumentError):
        in_dataset(preprocess.decode_rgb, data)


def test_resize_crops_flip_normalize():
    image = tf.constant(PIXELS)
    ops = {name: preprocess.parse_ops(name, image_size=16, normalization="clip")
           for name in ("resize", "resize_shorter|center_crop", "inception_crop", "flip",
                        "normalize")}
    assert both_ways(ops["resize"], image, SEED).shape == (16, 16, 3)
    assert both_ways(ops["resize_shorter|center_crop"], image, SEED).shape == (16, 16, 3)
    cropped = both_ways(ops["inception_crop"], image, SEED)
    assert cropped.shape == (16, 16, 3)
    # Seeded: the same seed gives the same crop, another seed another one.
    np.testing.assert_array_equal(cropped, ops["inception_crop"](image, SEED).numpy())
    assert not np.array_equal(cropped, ops["inception_crop"](image, SEED + 1).numpy())
    flips = [both_ways(ops["flip"], image, tf.constant([s, 0], tf.int64)) for s in range(8)]
    assert any((f == PIXELS[:, ::-1]).all() for f in flips)
    assert any((f == PIXELS).all() for f in flips)
    normalized = both_ways(ops["normalize"], image, SEED)
    mean = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
    std = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
    np.testing.assert_allclose(normalized, (PIXELS - mean) / std, atol=1e-4)


def test_inception_crop_window_statistics():
    window = preprocess.OPS["inception_crop"](size=8, scale=(0.25, 0.5))
    image = tf.zeros([100, 100, 3])
    areas = []
    for s in range(50):
        begin, size = preprocess._crop_window(tf.shape(image), tf.constant([s, 1], tf.int64),
                                              (0.25, 0.5), (3 / 4, 4 / 3))
        areas.append(float(size[0] * size[1]) / 1e4)
    assert 0.24 <= min(areas) and max(areas) <= 0.51 and np.std(areas) > 0.02
    assert window(image, SEED).shape == (8, 8, 3)


def test_fused_jpeg_crop_matches_decode_then_crop():
    """decode_jpeg_and_inception_crop takes the same window as decode|inception_crop; it decodes
    only the window, downscaled in the JPEG decoder, so pixels differ only by resampling."""
    fused = preprocess.OPS["decode_jpeg_and_inception_crop"](size=24)
    crop = preprocess.OPS["inception_crop"](size=24)

    def separate(data, seed):
        return crop(preprocess.decode_rgb(data), seed)

    y, x = np.mgrid[0:240, 0:320]
    smooth = np.stack([x * 255 / 320, y * 255 / 240, 128 + 100 * np.sin(x / 25.0)], -1)
    jpeg = encode(Image.fromarray(smooth.astype(np.uint8)), "JPEG", quality=95)
    for s in range(5):  # crops of 60-240 pixels: the decoder downscales by 2, 4 or 8
        seed = tf.constant([s, 9], tf.int64)
        # On the two gradients (about one level of 255 per pixel) the windows agree to within
        # half a pixel of the decoder's scaled grid (at most 4 pixels at scale 8).
        difference = np.abs(both_ways(fused, jpeg, seed) - separate(jpeg, seed).numpy())
        assert difference[..., :2].mean() < 4.5
    # A crop under twice the output size is decoded at full size: then the same pixels as
    # decoding whole, cropping the window and resizing (bilinear) exactly.
    small = encode(Image.fromarray(PIXELS), "JPEG", quality=95)
    begin, size = preprocess._crop_window(
        tf.constant([30, 40, 3]), SEED, (0.08, 1.0), (3 / 4, 4 / 3)
    )
    window = preprocess.decode_rgb(small)[begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]]
    np.testing.assert_allclose(both_ways(fused, small, SEED),
                               tf.image.resize(window, [24, 24]).numpy(), atol=1e-3)
    png = encode(Image.fromarray(PIXELS), "PNG")  # not JPEG: decodes whole, then the same crop
    np.testing.assert_allclose(both_ways(fused, png, SEED), separate(png, SEED).numpy(), atol=1e-4)


def test_caption_choice_is_seeded_and_never_empty():
    captions = tf.constant(["a", "", "b", "  ", "c"])
    picks = {captions.numpy()[both_ways(preprocess.caption_choice, captions,
                                        tf.constant([s, 0], tf.int64))] for s in range(30)}
    assert picks == {b"a", b"b", b"c"}
    with pytest.raises(tf.errors.InvalidArgumentError, match="no caption"):
        preprocess.caption_choice(tf.constant(["", " "]), SEED)


def test_op_strings_are_checked():
    with pytest.raises(ValueError, match=r"Unknown preprocessing op 'blur'.*valid names: \["):
        preprocess.parse_ops("decode|blur", image_size=8, normalization="clip")
    with pytest.raises(ValueError, match="literal arguments"):
        preprocess.parse_ops("resize(size=x)", image_size=8, normalization="clip")
    with pytest.raises(ValueError, match="unexpected keyword"):
        preprocess.parse_ops("flip(p=0.5)", image_size=8, normalization="clip")
    op = preprocess.parse_ops("decode|resize(12)", image_size=8, normalization="clip")
    assert op(encode(Image.fromarray(PIXELS), "PNG"), SEED).shape == (12, 12, 3)


# -- TFDS datasets other than the embedded one ----------------------------------------------

class FakeCocoCaptions(tfds.core.GeneratorBasedBuilder):
    """coco_captions' features (image, captions: Sequence{id, text}), a few examples."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/id": tf.int64,
            "captions": tfds.features.Sequence({"id": tf.int64, "text": tf.string}),
        }))

    def _split_generators(self, dl_manager):
        return {"val": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            yield i, {"image": np.full((12, 10, 3), 20 * i, np.uint8), "image/id": 100 + i,
                      "captions": {"id": [1, 2, 3], "text": [f"cap {i} a", f"cap {i} b",
                                                             f"cap {i} c"]}}


class FakeFlowers(tfds.core.GeneratorBasedBuilder):
    """An image classification dataset (image + ClassLabel), as oxford_flowers102 or imagenet."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(names=["pink_primrose", "globe_thistle"]),
        }))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"image": np.full((9, 9, 3), 50 * i, np.uint8), "label": i % 2}


@pytest.fixture(scope="module")
def other_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("other_tfds"))
    for builder_class in (FakeCocoCaptions, FakeFlowers):
        builder_class(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_multi_caption_tfds_dataset(other_tfds):
    source = datasets.open_source(datasets.parse_spec("tfds:fake_coco_captions:val", "val"),
                                  other_tfds)
    example = source.decode(source.fetch(np.array([2]))[0], tf.constant(2, tf.int64))
    assert len(example["captions"].numpy()) == 3
    assert example["captions"].numpy()[0].decode().endswith(" a")
    assert int(example["id"]) == 2 and int(example["label"]) == -1
    assert preprocess.decode_rgb(example["image"]).shape == (12, 10, 3)


def test_classification_tfds_dataset_gets_class_names_and_prompts(other_tfds):
    from mmjax import text_tokenizers

    source = datasets.open_source(datasets.parse_spec("tfds:fake_flowers:test", "test"),
                                  other_tfds)
    names, templates = source.adapter.class_names, source.adapter.prompt_templates
    assert names == ("pink primrose", "globe thistle")
    assert templates[0] == "a photo of a {}."
    batches = list(datasets.eval_dataset(source, text_tokenizers.ByteTokenizer(40),
                                         global_batch_size=4, image_size=8).as_numpy_iterator())
    # Records come in TFDS's stored order; example i is a flat image of value 50 * i, label i % 2.
    batch = batches[0]
    example_index = batch["image"][:, 0, 0, 0].astype(int) // 50
    assert sorted(example_index) == [0, 1, 2, 3]
    assert batch["label"].tolist() == [i % 2 for i in example_index]
    texts = [text_tokenizers.ByteTokenizer(40).decode(t) for t in batch["tokens"]]
    assert texts == [f"a photo of a {names[label]}." for label in batch["label"]]


def test_eval_batches_carry_every_caption_up_to_k(other_tfds):
    from mmjax import text_tokenizers

    source = datasets.open_source(datasets.parse_spec("tfds:fake_coco_captions:val", "val"),
                                  other_tfds)
    tokenizer = text_tokenizers.ByteTokenizer(16)
    batch = next(datasets.eval_dataset(source, tokenizer, global_batch_size=6, image_size=8,
                                       captions_per_image=5).as_numpy_iterator())
    assert batch["all_tokens"].shape == (6, 5, 16)
    assert batch["all_valid"].tolist() == [[True] * 3 + [False] * 2] * 6
    for row in batch["all_tokens"]:  # one image's captions (TFDS stores them shuffled)
        texts = [tokenizer.decode(t) for t in row[:3]]
        assert [t[-1] for t in texts] == ["a", "b", "c"] and len({t[:-2] for t in texts}) == 1
    np.testing.assert_array_equal(batch["tokens"], batch["all_tokens"][:, 0])
