"""open_clip weights in and out: embeddings match open_clip's own on a tiny fixture, and the
export gives open_clip's tensors back exactly (no PyTorch needed).

The fixtures were written by scripts/make_open_clip_fixture.py with open_clip; their .npz holds
open_clip's embeddings of fixed images and token ids.
"""

import json
import os

import numpy as np
import pytest

from mmjax import inference
from mmjax.tools.weights import export_open_clip, import_open_clip, weight_files

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.mark.parametrize("activation", ["gelu", "quickgelu"])
def test_imported_model_matches_open_clip(activation, tmp_path):
    weights = os.path.join(FIXTURES, f"open_clip_tiny_{activation}.safetensors")
    reference = np.load(os.path.join(FIXTURES, f"open_clip_tiny_{activation}_io.npz"))
    out = import_open_clip.import_open_clip(weights, str(tmp_path / "imported"), vision_heads=2,
                                            text_heads=2, quick_gelu=activation == "quickgelu")
    model = inference.load(out)
    assert model.config.data.image_size == 32 and model.config.model.vocab_size == 300

    def relative_error(got, expected):
        return np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)

    images = model.encode_image(reference["images"].astype(np.float32))
    texts = model.encode_text(reference["tokens"].astype(np.int32))
    assert relative_error(images, reference["image_embeddings"]).max() < 1e-4
    assert relative_error(texts, reference["text_embeddings"]).max() < 1e-4
    with pytest.raises(ValueError, match="no tokenizer: pass token ids.*--vocab"):
        model.encode_text(["a photo of a cat"])

    # ... and back out: open_clip's own tensors, exactly (names, shapes and values).
    exported = export_open_clip.export_open_clip(out, str(tmp_path / "exported"))
    original = weight_files.read_weights(weights)
    written = weight_files.read_weights(os.path.join(exported, export_open_clip.WEIGHTS_NAME))
    assert set(written) == set(original)
    for name, value in original.items():
        assert written[name].shape == value.shape, name
        np.testing.assert_array_equal(written[name], value, err_msg=name)
    with open(os.path.join(exported, export_open_clip.CONFIG_NAME)) as f:
        model_cfg = json.load(f)["model_cfg"]
    assert model_cfg["quick_gelu"] == (activation == "quickgelu")
    assert model_cfg["vision_cfg"]["head_width"] == 16 and model_cfg["text_cfg"]["heads"] == 2


def test_safetensors_reader_and_clear_errors(tmp_path):
    tensors = weight_files.read_weights(os.path.join(FIXTURES, "open_clip_tiny_gelu.safetensors"))
    assert tensors["visual.conv1.weight"].shape == (32, 3, 8, 8)
    with pytest.raises(ValueError, match="Not an open_clip .* missing"):
        import_open_clip.convert({"foo": np.zeros(1)}, 2, 2, False)
    with pytest.raises(ValueError, match="Unknown --arch 'ViT-X'"):
        import_open_clip.import_open_clip("x.safetensors", str(tmp_path), arch="ViT-X")
    with pytest.raises(ValueError, match="head counts"):
        import_open_clip.import_open_clip(os.path.join(FIXTURES, "open_clip_tiny_gelu.safetensors"),
                                          str(tmp_path))


def test_clip_bpe_tokenizer_equals_open_clips():
    import json

    from mmjax import text_tokenizers

    with open(os.path.join(FIXTURES, "clip_bpe_captions.json")) as f:
        fixture = json.load(f)
    tokenizer = text_tokenizers.build_tokenizer(dict(
        name="clip_bpe", context_length=fixture["context_length"],
        vocabulary_file=os.path.join(FIXTURES, "bpe_simple_vocab_16e6.txt.gz")))
    assert tokenizer.vocab_size == 49408 and tokenizer.eot_id == 49407
    np.testing.assert_array_equal(tokenizer(fixture["captions"]), np.asarray(fixture["tokens"]))


def test_import_with_a_vocabulary_checks_its_size(tmp_path):
    with pytest.raises(ValueError, match="49408 ids but the model's vocabulary has 300"):
        import_open_clip.import_open_clip(
            os.path.join(FIXTURES, "open_clip_tiny_gelu.safetensors"), str(tmp_path / "x"),
            vision_heads=2, text_heads=2, quick_gelu=False,
            vocabulary_file=os.path.join(FIXTURES, "bpe_simple_vocab_16e6.txt.gz"))
