"""Text-to-image through the one trainer (text-to-image's second stage): a generator over a frozen
tokenizer's tokens, sharded training, inference and --mode=generate, and the judge."""

import collections
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from input_pipeline.generated import builder
from mmjax import evaluate, preflight, sharding, train
from mmjax.evaluation import judge
from mmjax.training import checkpoint
from mmjax.training.trainer import Trainer

TINY = dict(width=32, depth=1, mlp_dim=64, num_heads=2)


def tokenizer_config(tiny_config):
    # 64 codes: the codebook axis splits over the tensor and fsdp axes.
    config = common.as_image_tokenizer(tiny_config, encoder="mu/4", decoder="mu/4",
                                       levels=(4, 4, 4))
    config.model.image_tower.update(**TINY)
    config.model.image_decoder.update(**TINY)
    config.learning_rate = 3e-3
    return config


def t2i_config(tiny_config, tokenizer_workdir):
    config = common.as_text_to_image(tokenizer_config(tiny_config), generator=None)
    config.model.generator.update(**TINY)
    config.model.text_tower.update(variant=None, **TINY)
    config.image_tokenizer.workdir = tokenizer_workdir
    config.evals = ()
    config.generation.update(steps=4, guidance_scales=(0.0, 1.0))
    return config


@pytest.fixture(scope="module")
def runs(tfds_dir, tmp_path_factory):
    """A tiny tokenizer run, and a text-to-image run over its tokens (one device)."""
    from conftest import make_tiny_config, one_device_mesh

    root = tmp_path_factory.mktemp("t2i")
    tokenizer_dir, t2i_dir = str(root / "tokenizer"), str(root / "t2i")
    train.train_and_evaluate(tokenizer_config(make_tiny_config(tfds_dir)), tokenizer_dir,
                             mesh=one_device_mesh())
    config = t2i_config(make_tiny_config(tfds_dir), tokenizer_dir)
    train.train_and_evaluate(config, t2i_dir, mesh=one_device_mesh())
    return tokenizer_dir, t2i_dir, config


def test_the_generator_trains_over_the_frozen_tokenizer_it_loaded(runs):
    tokenizer_dir, t2i_dir, _ = runs
    losses = [
        json.loads(line)["train/image_token_loss"]
        for line in open(f"{t2i_dir}/metrics.jsonl")
        if "train/image_token_loss" in line
    ]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3, losses
    tokenizer, generator = (checkpoint.load_params(d) for d in (tokenizer_dir, t2i_dir))
    tokenizer_names = [n for n in generator if n.split("/")[0] in
                       ("image_tower", "to_latent", "from_latent", "decoder_position", "decoder",
                        "to_pixels")]
    assert len(tokenizer_names) == len(tokenizer) > 10
    for name in tokenizer_names:  # loaded, and not moved by 8 steps of training
        np.testing.assert_array_equal(generator[name], tokenizer[name], err_msg=name)
    assert any(n.startswith("generator/") for n in generator)


