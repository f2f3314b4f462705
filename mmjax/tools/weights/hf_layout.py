"""Hugging Face transformers' CLIPModel and SiglipModel against mmjax's CLIP.

Weight names both ways (layouts.Rule lists) and the config both ways: `config.json`'s
text_config / vision_config <-> config.model fields. An imported model has the parameter set of
the original (key biases; CLIP's class position and no patch bias; SigLIP's MAP head, bias on
the text head and no image projection), so an export gives the imported tensors back.
"""

from __future__ import annotations

import numpy as np

from mmjax.tools.weights import layouts
from mmjax.tools.weights.layouts import Rule

# transformers' hidden_act -> mmjax activation, and back.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu_exact", "gelu_pytorch_tanh": "gelu",
               "gelu_new": "gelu", "relu": "relu"}
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu_exact": "gelu", "gelu": "gelu_pytorch_tanh",
                  "relu": "relu"}
KINDS = ("clip", "siglip")
ARCHITECTURES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
# Buffers in their state dicts that carry no weights.
IGNORED = (r".*position_ids",)


def rules(kind: str, vision_depth: int, vision_heads: int, text_depth: int,
          text_heads: int) -> list[Rule]:
    block = layouts.TRANSFORMERS_BLOCK
    vision, text = "vision_model", "text_model"
    table = [
        Rule(
            "image_tower/patch_embedding/kernel",
            f"{vision}.embeddings.patch_embedding.weight",
            "patch",
        ),
        Rule(
            "image_tower/position_embedding",
            f"{vision}.embeddings.position_embedding.weight",
            "same",
        ),
    ]
    table += layouts.blocks("image_tower/encoder", f"{vision}.encoder.layers", vision_depth,
                            vision_heads, block)
    table += layouts.norm("image_tower/encoder/final_norm", f"{vision}.post_layernorm")
    table += [
        Rule("text_tower/token_embedding", f"{text}.embeddings.token_embedding.weight", "same"),
        Rule(
            "text_tower/position_embedding", f"{text}.embeddings.position_embedding.weight", "same"
        ),
    ]
    table += layouts.blocks("text_tower/encoder", f"{text}.encoder.layers", text_depth, text_heads,
                            block)
    table += layouts.norm("text_tower/encoder/final_norm", f"{text}.final_layer_norm")
    table += [Rule("logit_scale", "logit_scale", "scalar")]
    if kind == "clip":
        return table + [
            Rule("image_tower/cls_token", f"{vision}.embeddings.class_embedding", "row"),
            *layouts.norm("image_tower/pre_norm", f"{vision}.pre_layrnorm"),
            *layouts.dense("image_projection", "visual_projection", bias=False),
            *layouts.dense("text_projection", "text_projection", bias=False)]
    head = f"{vision}.head"
    return table + [
        Rule(
            "image_tower/patch_embedding/bias", f"{vision}.embeddings.patch_embedding.bias", "same"
        ),
        Rule("image_tower/attention_pool/probe", f"{head}.probe", "same"),  # [1, 1, w] outside
        *layouts.attention(
            "image_tower/attention_pool/attention", f"{head}.attention", vision_heads
        ),
        *layouts.norm("image_tower/attention_pool/norm", f"{head}.layernorm"),
        *layouts.dense("image_tower/attention_pool/mlp/up", f"{head}.mlp.fc1"),
        *layouts.dense("image_tower/attention_pool/mlp/down", f"{head}.mlp.fc2"),
        *layouts.dense("text_projection", f"{text}.head"),
        Rule("logit_bias", "logit_bias", "scalar"),
    ]


def model_kind(hf_config: dict) -> str:
    kind = hf_config.get("model_type")
    if kind not in KINDS:
        raise ValueError(f"config.json has model_type {kind!r}; mmjax reads {list(KINDS)} "
                         f"({list(ARCHITECTURES.values())}).")
    return kind


def mmjax_fields(hf_config: dict) -> dict:
    """config.model and config.data fields for a transformers config.json."""
    kind = model_kind(hf_config)
    vision, text = hf_config["vision_config"], hf_config["text_config"]

    def activation(tower):
        act = tower.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh")
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} has no mmjax equivalent ({sorted(ACTIVATIONS)}).")
        return ACTIVATIONS[act]

    def shape(tower):
        return dict(variant=None, width=tower["hidden_size"], depth=tower["num_hidden_layers"],
                    mlp_dim=tower["intermediate_size"], num_heads=tower["num_attention_heads"],
                    norm_epsilon=tower.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6),
                    activation=activation(tower), key_bias=True)

    vocab_size = text["vocab_size"]
    image_tower = dict(name="vit", patch_size=vision["patch_size"], **shape(vision))
    text_tower = dict(name="transformer", context_length=text["max_position_embeddings"],
                      pad_id=text.get("pad_token_id", 1), **shape(text))
    model = dict(vocab_size=vocab_size)
    if kind == "clip":
        eos = text.get("eos_token_id", 2)
        image_tower.update(pooling="cls", pre_norm=True, patch_bias=False, class_position=True)
        # eos_token_id 2 is transformers' legacy marker for "pool at the largest id".
        text_tower.update(causal=True, eot_id=vocab_size - 1 if eos == 2 else eos)
        model.update(embed_dim=hf_config.get("projection_dim", 512))
    else:
        if image_tower["activation"] != "gelu":
            raise ValueError("A SigLIP vision tower must use gelu_pytorch_tanh: mmjax's MAP head "
                             "uses that activation.")
        image_tower.update(pooling="map", pre_norm=False, patch_bias=True)
        text_tower.update(causal=False, pooling="last", mask_padding=False,
                          eot_id=text.get("eos_token_id", 1))
        model.update(embed_dim=vision["hidden_size"], image_projection=False,
                     text_projection_bias=True, logit_bias_init=0.0)
    return dict(model=dict(model, image_tower=image_tower, text_tower=text_tower),
                data=dict(image_size=vision["image_size"],
                          normalization="clip" if kind == "clip" else "minus_one_one"))


