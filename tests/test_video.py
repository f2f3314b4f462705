"""The video modality: the ViViT tower and its start from an image tower, the clip ops, the
embedded mmjax_clips, video and text towers through the one train step on a mesh, inference,
and the preflight's video checks."""

import os
import tarfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from configs import smoke_video
from conftest import losses_on_one_and_eight_devices
from input_pipeline import datasets, pipeline, shards, video
from input_pipeline.convert import make_shards, video_files
from input_pipeline.generated import clips, synthetic
from mmjax import conventions, inference, preflight
from mmjax.models.towers import video_tower
from mmjax.models.towers.image_tower import VisionTransformer
from mmjax.training import checkpoint

TOWER = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=4)


def tower_params(tower) -> dict:
    return {name: np.asarray(value) for name, value in checkpoint.flat_params(
        nnx.split(tower, nnx.Param)[1]).items()}


def started_from(image, clip_tower):
    """`clip_tower` with its parameters converted from `image`'s."""
    converted = video_tower.from_image_tower(
        tower_params(image), {n: v.shape for n, v in tower_params(clip_tower).items()},
        clip_tower.tubelet_frames, clip_tower.steps)
    state = nnx.state(clip_tower, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        name = conventions.parameter_name(path)
        if name in converted:
            variable.set_value(jnp.asarray(converted[name]))
    nnx.update(clip_tower, state)
    return clip_tower


@pytest.mark.parametrize("pooling,positions", [("map", "learned"), ("gap", "separable")])
def test_a_still_clip_through_a_tower_started_from_an_image_tower_is_that_image(pooling,
                                                                               positions):
    """Joint attention, started from an image tower: a clip of one frame repeated has the
    image tower's embedding of that frame (inflated kernel, positions repeated over time)."""
    image = VisionTransformer(image_size=16, pooling=pooling, rngs=nnx.Rngs(0), **TOWER)
    clip_tower = video_tower.VideoTransformer(video_shape=(4, 16), tubelet_frames=2,
                                              pooling=pooling, positions=positions,
                                              rngs=nnx.Rngs(1), **TOWER)
    clip_tower = started_from(image, clip_tower)
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), np.uint8)
    still = np.repeat(frames[:, None], 4, axis=1)
    np.testing.assert_allclose(clip_tower(jnp.asarray(still))[0], image(jnp.asarray(frames))[0],
                               atol=1e-5)
    # Motion changes it: the tower does look at time.
    moving = still.copy()
    moving[:, 2:] = np.roll(moving[:, 2:], 4, axis=3)
    assert np.abs(clip_tower(jnp.asarray(moving))[0] - image(jnp.asarray(frames))[0]).max() > 1e-2


def test_tubelets_are_cut_time_step_major_and_shapes_are_checked():
    tower = video_tower.VideoTransformer(video_shape=(4, 8), tubelet_frames=2, rngs=nnx.Rngs(0),
                                         **TOWER)
    clip = np.arange(1 * 4 * 8 * 8 * 3).reshape(1, 4, 8, 8, 3)
    tubelets = np.asarray(tower.patchify(jnp.asarray(clip)))
    assert tubelets.shape == (1, 2 * 2 * 2, 4 * 4 * 2 * 3)
    # Token 5: time step 1, row 0, column 1; its vector is (row, column, frame, channel).
    expected = clip[0, 2:4, 0:4, 4:8].transpose(1, 2, 0, 3).reshape(-1)
    np.testing.assert_array_equal(tubelets[0, 5], expected)
    with pytest.raises(ValueError, match="tubelets of 3"):
        video_tower.VideoTransformer(video_shape=(4, 8), tubelet_frames=3, rngs=nnx.Rngs(0),
                                     **TOWER)
    with pytest.raises(ValueError, match="takes 4 frames of 8x8"):
        tower(jnp.zeros((1, 6, 8, 8, 3), jnp.uint8))
    factorised = video_tower.VideoTransformer(video_shape=(4, 8), tubelet_frames=2,
                                              attention="factorised", temporal_depth=1,
                                              rngs=nnx.Rngs(0), **TOWER)
    pooled, aux = factorised(jnp.zeros((2, 4, 8, 8, 3), jnp.uint8))
    assert pooled.shape == (2, 32) and aux["tokens"].shape == (2, 2, 32)