def test_inference_generates_images_from_text_the_same_for_a_seed(runs, finished_run,
                                                                  monkeypatch):
    from mmjax import inference

    model = inference.load(runs[1])
    texts = ["one small red circle on the left", "three large blue squares at the top"]
    settings = dict(guidance_scale=2.0, steps=4, temperature=1.0)
    images = model.generate(texts, seed=0, **settings)
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(images, model.generate(texts, seed=0, **settings))
    assert not np.array_equal(images, model.generate(texts, seed=1, **settings))
    # Scale 0 is the unconditional model: other texts, the same images.
    np.testing.assert_array_equal(
        model.generate(texts, seed=0, guidance_scale=0.0, steps=4),
        model.generate(["two small green crosses at the top"] * 2, seed=0, guidance_scale=0.0,
                       steps=4))
    with pytest.raises(ValueError, match="cannot make images from text"):
        inference.load(runs[0]).generate(texts)
    # The best of three by a CLIP run: the candidate closest to its text, the same for a seed.
    with pytest.raises(ValueError, match="need a contrastive run to choose by"):
        model.generate(texts, seed=0, candidates=3, **settings)
    model.config.generation.rerank_with = "no_such_run"  # relative to the working directory
    with pytest.raises(FileNotFoundError, match=r"config.generation.rerank_with \(no_such_run, "
                                                r"read from .*candidates=1"):
        model.generate(texts, seed=0, candidates=3, **settings)
    model.config.generation.rerank_with = finished_run[0]
    clip, shown = inference.load_reranker(finished_run[0]), []

    class Recording:  # the CLIP run, keeping the candidates it is shown
        encode_text = clip.encode_text

        def encode_image(self, candidates):
            shown.append(candidates)
            return clip.encode_image(candidates)
    monkeypatch.setattr(inference, "load_reranker", lambda workdir: Recording())
    chosen = model.generate(texts, seed=0, candidates=3, **settings)
    assert chosen.shape == images.shape
    drawn = shown[0].reshape(2, 3, *images.shape[1:])
    assert not np.array_equal(drawn[0, 0], drawn[0, 1])  # candidates are drawn apart
    normalize = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    for text, candidates, image in zip(texts, drawn, chosen):
        closeness = normalize(clip.encode_image(candidates)) @ normalize(
            clip.encode_text([text]))[0]
        np.testing.assert_array_equal(image, candidates[closeness.argmax()])
    np.testing.assert_array_equal(chosen, model.generate(texts, seed=0, candidates=3,
                                                         **settings))


def test_an_autoregressive_run_generates_through_inference(runs, tmp_path):
    """The autoregressive mode through the trainer, a checkpoint and inference.load: seeded
    images, and scale 0 the unconditional model."""
    from conftest import one_device_mesh
    from mmjax import inference

    config = runs[2].copy_and_resolve_references()
    config.model.generator.mode = "autoregressive"
    train.train_and_evaluate(config, str(tmp_path / "ar"), mesh=one_device_mesh())
    model = inference.load(str(tmp_path / "ar"))
    assert model.config.model.generator.mode == "autoregressive"
    assert any(n.startswith("generator/") for n in checkpoint.load_params(str(tmp_path / "ar")))
    texts = ["one small red circle on the left", "three large blue squares at the top"]
    images = model.generate(texts, seed=0, guidance_scale=2.0)
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(images, model.generate(texts, seed=0, guidance_scale=2.0))
    # One token a step, whatever parallel decoding's step count says.
    np.testing.assert_array_equal(images, model.generate(texts, seed=0, guidance_scale=2.0,
                                                         steps=2))
    np.testing.assert_array_equal(
        model.generate(texts, seed=0, guidance_scale=0.0),
        model.generate(["two small green crosses at the top"] * 2, seed=0, guidance_scale=0.0))


def test_mode_generate_writes_the_images_and_grids(runs, finished_run, tmp_path, monkeypatch):
    """Two candidates a caption, the one the reranker finds closest kept (here a stand-in that
    prefers the brighter)."""
    from mmjax import generate, inference

    shown = []

    class PrefersBrighter:
        def encode_text(self, texts):
            return np.asarray([[1.0, 0.0]] * len(texts))

        def encode_image(self, candidates):
            shown.append(candidates)
            return np.stack([candidates.mean(axis=(1, 2, 3)), np.ones(len(candidates))], 1)
    monkeypatch.setattr(inference, "load_reranker", lambda workdir: PrefersBrighter())
    workdir = shutil.copytree(runs[1], tmp_path / "run")
    config = runs[2].copy_and_resolve_references()
    config.generation.update(candidates=2, rerank_with=finished_run[0])
    result = generate.generate_checkpoint(config, str(workdir))
    saved = np.load(workdir / "generated" / "images.npz")
    assert saved["images"].shape == saved["real_images"].shape == (len(result["captions"]), 16,
                                                                    16, 3)
    drawn = shown[0].reshape(len(result["captions"]), 2, 16, 16, 3)
    brighter = drawn.mean(axis=(2, 3, 4)).argmax(axis=1)
    np.testing.assert_array_equal(saved["images"], drawn[np.arange(len(drawn)), brighter])
    assert 0 < brighter.sum() < len(drawn)  # either candidate can be the one kept
    assert saved["images"].dtype == np.uint8 and int(saved["step"]) == 8
    np.testing.assert_array_equal(saved["images"], result["images"])
    assert (workdir / "generated" / "grid_0.png").stat().st_size > 1000


