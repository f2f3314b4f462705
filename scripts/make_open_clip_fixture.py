"""Writes the tiny open_clip fixtures that tests/test_import_open_clip.py compares against.

Run once, in an environment with open_clip_torch, torch and safetensors (not needed by mmjax):
    python scripts/make_open_clip_fixture.py --out=tests/fixtures

For each activation (GELU, QuickGELU) it builds a tiny open_clip CLIP with random weights (layer
norms perturbed too, so the test exercises them), and saves its state dict as .safetensors and
its image and text embeddings for fixed inputs as .npz. It also copies CLIP's BPE merges file and
writes open_clip's tokenisation of a set of captions (clip_bpe_captions.json).
"""

import argparse
import json
import os
import shutil

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
    write_tokenizer_fixture(args.out)


# Edge cases for the tokenizer: punctuation, case, HTML entities, mojibake, accents, CJK, emoji,
# contractions, numbers, odd whitespace, the empty string, and a text longer than the context.
CAPTIONS = [
    "two large red circles on the left", "A photo of a DOG!!", "naïve café — 100% “quoted”",
    "&amp; html &lt;b&gt;bold&lt;/b&gt;", "  multiple   spaces\tand\nnewlines ", "emoji 😀 test",
    "don't we'll they're I'M", "numbers 12345 and 3.14", "", "日本語のテキスト", "mojibake Ã©tÃ©",
    "a photo of a " + " ".join(["very"] * 90) + " long caption",
]


def write_tokenizer_fixture(out_dir):
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    shutil.copyfile(default_bpe(), os.path.join(out_dir, "bpe_simple_vocab_16e6.txt.gz"))
    tokenizer = SimpleTokenizer(context_length=77)
    captions = CAPTIONS + [
        f"{n} {s} {c} {shape} {p}"
        for n in ("one", "three")
        for s in ("small", "large")
        for c in ("red", "cyan") for shape in ("circle", "crosses")
        for p in ("at the top", "in the center")
    ]
    tokens = tokenizer(captions).numpy().tolist()
    with open(os.path.join(out_dir, "clip_bpe_captions.json"), "w") as f:
        json.dump({"context_length": 77, "captions": captions, "tokens": tokens}, f,
                  ensure_ascii=False)


if __name__ == "__main__":
    main()