def _clip(frames=12, size=10):
    """Encoded frames whose pixels say their frame number."""
    return tf.constant([tf.io.encode_png(tf.fill([size, size, 3], tf.constant(i, tf.uint8)))
                        .numpy() for i in range(frames)])


def test_clip_ops_sample_in_order_and_crop_every_frame_alike():
    seed = tf.constant([1, 2], tf.int64)
    media = video.clip_media("decode_frames|sample_clip", frames=4, stride=2, image_size=10)
    np.testing.assert_array_equal(media(_clip(), seed).numpy()[:, 0, 0, 0], [2, 4, 6, 8])
    train = video.clip_media("decode_frames|sample_clip(random=True)", frames=4, stride=2,
                             image_size=10)
    starts = {int(train(_clip(), tf.constant([s, 0], tf.int64)).numpy()[0, 0, 0, 0])
              for s in range(40)}
    assert starts == set(range(6))  # every start that fits (12 - 7 + 1), and only those
    short = media(_clip(frames=5), seed).numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(short, [0, 2, 4, 4])  # played to its end, the last one held
    # One crop window for the whole clip: a still clip stays still.
    still = tf.stack([tf.io.encode_png(tf.random.stateless_uniform(
        [16, 16, 3], [0, 0], maxval=255, dtype=tf.int32).numpy().astype(np.uint8))] * 6)
    cropped = video.clip_media("decode_frames|sample_clip(random=True)|random_crop|flip",
                               frames=4, stride=1, image_size=8)(still, seed).numpy()
    assert cropped.shape == (4, 8, 8, 3) and (cropped == cropped[:1]).all()
    held = video.clip_media("decode_frames|sample_clip|still", frames=4, stride=2,
                            image_size=10)(_clip(), seed).numpy()
    np.testing.assert_array_equal(held[:, 0, 0, 0], [6, 6, 6, 6])
    with pytest.raises(ValueError, match="never decodes"):
        video.clip_media("sample_clip", frames=4, stride=1, image_size=10)(_clip(), seed)


def test_mmjax_clips_captions_say_what_the_frames_do(tfds_dir):
    source = datasets.open_source(datasets.parse_spec("tfds:mmjax_clips/tiny:test", "test"),
                                  tfds_dir)
    example = source.decode(tf.constant(source.fetch(np.array([0]))[0]), 0)
    frames = video.decode_frames(example["video"]).numpy()
    assert frames.shape == (clips.FRAMES, 32, 32, 3)
    rendered = clips.render_example("test", int(example["id"]))
    np.testing.assert_array_equal(frames, rendered["frames"])
    assert example["captions"].numpy()[0].decode() == rendered["caption"]
    assert rendered["caption"].endswith(clips.MOTIONS[int(example["label"])])
    # Where the shape is in a moving clip: its centre goes the caption's way.
    for index in range(40):
        r = clips.render_example("train", index)
        motion = clips.MOTIONS[r["label"]]
        if motion in clips.DIRECTIONS and "one " in r["caption"]:
            bright = [np.argwhere(np.abs(f.astype(int) - np.median(f, (0, 1))).sum(-1) > 60)
                      .mean(0) for f in r["frames"][[0, -1]]]
            (dy, dx) = bright[1] - bright[0]
            want = clips.DIRECTIONS[motion]
            assert np.sign(round(dx)) == want[0] and np.sign(round(dy)) == want[1]
    assert clips.caption("red", "circle", "moving to the left", 2) == (
        "two red circles moving to the left")
    assert len({e for e in clips.HELD_OUT}) == len(clips.MOTIONS)


