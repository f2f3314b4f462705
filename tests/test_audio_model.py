"""The audio modality in the model and trainer: the AST tower, its start from an image tower,
three towers through the one train step on a mesh, the preflight's modality checks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import losses_on_one_and_eight_devices
from input_pipeline import pipeline
from mmjax import conventions, inference, preflight, sharding
from mmjax.models.towers import audio_tower
from mmjax.models.towers.image_tower import VisionTransformer
from mmjax.training import checkpoint
from mmjax.training.trainer import Trainer

TOWER = dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4, pooling="gap")


def tower_params(tower) -> dict:
    return {name: np.asarray(value) for name, value in checkpoint.flat_params(
        nnx.split(tower, nnx.Param)[1]).items()}


def test_an_audio_tower_from_an_image_tower_hears_a_spectrogram_as_that_tower_sees_it_grey():
    """Same patch grid: the converted tower on a spectrogram equals the image tower on the
    spectrogram as a grey image (its value in R, G and B), since the RGB kernels are summed."""
    image = VisionTransformer(image_size=16, rngs=nnx.Rngs(0), **TOWER)
    audio = audio_tower.AudioSpectrogramTransformer(spectrogram_shape=(16, 16),
                                                    rngs=nnx.Rngs(1), **TOWER)
    shapes = {name: value.shape for name, value in tower_params(audio).items()}
    converted = audio_tower.from_image_tower(tower_params(image), shapes, audio.grid)
    graphdef, params = nnx.split(audio, nnx.Param)
    audio = nnx.merge(graphdef, checkpoint.merge_params(params, converted, (), "image tower"))

    spectrogram = jax.random.normal(jax.random.key(2), (3, 16, 16))
    heard, _ = audio(spectrogram)
    seen, _ = image(jnp.repeat(spectrogram[..., None], 3, axis=-1))
    np.testing.assert_allclose(heard, seen, atol=1e-5)


def test_position_embeddings_are_resampled_to_the_spectrogram_grid():
    """A 4x4 grid of embeddings that vary linearly along rows and columns stays linear on an
    8x2 grid (bilinear resampling), and the other parameters are copied."""
    image = VisionTransformer(image_size=16, rngs=nnx.Rngs(0), **TOWER)
    audio = audio_tower.AudioSpectrogramTransformer(spectrogram_shape=(32, 8),
                                                    rngs=nnx.Rngs(1), **TOWER)
    params = tower_params(image)
    rows, columns = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    params["position_embedding"] = np.stack([rows.ravel(), columns.ravel()] * 16, axis=1)
    shapes = {name: value.shape for name, value in tower_params(audio).items()}
    converted = audio_tower.from_image_tower(params, shapes, audio.grid)
    grid = converted["position_embedding"][:, :2].reshape(8, 2, 2)
    assert np.all(np.diff(grid[..., 0], axis=0) >= 0) and np.all(np.diff(grid[..., 1], axis=1) > 0)
    assert grid[..., 0].min() == pytest.approx(0) and grid[..., 0].max() == pytest.approx(3)
    np.testing.assert_array_equal(converted["encoder/blocks/0/mlp/up/kernel"],
                                  params["encoder/blocks/0/mlp/up/kernel"])
    with pytest.raises(ValueError, match="patch size"):
        small = audio_tower.AudioSpectrogramTransformer(
            spectrogram_shape=(16, 16), rngs=nnx.Rngs(1), **{**TOWER, "patch_size": 8})
        audio_tower.from_image_tower(params, {n: v.shape for n, v in tower_params(
            small).items()}, small.grid)


def trimodal_config(tiny_config):
    config = tiny_config
    config.model.audio_tower = ml_collections.ConfigDict(dict(
        name="ast", width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4, pooling="gap"))
    config.data.audio.update(frames=16, num_mels=8)
    return config


def synthetic_batches(batch_size: int, count: int = 2):
    """Random images and spectrograms, as the pipeline lays them out."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield {"image": rng.integers(0, 256, (batch_size, 16, 16, 3), np.uint8),
               "audio": rng.normal(size=(batch_size, 16, 8)).astype(jnp.bfloat16)}


