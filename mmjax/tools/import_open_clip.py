"""Import open_clip / OpenAI CLIP weights into an mmjax workdir.

python -m mmjax.tools.import_open_clip --arch=ViT-B-32 --weights=FILE --out=DIR

    [--vocab=bpe_simple_vocab_16e6.txt.gz]

FILE is a `.safetensors` file (read here, no extra package) or a PyTorch state dict (`.pt`, `.bin`;
needs torch, and is loaded with `weights_only=True`, never as arbitrary pickle). Shapes (widths,
depths, patch size, image size, vocabulary, context) are read from the state dict; the number of
heads and the activation come from the architecture table (or `--heads`, `--quick_gelu`). DIR
becomes a workdir that `main.py --mode=eval`, `config.init_from` and `mmjax.inference.load` read:
`checkpoints/0` and `config.json`. open_clip need not be installed.

The mapping: open_clip's fused in_proj becomes separate query/key/value kernels (the key bias is
dropped: it adds the same amount to every score of a query, which softmax ignores); the class
embedding absorbs its position embedding; ln_pre becomes the ViT's `pre_norm`.
"""

from __future__ import annotations

import json
import os
import re
import struct

import ml_collections
import numpy as np
from absl import app, flags

# name -> (vision heads, text heads, quick_gelu). Shapes come from the weights.
ARCHITECTURES = {
    "ViT-B-32": (12, 8, False), "ViT-B-16": (12, 8, False), "ViT-L-14": (16, 12, False),
    "ViT-L-14-336": (16, 12, False), "ViT-H-14": (16, 16, False),
    "ViT-B-32-quickgelu": (12, 8, True), "ViT-B-16-quickgelu": (12, 8, True),
    "ViT-L-14-quickgelu": (16, 12, True),
}

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                      "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header size, JSON header, raw little-endian data)."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] == "BF16":
            import ml_dtypes
            dtype = ml_dtypes.bfloat16
        elif info["dtype"] in SAFETENSORS_DTYPES:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
        tensors[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
    return tensors


def read_weights(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"No weights file at {path}.")
    if path.endswith(".safetensors"):
        tensors = read_safetensors(path)
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{path} is a PyTorch file: install torch to read it, or convert it "
                              "to .safetensors.") from e
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        loaded = loaded.get("state_dict", loaded)
        tensors = {k: v.float().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}
    # Checkpoints saved from DistributedDataParallel prefix every name with "module.".
    return {re.sub(r"^module\.", "", k): np.asarray(v, np.float32) for k, v in tensors.items()}