def video_config(tiny_config):
    config = tiny_config
    config.model.image_tower = None
    config.model.video_tower = ml_collections.ConfigDict(dict(
        name="vivit", tubelet_frames=2, pooling="gap", **dict(TOWER, depth=1)))
    config.data.image_size = 16
    config.data.video.update(frames=4, stride=2)
    return config


def test_video_audio_and_text_train_sharded_as_on_one_device(tiny_config, tmp_path):
    """Video, audio and text towers, pairwise CLIP losses: 8 fake devices (data, fsdp and
    tensor axes) give the one-device losses within 1e-4; the video tower's parameters are laid
    out by the image tower's rules; the saved run's video embeddings come back through the
    inference API."""
    config = video_config(tiny_config)
    config.model.audio_tower = ml_collections.ConfigDict(dict(
        name="ast", width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4, pooling="gap"))
    config.data.audio.update(frames=16, num_mels=8)
    rng = np.random.default_rng(0)
    batches = [{"video": rng.integers(0, 256, (16, 4, 16, 16, 3), np.uint8),
                "audio": rng.normal(size=(16, 16, 8)).astype(jnp.bfloat16)} for _ in range(2)]
    losses, last = losses_on_one_and_eight_devices(config, batches, "one small red circle")
    state, metrics, trainer = last["state"], last["metrics"], last["trainer"]
    assert trainer.model_inputs == {"audio": 3, "video": 5, "tokens": 2}
    assert {"clip_loss_audio_video", "clip_loss_audio_text", "clip_loss_video_text"} <= set(
        metrics)
    kernel = state["params"]["video_tower"]["encoder"]["blocks"][0]["mlp"]["up"]["kernel"]
    assert kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    np.testing.assert_allclose(losses["eight"], losses["one"], atol=1e-4, rtol=0)

    manager = checkpoint.create_manager(str(tmp_path), keep=1)
    checkpoint.save(manager, 0, jax.device_get(state))
    manager.wait_until_finished()
    checkpoint.write_config_snapshot(config, str(tmp_path))
    frames = rng.integers(0, 256, (2, 4, 16, 16, 3), np.uint8)
    expected = trainer.model(state["params"]).encode("video", jnp.asarray(frames))[0]
    loaded = inference.load(str(tmp_path))
    np.testing.assert_allclose(loaded.encode_video(frames), expected, atol=1e-4)
    with pytest.raises(ValueError, match=r"Clips must be \(N, 4, H, W, 3\)"):
        loaded.encode_video(frames[:, :3])


def test_the_preflight_names_video_problems(tiny_config):
    config = video_config(tiny_config)
    config.data.video.frames = 5  # not a multiple of the tubelet
    with pytest.raises(preflight.ConfigError, match="do not cut into tubelets of 2"):
        preflight.check(config)
    config.data.video.frames = 4
    config.data.video.eval_preprocess = "sample_clip|decode_frames"
    with pytest.raises(preflight.ConfigError, match="must start with decode_frames"):
        preflight.check(config, data=pipeline)
    config.data.video.eval_preprocess = "decode_frames|sample_clip"
    # mmjax_clips stores 12 frames a clip: 4 frames every 4th span 13.
    config.data.train = config.data.eval = "tfds:mmjax_clips/tiny:test"
    config.tokenizer = smoke_video.get_config().tokenizer
    config.data.video.stride = 4
    with pytest.raises(preflight.ConfigError, match="span 13 stored frames, and the longest "
                       "video sampled from tfds:mmjax_clips/tiny:test stores 12"):
        preflight.check(config, data=pipeline)
    config.data.video.stride = 2
    preflight.check(config, data=pipeline)
    config.data.train = config.data.eval = "tfds:mmjax_shapes/tiny:test"
    # Its data are the tiny shapes: images and captions, no clips for the video tower.
    with pytest.raises(preflight.ConfigError, match=r"tfds:mmjax_shapes/tiny:test holds no "
                       r"video \(its examples have image, text\)"):
        preflight.check(config, data=pipeline)


