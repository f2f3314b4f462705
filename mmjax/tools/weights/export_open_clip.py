"""Export an mmjax CLIP to open_clip's Hugging Face layout.

python -m mmjax.tools.weights.export_open_clip --workdir=W --out=DIR

DIR gets `open_clip_config.json` (model_cfg and preprocess_cfg) and
`open_clip_model.safetensors`; open_clip loads it with
`open_clip.create_model_and_transforms("local-dir:DIR")` and gives the same embeddings. A model
open_clip cannot represent is refused before anything is written, naming the config fields that
differ and the values open_clip needs (configs/clip_b16_open_clip.py trains open_clip's ViT-B-16
exactly). open_clip tokenises strings with CLIP's BPE: a model trained with another tokenizer
takes token ids from mmjax's tokenizer.
"""

from __future__ import annotations

import json

from mmjax import conventions, paths
from mmjax.tools.weights import open_clip_layout, weight_files

CONFIG_NAME, WEIGHTS_NAME = "open_clip_config.json", "open_clip_model.safetensors"


def preprocess_config(config) -> dict:
    mean, std = conventions.image_normalization(config.data.get("normalization", "minus_one_one"))
    return dict(size=int(config.data.image_size), mean=[m / 255 for m in mean],
                std=[s / 255 for s in std], interpolation="bilinear", resize_mode="shortest")


def export_open_clip(workdir: str, out_dir: str) -> str:
    config, params, text_ids = weight_files.export_source(workdir)
    model_cfg = open_clip_layout.model_config(config, params, text_ids)  # refuses before writing
    weights = open_clip_layout.to_open_clip(params)
    paths.makedirs(out_dir)
    weight_files.write_safetensors(weights, paths.join(out_dir, WEIGHTS_NAME))
    paths.write_text(paths.join(out_dir, CONFIG_NAME), json.dumps(dict(
        model_cfg=model_cfg, preprocess_cfg=preprocess_config(config),
        mmjax=dict(workdir=str(workdir), tokenizer=config.tokenizer.to_dict())), indent=2))
    return out_dir


if __name__ == "__main__":
    weight_files.run_export(export_open_clip,
                            "open_clip.create_model_and_transforms('local-dir:{out}')")