def test_a_tokenizer_run_continues_with_its_own_config_and_objective(runs, tmp_path):
    """configs/from_workdir.py keeps the run's losses whole: the base config's clip loss, which
    a tokenizer cannot feed, does not join its reconstruction loss."""
    from configs import from_workdir

    config = from_workdir.get_config(runs[0])
    assert config.losses.to_dict() == {"reconstruction": 1.0}
    config.total_steps += 8
    preflight.check(config, workdir=str(shutil.copytree(runs[0], tmp_path / "tokenizer")))


def test_the_preflight_names_what_the_generator_needs_of_its_tokenizer(runs, tiny_config,
                                                                       tmp_path):
    config = t2i_config(tiny_config, None)
    with pytest.raises(preflight.ConfigError, match=r"config.image_tokenizer.workdir = None: "
                                                    r"is unset"):
        preflight.check(config, workdir=str(tmp_path / "w"))
    config = t2i_config(tiny_config, runs[0])
    config.model.fsq_levels = (8, 4, 2)  # same latent width, other codes
    with pytest.raises(preflight.ConfigError, match=r"config.model.fsq_levels = .*trained with "
                                                    r"\[4, 4, 4\]"):
        preflight.check(config, workdir=str(tmp_path / "w"))
    config = t2i_config(tiny_config, runs[0])
    config.model.image_decoder.pixel_channels = 8  # a decoder the tokenizer was not trained as
    with pytest.raises(preflight.ConfigError, match=r"config.model.image_decoder: is .*, but "
                                                    r"the run .* was trained with .*'pixel_"
                                                    r"channels': 0"):
        preflight.check(config, workdir=str(tmp_path / "w"))
    # A tokenizer trained before image_decoder.pixel_blocks existed: it has none, as asked.
    older = tmp_path / "older_tokenizer"
    shutil.copytree(runs[0], older)
    with open(older / "config.json") as f:
        saved = json.load(f)
    del saved["model"]["image_decoder"]["pixel_blocks"]
    del saved["model"]["tokens_per_patch"]  # ... nor tokens_per_patch: one a patch
    (older / "config.json").write_text(json.dumps(saved))
    preflight.check(t2i_config(tiny_config, str(older)), workdir=str(tmp_path / "w"))
    config.model.tokens_per_patch = 2
    with pytest.raises(preflight.ConfigError, match=r"config.model.tokens_per_patch = 2: is 2, "
                                                    r"but the run .* was trained with 1"):
        preflight.check(config, workdir=str(tmp_path / "w"))
    config = t2i_config(tiny_config, runs[0])
    config.model.generator.mode = "diffusion"
    with pytest.raises(preflight.ConfigError, match=r"config.model: Unknown generator mode "
                                                    r"'diffusion'.*'autoregressive', 'masked'"):
        preflight.check(config, workdir=str(tmp_path / "w"))
    config = t2i_config(tiny_config, runs[0])
    config.evals = ("generation",)
    with pytest.raises(preflight.ConfigError, match="config.judge.workdir.*fit_judge"):
        preflight.check(config, workdir=str(tmp_path / "w"))


