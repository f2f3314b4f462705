"""The audio front end (input_pipeline/audio.py) against NumPy references, eagerly and inside
tf.data."""

import io
import os
import wave

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import audio


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1], [samples] or [samples, channels]."""
    samples = samples if samples.ndim == 2 else samples[:, None]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(samples.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
    return buffer.getvalue()


def tone(hz: float, seconds: float, rate: int) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def numpy_log_mel(waveform, rate, frame_length=400, hop=160, num_mels=80):
    """The reference: frames without padding, periodic Hann window, |rfft|^2, HTK mel
    triangles (between bin frequencies, as tf.signal's), Whisper's normalisation."""
    frames = 1 + (len(waveform) - frame_length) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame_length) / frame_length)
    stacked = np.stack([waveform[i * hop:i * hop + frame_length] * window
                        for i in range(frames)])
    power = np.abs(np.fft.rfft(stacked, axis=1)) ** 2
    to_mel = lambda hz: 1127.0 * np.log1p(hz / 700.0)
    bins = to_mel(np.linspace(0, rate / 2, frame_length // 2 + 1))[1:]  # tf skips the DC bin
    edges = np.linspace(to_mel(0.0), to_mel(rate / 2), num_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0, np.minimum((bins[:, None] - lower) / (centre - lower),
                                       (upper - bins[:, None]) / (upper - centre)))
    mel = power[:, 1:] @ weights
    log = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def test_log_mel_equals_numpy():
    rate = 16_000
    waveform = tone(440, 0.5, rate) + 0.1 * np.random.default_rng(0).normal(size=8000)
    got = audio.log_mel(tf.constant(waveform, tf.float32), rate).numpy()
    expected = numpy_log_mel(waveform, rate)
    assert got.shape == expected.shape == (48, 80)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_resampling_keeps_a_tone_and_removes_what_the_new_rate_cannot_hold():
    """44.1 kHz -> 16 kHz: a 1 kHz tone comes out as the same tone (against the analytic
    signal), a 12 kHz tone (above the new Nyquist frequency) is filtered out, not aliased."""
    low = audio.resample(tf.constant(tone(1000, 0.2, 44_100)), 44_100, 16_000).numpy()
    assert len(low) == int(0.2 * 44_100 / (44_100 / 16_000))
    middle = slice(100, len(low) - 100)  # away from the edges, where the kernel is cut
    np.testing.assert_allclose(low[middle], tone(1000, 0.2, 16_000)[:len(low)][middle],
                               atol=2e-3)
    high = audio.resample(tf.constant(tone(12_000, 0.2, 44_100)), 44_100, 16_000).numpy()
    assert np.abs(high[middle]).max() < 0.01
    up = audio.resample(tf.constant(tone(1000, 0.2, 8000)), 8000, 16_000).numpy()
    np.testing.assert_allclose(up[100:-100], tone(1000, 0.2, 16_000)[:len(up)][100:-100],
                               atol=2e-3)


def test_crop_or_pad_repeats_short_clips_and_crops_long_ones_by_seed():
    short = tf.range(5, dtype=tf.float32)
    np.testing.assert_array_equal(audio.crop_or_pad(short, 12).numpy(),
                                  [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    long = tf.range(100, dtype=tf.float32)
    first = audio.crop_or_pad(long, 10).numpy()
    np.testing.assert_array_equal(first, np.arange(10))
    crops = {tuple(audio.crop_or_pad(long, 10, tf.constant([s, 0])).numpy()) for s in range(20)}
    assert len(crops) > 10 and all(c == tuple(range(int(c[0]), int(c[0]) + 10)) for c in crops)
    again = audio.crop_or_pad(long, 10, tf.constant([3, 0])).numpy()
    np.testing.assert_array_equal(again, audio.crop_or_pad(long, 10, tf.constant([3, 0])).numpy())


def test_spec_augment_masks_bands_by_seed():
    spectrogram = tf.reshape(tf.range(100 * 80, dtype=tf.float32), [100, 80])
    masked = audio.spec_augment(spectrogram, tf.constant([1, 2]), time_masks=1, time_width=20,
                                mel_masks=1, mel_width=10).numpy()
    changed = masked != spectrogram.numpy()
    rows, columns = np.nonzero(changed.all(axis=1))[0], np.nonzero(changed.all(axis=0))[0]
    assert 0 < len(rows) <= 20 and 0 < len(columns) <= 10  # one time band, one mel band
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(columns) == 1)
    assert np.all(masked[changed] == spectrogram.numpy().mean())
    np.testing.assert_array_equal(masked, audio.spec_augment(
        spectrogram, tf.constant([1, 2]), time_masks=1, time_width=20, mel_masks=1,
        mel_width=10).numpy())


def test_a_chain_runs_inside_tf_data_as_eagerly_and_rejects_what_does_not_decode():
    chain = audio.parse_ops("decode_wav|resample|crop_or_pad(seconds=1.0, random=True)|log_mel")
    stereo = np.stack([tone(440, 1.5, 22_050), tone(880, 1.5, 22_050)], axis=1)
    clips = [wav_bytes(stereo, 22_050), wav_bytes(tone(300, 0.4, 16_000), 16_000)]
    eager = [chain(tf.constant(c), tf.constant([7, i]))["spectrogram"].numpy()
             for i, c in enumerate(clips)]
    dataset = tf.data.Dataset.from_tensor_slices(clips).enumerate().map(
        lambda i, c: chain(c, tf.stack([tf.constant(7, tf.int64), i]))["spectrogram"])
    for got, expected in zip(dataset.as_numpy_iterator(), eager):
        assert got.shape == (98, 80)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError):
        chain(tf.constant(b"RIFF not really a wav file"), tf.constant([0, 0]))
    # Without `mono` or `resample`, log_mel still reads [samples, channels] as one clip.
    direct = audio.parse_ops("decode_wav|log_mel", rate=22_050)(tf.constant(clips[0]),
                                                                 tf.constant([0, 0]))
    assert direct["spectrogram"].shape == (1 + (33_075 - 400) // 160, 80)
    with pytest.raises(ValueError, match="Unknown preprocessing op 'mp3'"):
        audio.parse_ops("decode_wav|mp3")


def beeps_heard(samples: np.ndarray, rate: int) -> list[tuple[float, float, float]]:
    """(onset seconds, peak amplitude, fundamental Hz) of each beep found in a clip: runs of
    10-ms windows well above the noise floor, their spectrum's strongest peak."""
    from input_pipeline.generated import sounds

    window = rate // 100
    energy = np.abs(samples[:len(samples) // window * window]).reshape(-1, window).max(axis=1)
    loud = energy > 0.05
    found, start = [], None
    for i, on in enumerate(np.append(loud, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            segment = samples[start * window:i * window]
            spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n=1 << 15))
            hz = np.fft.rfftfreq(1 << 15, 1 / rate)[np.argmax(spectrum)]
            found.append((start * window / rate, segment.__abs__().max(), hz))
            start = None
    assert all(b - a > sounds.GAP_SECONDS / 2 for (a, *_), (b, *_) in zip(found, found[1:]))
    return found


def test_mmjax_sounds_captions_say_what_is_heard():
    """For 200 clips, measured from the samples alone: as many beeps as the caption says, in
    its third of the clip, at its register (the strongest frequency within 7 % of it) and
    loudness; held-out pairs never in training, about a quarter of the test clips."""
    from input_pipeline.generated import sounds

    for split in ("train", "test"):
        for index in range(100):
            example = sounds.render_example(split, index)
            count, loudness, register, waveform, _, *timing = example["caption"].split()
            beeps = beeps_heard(example["waveform"], sounds.RATE)
            assert len(beeps) == sounds.COUNTS.index(count) + 1, example["caption"]
            third = sounds.TIMINGS.index(" ".join(timing))
            # Onsets are measured to the 10-ms window.
            assert all(third / 3 - 0.01 <= onset < (third + 1) / 3 for onset, _, _ in beeps)
            assert all((peak > 0.3) == (loudness == "loud") for _, peak, _ in beeps)
            for _, _, hz in beeps:
                assert abs(hz / sounds.REGISTERS[register] - 1) < 0.07, (example["caption"], hz)
            assert sounds.CLASS_NAMES[example["label"]] == f"{register} {waveform} beep"
    train = {sounds.CLASS_PAIRS[sounds.render_example("train", i)["label"]] for i in range(400)}
    assert not train & set(sounds.HELD_OUT_PAIRS) and len(train) == 9
    unseen = np.mean([sounds.render_example("test", i)["unseen_combination"]
                      for i in range(400)])
    assert 0.18 < unseen < 0.32
    np.testing.assert_array_equal(sounds.render_example("test", 5)["waveform"],
                                  sounds.render_example("test", 5)["waveform"])


def test_mmjax_sounds_builds_and_decodes_through_the_front_end(tmp_path):
    import tensorflow_datasets as tfds

    from input_pipeline.generated import sounds

    builder = sounds.prepare(str(tmp_path), "tiny")
    assert builder.info.splits["train"].num_examples == 256
    source = tfds.data_source("mmjax_sounds/tiny", split="test", data_dir=str(tmp_path))
    record = source[3]
    expected = sounds.render_example("test", int(record["id"]))
    assert record["caption"].decode() == expected["caption"]
    chain = audio.parse_ops("decode_wav|resample|crop_or_pad(seconds=1.0)|log_mel")
    clip = chain(tf.constant(record["audio"]), tf.constant([0, 0]))
    np.testing.assert_allclose(clip["waveform"].numpy(), expected["waveform"], atol=1 / 32767)
    assert clip["spectrogram"].shape == (98, 80)


def test_make_shards_keeps_a_wav_converts_a_flac_and_skips_a_corrupt_sound(tmp_path):
    """A folder of sounds with .txt captions and a CSV with an `audio` column: the 16-bit WAV
    is stored byte for byte, the FLAC (and a 24-bit WAV) become 16-bit WAV that the training
    pipeline turns into the same spectrogram as the original, the corrupt file is left out and
    counted, and nothing else is."""
    import soundfile

    from input_pipeline import datasets, shards
    from input_pipeline.convert import make_shards
    from mmjax import text_tokenizers

    rate, clip = 16_000, tone(440.0, 0.5, 16_000)
    folder = tmp_path / "sounds" / "train"
    folder.mkdir(parents=True)
    (folder / "a.wav").write_bytes(wav_bytes(clip, rate))
    soundfile.write(folder / "b.flac", clip, rate, subtype="PCM_16")
    soundfile.write(folder / "c.wav", clip, rate, subtype="PCM_24")
    (folder / "d.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    for name in "abcd":
        (folder / f"{name}.txt").write_text(f"beep {name}\n")
    metadata = make_shards.make_shards(str(tmp_path / "sounds"), str(tmp_path / "out"),
                                       quiet=True)
    assert metadata["splits"]["train"]["num_examples"] == 3
    assert [k.split(":")[0] for k in metadata["left_out"]["undecodable"]] == [
        os.path.join("train", "d.wav")]
    reader = shards.ShardsReader(str(tmp_path / "out"), "train")
    records = [tf.train.Example.FromString(r).features.feature for r in reader.__getitems__(
        [0, 1, 2])]
    assert records[0]["audio"].bytes_list.value[0] == (folder / "a.wav").read_bytes()
    assert not any("image" in r for r in records)

    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("beep\na\nb\nc\n")
    spec = datasets.parse_spec(f"shards:{tmp_path / 'out'}:train", "train")
    media = {"audio": audio.spectrogram_media("decode_wav|crop_or_pad|log_mel", rate=rate,
                                              frames=40, hop=160, frame_length=400,
                                              num_mels=32)}
    dataset = datasets.eval_dataset(datasets.open_source(spec, None),
                                    text_tokenizers.WordTokenizer(4, str(vocabulary)),
                                    global_batch_size=3, image_size=8, media=media)
    batch = next(dataset.as_numpy_iterator())
    spectrograms = batch["audio"].astype(np.float32)
    assert spectrograms.shape == (3, 40, 32)
    np.testing.assert_allclose(spectrograms[1], spectrograms[0], atol=0.02)  # FLAC == WAV
    np.testing.assert_allclose(spectrograms[2], spectrograms[0], atol=0.02)  # 24-bit WAV

    (tmp_path / "table.csv").write_text("audio,caption\nsounds/train/b.flac,a flac beep\n"
                                        "sounds/train/d.wav,broken\n")
    metadata = make_shards.make_shards(str(tmp_path / "table.csv"), str(tmp_path / "csv_out"),
                                       quiet=True)
    assert metadata["splits"]["train"]["num_examples"] == 1
    assert len(metadata["left_out"]["undecodable"]) == 1


def test_mmjax_triples_sound_what_the_image_shows():
    """For 100 triples, measured from the samples and pixels: the clip has as many beeps as
    the caption has objects, at the register of its colour, in the third of its position, at
    the loudness of its size; the image is the shapes renderer's; held-out pairs only in test."""
    from input_pipeline.generated import shapes, sounds, triples

    for index in range(100):
        example = triples.render_example("train" if index % 2 else "test", index)
        count, size, color, _, *position = example["caption"].split()
        beeps = beeps_heard(example["waveform"], 16_000)
        assert len(beeps) == shapes.COUNTS.index(count) + 1, example["caption"]
        third = list(triples.POSITIONS).index(" ".join(position))
        assert all(third / 3 - 0.01 <= onset < (third + 1) / 3 for onset, _, _ in beeps)
        assert all((peak > 0.3) == (size == "large") for _, peak, _ in beeps)
        register = triples.COLORS[color]
        assert all(abs(hz / sounds.REGISTERS[register] - 1) < 0.07 for _, _, hz in beeps)
        pixels = example["image"].reshape(-1, 3).astype(int)
        colored = np.abs(pixels - shapes.COLORS[color]).max(axis=1) <= 20
        assert colored.sum() > 20, example["caption"]  # the objects wear the caption's colour
    train = {triples.CLASS_PAIRS[triples.render_example("train", i)["label"]] for i in range(300)}
    assert not train & set(triples.HELD_OUT_PAIRS) and len(train) == 9


def test_mmjax_triples_builds_with_image_and_sound_through_the_pipeline(tmp_path):
    from input_pipeline import datasets, preprocess
    from input_pipeline.generated import triples
    from mmjax import text_tokenizers

    triples.prepare(str(tmp_path), "tiny")
    source = datasets.open_source(datasets.parse_spec("tfds:mmjax_triples/tiny:test", "test"),
                                  str(tmp_path))
    media = {"image": preprocess.image_media("decode|resize", image_size=16,
                                             normalization="minus_one_one"),
             "audio": audio.spectrogram_media("decode_wav|crop_or_pad|log_mel", rate=16_000,
                                              frames=64, hop=250, frame_length=400, num_mels=32)}
    vocabulary = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "input_pipeline", "shapes_vocabulary.txt")
    batch = next(datasets.eval_dataset(source, text_tokenizers.WordTokenizer(12, vocabulary),
                                       global_batch_size=8, image_size=16,
                                       media=media).as_numpy_iterator())
    assert batch["image"].shape == (8, 16, 16, 3) and batch["audio"].shape == (8, 64, 32)
    assert batch["valid"].all() and (batch["tokens"][:, 1] != text_tokenizers.UNK_ID).all()
    expected = triples.render_example("test", int(batch["id"][2]))
    assert triples.CLASS_PAIRS[batch["label"][2]] == triples.CLASS_PAIRS[expected["label"]]
