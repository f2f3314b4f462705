"""transformers (CLIPModel, SiglipModel) and big_vision SigLIP weights in, transformers out.

The fixtures were written by scripts/make_hf_fixture.py with transformers: tiny models saved with
save_pretrained, their embeddings of fixed inputs, and the SigLIP weights in big_vision's .npz
layout. No torch or transformers is needed here.
"""

import json
import os

import numpy as np
import pytest

from mmjax import inference
from mmjax.tools.weights import (
    big_vision_layout,
    export_hf,
    export_open_clip,
    hf_layout,
    import_hf,
    weight_files,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


CAPTIONS = ["a red circle on the left", "two blue squares at the top", "a small green triangle",
            "three yellow stars in a row near the bottom of the picture"]


def c4_like_sentencepiece(path: str) -> str:
    """A SentencePiece model laid out as big_vision's c4_en: pad 0, eos 1, unk 2, no bos."""
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS * 20), model_prefix=path, vocab_size=48,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        minloglevel=2)
    return path + ".model"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """kind -> workdir imported from the fixture (each written once for the module); the
    big_vision SigLIP with a SentencePiece model laid out as its c4_en."""
    root = tmp_path_factory.mktemp("imported")
    sources = {"clip": "hf_tiny_clip", "siglip": "hf_tiny_siglip",
               "big_vision": "big_vision_tiny_siglip.npz"}
    vocab = c4_like_sentencepiece(str(root / "c4_like"))
    return {kind: import_hf.import_hf(os.path.join(FIXTURES, name), str(root / kind),
                                      vocab=vocab if kind == "big_vision" else None)
            for kind, name in sources.items()}


def test_big_vision_siglip_tokenizes_as_siglip_without_begin_of_text(imported, tmp_path):
    """SigLIP's layout: pieces, end-of-text 1, padded with 1 (no begin-of-text token), in Python
    and in the input pipeline; a model file with another end-of-text id is refused."""
    import sentencepiece
    import tensorflow as tf

    from input_pipeline import text

    model = inference.load(imported["big_vision"])
    tokenizer, context = model.tokenizer, model.tokenizer.context_length
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    expected = np.ones((len(CAPTIONS), context), np.int32)
    for row, pieces in zip(expected, processor.encode(CAPTIONS)):
        row[:min(len(pieces), context - 1)] = pieces[:context - 1]
    assert len(processor.encode(CAPTIONS[-1])) >= context  # the last one is cut, eos kept
    np.testing.assert_array_equal(tokenizer(CAPTIONS), expected)
    in_graph = text.make_tokenize_fn(tokenizer)
    np.testing.assert_array_equal(np.stack([in_graph(tf.constant(c)).numpy() for c in CAPTIONS]),
                                  expected)
    np.testing.assert_allclose(model.encode_text(CAPTIONS), model.encode_text(expected),
                               rtol=1e-6, atol=1e-6)
    other = tmp_path / "other"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CAPTIONS * 20),
        model_prefix=str(other),
        vocab_size=48,
        pad_id=0,
        eos_id=2,
        unk_id=1,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="end-of-text id 2, the model 300 ids and end-of-text 1"):
        import_hf.import_hf(os.path.join(FIXTURES, "big_vision_tiny_siglip.npz"),
                            str(tmp_path / "refused"), vocab=str(other) + ".model")
    assert not os.path.exists(tmp_path / "refused")
    # Captioning starts from a begin-of-text token, which this tokenizer has not.
    from mmjax import preflight

    config = inference.load_config(imported["big_vision"])
    config.evals = ("retrieval", "captioning")
    with pytest.raises(preflight.ConfigError, match=r"config\.tokenizer\.add_bos = False: "
                       r"captioning starts each caption from the begin-of-text token"):
        preflight.check(config)


def relative_error(got, expected):
    return (np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)).max()


@pytest.mark.parametrize("kind,reference", [("clip", "hf_tiny_clip"), ("siglip", "hf_tiny_siglip"),
                                            ("big_vision", "hf_tiny_siglip")])
def test_imported_embeddings_match_the_originals(imported, kind, reference):
    io = np.load(os.path.join(FIXTURES, f"{reference}_io.npz"))
    model = inference.load(imported[kind])
    assert relative_error(model.encode_image(io["images"].astype(np.float32)),
                          io["image_embeddings"]) < 1e-4
    assert relative_error(model.encode_text(io["tokens"].astype(np.int32)),
                          io["text_embeddings"]) < 1e-4