def hf_config(config, params: dict[str, np.ndarray], text_ids: dict) -> dict:
    """transformers' config.json for an mmjax run, or ValueError naming each config field that
    the target model cannot represent and the value it needs. SigLIP-trained models (those with
    a logit bias) become SiglipModel, others CLIPModel."""
    kind = "siglip" if "logit_bias" in params else "clip"
    image, text = config.model.image_tower, config.model.text_tower
    needs = layouts.Needs(config, f"transformers' {ARCHITECTURES[kind]}")
    for field, tower in (("image_tower", image), ("text_tower", text)):
        if tower.get("activation", "gelu") not in HF_ACTIVATIONS:
            needs.add(f"config.model.{field}.activation in {sorted(HF_ACTIVATIONS)}")
    wanted = [("name", "clip", None), ("image_tower.name", "vit", None),
              ("text_tower.name", "transformer", None)]
    if kind == "clip":
        wanted += [("image_tower.pooling", "cls", None), ("image_tower.patch_bias", False, True),
                   ("image_tower.pre_norm", True, False), ("image_projection", True, True),
                   ("text_projection_bias", False, False), ("text_tower.causal", True, True),
                   ("text_tower.pooling", "eot", "eot")]
        vocab_size = params["text_tower/token_embedding"].shape[0]
        if text_ids["eot_id"] == 2 and vocab_size - 1 != 2:
            needs.add("an end-of-text id other than 2 (transformers' CLIP takes eos_token_id 2 "
                      "to mean 'pool at the largest id'); use another tokenizer")
    else:
        wanted += [("image_tower.pooling", "map", None), ("image_tower.pre_norm", False, False),
                   ("image_tower.activation", "gelu", "gelu"), ("image_projection", False, True),
                   ("text_tower.causal", False, True), ("text_tower.pooling", "last", "eot"),
                   ("text_tower.mask_padding", False, True)]
    for name, value, default in wanted:
        needs.field(name, value, default)
    needs.check()

    def tower(prefix, cfg):
        shape = layouts.tower_shape(params, prefix)
        return dict(hidden_size=shape["width"], intermediate_size=shape["mlp_dim"],
                    num_attention_heads=shape["num_heads"], num_hidden_layers=shape["depth"],
                    hidden_act=HF_ACTIVATIONS[cfg.get("activation", "gelu")],
                    layer_norm_eps=float(cfg.get("norm_epsilon", 1e-6)))

    vision = dict(tower("image_tower", image), image_size=int(config.data.image_size),
                  patch_size=layouts.patch_size(params), num_channels=3)
    text_config = dict(tower("text_tower", text),
                       vocab_size=int(params["text_tower/token_embedding"].shape[0]),
                       max_position_embeddings=int(params["text_tower/position_embedding"].shape[0]),
                       pad_token_id=int(text_ids["pad_id"]), eos_token_id=int(text_ids["eot_id"]),
                       # -1: a tokenizer without one (SigLIP's).
                       bos_token_id=int(-1 if text_ids.get("bos_id") is None
                                        else text_ids["bos_id"]))
    embed_dim = int(params["text_projection/kernel"].shape[1])
    if kind == "clip":
        return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=embed_dim,
                    text_config=dict(text_config, projection_dim=embed_dim),
                    vision_config=dict(vision, projection_dim=embed_dim))
    return dict(architectures=["SiglipModel"], model_type="siglip",
                text_config=dict(text_config, projection_size=embed_dim),
                vision_config=vision)


def to_hf(params: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The state dict transformers loads; what the model lacks but the target always has is
    filled so the function stays the same (zero key biases, a zero class position, zero biases
    on SigLIP's patch embedding and text head)."""
    params = layouts.fill_exact(params)
    if kind == "siglip":
        for name, rows in (
            ("image_tower/patch_embedding/bias", "image_tower/patch_embedding/kernel"),
            ("text_projection/bias", "text_projection/kernel"),
        ):
            params.setdefault(name, np.zeros(params[rows].shape[1], np.float32))
    vision, text = (layouts.tower_shape(params, t) for t in ("image_tower", "text_tower"))
    table = rules(kind, vision["depth"], vision["num_heads"], text["depth"], text["num_heads"])
    weights = layouts.apply_to_theirs(table, params, scalar_shape=() if kind == "clip" else (1,))
    if kind == "siglip":
        weights = layouts.fuse_in_proj(weights, ["vision_model.head.attention"])
        weights["vision_model.head.probe"] = weights["vision_model.head.probe"][None]
    return weights


def from_hf(weights: dict[str, np.ndarray], hf_config_dict: dict, source: str):
    kind = model_kind(hf_config_dict)
    vision, text = hf_config_dict["vision_config"], hf_config_dict["text_config"]
    weights = layouts.split_in_proj(weights)
    if kind == "siglip":
        weights = dict(weights)
        weights["vision_model.head.probe"] = weights["vision_model.head.probe"][0]
    table = rules(kind, vision["num_hidden_layers"], vision["num_attention_heads"],
                  text["num_hidden_layers"], text["num_attention_heads"])
    return layouts.apply_to_ours(table, weights, source, ignored=IGNORED)