def test_the_preflight_refuses_a_reranker_that_cannot_or_must_not_choose(runs, finished_run,
                                                                         tiny_config, tmp_path):
    workdir = str(tmp_path / "w")
    config = t2i_config(tiny_config, runs[0])
    config.generation.candidates = 0
    with pytest.raises(preflight.ConfigError, match=r"config.generation.candidates = 0: must "
                                                    r"be an integer of at least 1"):
        preflight.check(config, workdir=workdir)
    config.generation.candidates = 4
    with pytest.raises(preflight.ConfigError, match=r"config.generation.rerank_with = None: 4 "
                                                    r"candidates .* none is set"):
        preflight.check(config, workdir=workdir)
    config.generation.rerank_with = runs[0]  # a tokenizer: no shared image-text space
    with pytest.raises(preflight.ConfigError, match=r"\(a 'image_tokenizer' model\) embeds no "
                                                    r"image and text in one space"):
        preflight.check(config, workdir=workdir)
    unconfigured = shutil.copytree(finished_run[0], tmp_path / "no_config")
    (unconfigured / "config.json").unlink()  # checkpoints, but no config to say what they are
    config.generation.rerank_with = str(unconfigured)
    with pytest.raises(preflight.ConfigError, match=r"config.generation.rerank_with = .*: .*"
                                                    r"config.json is missing"):
        preflight.check(config, workdir=workdir)
    config.generation.rerank_with = finished_run[0]
    preflight.check(config, workdir=workdir)
    # The judge's own CLIP, named by its checkpoints/ folder, must not choose.
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "judge.json").write_text(json.dumps({"clip_workdir": finished_run[0]}))
    config.judge.workdir = str(tmp_path / "judge")
    config.generation.rerank_with = f"{finished_run[0]}/checkpoints"
    with pytest.raises(preflight.ConfigError, match=r"is the judge's CLIP .* would score the "
                                                    r"images it chose"):
        preflight.check(config, workdir=workdir)


def test_best_of_keeps_the_candidate_the_reranker_finds_closest_to_its_caption():
    from mmjax import inference

    class ColourReranker:  # texts say red or blue; an image's embedding is its mean colour
        def encode_text(self, texts):
            return np.asarray([[1.0, 0, 0] if "red" in t else [0, 0, 1.0] for t in texts])

        def encode_image(self, images):
            return images.reshape(len(images), -1, 3).astype(np.float64).mean(axis=1)

    candidates = np.zeros((2, 3, 4, 4, 3), np.uint8)
    colours = [[(0, 0, 200), (200, 0, 0), (90, 90, 90)], [(200, 0, 0), (60, 60, 60), (0, 9, 200)]]
    for row, drawn in enumerate(colours):
        for k, colour in enumerate(drawn):
            candidates[row, k] = colour
    chosen, scores = inference.best_of(ColourReranker(), candidates,
                                       ["one red circle", "two blue squares"])
    np.testing.assert_array_equal(chosen, candidates[[0, 1], [1, 2]])
    assert scores.shape == (2, 3)
    np.testing.assert_allclose(scores[0], [0.0, 1.0, 3 ** -0.5], atol=1e-6)


@pytest.mark.parametrize("mode,tokens_per_step,steps_by", [
    ("masked", None, 1), ("autoregressive", None, 2), ("autoregressive", 1, 1)])
def test_the_generator_models_every_token_of_a_patch(tiny_config, mode, tokens_per_step,
                                                     steps_by):
    """With tokens_per_patch = 2 the generator trains on and draws both tokens of each patch
    (the autoregressive one a patch a step unless told otherwise), and the tokenizer decodes
    them."""
    from mmjax import models, text_tokenizers

    config = t2i_config(tiny_config, None)
    config.model.generator.mode = mode
    config.model.generator.tokens_per_step = tokens_per_step
    config.model.tokens_per_patch = 2
    model = models.build_model(config.model, models.ModelInputs.from_data(config.data),
                               text_tokenizers.build_tokenizer(config.tokenizer), seed=config.seed)
    patches = model.grid[0] * model.grid[1]
    assert model.generator.num_tokens == 2 * patches
    assert model.generator.tokens_per_step == steps_by
    text = jnp.asarray(text_tokenizers.build_tokenizer(config.tokenizer)(["one red circle"] * 2))
    images = jnp.zeros((2, config.data.image_size, config.data.image_size, 3), jnp.uint8)
    outputs = model({"image": images, "tokens": text}, jax.random.key(0))
    assert outputs["image_token_targets"].shape == (2, 2 * patches)
    assert outputs["image_token_logits"].shape[:2] == (2, 2 * patches)
    tokens = model.generate_tokens(text, jax.random.key(1), steps=2, guidance_scale=1.0,
                                   temperature=1.0)
    assert tokens.shape == (2, 2 * patches)
    assert model.generate(text, jax.random.key(1), steps=2, guidance_scale=1.0,
                          temperature=1.0).shape == images.shape


