"""PyTorch parameter layouts (open_clip, transformers) against mmjax's, as lists of rules.

A rule pairs one mmjax parameter with one of theirs and says how the array changes between
them; the same list converts in both directions, so an import followed by an export gives the
original tensors back exactly (transposes and reshapes only). Fused attention projections
(open_clip's and torch's `in_proj_weight`) are split into q/k/v names before the rules apply
and fused after.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np


class Rule(NamedTuple):
    ours: str
    theirs: str
    # "same"; "dense" (torch Linear [out, in] vs our kernel [in, out]); "heads_in", "heads_bias",
    # "heads_out" (attention kernels split by head); "patch" (a conv over patches vs our kernel
    # over flattened patches); "row" ([w] vs our [1, w]); "scalar" ([] or [1] vs our []);
    # "flatten" (leading axes folded into one; import only).
    kind: str
    heads: int = 0


def to_ours(rule: Rule, x: np.ndarray) -> np.ndarray:
    kind = rule.kind
    if kind == "dense":
        return x.T
    if kind == "heads_in":  # torch [heads * head_dim, in] -> [in, heads, head_dim]
        return x.T.reshape(x.shape[1], rule.heads, -1)
    if kind == "heads_bias":
        return x.reshape(rule.heads, -1)
    if kind == "heads_out":  # torch [out, heads * head_dim] -> [heads, head_dim, out]
        return x.T.reshape(rule.heads, -1, x.shape[0])
    if kind == "patch":  # [width, 3, p, p] -> [p * p * 3, width], rows in patchify's order
        return x.transpose(2, 3, 1, 0).reshape(-1, x.shape[0])
    if kind == "row":
        return x[None]
    if kind == "scalar":
        return x.reshape(())
    if kind == "flatten":  # big_vision's leading axes: [1, n, w], [p, p, 3, w] -> [..., w]
        return x.reshape(-1, x.shape[-1])
    return x


def to_theirs(rule: Rule, x: np.ndarray, scalar_shape=()) -> np.ndarray:
    kind = rule.kind
    if kind == "flatten":  # the folded axes' sizes are not in the rule: one way only
        raise ValueError(f"{rule.theirs}: a 'flatten' rule converts into mmjax's layout only.")
    if kind == "dense":
        return x.T
    if kind == "heads_in":
        return x.reshape(x.shape[0], -1).T
    if kind == "heads_bias":
        return x.reshape(-1)
    if kind == "heads_out":
        return x.reshape(-1, x.shape[-1]).T
    if kind == "patch":
        p = int(round((x.shape[0] // 3) ** 0.5))
        return x.reshape(p, p, 3, x.shape[1]).transpose(3, 2, 0, 1)
    if kind == "row":
        return x[0]
    if kind == "scalar":
        return x.reshape(scalar_shape)
    return x


def norm(ours: str, theirs: str, names: str = ".weight .bias") -> list[Rule]:
    scale, bias = names.split()
    return [Rule(f"{ours}/scale", f"{theirs}{scale}", "same"),
            Rule(f"{ours}/bias", f"{theirs}{bias}", "same")]


def dense(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    return ([Rule(f"{ours}/kernel", f"{theirs}.weight", "dense")]
            + ([Rule(f"{ours}/bias", f"{theirs}.bias", "same")] if bias else []))


def attention(ours: str, theirs: str, heads: int, out: str = "out_proj") -> list[Rule]:
    """An mmjax MultiHeadAttention (with key_bias) against torch q_proj/k_proj/v_proj/out_proj."""
    rules = []
    for ours_name, theirs_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules += [Rule(f"{ours}/{ours_name}", f"{theirs}.{theirs_name}.weight", "heads_in", heads),
                  Rule(f"{ours}/{ours_name}_bias", f"{theirs}.{theirs_name}.bias", "heads_bias",
                       heads)]
    return rules + [Rule(f"{ours}/out", f"{theirs}.{out}.weight", "heads_out", heads),
                    Rule(f"{ours}/out_bias", f"{theirs}.{out}.bias", "same")]


# Their names of a pre-LN block's parts: open_clip's (after split_in_proj) and transformers'.
OPEN_CLIP_BLOCK = dict(attention_norm="ln_1", attention="attn", mlp_norm="ln_2", up="mlp.c_fc",
                       down="mlp.c_proj")
TRANSFORMERS_BLOCK = dict(attention_norm="layer_norm1", attention="self_attn",
                          mlp_norm="layer_norm2", up="mlp.fc1", down="mlp.fc2")


def blocks(ours: str, theirs: str, depth: int, heads: int, names: dict) -> list[Rule]:
    """A stack's blocks: ours at `ours/blocks/i`, theirs at `theirs.i`."""
    rules = []
    for i in range(depth):
        o, t = f"{ours}/blocks/{i}", f"{theirs}.{i}"
        rules += (norm(f"{o}/attention_norm", f"{t}.{names['attention_norm']}")
                  + attention(f"{o}/attention", f"{t}.{names['attention']}", heads)
                  + norm(f"{o}/mlp_norm", f"{t}.{names['mlp_norm']}")
                  + dense(f"{o}/mlp/up", f"{t}.{names['up']}")
                  + dense(f"{o}/mlp/down", f"{t}.{names['down']}"))
    return rules