def _blocks(weights, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.resblocks\.(\d+)\.")
    return 1 + max(int(m.group(1)) for k in weights if (m := pattern.match(k)))


def _transformer(weights, prefix: str, target: str, heads: int) -> dict[str, np.ndarray]:
    params = {}
    for i in range(_blocks(weights, prefix)):
        source = f"{prefix}.resblocks.{i}."
        block = f"{target}/encoder/blocks/{i}/"
        width = weights[source + "ln_1.weight"].shape[0]
        head_dim = width // heads
        qkv, qkv_bias = weights[source + "attn.in_proj_weight"], weights[source + "attn.in_proj_bias"]
        for j, name in enumerate(("query", "key", "value")):
            params[block + f"attention/{name}"] = qkv[j * width:(j + 1) * width].T.reshape(
                width, heads, head_dim)
        params[block + "attention/query_bias"] = qkv_bias[:width].reshape(heads, head_dim)
        params[block + "attention/value_bias"] = qkv_bias[2 * width:].reshape(heads, head_dim)
        params[block + "attention/out"] = weights[source + "attn.out_proj.weight"].T.reshape(
            heads, head_dim, width)
        params[block + "attention/out_bias"] = weights[source + "attn.out_proj.bias"]
        for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            params[block + f"{ours}/scale"] = weights[source + f"{theirs}.weight"]
            params[block + f"{ours}/bias"] = weights[source + f"{theirs}.bias"]
        for ours, theirs in (("up", "c_fc"), ("down", "c_proj")):
            params[block + f"mlp/{ours}/kernel"] = weights[source + f"mlp.{theirs}.weight"].T
            params[block + f"mlp/{ours}/bias"] = weights[source + f"mlp.{theirs}.bias"]
    return params


def convert(weights: dict[str, np.ndarray], vision_heads: int, text_heads: int,
            quick_gelu: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """(model and data config fields, {mmjax parameter name: array}) for an open_clip state dict."""
    missing = [k for k in ("visual.conv1.weight", "visual.class_embedding", "token_embedding.weight",
                           "text_projection", "visual.proj") if k not in weights]
    if missing:
        raise ValueError(f"Not an open_clip / OpenAI CLIP ViT state dict: missing {missing}. "
                         "ModifiedResNet and timm image towers are not supported.")
    conv = weights["visual.conv1.weight"]  # [width, 3, patch, patch]
    vision_width, _, patch, _ = conv.shape
    positions = weights["visual.positional_embedding"]  # [1 + grid^2, width]
    grid = int(round((positions.shape[0] - 1) ** 0.5))
    text_width = weights["ln_final.weight"].shape[0]
    vocab_size, context_length = weights["token_embedding.weight"].shape[0], weights["positional_embedding"].shape[0]
    activation = "quick_gelu" if quick_gelu else "gelu_exact"
    model = dict(
        embed_dim=int(weights["text_projection"].shape[1]), vocab_size=int(vocab_size),
        image_tower=dict(name="vit", variant=None, width=int(vision_width),
                         depth=_blocks(weights, "visual.transformer"),
                         mlp_dim=int(weights["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                         num_heads=vision_heads, patch_size=int(patch), pooling="cls",
                         pre_norm=True, norm_epsilon=1e-5, activation=activation),
        text_tower=dict(name="transformer", variant=None, width=int(text_width),
                        depth=_blocks(weights, "transformer"),
                        mlp_dim=int(weights["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                        num_heads=text_heads, context_length=int(context_length), causal=True,
                        pad_id=0, eot_id=int(vocab_size) - 1,  # open_clip: end-of-text is the last id
                        norm_epsilon=1e-5, activation=activation),
    )
    params = {
        "image_tower/patch_embedding/kernel": conv.transpose(2, 3, 1, 0).reshape(-1, vision_width),
        "image_tower/patch_embedding/bias": np.zeros((vision_width,), np.float32),
        "image_tower/cls_token": (weights["visual.class_embedding"] + positions[0])[None],
        "image_tower/position_embedding": positions[1:],
        "image_tower/pre_norm/scale": weights["visual.ln_pre.weight"],
        "image_tower/pre_norm/bias": weights["visual.ln_pre.bias"],
        "image_tower/encoder/final_norm/scale": weights["visual.ln_post.weight"],
        "image_tower/encoder/final_norm/bias": weights["visual.ln_post.bias"],
        "image_projection/kernel": weights["visual.proj"],
        "text_tower/token_embedding": weights["token_embedding.weight"],
        "text_tower/position_embedding": weights["positional_embedding"],
        "text_tower/encoder/final_norm/scale": weights["ln_final.weight"],
        "text_tower/encoder/final_norm/bias": weights["ln_final.bias"],
        "text_projection/kernel": weights["text_projection"],
        "logit_scale": np.asarray(weights["logit_scale"], np.float32).reshape(()),
    }
    params.update(_transformer(weights, "visual.transformer", "image_tower", vision_heads))
    params.update(_transformer(weights, "transformer", "text_tower", text_heads))
    data = dict(image_size=int(grid * patch), normalization="clip")
    return {"model": model, "data": data}, params


def import_open_clip(weights_path: str, out_dir: str, arch: str | None = None,
                     vision_heads: int | None = None, text_heads: int | None = None,
                     quick_gelu: bool | None = None, vocabulary_file: str | None = None) -> str:
    """Converts the weights and writes a workdir at `out_dir`; returns its path.

    With `vocabulary_file` (CLIP's bpe_simple_vocab_16e6.txt.gz) the workdir gets the CLIP BPE
    tokenizer, so strings tokenise exactly as in open_clip; it is copied into the workdir.
    """
    from mmjax import checkpoint, defaults, tokenizers, train
    from mmjax.trainer import Trainer

    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"Unknown --arch {arch!r}; known: {sorted(ARCHITECTURES)} (or give "
                         "--vision_heads, --text_heads and --quick_gelu).")
    table = ARCHITECTURES.get(arch, (None, None, None))
    vision_heads = vision_heads or table[0]
    text_heads = text_heads or table[1]
    quick_gelu = table[2] if quick_gelu is None else quick_gelu
    if vision_heads is None or text_heads is None or quick_gelu is None:
        raise ValueError("Give --arch, or --vision_heads, --text_heads and --quick_gelu: head counts "
                         "and the activation are not recorded in the weights.")
    if os.path.exists(os.path.join(out_dir, "checkpoints")):
        raise FileExistsError(f"{out_dir} already holds checkpoints; choose an empty --out.")

    fields, params = convert(read_weights(weights_path), vision_heads, text_heads, quick_gelu)
    config = defaults.base_config()
    config.name = f"open_clip_{arch or 'custom'}"
    model = fields["model"]
    config.model.embed_dim, config.model.vocab_size = model["embed_dim"], model["vocab_size"]
    config.model.image_tower = ml_collections.ConfigDict(model["image_tower"])
    config.model.text_tower = ml_collections.ConfigDict(model["text_tower"])
    config.data.image_size = fields["data"]["image_size"]
    config.data.normalization = fields["data"]["normalization"]
    context_length = model["text_tower"]["context_length"]
    if vocabulary_file:
        config.tokenizer = ml_collections.ConfigDict(dict(
            name="clip_bpe", context_length=context_length,
            vocabulary_file=os.path.abspath(vocabulary_file)))
        tokenizer = tokenizers.build_tokenizer(config.tokenizer)
        if tokenizer.vocab_size != model["vocab_size"]:
            raise ValueError(f"{vocabulary_file} gives {tokenizer.vocab_size} ids but the model's "
                             f"vocabulary has {model['vocab_size']}; give the model's own file.")
    else:  # token ids only; strings need --vocab
        vocab_size = model["vocab_size"]
        config.tokenizer = ml_collections.ConfigDict(dict(
            name="ids_only", context_length=context_length, vocab_size=vocab_size,
            bos_id=vocab_size - 2, eot_id=vocab_size - 1))
    config.total_steps = 1

    trainer = Trainer(config)
    state = trainer.create_state()
    state["params"] = checkpoint.merge_params(state["params"], params, (), weights_path,
                                              require_all_used=True)
    train.write_config_snapshot(config, out_dir)
    with checkpoint.create_manager(out_dir, keep=None) as manager:
        checkpoint.save(manager, 0, state)
        manager.wait_until_finished()
    return out_dir


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
