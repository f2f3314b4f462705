"""Import open_clip / OpenAI CLIP weights into an mmjax workdir.

python -m mmjax.tools.weights.import_open_clip --arch=ViT-B-32 --weights=FILE --out=DIR

    [--vocab=bpe_simple_vocab_16e6.txt.gz]

FILE is a `.safetensors` file or a PyTorch state dict (`.pt`, `.bin`; needs torch, and is loaded
with `weights_only=True`, never as arbitrary pickle). Shapes (widths,
depths, patch size, image size, vocabulary, context) are read from the state dict; the number of
heads and the activation come from the architecture table (or `--heads`, `--quick_gelu`). DIR
becomes a workdir that `main.py --mode=eval`, `config.init_from` and `mmjax.inference.load` read:
`checkpoints/0` and `config.json`. open_clip need not be installed.

The mapping (mmjax/tools/weights/open_clip_layout.py) is exact both ways: the workdir's model has
open_clip's key biases, class-token position and no patch bias, so export_open_clip writes the
same tensors back.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from absl import app, flags

from mmjax import paths, text_tokenizers
from mmjax.tools.weights import layouts, open_clip_layout, weight_files

# name -> (vision heads, text heads, quick_gelu). Shapes come from the weights.
ARCHITECTURES = {
    "ViT-B-32": (12, 8, False), "ViT-B-16": (12, 8, False), "ViT-L-14": (16, 12, False),
    "ViT-L-14-336": (16, 12, False), "ViT-H-14": (16, 16, False),
    "ViT-B-32-quickgelu": (12, 8, True), "ViT-B-16-quickgelu": (12, 8, True),
    "ViT-L-14-quickgelu": (16, 12, True),
}

def convert(weights: dict[str, np.ndarray], vision_heads: int, text_heads: int,
            quick_gelu: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """(model and data config fields, {mmjax parameter name: array}) for an open_clip state dict."""
    missing = [
        k
        for k in (
            "visual.conv1.weight",
            "visual.class_embedding",
            "token_embedding.weight",
            "text_projection",
            "visual.proj",
        )
        if k not in weights
    ]
    if missing:
        raise ValueError(f"Not an open_clip / OpenAI CLIP ViT state dict: missing {missing}. "
                         "ModifiedResNet and timm image towers are not supported.")
    weights = layouts.split_in_proj(weights)
    vision_width, _, patch, _ = weights["visual.conv1.weight"].shape
    grid = int(round((weights["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    vision_depth = layouts.count_blocks(weights, "visual.transformer.resblocks")
    text_depth = layouts.count_blocks(weights, "transformer.resblocks")
    pre_norm = "visual.ln_pre.weight" in weights
    table = open_clip_layout.rules(vision_depth, vision_heads, text_depth, text_heads,
                                   pre_norm=pre_norm, logit_bias="logit_bias" in weights)
    params = layouts.apply_to_ours(table, weights, "the open_clip state dict",
                                   ignored=(r"attn_mask",))
    vocab_size, text_width = weights["token_embedding.weight"].shape
    context_length = weights["positional_embedding"].shape[0]
    activation = "quick_gelu" if quick_gelu else "gelu_exact"
    # open_clip's architecture exactly: no patch bias, a class position, key biases.
    exact = dict(norm_epsilon=1e-5, activation=activation, key_bias=True)
    model = dict(
        embed_dim=int(weights["text_projection"].shape[1]),
        vocab_size=int(vocab_size), image_tower=dict(
            name="vit",
            variant=None,
            width=int(vision_width),
            depth=vision_depth,
            mlp_dim=int(weights["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            num_heads=vision_heads,
            patch_size=int(patch),
            pooling="cls",
            pre_norm=pre_norm,
            patch_bias=False,
            class_position=True,
            **exact,
        ),
        text_tower=dict(
            name="transformer",
            variant=None,
            width=int(text_width),
            depth=text_depth,
            mlp_dim=int(weights["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            num_heads=text_heads,
            context_length=int(context_length),
            causal=True,
            pad_id=0,
            eot_id=int(vocab_size) - 1,  # open_clip: end-of-text is the last id
            **exact,
        ),
    )
    if "logit_bias" in weights:
        model["logit_bias_init"] = float(weights["logit_bias"].reshape(()))
    data = dict(image_size=int(grid * patch), normalization="clip")
    return {"model": model, "data": data}, params


def import_open_clip(weights_path: str, out_dir: str, arch: str | None = None,
                     vision_heads: int | None = None, text_heads: int | None = None,
                     quick_gelu: bool | None = None, vocabulary_file: str | None = None) -> str:
    """Converts the weights and writes a workdir at `out_dir`; returns its path.

    With `vocabulary_file` (CLIP's bpe_simple_vocab_16e6.txt.gz) the workdir gets the CLIP BPE
    tokenizer, so strings tokenise exactly as in open_clip; it is copied into the workdir.
    """

    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"Unknown --arch {arch!r}; known: {sorted(ARCHITECTURES)} (or give "
                         "--vision_heads, --text_heads and --quick_gelu).")
    table = ARCHITECTURES.get(arch, (None, None, None))
    vision_heads = vision_heads or table[0]
    text_heads = text_heads or table[1]
    quick_gelu = table[2] if quick_gelu is None else quick_gelu
    if vision_heads is None or text_heads is None or quick_gelu is None:
        raise ValueError(
            "Give --arch, or --vision_heads, --text_heads and --quick_gelu: head counts "
            "and the activation are not recorded in the weights."
        )
    weight_files.require_new_workdir(out_dir)

    fields, params = convert(weight_files.read_weights(weights_path), vision_heads, text_heads,
                             quick_gelu)
    config = weight_files.imported_config(f"open_clip_{arch or 'custom'}", fields)
    model = fields["model"]
    context_length = model["text_tower"]["context_length"]
    if vocabulary_file:
        config.tokenizer = ml_collections.ConfigDict(dict(
            name="clip_bpe", context_length=context_length,
            vocabulary_file=paths.absolute(vocabulary_file)))
        tokenizer = text_tokenizers.build_tokenizer(config.tokenizer)
        if tokenizer.vocab_size != model["vocab_size"]:
            raise ValueError(f"{vocabulary_file} gives {tokenizer.vocab_size} ids but the model's "
                             f"vocabulary has {model['vocab_size']}; give the model's own file.")
    else:  # token ids only; strings need --vocab
        config.tokenizer = ml_collections.ConfigDict(weight_files.ids_only_tokenizer(
            model["text_tower"], model["vocab_size"], bos_id=model["vocab_size"] - 2))
    return weight_files.write_workdir(config, params, out_dir, weights_path)


def define_flags() -> None:
    """Command-line flags, defined only when run as a program (importing defines none)."""
    flags.DEFINE_string("arch", None, f"One of {sorted(ARCHITECTURES)}.")
    flags.DEFINE_string("weights", None, ".safetensors or PyTorch state dict file.")
    flags.DEFINE_string("out", None, "The workdir to write.")
    flags.DEFINE_integer("vision_heads", None, "Overrides the architecture table.")
    flags.DEFINE_integer("text_heads", None, "Overrides the architecture table.")
    flags.DEFINE_bool("quick_gelu", None, "Overrides the architecture table.")
    flags.DEFINE_string("vocab", None, "CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz): "
                        "texts then tokenise exactly as in open_clip.")
    flags.mark_flags_as_required(["weights", "out"])


def main(argv):
    del argv
    f = flags.FLAGS
    out = import_open_clip(f.weights, f.out, f.arch, f.vision_heads, f.text_heads, f.quick_gelu,
                           f.vocab)
    print(f"Wrote {out}: evaluate with python main.py --config=configs/from_workdir.py:{out} "
          f"--workdir={out} --mode=eval")


if __name__ == "__main__":
    define_flags()
    app.run(main)
