"""Import a Hugging Face transformers CLIPModel or SiglipModel folder into an mmjax workdir.

python -m mmjax.tools.weights.import_hf --weights=DIR --out=W

DIR is what `save_pretrained` writes (or a big_vision SigLIP `.npz` file, as big_vision publishes
them: B/16 and other sizes, MAP head, sigmoid-loss bias): `config.json` and `model.safetensors` (or
`pytorch_model.bin`, read with torch's `weights_only=True`). W becomes a workdir that
`main.py --mode=eval`, `config.init_from` and `mmjax.inference.load` read, with the original's
parameter set (export_hf writes the same tensors back). A CLIP folder's `merges.txt` (CLIP's BPE)
comes along as the clip_bpe tokenizer when its vocabulary size is the model's; otherwise the
workdir takes token ids (`config.tokenizer.name=ids_only`).
"""

from __future__ import annotations

import json

import ml_collections
from absl import app, flags

from mmjax import paths, text_tokenizers
from mmjax.tools.weights import big_vision_layout, hf_layout, weight_files

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def import_big_vision(path: str, out_dir: str, vocab: str | None = None) -> str:
    """A big_vision SigLIP .npz -> a workdir. SigLIP texts are SentencePiece ids without a
    begin-of-text token, end-of-text 1, padded with 1 to the context length: with `vocab` (the
    SentencePiece model it was trained with, c4_en for the published ones) the workdir
    tokenizes text so; without it, it takes token ids."""

    weight_files.require_new_workdir(out_dir)
    fields, params = big_vision_layout.convert(weight_files.read_weights(path), path)
    config = weight_files.imported_config("big_vision_siglip", fields)
    text, vocab_size = fields["model"]["text_tower"], fields["model"]["vocab_size"]
    tokenizer = weight_files.ids_only_tokenizer(text, vocab_size, bos_id=-1)
    if vocab:
        tokenizer = dict(name="sentencepiece", vocabulary_file=vocab, add_bos=False,
                         pad_id=text["pad_id"], context_length=text["context_length"])
        built = text_tokenizers.build_tokenizer(tokenizer)
        if built.vocab_size > vocab_size or built.eot_id != text["eot_id"]:
            raise ValueError(
                f"{vocab} is not this model's SentencePiece model: it has {built.vocab_size} "
                f"pieces and end-of-text id {built.eot_id}, the model {vocab_size} ids and "
                f"end-of-text {text['eot_id']}. Give the model's own (c4_en for big_vision's "
                "published SigLIP), or leave --vocab out to pass token ids.")
    config.tokenizer = ml_collections.ConfigDict(tokenizer)
    return weight_files.write_workdir(config, params, out_dir, path)


def import_hf(folder: str, out_dir: str, vocab: str | None = None) -> str:
    """A save_pretrained folder (or a big_vision SigLIP .npz file, with its SentencePiece
    `vocab`) -> a workdir at `out_dir`."""

    if folder.endswith(".npz"):
        return import_big_vision(folder, out_dir, vocab)
    weight_files.require_new_workdir(out_dir)
    config_path = paths.join(folder, "config.json")
    if not paths.exists(config_path):
        raise FileNotFoundError(f"{config_path} is missing: --weights is a save_pretrained folder "
                                "(or a big_vision .npz file).")
    hf_config = json.loads(paths.read_text(config_path))
    fields = hf_layout.mmjax_fields(hf_config)
    found = [paths.join(folder, n) for n in WEIGHT_FILES if paths.exists(paths.join(folder, n))]
    if not found:
        raise FileNotFoundError(
            f"{folder} has none of {list(WEIGHT_FILES)} (sharded checkpoints "
            "are not read; save with max_shard_size large enough for one file)."
        )
    params = hf_layout.from_hf(weight_files.read_weights(found[0]), hf_config, found[0])

    config = weight_files.imported_config(f"hf_{hf_config['model_type']}", fields)
    model = fields["model"]
    text = model["text_tower"]
    merges = paths.join(folder, "merges.txt")
    tokenizer = None
    if hf_config["model_type"] == "clip" and paths.exists(merges):
        candidate = dict(name="clip_bpe", context_length=text["context_length"],
                         vocabulary_file=merges)
        if text_tokenizers.build_tokenizer(candidate).vocab_size == model["vocab_size"]:
            tokenizer = candidate
            del config.model.text_tower["pad_id"]  # causal: padding is never attended to
    config.tokenizer = ml_collections.ConfigDict(tokenizer or weight_files.ids_only_tokenizer(
        text, model["vocab_size"], hf_config["text_config"].get("bos_token_id", 0)))
    return weight_files.write_workdir(config, params, out_dir, found[0])


def define_flags() -> None:
    flags.DEFINE_string("weights", None, "A save_pretrained folder of a CLIPModel or SiglipModel.")
    flags.DEFINE_string("out", None, "The workdir to write.")
    flags.DEFINE_string("vocab", None, "big_vision SigLIP: the SentencePiece model its texts "
                        "were tokenized with (c4_en); without it the workdir takes token ids.")
    flags.mark_flags_as_required(["weights", "out"])


def main(argv):
    del argv
    out = import_hf(flags.FLAGS.weights, flags.FLAGS.out, flags.FLAGS.vocab)
    print(f"Wrote {out}: evaluate with python main.py --config=configs/from_workdir.py:{out} "
          f"--workdir={out} --mode=eval")


if __name__ == "__main__":
    define_flags()
    app.run(main)
