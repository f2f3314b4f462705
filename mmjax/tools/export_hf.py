"""Export an mmjax CLIP to a Hugging Face transformers folder.

python -m mmjax.tools.export_hf --workdir=W --out=DIR

DIR gets `config.json`, `model.safetensors` and `preprocessor_config.json`: a `CLIPModel`, or a
`SiglipModel` for a SigLIP-trained model (one with a logit bias), that
`transformers.AutoModel.from_pretrained(DIR)` loads and that gives mmjax's embeddings. A model
the target cannot represent is refused before anything is written, naming the config fields
and the values it needs. Tokenizers: strings are tokenised with mmjax's tokenizer (the
workdir's) and passed as input_ids.
"""

from __future__ import annotations

import json

from mmjax import conventions, paths
from mmjax.tools import hf_layout, weight_files


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
    return out_dir


if __name__ == "__main__":
    weight_files.run_export(export_hf, "transformers.AutoModel.from_pretrained('{out}')")
