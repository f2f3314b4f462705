"""open_clip's CLIP (ViT image tower) against mmjax's: weight names, and its model config.

Used by import_open_clip (their weights in) and export_open_clip (ours out). Exact both ways:
an imported model carries open_clip's key biases, class-token position and missing patch bias
(image_tower.key_bias / class_position / patch_bias), so exporting it gives the same tensors.
"""

from __future__ import annotations

import numpy as np

from mmjax.tools.weights import layouts
from mmjax.tools.weights.layouts import Rule

# open_clip's LayerNorm epsilon when its config gives none.
OPEN_CLIP_NORM_EPSILON = 1e-5
# mmjax activation -> (open_clip's quick_gelu flag, the act_kwargs its nn.GELU then takes).
ACTIVATIONS = {"gelu_exact": (False, None), "gelu": (False, {"approximate": "tanh"}),
               "quick_gelu": (True, None)}


def rules(vision_depth: int, vision_heads: int, text_depth: int, text_heads: int, *,
          pre_norm: bool = True, logit_bias: bool = False) -> list[Rule]:
    """open_clip CLIP (after layouts.split_in_proj) <-> an mmjax CLIP with key biases and a
    class position."""
    block = layouts.OPEN_CLIP_BLOCK
    return ([Rule("image_tower/patch_embedding/kernel", "visual.conv1.weight", "patch"),
             Rule("image_tower/cls_token", "visual.class_embedding", "row"),
             Rule("image_tower/position_embedding", "visual.positional_embedding", "same")]
            + (layouts.norm("image_tower/pre_norm", "visual.ln_pre") if pre_norm else [])
            + layouts.blocks("image_tower/encoder", "visual.transformer.resblocks", vision_depth,
                             vision_heads, block)
            + layouts.norm("image_tower/encoder/final_norm", "visual.ln_post")
            + [Rule("image_projection/kernel", "visual.proj", "same"),
               Rule("text_tower/token_embedding", "token_embedding.weight", "same"),
               Rule("text_tower/position_embedding", "positional_embedding", "same")]
            + layouts.blocks("text_tower/encoder", "transformer.resblocks", text_depth, text_heads,
                             block)
            + layouts.norm("text_tower/encoder/final_norm", "ln_final")
            + [Rule("text_projection/kernel", "text_projection", "same"),
               Rule("logit_scale", "logit_scale", "scalar")]
            + ([Rule("logit_bias", "logit_bias", "scalar")] if logit_bias else []))


def attention_modules(vision_depth: int, text_depth: int) -> list[str]:
    return ([f"visual.transformer.resblocks.{i}.attn" for i in range(vision_depth)]
            + [f"transformer.resblocks.{i}.attn" for i in range(text_depth)])


def to_open_clip(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An mmjax CLIP's parameters as open_clip's state dict. What open_clip always has and the
    model may lack is filled so the function is the same: zero key biases, and a zero position
    for the class token when the model adds none (its class token then is the whole sum)."""
    params = layouts.fill_exact(params)
    vision, text = (layouts.tower_shape(params, t) for t in ("image_tower", "text_tower"))
    table = rules(vision["depth"], vision["num_heads"], text["depth"], text["num_heads"],
                  pre_norm="image_tower/pre_norm/scale" in params,
                  logit_bias="logit_bias" in params)
    weights = layouts.apply_to_theirs(table, params)
    return layouts.fuse_in_proj(weights, attention_modules(vision["depth"], text["depth"]))


def model_config(config, params: dict[str, np.ndarray], text_ids: dict) -> dict:
    """open_clip's model_cfg for an mmjax run, or ValueError naming every config field that
    open_clip cannot represent and the value it needs. `text_ids`: the text tower's resolved
    pad_id and eot_id (models.text_tower_ids, overridden by the config)."""
    image, text = config.model.image_tower, config.model.text_tower
    needs = layouts.Needs(config, "open_clip")
    for name, wanted, default in (
            ("name", "clip", None), ("image_tower.name", "vit", None),
            ("image_tower.pooling", "cls", None), ("image_tower.patch_bias", False, True),
            ("image_projection", True, True), ("text_projection_bias", False, False),
            ("text_tower.name", "transformer", None), ("text_tower.causal", True, True),
            ("text_tower.pooling", "eot", "eot")):
        needs.field(name, wanted, default)
    activations = (image.get("activation", "gelu"), text.get("activation", "gelu"))
    for field, activation in zip(("image_tower", "text_tower"), activations):
        if activation not in ACTIVATIONS:
            needs.add(f"config.model.{field}.activation in {sorted(ACTIVATIONS)} "
                      f"(is {activation!r})")
    if all(a in ACTIVATIONS for a in activations) and \
            ACTIVATIONS[activations[0]][0] != ACTIVATIONS[activations[1]][0]:
        needs.add("one activation form for both towers: open_clip's quick_gelu flag is the "
                  f"model's (image {activations[0]!r}, text {activations[1]!r})")
    needs.check()

    def tower(prefix, cfg):
        shape = layouts.tower_shape(params, prefix)
        width, mlp_dim, heads = shape["width"], shape["mlp_dim"], shape["num_heads"]
        fields = dict(width=width, layers=shape["depth"], mlp_ratio=mlp_dim / width)
        if int(width * fields["mlp_ratio"]) != mlp_dim:
            raise ValueError(f"{prefix}: mlp_dim {mlp_dim} is not width x a ratio open_clip "
                             "rounds back to it.")
        epsilon = cfg.get("norm_epsilon", 1e-6)
        if epsilon != OPEN_CLIP_NORM_EPSILON:
            fields["norm_kwargs"] = {"eps": epsilon}
        act_kwargs = ACTIVATIONS[cfg.get("activation", "gelu")][1]
        if act_kwargs:
            fields["act_kwargs"] = act_kwargs
        return fields, heads

    vision, vision_heads = tower("image_tower", image)
    vision.update(head_width=vision["width"] // vision_heads, image_size=config.data.image_size,
                  patch_size=layouts.patch_size(params),
                  patch_dropout=float(image.get("patch_dropout", 0.0)),
                  no_ln_pre="image_tower/pre_norm/scale" not in params)
    text_cfg, text_heads = tower("text_tower", text)
    vocab_size, context_length = params["text_tower/token_embedding"].shape[0], \
        params["text_tower/position_embedding"].shape[0]
    eot_id = text_ids["eot_id"]
    text_cfg.update(heads=text_heads, vocab_size=int(vocab_size),
                    context_length=int(context_length), pad_id=int(text_ids["pad_id"]))
    # open_clip pools at the largest id (argmax) by default; "eos" finds any end-of-text id.
    if eot_id != vocab_size - 1:
        text_cfg.update(pool_type="eos", eos_id=int(eot_id))
    cfg = dict(embed_dim=int(params["text_projection/kernel"].shape[1]),
               quick_gelu=ACTIVATIONS[activations[0]][0], vision_cfg=vision, text_cfg=text_cfg)
    if "logit_bias" in params:
        cfg["init_logit_bias"] = float(params["logit_bias"])
    return cfg