def test_make_shards_reads_real_video_files_the_same_for_any_workers(tmp_path):
    """mp4 (H.264) and webm (VP9) files written by FFmpeg, some with a soundtrack, one
    truncated: every frame kept at the files' 12 fps with its timestamp, the soundtrack as WAV,
    the truncated file left out and counted; the same bytes from 1 and 4 threads and from Beam."""
    written = synthetic.write_captioned_videos(str(tmp_path / "raw"), 6, truncated=1)
    settings = video_files.VideoSettings(fps=12, max_frames=16, max_side=0)
    outputs = {}
    for name, options in {"one": dict(workers=1), "four": dict(workers=4),
                          "beam": dict(engine="beam", beam_options="--direct_running_mode="
                                       "in_memory --direct_num_workers=1")}.items():
        outputs[name] = make_shards.make_shards(written["folder"], str(tmp_path / name),
                                                quiet=True, video=settings, **options)
    files = {name: {f: (tmp_path / name / f).read_bytes() for f in meta["splits"]["train"]["files"]}
             for name, meta in outputs.items()}
    assert files["one"] == files["four"] == files["beam"]
    metadata = outputs["one"]
    assert metadata["splits"]["train"]["num_examples"] == 5
    assert [w.split(":")[0] for w in metadata["left_out"]["undecodable"]] == written["truncated"]

    # The same files as a webdataset tar (KEY.mp4 + KEY.txt): the same frames.
    with tarfile.open(tmp_path / "videos.tar", "w") as tar:
        for name in sorted(os.listdir(tmp_path / "raw" / "videos")):
            tar.add(tmp_path / "raw" / "videos" / name, arcname=name)
    from_tar = make_shards.make_shards(str(tmp_path / "videos.tar"), str(tmp_path / "tar"),
                                       quiet=True, video=settings, workers=1)
    assert from_tar["splits"]["train"]["num_examples"] == 5
    assert len(from_tar["left_out"]["undecodable"]) == 1

    def frames_of(directory):
        reader = shards.ShardsReader(str(directory), "train")
        return [shards.decode_record(tf.constant(r))["video"].numpy().tolist()
                for r in reader.__getitems__(list(range(5)))]
    assert frames_of(tmp_path / "tar") == frames_of(tmp_path / "one")

    source = datasets.open_source(datasets.parse_spec(f"shards:{tmp_path / 'one'}:train",
                                                      "train"), None)
    media = video.clip_media("decode_frames|sample_clip", frames=12, stride=1, image_size=32)
    for index in range(5):
        record = source.decode(tf.constant(source.fetch(np.array([index]))[0]), index)
        parsed = shards.decode_record(tf.constant(source.fetch(np.array([index]))[0]))
        key = parsed["key"].numpy().decode()
        rendered = clips.render_example("train", int(key[len("videos/"):len("videos/") + 4]))
        np.testing.assert_allclose(parsed["video_timestamps"].numpy(), np.arange(12) / 12,
                                   atol=1e-3)
        assert record["captions"].numpy()[0].decode() == rendered["caption"]
        frames = media(record["video"], tf.constant([0, 0], tf.int64)).numpy()
        # Lossy codecs and JPEG lose the background's pixel noise: compared over 4x4 blocks,
        # the frames are the rendered ones, in their order.
        def blocks(x):
            return x.astype(float).reshape(12, 8, 4, 8, 4, 3).mean(axis=(2, 4))
        error = np.abs(blocks(frames) - blocks(rendered["frames"])).mean()
        assert error < 4 and error < np.abs(blocks(frames) - blocks(rendered["frames"][::-1])
                                            ).mean()
        assert (len(parsed["audio"].numpy()) > 0) == (key in written["with_sound"])
