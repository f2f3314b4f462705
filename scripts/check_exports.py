"""Do open_clip and transformers give mmjax's embeddings for an exported mmjax model?

Two steps, in two environments (mmjax's has no torch; the other needs no JAX):

  # mmjax's environment: export W to both formats, and write mmjax's embeddings of fixed
  # inputs (the eval preprocessing of random images; captions tokenised by mmjax)
  python scripts/check_exports.py export --workdir=W --out=D
  # an environment with torch, open_clip_torch and transformers
  python scripts/check_exports.py compare --out=D

`compare` loads D/open_clip with open_clip.create_model("local-dir:...") and D/hf with
transformers.AutoModel.from_pretrained, embeds the same inputs, prints the largest relative
error per package and tower, checks that both packages' tokenizers give mmjax's token ids for
the captions (a clip_bpe run), writes D/check_exports.json, and exits 1 above --tolerance or on
different ids.
"""

import argparse
import json
import os
import sys

import numpy as np

CAPTIONS = ["one small red circle at the top", "three large cyan crosses in the center",
            "two green squares on the left", "a blue triangle at the bottom right"]


def export(workdir: str, out: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mmjax import inference
    from mmjax.tools.weights import export_hf, export_open_clip

    export_open_clip.export_open_clip(workdir, os.path.join(out, "open_clip"))
    export_hf.export_hf(workdir, os.path.join(out, "hf"))
    model = inference.load(workdir)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 40, 3), dtype=np.uint8)
    images = inference.preprocess_images(pixels, model.image_size,
                                         model.config.data.normalization)
    tokens = model.tokenizer(CAPTIONS)
    np.savez(os.path.join(out, "mmjax_embeddings.npz"), images=images, tokens=tokens,
             image_embeddings=model.encode_image(images), text_embeddings=model.encode_text(tokens))
    print(f"exported {workdir} to {out}/open_clip and {out}/hf")


def compare(out: str, tolerance: float) -> int:
    import open_clip
    import torch
    import transformers

    reference = np.load(os.path.join(out, "mmjax_embeddings.npz"))
    images = torch.from_numpy(reference["images"]).permute(0, 3, 1, 2)
    tokens = torch.from_numpy(reference["tokens"].astype(np.int64))

    def pooled(x):
        return (x if isinstance(x, torch.Tensor) else x.pooler_output).numpy()

    with torch.no_grad():
        clip_model = open_clip.create_model(f"local-dir:{os.path.join(out, 'open_clip')}").eval()
        hf_model = transformers.AutoModel.from_pretrained(os.path.join(out, "hf")).eval()
        got = {("open_clip", "image"): clip_model.encode_image(images).numpy(),
               ("open_clip", "text"): clip_model.encode_text(tokens).numpy(),
               ("transformers", "image"): pooled(hf_model.get_image_features(pixel_values=images)),
               ("transformers", "text"): pooled(hf_model.get_text_features(input_ids=tokens))}
    # The tokenizers that came along: the same ids as mmjax's for the same captions.
    context = reference["tokens"].shape[1]
    hf_tokens = transformers.AutoTokenizer.from_pretrained(os.path.join(out, "hf"))(
        CAPTIONS, padding="max_length", max_length=context, truncation=True)["input_ids"]
    open_clip_tokens = open_clip.get_tokenizer(f"local-dir:{os.path.join(out, 'open_clip')}")(
        CAPTIONS).numpy()
    same_ids = {"transformers": bool(np.array_equal(hf_tokens, reference["tokens"])),
                "open_clip": bool(np.array_equal(open_clip_tokens, reference["tokens"]))}
    print(f"token ids equal to mmjax's: {same_ids}")
    rows = {}
    print(f"{'package':<14}{'tower':<7}{'max relative error':>20}")
    for (package, tower), value in got.items():
        expected = reference[f"{tower}_embeddings"]
        error = float((np.linalg.norm(value - expected, axis=1)
                       / np.linalg.norm(expected, axis=1)).max())
        rows[f"{package}/{tower}"] = error
        print(f"{package:<14}{tower:<7}{error:>20.2e}")
    versions = dict(open_clip=open_clip.__version__, transformers=transformers.__version__,
                    torch=torch.__version__)
    with open(os.path.join(out, "check_exports.json"), "w") as f:
        json.dump(dict(max_relative_error=rows, same_token_ids=same_ids, tolerance=tolerance,
                       versions=versions), f, indent=2)
    return int(max(rows.values()) > tolerance or not all(same_ids.values()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["export", "compare"])
    parser.add_argument("--workdir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    if args.step == "export":
        export(args.workdir, args.out)
        return 0
    return compare(args.out, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
