"""big_vision's SigLIP checkpoints (`.npz`, as published) against mmjax's CLIP.

mmjax's parameters follow big_vision's layout (kernels [in, out], attention kernels split by
head), so the names change and a few leading axes go; nothing is transposed. Blocks saved
under `scan` (one `encoderblock` with a leading depth axis) are unstacked first. Shapes, head
counts and the image size all come from the arrays; what the arrays do not say is SigLIP's
(LayerNorm epsilon 1e-6, tanh GELU, a bidirectional text tower pooled at its last position,
end-of-text and padding id 1 as big_vision's SigLIP tokenisation writes them).
"""

from __future__ import annotations

import re

import numpy as np

from mmjax.tools.weights import layouts
from mmjax.tools.weights.layouts import Rule

IMAGE, TEXT = "params/img", "params/txt"
NORM = "/scale /bias"  # LayerNorm parameter names, as in mmjax


def unstack_scanned(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in weights.items():
        match = re.fullmatch(r"(.*)/encoderblock/(.*)", name)
        if not match:
            out[name] = value
            continue
        for i, layer in enumerate(value):
            out[f"{match.group(1)}/encoderblock_{i}/{match.group(2)}"] = layer
    return out


def _attention(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}/{name}", f"{theirs}/{name}/kernel", "same") for name in
            ("query", "key", "value", "out")] + \
           [Rule(f"{ours}/{name}_bias", f"{theirs}/{name}/bias", "same") for name in
            ("query", "key", "value", "out")]


def _block(ours: str, theirs: str) -> list[Rule]:
    return (layouts.norm(f"{ours}/attention_norm", f"{theirs}/LayerNorm_0", NORM)
            + _attention(f"{ours}/attention", f"{theirs}/MultiHeadDotProductAttention_0")
            + layouts.norm(f"{ours}/mlp_norm", f"{theirs}/LayerNorm_1", NORM)
            + _mlp(f"{ours}/mlp", f"{theirs}/MlpBlock_0"))


def _mlp(ours: str, theirs: str) -> list[Rule]:
    return [Rule(f"{ours}/{o}/{p}", f"{theirs}/{t}/{p}", "same")
            for o, t in (("up", "Dense_0"), ("down", "Dense_1")) for p in ("kernel", "bias")]


def rules(vision_depth: int, text_depth: int) -> list[Rule]:
    encoder, text_encoder = f"{IMAGE}/Transformer", f"{TEXT}/Encoder_0"
    table = [Rule("image_tower/patch_embedding/kernel", f"{IMAGE}/embedding/kernel", "flatten"),
             Rule("image_tower/patch_embedding/bias", f"{IMAGE}/embedding/bias", "same"),
             Rule("image_tower/position_embedding", f"{IMAGE}/pos_embedding", "flatten")]
    for i in range(vision_depth):
        table += _block(f"image_tower/encoder/blocks/{i}", f"{encoder}/encoderblock_{i}")
    table += layouts.norm("image_tower/encoder/final_norm", f"{encoder}/encoder_norm", NORM)
    head = f"{IMAGE}/MAPHead_0"
    table += ([Rule("image_tower/attention_pool/probe", f"{head}/probe", "flatten")]
              + _attention("image_tower/attention_pool/attention",
                           f"{head}/MultiHeadDotProductAttention_0")
              + layouts.norm("image_tower/attention_pool/norm", f"{head}/LayerNorm_0", NORM)
              + _mlp("image_tower/attention_pool/mlp", f"{head}/MlpBlock_0"))
    table += [Rule("text_tower/token_embedding", f"{TEXT}/Embed_0/embedding", "same"),
              Rule("text_tower/position_embedding", f"{TEXT}/pos_embedding", "flatten")]
    for i in range(text_depth):
        table += _block(f"text_tower/encoder/blocks/{i}", f"{text_encoder}/encoderblock_{i}")
    table += layouts.norm("text_tower/encoder/final_norm", f"{text_encoder}/encoder_norm", NORM)
    table += [Rule("text_projection/kernel", f"{TEXT}/head/kernel", "same"),
              Rule("text_projection/bias", f"{TEXT}/head/bias", "same"),
              Rule("logit_scale", "params/t", "scalar"), Rule("logit_bias", "params/b", "scalar")]
    return table


def convert(weights: dict[str, np.ndarray], source: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.model / config.data fields, {mmjax name: array}) for a big_vision SigLIP npz."""
    weights = unstack_scanned({k if k.startswith("params/") else f"params/{k}": v
                               for k, v in weights.items()})
    if f"{IMAGE}/MAPHead_0/probe" not in weights or f"{TEXT}/head/kernel" not in weights:
        raise ValueError(f"{source} is not a big_vision SigLIP checkpoint (a ViT with a MAP "
                         "head and a text tower with a head; params/img/MAPHead_0 and "
                         "params/txt/head are missing).")
    vision_depth = layouts.count_blocks(weights, f"{IMAGE}/Transformer/encoderblock")
    text_depth = layouts.count_blocks(weights, f"{TEXT}/Encoder_0/encoderblock")
    params = layouts.apply_to_ours(rules(vision_depth, text_depth), weights, source)

    def shape(tower, depth):
        query = params[f"{tower}/encoder/blocks/0/attention/query"]
        return dict(variant=None, width=int(query.shape[0]), depth=depth,
                    mlp_dim=int(params[f"{tower}/encoder/blocks/0/mlp/up/kernel"].shape[1]),
                    num_heads=int(query.shape[1]), norm_epsilon=1e-6, activation="gelu",
                    key_bias=True)

    patch = weights[f"{IMAGE}/embedding/kernel"].shape[0]
    grid = int(round(params["image_tower/position_embedding"].shape[0] ** 0.5))
    vocab_size, context = (params["text_tower/token_embedding"].shape[0],
                           params["text_tower/position_embedding"].shape[0])
    image_tower = dict(name="vit", patch_size=int(patch), pooling="map", pre_norm=False,
                       patch_bias=True, **shape("image_tower", vision_depth))
    text_tower = dict(name="transformer", context_length=int(context), causal=False,
                      pooling="last", mask_padding=False, pad_id=1, eot_id=1,
                      **shape("text_tower", text_depth))
    model = dict(vocab_size=int(vocab_size), embed_dim=image_tower["width"],
                 image_projection=False, text_projection_bias=True,
                 logit_bias_init=float(params["logit_bias"]),
                 image_tower=image_tower, text_tower=text_tower)
    return dict(model=model, data=dict(image_size=grid * int(patch),
                                       normalization="minus_one_one")), params