@pytest.mark.parametrize("mode,tokens_per_step", [("masked", None), ("autoregressive", None),
                                                   ("autoregressive", 2)])
def test_generator_training_sharded_on_8_devices_equals_one_device(runs, tiny_config, mode,
                                                                    tokens_per_step):
    """Two tokens a step (here two patches'): its slot MLP shards as the blocks do."""
    config = t2i_config(tiny_config, runs[0])
    config.model.generator.mode = mode
    config.model.generator.tokens_per_step = tokens_per_step
    rng = np.random.default_rng(0)
    losses = {}
    for name, (mesh_config, rules) in {"one": ({"data": 1}, "data_parallel"),
                                       "eight": ({"data": 2, "fsdp": 2, "tensor": 2},
                                                 "fsdp_tensor")}.items():
        config.sharding_rules = rules
        trainer = Trainer(config, mesh=sharding.create_mesh(
            mesh_config, jax.devices()[:1] if name == "one" else None))
        state, losses[name] = trainer.create_state(), []
        rng = np.random.default_rng(0)
        for _ in range(2):
            batch = {"image": rng.integers(0, 256, (16, 16, 16, 3), np.uint8),
                     "tokens": trainer.tokenizer(["two small green crosses at the top"] * 16)}
            state, metrics = trainer.train_step(state, trainer.global_batch(batch))
            losses[name].append(float(metrics["loss"]))
    head = state["params"]["generator"]["head"]["kernel"]
    assert head[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_allclose(losses["eight"], losses["one"], atol=1e-4, rtol=0)


def test_caption_attributes_read_the_shapes_grammar():
    assert judge.caption_attributes("three large white crosses in the center") == {
        "count": "three", "size": "large", "color": "white", "shape": "cross",
        "position": "in the center"}
    assert judge.caption_attributes("one small red cross on the left")["shape"] == "cross"
    assert judge.caption_attributes("two small red circles at the top")["shape"] == "circle"
    with pytest.raises(ValueError, match="not an mmjax_shapes caption"):
        judge.caption_attributes("a cat")


def test_frechet_distance_kid_and_r_precision_on_known_features():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4))
    assert judge.frechet_distance(a, b) < 0.02
    # Shifted by 2 along one axis and scaled by 3 along another: |mu|^2 + (3 - 1)^2.
    shifted = b * np.array([1, 3, 1, 1]) + np.array([2, 0, 0, 0])
    assert judge.frechet_distance(a, shifted) == pytest.approx(4 + 4, rel=0.05)
    assert abs(judge.kernel_inception_distance(a, b)) < 0.01
    assert judge.kernel_inception_distance(a, shifted) > 0.5
    captions = [f"caption {i}" for i in range(300)]
    texts = rng.normal(size=(300, 16))
    assert judge.r_precision(texts, texts, captions) == 1.0
    chance = judge.r_precision(rng.normal(size=(300, 16)), texts, captions)
    assert chance < 0.05


def test_the_judge_learns_from_real_images_of_every_pair_never_the_datasets_own():
    from input_pipeline.generated import shapes

    examples = [shapes.render_any_pair(i) for i in range(400)]
    pairs = {shapes.CLASS_PAIRS[e["label"]] for e in examples}
    assert pairs == set(shapes.CLASS_PAIRS)  # the held-out pairs too
    assert 0.05 < np.mean([e["unseen_combination"] for e in examples]) < 0.25  # 4 of 32
    np.testing.assert_array_equal(shapes.render_any_pair(7)["image"],
                                  shapes.render_any_pair(7)["image"])
    for split in ("train", "test"):  # another seed: other scenes than the splits' own
        assert not np.array_equal(shapes.render_any_pair(7)["image"],
                                  shapes.render_example(split, 7)["image"])


