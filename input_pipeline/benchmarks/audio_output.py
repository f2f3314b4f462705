"""How audio should leave the input pipeline: as the log-mel spectrogram in bfloat16
(what the pipeline does), as that spectrogram quantised to uint8, or as the int16 waveform with
the log-mel computed on the device. Measured end to end on this host: tf.data decodes 16 kHz WAV
clips, crops them and makes the batch entry; the consumer puts each batch on the device and
turns it into the float32 spectrogram the audio tower reads (a cast, a dequantisation, or the
STFT and mel filters in JAX, checked against the pipeline's log-mel).

    python -m input_pipeline.benchmarks.audio_output --frames=1024 --num_mels=128  # AST-B/16
    python -m input_pipeline.benchmarks.audio_output --frames=64 --num_mels=32     # smoke

Prints a table and writes WORKDIR/audio_transport_FRAMESxMELS.json.
"""

from __future__ import annotations

import io
import json
import os
import time
import wave

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from input_pipeline import audio
from mmjax import conventions

RATE = 16_000
# Whisper-normalised log-mel values lie within about [-1.5, 2]; uint8 steps of 4/255 over [-2, 2]
# are finer than bfloat16's at values above 1.
UINT8_LOW, UINT8_HIGH = -2.0, 2.0


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def clips(count: int, seconds: float, seed: int = 0) -> list[bytes]:
    """Tones with noise, a little longer than the model's window so the crop has room."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return [wav_bytes(0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
                      + 0.05 * rng.standard_normal(t.shape)) for _ in range(count)]


def batch_entry(form: str, frames: int, num_mels: int, frame_length: int, hop: int):
    """(encoded, seed) -> the tensor that leaves the pipeline in `form`."""
    samples = conventions.audio_samples(frames, hop, frame_length)
    chain = "decode_wav|mono|resample|crop_or_pad(random=True)"
    if form != "waveform_int16":
        chain += "|log_mel"
    run = audio.parse_ops(chain, rate=RATE, samples=samples, hop=hop,
                          frame_length=frame_length, num_mels=num_mels)

    def ops(encoded, seed):
        clip = run(encoded, seed)
        if form == "waveform_int16":
            return tf.cast(tf.round(tf.clip_by_value(clip["waveform"], -1, 1) * 32767), tf.int16)
        if form == "spectrogram_uint8":
            scaled = (clip["spectrogram"] - UINT8_LOW) / (UINT8_HIGH - UINT8_LOW) * 255
            return tf.cast(tf.round(tf.clip_by_value(scaled, 0, 255)), tf.uint8)
        return tf.cast(clip["spectrogram"], tf.bfloat16)
    return ops


def jax_log_mel(waveform: jax.Array, mel: np.ndarray, frame_length: int, hop: int,
                frames: int) -> jax.Array:
    """The pipeline's log_mel (periodic Hann, power, mel filters, Whisper's normalisation) on
    int16 waveforms [batch, samples], in JAX."""
    x = waveform.astype(jnp.float32) / 32767
    index = jnp.arange(frames)[:, None] * hop + jnp.arange(frame_length)[None, :]
    window = 0.5 - 0.5 * jnp.cos(2 * jnp.pi * jnp.arange(frame_length) / frame_length)
    power = jnp.abs(jnp.fft.rfft(x[:, index] * window, axis=-1)) ** 2
    log = jnp.log10(jnp.maximum(power @ mel, 1e-10))
    log = jnp.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
    return (log + 4.0) / 4.0


def to_spectrogram(form: str, mel: np.ndarray, frame_length: int, hop: int, frames: int):
    if form == "waveform_int16":
        return jax.jit(lambda w: jax_log_mel(w, mel, frame_length, hop, frames))
    if form == "spectrogram_uint8":
        return jax.jit(lambda q: q.astype(jnp.float32) / 255 * (UINT8_HIGH - UINT8_LOW)
                       + UINT8_LOW)
    return jax.jit(lambda s: s.astype(jnp.float32))


def measure(form: str, encoded: list[bytes], *, frames: int, num_mels: int, frame_length: int,
            hop: int, batch_size: int, batches: int) -> dict:
    ops = batch_entry(form, frames, num_mels, frame_length, hop)
    dataset = (tf.data.Dataset.from_tensor_slices(encoded).repeat().enumerate()
               .map(lambda i, e: ops(e, tf.stack([i, i * 0 + 7])),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=True).prefetch(2))
    mel = audio.mel_matrix(frame_length // 2 + 1, num_mels, RATE).numpy()
    convert = to_spectrogram(form, mel, frame_length, hop, frames)
    iterator = dataset.as_numpy_iterator()
    first = next(iterator)
    convert(jax.device_put(first)).block_until_ready()  # compile

    def clips_per_sec(step) -> float:
        for _ in range(FLAGS.warmup):  # refill what the pause before drained or buffered
            step()
        started = time.perf_counter()
        for _ in range(batches):
            out = step()
        jax.block_until_ready(out)
        return batches * batch_size / (time.perf_counter() - started)

    # The pipeline alone, then with the consumer's transfer and conversion of each batch.
    pipeline_only = clips_per_sec(lambda: next(iterator))
    end_to_end = clips_per_sec(lambda: convert(jax.device_put(next(iterator))))
    spectrogram = convert(jax.device_put(first))
    on_device = jax.device_put(first)
    started = time.perf_counter()
    for _ in range(batches):
        convert(on_device).block_until_ready()
    convert_ms = 1e3 * (time.perf_counter() - started) / batches
    return {"bytes_per_clip": int(first[0].nbytes), "clips_per_sec": end_to_end,
            "pipeline_clips_per_sec": pipeline_only, "device_ms_per_batch": convert_ms,
            "spectrogram": np.asarray(spectrogram[0])}


FORMS = ("spectrogram_bfloat16", "spectrogram_uint8", "waveform_int16")


def main(argv) -> None:
    del argv
    frames, num_mels = FLAGS.frames, FLAGS.num_mels
    frame_length, hop = 400, 160
    seconds = conventions.audio_samples(frames, hop, frame_length) / RATE + 0.5
    encoded = clips(FLAGS.num_clips, seconds)
    common = dict(frames=frames, num_mels=num_mels, frame_length=frame_length, hop=hop,
                  batch_size=FLAGS.batch_size, batches=FLAGS.batches)
    results = {form: measure(form, encoded, **common) for form in FORMS}
    # The same clip and crop through each form: the device's spectrogram against bfloat16's.
    reference = results["spectrogram_bfloat16"].pop("spectrogram")
    for form in FORMS[1:]:
        results[form]["max_abs_diff_vs_bfloat16"] = float(np.max(np.abs(
            results[form].pop("spectrogram") - reference)))
    print(f"\nAudio to the device: {seconds - 0.5:.2f} s clips at 16 kHz -> {frames} frames x "
          f"{num_mels} mels; batch {FLAGS.batch_size}; {os.cpu_count()} cores; "
          f"{jax.devices()[0].platform}")
    print(f"{'form':<22}{'bytes/clip':>11}{'end to end clips/s':>20}{'pipeline alone':>16}"
          f"{'device ms/batch':>17}{'max |diff|':>12}")
    for form, r in results.items():
        diff = r.get("max_abs_diff_vs_bfloat16")
        print(f"{form:<22}{r['bytes_per_clip']:>11,}{r['clips_per_sec']:>20.1f}"
              f"{r['pipeline_clips_per_sec']:>16.1f}{r['device_ms_per_batch']:>17.2f}"
              f"{'' if diff is None else f'{diff:.4f}':>12}")
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, f"audio_transport_{frames}x{num_mels}.json"), "w") as f:
        json.dump({"frames": frames, "num_mels": num_mels, "batch_size": FLAGS.batch_size,
                   "results": results}, f, indent=2)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", "/tmp/mmjax_audio_bench", "Where the results file goes.")
    flags.DEFINE_integer("frames", 1024, "Spectrogram frames (10 ms hop).")
    flags.DEFINE_integer("num_mels", 128, "Mel bins.")
    flags.DEFINE_integer("num_clips", 64, "Distinct clips (the dataset repeats them).")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("batches", 8, "Timed batches.")
    flags.DEFINE_integer("warmup", 3, "Batches before each timing.")
    FLAGS = flags.FLAGS
    app.run(main)
