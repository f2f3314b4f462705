"""Training-step benchmark on synthetic on-device batches; runs without TensorFlow.

python -m mmjax.tools.benchmark --config=configs/clip_b16.py [--config.batch_size=256] [--steps=20]

Prints a table (step time, pairs/s, model TFLOP/s per device, MFU, peak memory, compile time) and
writes it as JSON to --out. Model FLOPs are the analytic matmul FLOPs of the forward pass times 3
(remat's recomputation is not counted), against the per-device peak in PEAK_TFLOPS.
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mmjax import conventions, paths, text_tokenizers
from mmjax.models.text_to_image import generator_tokens_per_step
from mmjax.models.towers import image_tower, text_tower
from mmjax.training import host_memory
from mmjax.training.trainer import Trainer

# Dense bf16 peak TFLOP/s per device, matched against jax.Device.device_kind.
PEAK_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0,
}


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    """Forward matmul FLOPs of `depth` blocks over `tokens` tokens (per example)."""
    projections = 2 * tokens * (4 * width * width + 2 * width * mlp_dim)
    attention = 2 * 2 * tokens * tokens * width  # scores and weighted values
    return depth * (projections + attention)


def vit_shape(tower) -> dict:
    """width, depth, mlp_dim, num_heads, patch_size of a ViT-like tower config."""
    return image_tower.tower_shape(**{k: tower.get(k) for k in
                                      ("variant",) + image_tower.SHAPE_FIELDS})


def vit_flops(tower, input_shape: tuple[int, int], channels: int, embed_dim: int) -> float:
    """Forward matmul FLOPs per example of a ViT-like tower (image, audio) over an input of
    `input_shape` (rows, columns) with `channels`."""
    vit = vit_shape(tower)
    patches = (input_shape[0] // vit["patch_size"]) * (input_shape[1] // vit["patch_size"])
    # Patch dropout (FLIP): every patch is embedded, the blocks see only the kept ones.
    kept = image_tower.patches_kept(patches, tower.get("patch_dropout", 0.0))
    tokens = kept + (1 if tower.get("pooling") == "cls" else 0)
    width = vit["width"]
    flops = 2 * patches * vit["patch_size"] ** 2 * channels * width
    flops += transformer_flops(tokens, width, vit["depth"], vit["mlp_dim"])
    if tower.get("pooling", "map") == "map":
        flops += 2 * 2 * width * width  # query and output projections of the one probe token
        flops += 2 * 2 * tokens * width * width  # key and value projections of every token
        flops += 2 * 2 * tokens * width + 2 * 2 * width * vit["mlp_dim"]
    return flops + 2 * width * embed_dim


def forward_flops_per_example(config) -> dict[str, float]:
    """Analytic forward matmul FLOPs per example (an image-text pair, or a clip and its
    caption...), by part: each tower, and the contrastive logits."""
    model, parts = config.model, {}
    modalities = conventions.model_modalities(model)
    if "image" in modalities:
        size = config.data.image_size
        parts["image"] = vit_flops(model.image_tower, (size, size), 3, model.embed_dim)
    if "audio" in modalities:
        parts["audio"] = vit_flops(model.audio_tower, (config.data.audio.frames,
                                                       config.data.audio.num_mels), 1,
                                   model.embed_dim)
    if "video" in modalities:  # joint attention: a ViT over (time steps x rows, columns)
        size, tubelet = config.data.image_size, model.video_tower.get("tubelet_frames", 2)
        parts["video"] = vit_flops(model.video_tower, (
            config.data.video.frames // tubelet * size, size), 3 * tubelet, model.embed_dim)
    if "text" in modalities:
        text = text_tower.tower_shape(**{k: model.text_tower.get(k) for k in
                                         ("variant",) + text_tower.SHAPE_FIELDS})
        context = config.tokenizer.context_length
        parts["text"] = transformer_flops(context, text["width"], text["depth"], text["mlp_dim"])
        parts["text"] += 2 * text["width"] * model.embed_dim
    if model.get("generator"):  # text-to-image: frozen tokenizer encoder, text, generator
        return _text_to_image_flops(config, parts)
    if model.get("image_decoder"):  # an image tokenizer: latents -> decoder blocks -> pixels
        encoder, decoder = vit_shape(model.image_tower), vit_shape(model.image_decoder)
        patch, patches = encoder["patch_size"], _patches(config)
        channels = len(model.fsq_levels) * (model.get("tokens_per_patch") or 1)
        # Every patch token goes to the latent channels, instead of one pooled projection.
        parts["image"] += 2 * encoder["width"] * (patches * channels - model.embed_dim)
        # The pixel head: a linear map to each patch's pixels (3 channels, or pixel_channels
        # features followed by 3x3 convolutions: 1 + pixel_blocks to pixel_channels, one to 3).
        pixel_channels = model.image_decoder.get("pixel_channels") or 0
        convolutions = 1 + (model.image_decoder.get("pixel_blocks") or 0)
        pixels = config.data.image_size ** 2
        parts["image_decoder"] = 2 * patches * (channels * decoder["width"] + decoder["width"]
                                                * patch * patch * (pixel_channels or 3))
        parts["image_decoder"] += 2 * pixels * 9 * pixel_channels * (
            convolutions * pixel_channels + 3)
        parts["image_decoder"] += transformer_flops(patches, decoder["width"], decoder["depth"],
                                                    decoder["mlp_dim"])
    # The contrastive logits: 2 * B * B * D per batch and modality pair, i.e. 2 * B * D per
    # example and pair.
    pairs = len(conventions.contrastive_pairs(model, config.get("contrastive_pairs", ())))
    parts["logits"] = 2 * config.batch_size * model.embed_dim * pairs
    return parts


def _patches(config) -> int:
    return (config.data.image_size // vit_shape(config.model.image_tower)["patch_size"]) ** 2


def _text_to_image_flops(config, parts: dict[str, float]) -> dict[str, float]:
    """A text-to-image step: the frozen tokenizer encoder runs forward only (so a third of what
    a trained part of the same size counts, as the total is 3x the forward), the decoder not at
    all; the text tower and the generator train."""
    model = config.model
    tokens_per_patch = model.get("tokens_per_patch") or 1
    encoder, tokens = vit_shape(model.image_tower), _patches(config) * tokens_per_patch
    codebook = math.prod(model.fsq_levels)
    parts["image"] += 2 * encoder["width"] * (tokens * len(model.fsq_levels) - model.embed_dim)
    parts["image"] /= 3
    text = text_tower.tower_shape(**{k: model.text_tower.get(k) for k in
                                     ("variant",) + text_tower.SHAPE_FIELDS})
    parts["text"] -= 2 * text["width"] * model.embed_dim  # no projection to a shared space
    per_step = generator_tokens_per_step(model.generator, tokens_per_patch)
    generator = text_tower.tower_shape(**dict(model.generator))
    width, context = generator["width"], config.tokenizer.context_length
    steps = tokens // per_step  # the blocks' sequence: groups of tokens_per_step tokens
    cross = 2 * 2 * steps * width * width + 2 * 2 * context * text["width"] * width
    cross += 2 * 2 * steps * context * width
    parts["generator"] = transformer_flops(steps, width, generator["depth"],
                                           generator["mlp_dim"]) + generator["depth"] * cross
    parts["generator"] += 2 * tokens * width * codebook  # the head over the codebook
    if per_step > 1:  # each token's MLP between the group's state and the head
        parts["generator"] += 2 * 2 * tokens * width * generator["mlp_dim"]
    return parts


def peak_tflops(device) -> float | None:
    kind = device.device_kind
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def synthetic_batch(trainer: Trainer, seed: int = 0) -> dict[str, jax.Array]:
    """Random images, spectrograms and token rows laid out as the tokenizer lays out texts (and
    labels, if a loss reads them): what the model's towers take, made directly on the devices."""
    config, tokenizer = trainer.config, trainer.tokenizer
    batch, size = config.batch_size, config.data.image_size
    context = tokenizer.context_length
    vocab = config.model.get("vocab_size") or tokenizer.vocab_size
    keys = jax.random.split(jax.random.key(seed), 5)

    def make():
        images = jax.random.randint(keys[0], (batch, size, size, 3), 0, 256).astype(jnp.uint8)
        tokens = jax.random.randint(keys[1], (batch, context), text_tokenizers.NUM_SPECIAL_IDS,
                                    vocab)
        lengths = jax.random.randint(keys[2], (batch, 1), 3, context)
        positions = jnp.arange(context)[None]
        tokens = jnp.where(positions == lengths, tokenizer.eot_id,
                           jnp.where(positions > lengths, tokenizer.pad_id, tokens))
        made = {"image": images, "tokens": tokens.at[:, 0].set(tokenizer.bos_id),
                "audio": jax.random.normal(keys[4], (batch, config.data.audio.frames,
                                                     config.data.audio.num_mels), jnp.bfloat16),
                "video": jax.random.randint(keys[0], (batch, config.data.video.frames, size,
                                                      size, 3), 0, 256).astype(jnp.uint8)}
        if "label" in trainer.model_inputs:
            made["label"] = jax.random.randint(keys[3], (batch,), 0, 2)
        return {k: made[k] for k in trainer.model_inputs}

    return jax.jit(make, out_shardings={k: trainer.batch_sharding(ndim)
                                        for k, ndim in trainer.model_inputs.items()})()