def test_the_blur_the_judge_is_checked_against_spreads_a_pixel_by_its_weights():
    image = np.zeros((1, 5, 5, 3), np.uint8)
    image[0, 2, 2] = 200
    out = judge.blurred(image, 0.25)[0, :, :, 0]
    np.testing.assert_array_equal(out[1:4, 1:4], [[12, 25, 12], [25, 50, 25], [12, 25, 12]])
    assert out.sum() == 12 * 4 + 25 * 4 + 50 and out[0].sum() == 0
    flat = np.full((1, 4, 4, 3), 90, np.uint8)
    np.testing.assert_array_equal(judge.blurred(flat, 1 / 3), flat)


def test_the_judge_learns_from_half_its_images_softened_by_a_random_blur():
    images = np.random.default_rng(0).integers(0, 256, (64, 6, 6, 3), np.uint8)
    plain = images / 127.5 - 1
    out = np.asarray(judge.degraded(jnp.asarray(images), jax.random.key(0), max_blur=0.3))
    kept = np.all(np.isclose(out, plain, atol=1e-5), axis=(1, 2, 3))
    assert 16 < kept.sum() < 48  # about half
    np.testing.assert_allclose(out.sum((1, 2, 3)), plain.sum((1, 2, 3)), atol=1e-3)  # a blur
    assert np.all(out[~kept].std((1, 2, 3)) < plain[~kept].std((1, 2, 3)))


def test_the_nearest_training_image_is_the_same_caption_or_the_closest():
    bank = np.arange(3)[:, None, None, None] * np.ones((3, 2, 2, 3), np.uint8)
    baseline = judge.Judge(None, {}, None, frozenset(), bank, [
        "one small red circle on the left", "two large blue squares at the top",
        "two large blue circles at the top"])
    chosen = baseline.nearest_training_images([
        "two large blue circles at the top",   # in the bank
        "two large red squares at the top",     # a pair it lacks: the closest caption's image
        "one small red circle on the right"])
    np.testing.assert_array_equal(chosen[:, 0, 0, 0], [2, 1, 0])
    # As candidates for the reranker: the two nearest, closest first.
    two = baseline.nearest_training_images(["two large blue circles at the top"], count=2)
    assert two.shape == (1, 2, 2, 2, 3)
    np.testing.assert_array_equal(two[0, :, 0, 0, 0], [2, 1])


