"""The image tokenizer's pieces: FSQ and the ViT autoencoder around it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmjax.losses import reconstruction
from mmjax.models import image_tokenizer


# Two levels (a binary channel) once made the even-level shift arctanh(> 1): NaN codes.
@pytest.mark.parametrize("levels", [(8, 5, 5, 3), (2, 2, 4, 3)])
def test_fsq_rounds_to_its_grid_and_indexes_every_code_once(levels):
    quantizer = image_tokenizer.FiniteScalarQuantizer(levels)
    z = 4.0 * jax.random.normal(jax.random.key(0), (4096, 4))
    codes = quantizer(z)
    assert np.isfinite(np.asarray(codes)).all()
    half = np.array([level // 2 for level in levels])
    steps = np.asarray(codes) * half
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-5)  # on the grid
    for channel, level in enumerate(levels):  # exactly `level` values per channel
        assert len(np.unique(np.round(steps[:, channel]))) == level
    indices = jnp.arange(quantizer.codebook_size)
    np.testing.assert_array_equal(
        quantizer.codes_to_indices(quantizer.indices_to_codes(indices)), indices)
    np.testing.assert_allclose(quantizer.indices_to_codes(quantizer.codes_to_indices(codes)),
                               codes, atol=1e-6)
    # Rounding passes the gradient straight through: it is the bounding's, nonzero.
    near_zero = z[:8] / 4.0  # where tanh is not saturated
    gradient = jax.grad(lambda x: quantizer(x).sum())(near_zero)
    expected = jax.grad(lambda x: (quantizer.bound(x) / half).sum())(near_zero)
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)
    assert (np.abs(gradient) > 0).all()
    with pytest.raises(ValueError, match="at least 2 levels"):
        image_tokenizer.FiniteScalarQuantizer((8, 1))


def test_unpatchify_undoes_the_image_towers_patchify():
    from mmjax.models.towers.image_tower import VisionTransformer

    tower = VisionTransformer(image_size=(8, 12), width=16, depth=1, mlp_dim=32, num_heads=2,
                              patch_size=4, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
    np.testing.assert_array_equal(
        image_tokenizer.unpatchify(tower.patchify(images), (2, 3), 4), images)


def test_code_usage():
    assert image_tokenizer.code_usage(np.array([0, 1, 2, 3]), 8) == {
        "code_perplexity": pytest.approx(4.0), "codes_used": 0.5}
    assert image_tokenizer.code_usage(np.zeros(10, int), 4)["code_perplexity"] == 1.0


@pytest.mark.parametrize("pixel_channels,pixel_blocks,tokens_per_patch",
                         [(0, 0, 1), (8, 0, 1), (8, 2, 1), (8, 0, 2)])
def test_the_autoencoder_tokenizes_detokenizes_and_learns_to_reconstruct(
        pixel_channels, pixel_blocks, tokens_per_patch):
    """A linear patch head, the convolutional one, that with residual convolutions, and two
    tokens a patch."""
    model = image_tokenizer.ImageTokenizer(
        image_size=16, fsq_levels=(5, 5, 5), tokens_per_patch=tokens_per_patch,
        rngs=nnx.Rngs(0),
        image_tower=dict(name="vit", width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4,
                         pooling="gap"),
        image_decoder=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4,
                           pixel_channels=pixel_channels, pixel_blocks=pixel_blocks))
    assert isinstance(model.to_pixels, image_tokenizer.PixelHead) == bool(pixel_channels)
    assert len(getattr(model.to_pixels, "blocks", ())) == pixel_blocks
    images = jax.random.randint(jax.random.key(1), (8, 16, 16, 3), 0, 256).astype(jnp.uint8)
    tokens = model.tokenize(images)
    assert tokens.shape == (8, 16 * tokens_per_patch) and tokens.dtype == jnp.int32
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 125
    # A patch's tokens are adjacent: token k of patch p codes latent channels [3k, 3k + 3).
    _, aux = model.image_tower(images)
    latents = model.to_latent(aux["tokens"]).reshape(8, 16, tokens_per_patch, 3)
    np.testing.assert_array_equal(
        tokens.reshape(8, 16, tokens_per_patch),
        model.quantizer.codes_to_indices(model.quantizer(latents)))
    np.testing.assert_allclose(model.detokenize(tokens), model.decode(model.encode(images)),
                               atol=1e-5)
    outputs = model({"image": images})
    assert outputs["reconstruction"].shape == (8, 16, 16, 3)

    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            out = model({"image": images})
            return jnp.mean((out["reconstruction"] - out["target"]) ** 2)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(60)]
    assert losses[-1] < 0.6 * losses[0], losses[::10]


def test_the_preflight_names_a_pixel_head_that_cannot_be(tiny_config, tmp_path):
    from configs import common
    from mmjax import preflight

    config = common.as_image_tokenizer(tiny_config, encoder="mu/4", decoder="mu/4",
                                       levels=(5, 5, 5))
    config.model.image_decoder.pixel_channels = -8
    with pytest.raises(preflight.ConfigError, match=r"pixel_channels = -8: give a whole number"):
        preflight.check(config, workdir=str(tmp_path / "w"))


@pytest.mark.parametrize("field,value,fix", [
    ("edge_weight", -1.0, "must be a number >= 0. Fix: give 0 for a plain squared"),
    ("edge_weight", float("nan"), "must be a number >= 0. Fix: give 0 for a plain squared"),
    ("noise_floor", -3.0, "must be a number of 8-bit pixel levels in \\[0, 128\\). Fix: give 0"),
    ("noise_floor", 200.0, "must be a number of 8-bit pixel levels in \\[0, 128\\). Fix:")])
def test_the_preflight_names_a_reconstruction_setting_that_cannot_be(tiny_config, tmp_path,
                                                                     field, value, fix):
    from configs import common
    from mmjax import preflight

    config = common.as_image_tokenizer(tiny_config, encoder="mu/4", decoder="mu/4",
                                       levels=(5, 5, 5))
    config.reconstruction[field] = value
    with pytest.raises(preflight.ConfigError,
                       match=rf"config.reconstruction.{field} = {value}: {fix}"):
        preflight.check(config, workdir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_the_noise_floor_forgives_errors_below_it_and_counts_the_excess(tiny_config):
    from configs import common
    from mmjax import losses

    config = common.as_image_tokenizer(tiny_config, "mu/4", "mu/4", (5, 5, 5))
    config.reconstruction.noise_floor = 12.75  # 8-bit levels: 0.1 of minus_one_one's 127.5
    settings = losses._reconstruction_settings(config, None)
    np.testing.assert_allclose(settings["noise_floor"], (0.1, 0.1, 0.1), rtol=1e-6)

    target = np.zeros((1, 4, 4, 3), np.float32)

    def loss(error):
        outputs = {"reconstruction": jnp.asarray(target + error), "target": jnp.asarray(target)}
        return reconstruction.reconstruction_loss(outputs, {}, noise_floor=settings["noise_floor"])

    below, metrics = loss(0.08)
    assert below == 0 and np.isclose(metrics["reconstruction_mse"], 0.08 ** 2)
    np.testing.assert_allclose(loss(-0.3)[0], 0.2 ** 2, rtol=1e-5)
    grad = jax.grad(lambda e: loss(e)[0])(jnp.float32(0.05))
    assert grad == 0  # noise under the floor pulls on nothing


def test_the_edge_weight_weighs_errors_along_shapes_edges_and_nowhere_else():

    target = np.full((1, 8, 8, 3), -0.8, np.float32)
    target[0, 2:5, 2:5] = 0.9  # a 3x3 square on a flat background
    edges = np.asarray(reconstruction.edge_map(jnp.asarray(target)))[0, :, :, 0]
    np.testing.assert_allclose(edges[[0, 7, 3], [0, 7, 6]], 0, atol=1e-6)  # flat: no edge
    assert edges[2, 2] > edges[3, 3] > 0 and edges[1, 1] > 0  # corners, centre, outside corner

    def loss(where, edge_weight):
        drawn = target.copy()
        drawn[(0, *where)] += 0.5
        outputs = {"reconstruction": jnp.asarray(drawn), "target": jnp.asarray(target)}
        return reconstruction.reconstruction_loss(outputs, {}, edge_weight=edge_weight)

    plain_edge, metrics = loss((2, 2), 0.0)
    plain_background, _ = loss((7, 7), 0.0)
    assert plain_edge == plain_background == metrics["reconstruction_mse"]
    weighted_edge, metrics = loss((2, 2), 4.0)
    weighted_background, _ = loss((7, 7), 4.0)
    np.testing.assert_allclose(weighted_background, plain_background, rtol=1e-5)  # flat: 1
    np.testing.assert_allclose(weighted_edge, plain_edge * (1 + 4 * edges[2, 2]), rtol=1e-5)
    assert metrics["reconstruction_mse"] == plain_edge  # the metric stays the plain error


def test_reconstruction_metrics_count_psnr_per_image_and_code_usage():
    extra = {"reconstruction_mse": np.array([0.1, 0.3]),
             "reconstruction_pixel_mse": np.array([255.0 ** 2 / 100, 255.0 ** 2 / 10_000]),
             "image_tokens": np.array([[0, 1], [1, 1]]), "codebook_size": np.array([4, 4])}
    metrics = image_tokenizer.reconstruction_metrics(extra)
    assert metrics["reconstruction_mse"] == pytest.approx(0.2)
    assert metrics["reconstruction_psnr"] == pytest.approx(30.0)  # mean of 20 dB and 40 dB
    assert metrics["codes_used"] == 0.5
    p = np.array([0.25, 0.75])
    assert metrics["code_perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_the_tokenizer_trains_through_the_trainer_and_its_evaluation_recounts(tiny_config,
                                                                               tmp_path):
    """config.model.name='image_tokenizer' with the reconstruction loss and evaluator: the loss
    falls, and the evaluation's pixel error is what the saved model's reconstructions give."""
    import json

    from configs import common
    from conftest import one_device_mesh
    from input_pipeline import pipeline
    from mmjax import inference, train

    config = common.as_image_tokenizer(tiny_config, encoder="mu/4", decoder="mu/4",
                                       levels=(5, 5, 5))
    config.model.image_tower.update(width=32, depth=1, mlp_dim=64, num_heads=2)
    config.model.image_decoder.update(width=32, depth=1, mlp_dim=64, num_heads=2)
    config.learning_rate = 3e-3
    metrics = train.train_and_evaluate(config, str(tmp_path), mesh=one_device_mesh())
    losses = [json.loads(line)["train/loss"] for line in open(tmp_path / "metrics.jsonl")
              if "train/loss" in line]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0], losses

    from mmjax import text_tokenizers
    from mmjax.evaluation import eval_sets

    data = pipeline.eval_data(config, text_tokenizers.build_tokenizer(config.tokenizer),
                              eval_sets.eval_sets(config)[0], global_batch_size=128)
    images = np.concatenate([b["image"][b["valid"].astype(bool)] for b in data.batches()])
    assert len(images) == 128
    model = inference.load(str(tmp_path))
    tokens = model.tokenize(images)
    assert tokens.shape == (128, 16) and tokens.max() < 125
    pixels = model.detokenize(tokens)
    assert pixels.dtype == np.uint8 and pixels.shape == images.shape
    # The pixels recounted here, apart from the library's denormalisation (minus_one_one); the
    # eager pass may round a value at .5 the other way than the compiled one.
    normalized = np.asarray(nnx.merge(model.graphdef, model.params).detokenize(tokens))
    np.testing.assert_allclose(pixels, np.clip(np.round(normalized * 127.5 + 127.5), 0, 255),
                               atol=1)
    pixel_mse = ((pixels.astype(np.float32) - images) ** 2).mean(axis=(1, 2, 3))
    psnr = np.mean(10 * np.log10(255.0 ** 2 / pixel_mse))
    assert metrics["eval/mmjax_shapes/reconstruction_psnr"] == pytest.approx(psnr, abs=0.05)
    assert 0 < metrics["eval/mmjax_shapes/codes_used"] <= 1


@pytest.mark.parametrize("pixel_channels,pixel_blocks", [(0, 0), (16, 0), (16, 2)])
def test_the_benchmarks_decoder_flops_are_what_xla_counts(pixel_channels, pixel_blocks):
    """mmjax.tools.benchmark's analytic count (its MFU's numerator) for either pixel head."""
    from configs import smoke_image_tokenizer
    from mmjax import models, text_tokenizers
    from mmjax.tools import benchmark

    config = smoke_image_tokenizer.get_config()
    config.model.image_decoder.pixel_channels = pixel_channels
    config.model.image_decoder.pixel_blocks = pixel_blocks
    model = models.build_model(config.model, models.ModelInputs.from_data(config.data),
                               text_tokenizers.build_tokenizer(config.tokenizer), seed=config.seed)
    codes = jnp.zeros((1, model.num_tokens, len(config.model.fsq_levels)))
    counted = jax.jit(model.decode).lower(codes).compile().cost_analysis()
    counted = counted[0] if isinstance(counted, list) else counted
    analytic = benchmark.forward_flops_per_example(config)["image_decoder"]
    assert analytic == pytest.approx(counted["flops"], rel=0.05)
