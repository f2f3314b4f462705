"""Audio front end: named ops from encoded audio to a log-mel spectrogram, usable eagerly and
inside tf.data.

A config names a chain as a string, as for images (input_pipeline/preprocess.py):

    "decode_wav|mono|resample(rate=16000)|crop_or_pad(seconds=5, random=True)|log_mel|spec_augment"

Each op maps (audio, seed) to audio, where audio is a dict: `waveform` float32 [samples,
channels] (or [samples] once mono) and `rate` (samples per second, int32), and, after `log_mel`,
`spectrogram` float32 [frames, mel bins]. Ops that find bad audio (undecodable, empty) raise; the
pipeline skips that example as it does images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from input_pipeline import preprocess
from mmjax import conventions

AudioOp = Callable[[dict, tf.Tensor], dict]
OPS: dict[str, Callable[..., AudioOp]] = {}
register = preprocess.registrar(OPS)


def decode_wav(encoded: tf.Tensor) -> dict:
    """WAV bytes (PCM 16-bit) -> {"waveform": float32 [samples, channels] in [-1, 1], "rate"}.
    Other formats (FLAC, OGG, MP3) are converted to WAV by make_shards, outside the graph."""
    waveform, rate = tf.audio.decode_wav(encoded)
    with tf.control_dependencies([tf.debugging.assert_positive(
            tf.shape(waveform)[0], message="empty audio")]):
        return {"waveform": tf.identity(waveform), "rate": tf.cast(rate, tf.int32)}


def mono(audio: dict) -> dict:
    """The channels' mean: [samples, channels] -> [samples]."""
    waveform = audio["waveform"]
    return {**audio, "waveform": tf.reduce_mean(waveform, axis=-1) if waveform.shape.rank == 2
            else waveform}


def resample(waveform: tf.Tensor, from_rate: tf.Tensor, to_rate: int,
             half_width: int = 16) -> tf.Tensor:
    """Band-limited resampling of a mono waveform: each output sample is the input convolved
    with a Hann-windowed sinc at its position, the cutoff at the lower of the two Nyquist
    frequencies (no aliasing when downsampling). `half_width`: input samples each side."""
    from_rate = tf.cast(from_rate, tf.float64)
    ratio = from_rate / to_rate  # input samples per output sample
    count = tf.cast(tf.math.floor(tf.cast(tf.shape(waveform)[0], tf.float64) / ratio), tf.int32)
    positions = tf.cast(tf.range(count), tf.float64) * ratio  # in input samples
    cutoff = tf.minimum(tf.constant(1.0, tf.float64), 1.0 / ratio)  # of the input Nyquist
    width = tf.cast(tf.math.ceil(half_width / cutoff), tf.int32)
    offsets = tf.range(-width + 1, width + 1)
    taps = tf.cast(tf.math.floor(positions), tf.int32)[:, None] + offsets[None, :]
    distance = positions[:, None] - tf.cast(taps, tf.float64)
    window = 0.5 + 0.5 * tf.cos(math.pi * distance / tf.cast(width, tf.float64))
    kernel = cutoff * _sinc(cutoff * distance) * tf.where(tf.abs(distance) < tf.cast(
        width, tf.float64), window, 0.0)
    inside = (taps >= 0) & (taps < tf.shape(waveform)[0])
    samples = tf.where(inside, tf.gather(waveform, tf.clip_by_value(
        taps, 0, tf.shape(waveform)[0] - 1)), 0.0)
    return tf.reduce_sum(tf.cast(samples, tf.float64) * kernel, axis=1)


def _sinc(x: tf.Tensor) -> tf.Tensor:
    safe = tf.where(tf.equal(x, 0.0), tf.ones_like(x), x)
    return tf.where(tf.equal(x, 0.0), tf.ones_like(x), tf.sin(math.pi * safe) / (math.pi * safe))


