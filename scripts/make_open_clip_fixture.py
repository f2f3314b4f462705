"""Writes the tiny open_clip fixtures that tests/test_import_open_clip.py compares against.

Run once, in an environment with open_clip_torch, torch and safetensors (not needed by mmjax):
    python scripts/make_open_clip_fixture.py --out=tests/fixtures

For each activation (GELU, QuickGELU) it builds a tiny open_clip CLIP with random weights (layer
norms perturbed too, so the test exercises them), and saves its state dict as .safetensors and
its image and text embeddings for fixed inputs as .npz.
"""

import argparse
import os

import numpy as np
import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

VOCAB_SIZE, CONTEXT = 300, 12  # above the byte tokenizer's 260 ids


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, quick_gelu in (("gelu", False), ("quickgelu", True)):
        torch.manual_seed(0)
        model = CLIP(
            embed_dim=16,
            vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, mlp_ratio=2.0,
                                     patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB_SIZE, width=32,
                                 heads=2, layers=2, mlp_ratio=2.0),
            quick_gelu=quick_gelu,
        )
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        model.eval()
        images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        tokens = torch.zeros(3, CONTEXT, dtype=torch.long)
        for row, length in enumerate((4, 7, 10)):  # [sot, words..., eot, pad...]
            tokens[row, 0] = VOCAB_SIZE - 2
            tokens[row, 1:length - 1] = torch.randint(1, VOCAB_SIZE - 2, (length - 2,))
            tokens[row, length - 1] = VOCAB_SIZE - 1
        with torch.no_grad():
            image_embeddings = model.encode_image(images).numpy()
            text_embeddings = model.encode_text(tokens).numpy()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(args.out, f"open_clip_tiny_{name}.safetensors"))
        np.savez(os.path.join(args.out, f"open_clip_tiny_{name}_io.npz"),
                 images=images.permute(0, 2, 3, 1).numpy(), tokens=tokens.numpy(),
                 image_embeddings=image_embeddings, text_embeddings=text_embeddings,
                 open_clip_version=open_clip.__version__)
        print(name, {k: tuple(v.shape) for k, v in list(state.items())[:4]}, "...")


if __name__ == "__main__":
    main()
