"""Weight files and workdirs, for the converters in and out of mmjax.

`.safetensors` through the safetensors package's numpy API (no torch); PyTorch state dicts
(`.pt`, `.bin`) through torch with `weights_only=True` (never arbitrary pickle); big_vision's
`.npz` (nested names joined with "/"). Every path goes through mmjax.paths, so a bucket works
wherever a local folder does.
"""

from __future__ import annotations

import io
import re

import numpy as np
import safetensors.numpy

from mmjax import defaults, inference, models, paths, text_tokenizers
from mmjax.training import checkpoint
from mmjax.training.trainer import Trainer


def read_weights(path: str) -> dict[str, np.ndarray]:
    """{name: float32 array} of a weights file ("module." prefixes of DDP checkpoints dropped)."""
    if not paths.exists(path):
        raise FileNotFoundError(f"No weights file at {path}.")
    if path.endswith(".safetensors"):
        tensors = safetensors.numpy.load(paths.read_bytes(path))
    elif path.endswith(".npz"):
        with np.load(io.BytesIO(paths.read_bytes(path))) as archive:
            tensors = {name: archive[name] for name in archive.files}
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{path} is a PyTorch file: install torch to read it, or convert it "
                              "to .safetensors.") from e
        loaded = torch.load(io.BytesIO(paths.read_bytes(path)), map_location="cpu",
                            weights_only=True)
        loaded = loaded.get("state_dict", loaded)
        tensors = {k: v.float().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}
    return {re.sub(r"^module\.", "", k): np.asarray(v, np.float32) for k, v in tensors.items()}


def write_safetensors(tensors: dict[str, np.ndarray], path: str,
                      metadata: dict[str, str] | None = None) -> None:
    # Copies in C order (np.ascontiguousarray would turn a 0-d logit scale into shape [1]).
    tensors = {k: np.array(v, np.float32, order="C") for k, v in tensors.items()}
    paths.write_bytes(path, safetensors.numpy.save(tensors, metadata=metadata))


def read_workdir(path: str):
    """(config, {parameter name: array}) of a workdir's latest checkpoint, or of the given
    checkpoints/STEP folder."""

    return inference.load_config(path), checkpoint.load_params(path)


def export_source(workdir: str):
    """(config, params, the text tower's resolved ids) of a workdir being exported."""

    config, params = read_workdir(workdir)
    tokenizer = text_tokenizers.build_tokenizer(config.tokenizer)
    text_ids = dict(models.text_tower_ids(tokenizer), bos_id=tokenizer.bos_id, **{
        k: v for k, v in config.model.text_tower.items() if k in ("pad_id", "eot_id")})
    return config, params, text_ids


def run_export(export, how_to_load: str) -> None:
    """The command line of an exporter: `export(workdir, out)` from --workdir and --out."""
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "A workdir or one of its checkpoints/STEP folders.")
    flags.DEFINE_string("out", None, "The folder to write.")
    flags.mark_flags_as_required(["workdir", "out"])

    def main(argv):
        del argv
        try:
            out = export(flags.FLAGS.workdir, flags.FLAGS.out)
        except (ValueError, FileNotFoundError) as e:  # the message names the problem and the fix
            raise SystemExit(f"Not exported: {e}") from None
        print(f"Wrote {out}: {how_to_load.format(out=out)}")

    app.run(main)


def require_new_workdir(out_dir: str) -> None:
    """Importers call this before converting anything: a workdir is never overwritten."""
    if paths.exists(paths.join(out_dir, "checkpoints")):
        raise FileExistsError(f"{out_dir} already holds checkpoints; choose an empty --out.")


def imported_config(name: str, fields: dict):
    """The base config with a converter's config.model and config.data fields."""
    import ml_collections

    config = defaults.base_config()
    config.name = name
    for key, value in fields["model"].items():
        config.model[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    config.data.update(fields["data"])
    return config


def ids_only_tokenizer(text_tower: dict, vocab_size: int, bos_id: int) -> dict:
    """config.tokenizer for a model imported without its vocabulary: token ids in."""
    return dict(name="ids_only", context_length=text_tower["context_length"],
                vocab_size=vocab_size, bos_id=bos_id, eot_id=text_tower["eot_id"],
                pad_id=text_tower["pad_id"])


def write_workdir(config, params: dict[str, np.ndarray], out_dir: str, source: str) -> str:
    """A workdir at `out_dir` (config.json and checkpoints/0) holding `params`, every one of
    which must have its place in the model `config` builds; `main.py --mode=eval`,
    `config.init_from` and `mmjax.inference.load` read it."""

    require_new_workdir(out_dir)
    config.total_steps = 1
    state = Trainer(config).state_with_params(params, source)
    checkpoint.write_config_snapshot(config, out_dir)
    with checkpoint.create_manager(out_dir, keep=None) as manager:
        checkpoint.save(manager, 0, state)
        manager.wait_until_finished()
    return out_dir