def count_blocks(names, prefix: str) -> int:
    """How many numbered blocks `prefix.N.` (or `prefix/N/`, `prefix_N/`) the names hold."""
    pattern = re.compile(re.escape(prefix) + r"[./_](\d+)[./]")
    return 1 + max(int(m.group(1)) for n in names if (m := pattern.match(n)))


def tower_shape(params: dict[str, np.ndarray], tower: str) -> dict[str, int]:
    """width, mlp_dim, num_heads and depth of an mmjax tower, read from its parameters."""
    block = f"{tower}/encoder/blocks/0"
    return dict(width=int(params[f"{tower}/encoder/final_norm/scale"].shape[0]),
                mlp_dim=int(params[f"{block}/mlp/up/kernel"].shape[1]),
                num_heads=int(params[f"{block}/attention/query"].shape[1]),
                depth=count_blocks(params, f"{tower}/encoder/blocks"))


def patch_size(params: dict[str, np.ndarray]) -> int:
    """The ViT's patch size, from its kernel over flattened RGB patches [p * p * 3, width]."""
    return int(round((params["image_tower/patch_embedding/kernel"].shape[0] // 3) ** 0.5))


def fill_exact(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`params` with what OpenAI-style layouts always have and an mmjax model may lack, filled
    so that the function is the same: zero key biases, and a zero position for the class token
    (the class token then is the whole sum)."""
    params = dict(params)
    for name in [n for n in params if n.endswith("/value_bias")]:
        params.setdefault(name[:-len("value_bias")] + "key_bias", np.zeros_like(params[name]))
    positions = params["image_tower/position_embedding"]
    if (
        "image_tower/cls_token" in params
        and round(positions.shape[0] ** 0.5) ** 2 == positions.shape[0]
    ):
        params["image_tower/position_embedding"] = np.concatenate(
            [np.zeros_like(positions[:1]), positions])
    return params


class Needs:
    """What a target format needs of config.model, gathered so that a refusal names it all."""

    def __init__(self, config, target: str):
        self.model, self.target, self.items = config.model, target, []

    def field(self, name: str, wanted, default=None):
        value = self.model
        for part in name.split("."):
            value = value.get(part, default) if hasattr(value, "get") else default
        if value != wanted:
            self.items.append(f"config.model.{name}={wanted!r} (is {value!r})")

    def add(self, text: str):
        self.items.append(text)

    def check(self):
        if self.items:
            raise ValueError(f"{self.target} cannot represent this model; it needs "
                             + "; ".join(self.items) + ".")


def split_in_proj(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fused `X.in_proj_weight` / `X.in_proj_bias` [3 * width, ...] as X.q_proj/k_proj/v_proj."""
    split = {}
    for name, value in weights.items():
        match = re.fullmatch(r"(.*)\.in_proj_(weight|bias)", name)
        if not match:
            split[name] = value
            continue
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=0)):
            split[f"{match.group(1)}.{part}.{match.group(2)}"] = chunk
    return split


def fuse_in_proj(weights: dict[str, np.ndarray], prefixes) -> dict[str, np.ndarray]:
    """The inverse of split_in_proj for the attention modules at `prefixes`."""
    fused = dict(weights)
    for prefix in prefixes:
        for kind in ("weight", "bias"):
            parts = [fused.pop(f"{prefix}.{p}.{kind}") for p in ("q_proj", "k_proj", "v_proj")]
            fused[f"{prefix}.in_proj_{kind}"] = np.concatenate(parts, axis=0)
    return fused


def apply_to_ours(rules: list[Rule], weights: dict[str, np.ndarray], source: str,
                  ignored=()) -> dict[str, np.ndarray]:
    """Their weights -> {our name: array}; every weight must be placed (or match `ignored`)."""
    missing = [r.theirs for r in rules if r.theirs not in weights]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} weights the architecture needs "
                         f"(first: {missing[:3]}); is it the model its config describes?")
    used = {r.theirs for r in rules}
    unused = [n for n in weights if n not in used and not any(re.fullmatch(p, n) for p in ignored)]
    if unused:
        raise ValueError(f"{source}: {len(unused)} weights have no place in mmjax's model "
                         f"(first: {unused[:3]}); this architecture is not supported.")
    return {r.ours: np.asarray(to_ours(r, weights[r.theirs]), np.float32) for r in rules}


def apply_to_theirs(rules: list[Rule], params: dict[str, np.ndarray],
                    scalar_shape=()) -> dict[str, np.ndarray]:
    return {r.theirs: np.array(to_theirs(r, np.asarray(params[r.ours], np.float32),
                                        scalar_shape), order="C")
            for r in rules}