def test_the_generation_evaluator_judges_every_source_and_reports_them(runs, finished_run,
                                                                        tmp_path):
    """An attribute classifier trained on rendered real images of every pair, with another
    run's CLIP for R-precision, scores the generated images beside real ones, reconstructions
    and the nearest training images; the report shows the table and the images."""
    import importlib
    import shutil

    from input_pipeline.generated import shapes
    from mmjax import inference
    from mmjax.evaluation import suite
    from mmjax.tools import judge_reconstructions

    importlib.import_module("mmjax.tools.fit_judge")  # both tools' flags load in one process

    clip = inference.load(finished_run[0])
    bank, bank_captions = suite.real_images(clip.config, clip.tokenizer,
                                            "tfds:mmjax_shapes/tiny:train", 256)
    images, captions = shapes.preprocessed_any_pairs(
        512, preprocess=clip.config.data.eval_preprocess, image_size=clip.config.data.image_size,
        normalization=clip.config.data.normalization)
    assert images.shape == (512, 16, 16, 3) == (512, *bank.shape[1:])
    assert images.dtype == np.uint8
    pairs = {(a["color"], a["shape"]) for a in map(judge.caption_attributes, captions)}
    assert {("red", "triangle"), ("blue", "cross")} <= pairs  # held out of the train split
    arrays, accuracy = judge.fit(images, captions, bank_images=bank,
                                 bank_captions=bank_captions, steps=150)
    assert accuracy["size"] > 0.6, accuracy  # two sizes: it learnt something in 150 steps
    judge.save(str(tmp_path / "judge"), arrays, clip_workdir=finished_run[0], data="tiny",
               classifier_data="rendered", check_accuracy=accuracy)
    # The tokenizer's reconstructions read by the judge beside the real images (the first bar).
    kept = judge_reconstructions.measure(runs[0], str(tmp_path / "judge"),
                                         "tfds:mmjax_shapes/tiny:test", 64)
    assert set(kept["accuracy"]) == {"real", "real blurred w=0.2", "real blurred w=0.333",
                                     "reconstructed"}
    assert kept["accuracy"]["real"]["pixel_mse"] == 0 < kept["accuracy"]["reconstructed"][
        "pixel_mse"]
    assert kept["kept"]["size"] == pytest.approx(kept["accuracy"]["reconstructed"]["size"]
                                                 / kept["accuracy"]["real"]["size"])
    workdir = shutil.copytree(runs[1], tmp_path / "run")
    config = runs[2].copy_and_resolve_references()
    config.evals = ("generation",)
    config.judge.workdir = str(tmp_path / "judge")
    # Two candidates a caption, chosen by a CLIP run other than the judge's.
    config.generation.update(candidates=2, rerank_with=str(shutil.copytree(
        finished_run[0], tmp_path / "chooser")))
    metrics = evaluate.evaluate_checkpoint(config, str(workdir))
    prefix = "eval/mmjax_shapes/"
    for source in ("real", "reconstructed", "nearest_training", "unconditional",
                   "generated_g1", "reranked_unconditional", "reranked_g1",
                   "reranked_nearest_training"):
        for measure in ("color_shape_seen", "count_seen", "size_seen", "position_seen",
                        "r_precision", "frechet_distance", "kid"):
            assert np.isfinite(metrics[f"{prefix}{source}_{measure}"]), (source, measure)
    # The classifier reads real test images' sizes from what it learnt on training images.
    assert metrics[f"{prefix}real_size_seen"] > 0.6
    report = (workdir / "eval_report.md").read_text()
    assert "## generation" in report and "| nearest_training |" in report
    assert "| reranked_g1 |" in report
    assert (workdir / "report" / "generation.png").stat().st_size > 1000


def test_a_judge_keeps_the_classifier_variant_it_was_fitted_with(finished_run, tmp_path):
    """fit_judge --classifier_variant: a judge of another ViT shape loads as that shape."""
    from input_pipeline.generated import shapes

    images, captions = shapes.preprocessed_any_pairs(64, preprocess="decode|resize",
                                                     image_size=16, normalization="minus_one_one")
    arrays, accuracy = judge.fit(images, captions, bank_images=images[:8],
                                 bank_captions=captions[:8], steps=2, variant="mu/8")
    judge.save(str(tmp_path / "judge"), arrays, clip_workdir=finished_run[0], data="rendered",
               classifier_data="rendered", check_accuracy=accuracy, classifier_variant="mu/8")
    loaded = judge.load(str(tmp_path / "judge"))
    assert loaded.classifier.tower.patch_size == 8
    features, read = loaded.classify(images[:4])
    assert features.shape == (4, loaded.classifier.tower.width) and len(read["shape"]) == 4


def smoke_generator_logits(config):
    """smoke_t2i's generator logits for one caption and their arguments (no tokenizer run)."""
    from mmjax import models, text_tokenizers

    model = models.build_model(config.model, models.ModelInputs.from_data(config.data),
                               text_tokenizers.build_tokenizer(config.tokenizer), seed=config.seed)
    context_length = config.tokenizer.context_length
    return model.generator.logits, (jnp.zeros((1, model.num_tokens), jnp.int32),
                                    jnp.zeros((1, context_length, model.text_tower.width)),
                                    jnp.full((1,), context_length, jnp.int32))