def test_three_towers_train_sharded_as_on_one_device(tiny_config):
    """Image, audio and text towers, pairwise CLIP losses: 8 fake devices (data, fsdp and
    tensor axes) give the one-device losses within 1e-4, and the audio tower's parameters are
    laid out by the same rules as the image tower's."""
    config = trimodal_config(tiny_config)
    batches = list(synthetic_batches(16))
    losses, last = losses_on_one_and_eight_devices(config, batches,
                                                   "one small red circle on the left")
    state, metrics = last["state"], last["metrics"]
    assert last["trainer"].model_inputs == {"image": 4, "audio": 3, "tokens": 2}
    assert {"clip_loss_image_audio", "clip_loss_image_text", "clip_loss_audio_text"} <= set(
        metrics)
    kernel = state["params"]["audio_tower"]["encoder"]["blocks"][0]["mlp"]["up"]["kernel"]
    assert kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_allclose(losses["eight"], losses["one"], atol=1e-4, rtol=0)
    assert conventions.contrastive_pairs(config.model) == (
        ("image", "audio"), ("image", "text"), ("audio", "text"))


def test_the_preflight_names_modality_problems(tiny_config):
    config = trimodal_config(tiny_config)
    config.contrastive_pairs = ("audio-text", "audio-video")
    config.data.audio.frames = 18  # not a multiple of the audio patch size
    with pytest.raises(preflight.ConfigError) as error:
        preflight.check(config)
    assert "not divisible by patch size" in str(error.value)
    config.data.audio.frames = 16
    with pytest.raises(preflight.ConfigError, match="'audio-video' is not two of the model's "
                       "modalities"):
        preflight.check(config)
    config.contrastive_pairs = ("audio-text",)
    config.model.image_tower = None
    config.losses = ml_collections.ConfigDict(dict(clip=1.0, caption=1.0))
    with pytest.raises(preflight.ConfigError, match="'caption' loss reads"):
        preflight.check(config)
    config.losses = ml_collections.ConfigDict(dict(siglip=1.0))
    config.identical_captions_match = True
    with pytest.raises(preflight.ConfigError, match="identical_captions_match.*only the clip"):
        preflight.check(config)
    # Its data are the tiny shapes: images and captions, no sound for the audio tower.
    config.losses = ml_collections.ConfigDict(dict(clip=1.0))
    with pytest.raises(preflight.ConfigError, match=r"config.data.train = '.*': tfds:mmjax_shapes/"
                       r"tiny:train holds no audio \(its examples have image, text\)"):
        preflight.check(config, data=pipeline)


def test_a_run_starts_its_audio_tower_from_another_runs_image_tower(tiny_config, finished_run,
                                                                    tmp_path):
    """config.init_from.audio_tower_from: the finished image-text run's image tower, converted,
    is the new run's starting audio tower, whose embeddings the inference API gives back from
    the saved run; the preflight refuses a path with no checkpoint."""
    config = trimodal_config(tiny_config)
    config.init_from.audio_tower_from = finished_run[0]
    trainer = Trainer(config, mesh=sharding.create_mesh({"data": 1}, jax.devices()[:1]))
    state, _ = trainer.initial_state(checkpoint.create_manager(str(tmp_path), keep=1))
    started = {n: np.asarray(v) for n, v in checkpoint.flat_params(state["params"]).items()}
    image = checkpoint.load_params(finished_run[0])
    for name in ("encoder/blocks/0/mlp/up/kernel", "encoder/final_norm/scale"):
        np.testing.assert_array_equal(started[f"audio_tower/{name}"], image[f"image_tower/{name}"])
    np.testing.assert_allclose(
        started["audio_tower/patch_embedding/kernel"],
        image["image_tower/patch_embedding/kernel"].reshape(4, 4, 3, -1).sum(2).reshape(16, -1),
        rtol=1e-6)
    # Saved, the run's audio embeddings come back through the inference API.
    manager = checkpoint.create_manager(str(tmp_path), keep=1)
    checkpoint.save(manager, 0, state)
    manager.wait_until_finished()
    checkpoint.write_config_snapshot(config, str(tmp_path))
    spectrograms = np.random.default_rng(0).normal(size=(3, 16, 8)).astype(np.float32)
    expected = trainer.model(state["params"]).encode("audio", jnp.asarray(spectrograms))[0]
    np.testing.assert_allclose(inference.load(str(tmp_path)).encode_audio(spectrograms),
                               expected, atol=1e-5)
    config.init_from.audio_tower_from = finished_run[0] + "_missing"
    with pytest.raises(preflight.ConfigError, match="audio_tower_from.*holds no mmjax"):
        preflight.check(config)