def compiled_step(config, mesh=None):
    """(trainer, its train step compiled, a fresh state, a synthetic batch, compile seconds)
    for `config` on `mesh` (default: the config's)."""
    trainer = Trainer(config, mesh=mesh)
    state = trainer.create_state()
    batch = synthetic_batch(trainer)
    start = time.perf_counter()
    compiled = trainer.train_step.lower(state, batch, *trainer.step_args).compile()
    return trainer, compiled, state, batch, time.perf_counter() - start


def advance(trainer, compiled, state, batch, steps: int):
    """(state, metrics) after `steps` compiled steps on the same batch, finished on the devices."""
    metrics = None
    for _ in range(steps):
        state, metrics = compiled(state, batch, *trainer.step_args)
    return jax.block_until_ready((state, metrics))


def run(config, steps: int, warmup_steps: int) -> dict[str, float | str | None]:
    trainer, compiled, state, batch, compile_seconds = compiled_step(config)
    # XLA's own count of the bytes the step moves through device memory: divided by the
    # device's bandwidth it is the step's floor when elementwise work, not matmuls, dominates.
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}

    state, _ = advance(trainer, compiled, state, batch, warmup_steps)
    start = time.perf_counter()
    state, metrics = advance(trainer, compiled, state, batch, steps)
    step_seconds = (time.perf_counter() - start) / steps

    devices = trainer.mesh.devices.size
    flops = forward_flops_per_example(config)
    train_flops = 3 * sum(flops.values()) * config.batch_size
    tflops_per_device = train_flops / step_seconds / devices / 1e12
    peak = peak_tflops(jax.devices()[0])
    memory = jax.devices()[0].memory_stats() or {}
    return {
        "config": config.get("name", ""),
        "device": jax.devices()[0].device_kind,
        "devices": devices,
        "global_batch_size": config.batch_size,
        "image_size": config.data.image_size,
        "dtype": config.model.dtype,
        "remat": config.model.remat,
        "modalities": "-".join(conventions.model_modalities(config.model)),
        "patch_dropout": (config.model.image_tower or {}).get("patch_dropout", 0.0),
        "attention": config.model.get("attention_implementation") or "xla",
        "step_seconds": step_seconds,
        "pairs_per_second": config.batch_size / step_seconds,
        "pairs_per_second_per_device": config.batch_size / step_seconds / devices,
        "model_gflops_per_pair": 3 * sum(flops.values()) / 1e9,
        "model_tflops_per_second_per_device": tflops_per_device,
        "mfu": tflops_per_device / peak if peak else None,
        "peak_memory_gib": (memory["peak_bytes_in_use"] / 2**30
                            if "peak_bytes_in_use" in memory else None),
        "xla_gbytes_accessed_per_step": (cost["bytes accessed"] / 1e9
                                         if "bytes accessed" in cost else None),
        "compile_seconds": compile_seconds,
        "final_loss": float(metrics["loss"]),
    }