def crop_or_pad(waveform: tf.Tensor, length: int, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Exactly `length` samples: longer clips are cropped (at a seeded random offset, or from the
    start without a seed), shorter ones repeated until long enough (no silence to learn)."""
    count = tf.shape(waveform)[0]
    repeated = tf.tile(waveform, [(length + count - 1) // count])
    longest = tf.shape(repeated)[0]
    offset = 0 if seed is None else tf.random.stateless_uniform(
        [], seed=seed, maxval=tf.maximum(count - length, 0) + 1, dtype=tf.int32)
    return tf.ensure_shape(repeated[tf.minimum(offset, longest - length):][:length], [length])


def mel_matrix(num_bins: int, num_mels: int, rate: int, low_hz: float = 0.0,
               high_hz: float | None = None) -> tf.Tensor:
    """[num_bins, num_mels] triangular filters, equally spaced on the HTK mel scale."""
    return tf.signal.linear_to_mel_weight_matrix(num_mels, num_bins, rate, low_hz,
                                                 high_hz or rate / 2)


def log_mel(waveform: tf.Tensor, rate: int, *, frame_length: int = 400, hop: int = 160,
            num_mels: int = 80) -> tf.Tensor:
    """[frames, num_mels]: the power spectrogram (periodic Hann window, frames of `frame_length`
    every `hop` samples: 25 ms / 10 ms at 16 kHz) through mel filters, then Whisper's
    normalisation, which needs no dataset statistics: log10, floored 8 below the clip's peak
    (8 decades of dynamic range), then (x + 4) / 4, which puts clips of ordinary loudness
    within a few units of 0."""
    stft = tf.signal.stft(tf.cast(waveform, tf.float32), frame_length, hop,
                          fft_length=frame_length, window_fn=tf.signal.hann_window)
    power = tf.abs(stft) ** 2
    mel = power @ mel_matrix(frame_length // 2 + 1, num_mels, rate)
    log = tf.math.log(tf.maximum(mel, 1e-10)) / math.log(10.0)
    log = tf.maximum(log, tf.reduce_max(log) - 8.0)
    return (log + 4.0) / 4.0


def spec_augment(spectrogram: tf.Tensor, seed: tf.Tensor, *, time_masks: int = 2,
                 time_width: int = 20, mel_masks: int = 2, mel_width: int = 10) -> tf.Tensor:
    """SpecAugment's masking: `time_masks` bands of up to `time_width` frames and `mel_masks`
    of up to `mel_width` mel bins set to the spectrogram's mean, at seeded random places."""
    frames, mels = tf.shape(spectrogram)[0], tf.shape(spectrogram)[1]
    keep = tf.ones_like(spectrogram, tf.bool)
    for i, (count, width, axis, size) in enumerate(((time_masks, time_width, 0, frames),
                                                    (mel_masks, mel_width, 1, mels))):
        for j in range(count):
            mask_seed = tf.random.experimental.stateless_fold_in(seed, 2 * j + i)
            draws = tf.random.stateless_uniform([2], seed=mask_seed)
            mask_width = tf.cast(draws[0] * tf.cast(width + 1, tf.float32), tf.int32)
            start = tf.cast(draws[1] * tf.cast(tf.maximum(size - mask_width, 0) + 1, tf.float32),
                            tf.int32)
            index = tf.range(size)
            band = (index >= start) & (index < start + mask_width)
            band = band[:, None] if axis == 0 else band[None, :]
            keep &= ~band
    return tf.where(keep, spectrogram, tf.reduce_mean(spectrogram))


@register("decode_wav")
def _decode_wav():
    return lambda audio, seed: decode_wav(audio)


@register("mono")
def _mono():
    return lambda audio, seed: mono(audio)


@register("resample")
def _resample(rate: int = 16_000):
    def op(audio, seed):
        audio = mono(audio)
        waveform = tf.cond(tf.equal(audio["rate"], rate), lambda: tf.cast(
            audio["waveform"], tf.float64), lambda: resample(audio["waveform"], audio["rate"],
                                                             rate))
        return {**audio, "waveform": tf.cast(waveform, tf.float32),
                "rate": tf.constant(rate, tf.int32)}
    return op


@register("crop_or_pad")
def _crop_or_pad(seconds: float | None = None, rate: int = 16_000, random: bool = False,
                 samples: int | None = None):
    """To `seconds`, or exactly `samples` (what a model's spectrogram frames need)."""
    if (seconds is None) == (samples is None):
        raise ValueError("crop_or_pad takes seconds or samples (one of them)")

    def op(audio, seed):
        audio = mono(audio)  # a chain without `mono` must not take channels for time
        length = int(round(seconds * rate)) if samples is None else int(samples)
        return {**audio, "waveform": crop_or_pad(audio["waveform"], length,
                                                 seed if random else None)}
    return op


@register("log_mel")
def _log_mel(rate: int = 16_000, frame_length: int = 400, hop: int = 160, num_mels: int = 80):
    def op(audio, seed):
        audio = mono(audio)  # a chain without `mono` must not take channels for time
        return {**audio, "spectrogram": log_mel(audio["waveform"], rate,
                                                frame_length=frame_length, hop=hop,
                                                num_mels=num_mels)}
    return op


@register("spec_augment")
def _spec_augment(time_masks: int = 2, time_width: int = 20, mel_masks: int = 2,
                  mel_width: int = 10):
    def op(audio, seed):
        return {**audio, "spectrogram": spec_augment(
            audio["spectrogram"], seed, time_masks=time_masks, time_width=time_width,
            mel_masks=mel_masks, mel_width=mel_width)}
    return op


def parse_ops(spec: str, *, rate: int = 16_000,
              **defaults) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """"decode_wav|resample|..." -> one function (encoded audio, seed) -> audio dict. Ops'
    `rate` defaults to `rate`, their other parameters to `defaults` (by name: samples, hop,
    frame_length, num_mels); each op gets its own seed."""
    ops = [op for _, op in preprocess.parse_chain(spec, OPS, {"rate": rate, **defaults})]

    def run(encoded, seed):
        audio = encoded
        for i, op in enumerate(ops):
            audio = op(audio, tf.random.experimental.stateless_fold_in(seed, i))
        return audio
    return run


def spectrogram_media(spec: str, *, rate: int, frames: int, hop: int, frame_length: int,
                      num_mels: int) -> preprocess.Media:
    """A chain ending in `log_mel` as the batch entry the audio tower takes: [frames, num_mels]
    bfloat16 (half the bytes of float32; log-mel values near 0 lose nothing that matters).
    Clips are cropped or repeated to the samples that give exactly `frames` frames."""
    run = parse_ops(spec, rate=rate, hop=hop, frame_length=frame_length, num_mels=num_mels,
                    samples=conventions.audio_samples(frames, hop, frame_length))

    def ops(encoded, seed):
        audio = run(encoded, seed)
        if "spectrogram" not in audio:
            raise ValueError(f"Audio chain {spec!r} gives no spectrogram: end it with log_mel")
        return tf.cast(audio["spectrogram"], tf.bfloat16)
    return preprocess.Media(ops, (frames, num_mels), tf.bfloat16)
