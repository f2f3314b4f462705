"""Writes the tiny transformers fixtures that tests/test_weights_in_out.py compares against.

Run once, in an environment with torch and transformers (not needed by mmjax):
    python scripts/make_hf_fixture.py --out=tests/fixtures

Builds a tiny CLIPModel and a tiny SiglipModel with random weights (every parameter perturbed,
biases and layer norms too, so the tests exercise them), saves each with save_pretrained
(config.json + model.safetensors) and their embeddings of fixed inputs (.npz). It also writes
the SigLIP weights in big_vision's .npz layout (`params/img/...`, `params/txt/...`, as big_vision
publishes SigLIP: per-block names, MAP head, text head, `t` and `b`), with the same reference
embeddings: a big_vision model computes what the SiglipModel computes from them.
"""

import argparse
import os

import numpy as np
import torch
import transformers
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

IMAGE, PATCH, CONTEXT, VOCAB = 32, 8, 12, 300


def perturb(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def inputs(eos_id, pad_id, bos_id=None):
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    tokens = torch.full((3, CONTEXT), pad_id, dtype=torch.long)
    generator = torch.Generator().manual_seed(2)
    for row, length in enumerate((4, 7, CONTEXT)):
        words = torch.randint(3, VOCAB - 2, (length,), generator=generator)
        if bos_id is not None:
            words[0] = bos_id
        words[length - 1] = eos_id
        tokens[row, :length] = words
    return images, tokens


def features(output):
    # transformers 5 returns an output object from get_*_features; earlier versions a tensor.
    return (output if isinstance(output, torch.Tensor) else output.pooler_output).numpy()


def save(model, images, tokens, folder, name):
    model.save_pretrained(folder)
    with torch.no_grad():
        image_embeddings = features(model.get_image_features(pixel_values=images))
        text_embeddings = features(model.get_text_features(input_ids=tokens))
    np.savez(os.path.join(os.path.dirname(folder), f"{name}_io.npz"),
             images=images.permute(0, 2, 3, 1).numpy(), tokens=tokens.numpy(),
             image_embeddings=image_embeddings, text_embeddings=text_embeddings,
             transformers_version=transformers.__version__)


def tower(width=32, heads=2, layers=2, mlp=64, **extra):
    return dict(hidden_size=width, num_attention_heads=heads, num_hidden_layers=layers,
                intermediate_size=mlp, **extra)


def big_vision_layout(state):
    """A SiglipModel state dict in big_vision's names and shapes (kernels [in, out],
    attention kernels split by head, HWIO patch kernel, leading 1s on embeddings)."""
    s = {k: v.numpy() for k, v in state.items()}
    heads, width = 2, 32
    out = {}

    def attention(ours, theirs, fused=False):
        if fused:  # torch.nn.MultiheadAttention of the MAP head
            q, k, v = np.split(s[f"{theirs}.in_proj_weight"], 3)
            qb, kb, vb = np.split(s[f"{theirs}.in_proj_bias"], 3)
            parts = dict(query=(q, qb), key=(k, kb), value=(v, vb))
        else:
            parts = {n: (s[f"{theirs}.{p}_proj.weight"], s[f"{theirs}.{p}_proj.bias"])
                     for n, p in (("query", "q"), ("key", "k"), ("value", "v"))}
        for name, (weight, bias) in parts.items():
            out[f"{ours}/{name}/kernel"] = weight.T.reshape(width, heads, -1)
            out[f"{ours}/{name}/bias"] = bias.reshape(heads, -1)
        out[f"{ours}/out/kernel"] = s[f"{theirs}.out_proj.weight"].T.reshape(heads, -1, width)
        out[f"{ours}/out/bias"] = s[f"{theirs}.out_proj.bias"]

    def dense(ours, theirs):
        out[f"{ours}/kernel"], out[f"{ours}/bias"] = s[f"{theirs}.weight"].T, s[f"{theirs}.bias"]

    def norm(ours, theirs):
        out[f"{ours}/scale"], out[f"{ours}/bias"] = s[f"{theirs}.weight"], s[f"{theirs}.bias"]

    def blocks(ours, theirs):
        for i in range(2):
            o, t = f"{ours}/encoderblock_{i}", f"{theirs}.{i}"
            norm(f"{o}/LayerNorm_0", f"{t}.layer_norm1")
            attention(f"{o}/MultiHeadDotProductAttention_0", f"{t}.self_attn")
            norm(f"{o}/LayerNorm_1", f"{t}.layer_norm2")
            dense(f"{o}/MlpBlock_0/Dense_0", f"{t}.mlp.fc1")
            dense(f"{o}/MlpBlock_0/Dense_1", f"{t}.mlp.fc2")

    v, t = "vision_model", "text_model"
    out["params/img/embedding/kernel"] = s[f"{v}.embeddings.patch_embedding.weight"].transpose(
        2, 3, 1, 0
    )
    out["params/img/embedding/bias"] = s[f"{v}.embeddings.patch_embedding.bias"]
    out["params/img/pos_embedding"] = s[f"{v}.embeddings.position_embedding.weight"][None]
    blocks("params/img/Transformer", f"{v}.encoder.layers")
    norm("params/img/Transformer/encoder_norm", f"{v}.post_layernorm")
    out["params/img/MAPHead_0/probe"] = s[f"{v}.head.probe"]
    attention("params/img/MAPHead_0/MultiHeadDotProductAttention_0", f"{v}.head.attention",
              fused=True)
    norm("params/img/MAPHead_0/LayerNorm_0", f"{v}.head.layernorm")
    dense("params/img/MAPHead_0/MlpBlock_0/Dense_0", f"{v}.head.mlp.fc1")
    dense("params/img/MAPHead_0/MlpBlock_0/Dense_1", f"{v}.head.mlp.fc2")
    out["params/txt/Embed_0/embedding"] = s[f"{t}.embeddings.token_embedding.weight"]
    out["params/txt/pos_embedding"] = s[f"{t}.embeddings.position_embedding.weight"][None]
    blocks("params/txt/Encoder_0", f"{t}.encoder.layers")
    norm("params/txt/Encoder_0/encoder_norm", f"{t}.final_layer_norm")
    dense("params/txt/head", f"{t}.head")
    out["params/t"], out["params/b"] = s["logit_scale"], s["logit_bias"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    clip = perturb(
        CLIPModel(
            CLIPConfig(
                text_config=tower(
                    vocab_size=VOCAB,
                    max_position_embeddings=CONTEXT,
                    hidden_act="quick_gelu",
                    eos_token_id=VOCAB - 1,
                    bos_token_id=VOCAB - 2,
                    pad_token_id=0,
                ),
                vision_config=tower(image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu"),
                projection_dim=16,
            )
        )
    )
    images, tokens = inputs(eos_id=VOCAB - 1, pad_id=0, bos_id=VOCAB - 2)
    save(clip, images, tokens, os.path.join(args.out, "hf_tiny_clip"), "hf_tiny_clip")

    siglip = perturb(SiglipModel(SiglipConfig(
        text_config=tower(vocab_size=VOCAB, max_position_embeddings=CONTEXT, eos_token_id=1,
                          pad_token_id=1, projection_size=32),
        vision_config=tower(image_size=IMAGE, patch_size=PATCH))))
    images, tokens = inputs(eos_id=1, pad_id=1)
    save(siglip, images, tokens, os.path.join(args.out, "hf_tiny_siglip"), "hf_tiny_siglip")
    np.savez(os.path.join(args.out, "big_vision_tiny_siglip.npz"),
             **big_vision_layout(siglip.state_dict()))
    print("wrote", sorted(os.listdir(args.out)))


if __name__ == "__main__":
    main()
