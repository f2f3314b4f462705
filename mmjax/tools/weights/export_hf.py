"""Export an mmjax CLIP to a Hugging Face transformers folder.

python -m mmjax.tools.weights.export_hf --workdir=W --out=DIR

DIR gets `config.json`, `model.safetensors` and `preprocessor_config.json`: a `CLIPModel`, or a
`SiglipModel` for a SigLIP-trained model (one with a logit bias), that
`transformers.AutoModel.from_pretrained(DIR)` loads and that gives mmjax's embeddings. A model
the target cannot represent is refused before anything is written, naming the config fields
and the values it needs. A model trained with CLIP's BPE (tokenizer clip_bpe) gets transformers'
CLIPTokenizer files, giving mmjax's token ids (`padding="max_length"`); others take the ids
from mmjax's tokenizer.
"""

from __future__ import annotations

import json

from mmjax import conventions, paths, text_tokenizers
from mmjax.tools.weights import hf_layout, weight_files


def preprocessor_config(config, kind: str) -> dict:
    mean, std = conventions.image_normalization(config.data.get("normalization", "minus_one_one"))
    size = int(config.data.image_size)
    common = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  image_mean=[m / 255 for m in mean], image_std=[s / 255 for s in std],
                  resample=2)  # bilinear, as mmjax's eval preprocessing
    if kind == "clip":
        return dict(common, image_processor_type="CLIPImageProcessor",
                    size={"shortest_edge": size}, do_center_crop=True,
                    crop_size={"height": size, "width": size})
    return dict(common, image_processor_type="SiglipImageProcessor",
                size={"height": size, "width": size})


def export_hf(workdir: str, out_dir: str) -> str:
    config, params, text_ids = weight_files.export_source(workdir)
    hf_config = hf_layout.hf_config(config, params, text_ids)  # refuses before writing
    kind = hf_config["model_type"]
    paths.makedirs(out_dir)
    weight_files.write_safetensors(hf_layout.to_hf(params, kind),
                                   paths.join(out_dir, "model.safetensors"), {"format": "pt"})
    paths.write_text(paths.join(out_dir, "config.json"), json.dumps(hf_config, indent=2))
    paths.write_text(paths.join(out_dir, "preprocessor_config.json"),
                     json.dumps(preprocessor_config(config, kind), indent=2))
    if config.tokenizer.name == "clip_bpe":
        write_clip_tokenizer(text_tokenizers.build_tokenizer(config.tokenizer), out_dir)
    return out_dir


def write_clip_tokenizer(tokenizer, out_dir: str) -> None:
    """CLIP's BPE as transformers' CLIPTokenizer files (vocab.json, merges.txt), with mmjax's
    layout: [start, ..., end, padding with id 0] to the context length."""
    hf_names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocabulary = {hf_names.get(token, token): i for token, i in tokenizer.encoder.items()}
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    paths.write_text(paths.join(out_dir, "vocab.json"), json.dumps(vocabulary, ensure_ascii=False))
    paths.write_text(paths.join(out_dir, "merges.txt"),
                     "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    pad = next(token for token, i in vocabulary.items() if i == tokenizer.pad_id)
    paths.write_text(paths.join(out_dir, "tokenizer_config.json"), json.dumps(dict(
        tokenizer_class="CLIPTokenizer", model_max_length=int(tokenizer.context_length),
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token=pad), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    weight_files.run_export(export_hf, "transformers.AutoModel.from_pretrained('{out}')")