@pytest.mark.parametrize("kind,original", [("clip", "hf_tiny_clip"), ("siglip", "hf_tiny_siglip"),
                                           ("big_vision", "hf_tiny_siglip")])
def test_export_to_transformers_reproduces_the_fixture(imported, kind, original, tmp_path):
    out = export_hf.export_hf(imported[kind], str(tmp_path / "hf"))
    expected = weight_files.read_weights(os.path.join(FIXTURES, original, "model.safetensors"))
    written = weight_files.read_weights(os.path.join(out, "model.safetensors"))
    assert set(written) == set(expected)
    for name, value in expected.items():
        assert written[name].shape == value.shape, name
        np.testing.assert_array_equal(written[name], value, err_msg=name)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == [
        hf_layout.ARCHITECTURES["clip" if kind == "clip" else "siglip"]
    ]


def test_big_vision_scanned_layout_reads_as_per_block(tmp_path):
    """Checkpoints saved with scanned blocks (one `encoderblock` with a leading depth axis)
    give the same parameters as per-block ones."""
    per_block = weight_files.read_weights(os.path.join(FIXTURES, "big_vision_tiny_siglip.npz"))
    scanned = {}
    for name, value in per_block.items():
        if "/encoderblock_" in name:
            prefix, rest = name.split("/encoderblock_")
            index, rest = rest.split("/", 1)
            scanned.setdefault(f"{prefix}/encoderblock/{rest}", {})[int(index)] = value
        else:
            scanned[name] = value
    scanned = {k: np.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v
               for k, v in scanned.items()}
    fields, from_scanned = big_vision_layout.convert(scanned, "scanned")
    _, from_blocks = big_vision_layout.convert(per_block, "per block")
    assert fields["model"]["image_tower"]["depth"] == 2 and fields["data"]["image_size"] == 32
    assert set(from_scanned) == set(from_blocks)
    for name in from_blocks:
        np.testing.assert_array_equal(from_scanned[name], from_blocks[name])
    with pytest.raises(ValueError, match="not a big_vision SigLIP checkpoint"):
        big_vision_layout.convert({"params/img/embedding/kernel": np.zeros((1, 1, 3, 4))}, "x.npz")


def test_exports_refuse_what_the_target_cannot_represent(imported, tmp_path):
    """A SigLIP model is not an open_clip CLIP: refused before anything is written, naming the
    config fields and the values open_clip needs."""
    out = tmp_path / "refused"
    with pytest.raises(ValueError) as error:
        export_open_clip.export_open_clip(imported["siglip"], str(out))
    message = str(error.value)
    for field in ("image_tower.pooling='cls' (is 'map')", "image_tower.patch_bias=False",
                  "image_projection=True", "text_tower.causal=True", "text_tower.pooling='eot'"):
        assert field in message
    assert not out.exists()

    config, params = weight_files.read_workdir(imported["clip"])
    config.model.image_tower.pre_norm = False
    with pytest.raises(ValueError, match=r"CLIPModel cannot represent .*image_tower.pre_norm=True"):
        hf_layout.hf_config(config, params, dict(pad_id=0, eot_id=299))
    with pytest.raises(ValueError, match="end-of-text id other than 2"):
        config.model.image_tower.pre_norm = True
        hf_layout.hf_config(config, params, dict(pad_id=0, eot_id=2))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        hf_layout.mmjax_fields({"model_type": "bert"})


def test_clip_bpe_tokenizer_written_for_transformers(tmp_path):
    """transformers' CLIPTokenizer files of CLIP's BPE: its vocabulary with transformers' names
    for the two special tokens, the merges in rank order, mmjax's padding id."""
    from mmjax import text_tokenizers

    tokenizer = text_tokenizers.build_tokenizer(dict(
        name="clip_bpe", context_length=16,
        vocabulary_file=os.path.join(FIXTURES, "bpe_simple_vocab_16e6.txt.gz")))
    export_hf.write_clip_tokenizer(tokenizer, str(tmp_path))
    with open(tmp_path / "vocab.json") as f:
        vocabulary = json.load(f)
    assert len(vocabulary) == 49408
    assert vocabulary["<|startoftext|>"] == 49406 and vocabulary["<|endoftext|>"] == 49407
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert vocabulary["".join(merges[1].split())] == 512  # the first merge follows the 512 bytes
    with open(tmp_path / "tokenizer_config.json") as f:
        config = json.load(f)
    assert config["model_max_length"] == 16 and vocabulary[config["pad_token"]] == tokenizer.pad_id