def format_table(result: dict) -> str:
    rows = []
    for name, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}" if name != "mfu" else f"{100 * value:.1f} %"
        rows.append((name, "n/a" if value is None else str(value)))
    width = max(len(n) for n, _ in rows)
    return "\n".join(f"{n.ljust(width)}  {v}" for n, v in rows)


def define_config_flag() -> None:
    """--config, for the programs that measure a config's step (this one, tools.profile_step)."""
    config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).",
                                    lock_config=True)
    flags.mark_flags_as_required(["config"])


class CannotMeasure(RuntimeError):
    """What a measurement needs is missing here (its message names what and the way out)."""


def program(measure, format_result):
    """main() of such a program: `measure(config)` (after host_memory.configure, before JAX
    starts its CPU threads), its table printed and its result written to --out as JSON."""

    def main(argv):
        del argv
        config = flags.FLAGS.config
        host_memory.configure(config)
        try:
            result = measure(config)
        except CannotMeasure as e:
            sys.exit(str(e))
        print(format_result(result))
        paths.write_text(flags.FLAGS.out, json.dumps(result, indent=2))
        print(f"results written to {flags.FLAGS.out}")

    return main


if __name__ == "__main__":
    flags.DEFINE_integer("steps", 20, "Timed steps.")
    flags.DEFINE_integer("warmup_steps", 3, "Untimed steps after compilation.")
    flags.DEFINE_string("out", "bench_results.json", "Where to write the results (JSON).")
    define_config_flag()
    app.run(program(lambda config: run(config, flags.FLAGS.steps, flags.FLAGS.warmup_steps),
                    format_table))