def matmul_flops(jaxpr) -> float:
    """2 x output size x contracted size, summed over a jaxpr's dot_generals (nested ones too)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in
                                                                       contracting])
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                total += matmul_flops(inner)
    return float(total)


@pytest.mark.parametrize("tokens_per_patch,tokens_per_step",
                         [(1, 1), (2, 1), (2, 2), (4, None), (4, 1)])
def test_the_benchmarks_generator_flops_are_its_matmuls(tokens_per_patch, tokens_per_step):
    """mmjax.tools.benchmark's analytic count of the generator's forward pass (its MFU's numerator)
    is
    the matrix multiplications the model's program does, with a patch's tokens in the sequence
    or drawn a group a step (unset: a patch a step). XLA's own count is 3 to 5 % higher: it
    adds the elementwise work, which MFU leaves out."""
    from configs import smoke_t2i
    from mmjax.tools import benchmark

    config = smoke_t2i.get_config()
    config.model.tokens_per_patch = tokens_per_patch
    config.model.generator.tokens_per_step = tokens_per_step
    logits, arguments = smoke_generator_logits(config)
    counted = matmul_flops(jax.make_jaxpr(logits)(*arguments).jaxpr)
    analytic = benchmark.forward_flops_per_example(config)["generator"]
    assert analytic == pytest.approx(counted, rel=1e-6)


def test_the_step_profile_names_the_generators_own_operations():
    """The codebook head and the within-patch MLP are most of a smoke generator's step: the
    profile must name them, not leave them to the train step's frames (read as the optimizer)."""
    from configs import smoke_t2i
    from mmjax.tools import profile_step

    logits, arguments = smoke_generator_logits(smoke_t2i.get_config())
    hlo = jax.jit(logits).lower(*arguments).compile().as_text()
    parts = collections.Counter(profile_step.attribute(hlo).values())
    assert parts[("generator", "matmul")] >= 2  # the head, the slot MLP
    assert parts[("attention", "matmul")] > 0
    assert parts[("optimizer update", "matmul")] == 0


def test_the_judges_clip_data_is_every_pair_under_the_judges_seed_as_shards(tmp_path):
    """The judge's CLIP learns from the classifier's images (held-out pairs too), as shards a
    `shards:` spec reads: each record is the rendered image, as a PNG, with its caption."""
    from input_pipeline import datasets, shards
    from input_pipeline.generated import judge_data, shapes

    metadata = judge_data.write_judge_data(str(tmp_path), 60, quiet=True)
    assert metadata["splits"]["train"]["num_examples"] == 60
    source = datasets.open_source(datasets.parse_spec(f"shards:{tmp_path}/shards:train",
                                                      "train"), None)
    records = [shards.decode_record(source.fetch(np.array([i]))[0]) for i in range(60)]
    rendered = [shapes.render_any_pair(i) for i in range(60)]
    assert [r["captions"].numpy()[0].decode() for r in records] == [e["caption"]
                                                                   for e in rendered]
    assert records[7]["image"].numpy() == builder.encode_png(rendered[7]["image"])
    pairs = {(a["color"], a["shape"])
             for a in (judge.caption_attributes(e["caption"]) for e in rendered)}
    assert pairs & set(shapes.HELD_OUT_PAIRS)


def test_the_preflight_refuses_the_judge_on_data_it_was_not_written_for(runs, tiny_config,
                                                                          user_data, tmp_path):
    """The judge reads mmjax_shapes' attributes from captions: on other data it would score
    nonsense, so the generation evaluator is refused there before anything is compiled."""
    from input_pipeline import pipeline

    config = t2i_config(tiny_config, runs[0])
    config.evals = ("generation",)
    (tmp_path / "judge").mkdir()
    config.judge.workdir = str(tmp_path / "judge")
    config.data.eval = f"shards:{user_data['output']}:test"
    with pytest.raises(preflight.ConfigError, match=r"config.evals = .*'generation' evaluator "
                                                    r"judges mmjax_shapes only, not shards:"):
        preflight.check(config, workdir=str(tmp_path / "w"), data=pipeline, roles=("eval",))
