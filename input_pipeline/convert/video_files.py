"""Video files as make_shards stores them: frames sampled at a fixed rate, each a JPEG, with
their timestamps, and the soundtrack (if any) as 16-bit mono WAV.

Decoding is FFmpeg's, through PyAV (pinned in requirements.txt): mp4, webm, mkv, mov, avi and
whatever else FFmpeg reads. A file that does not open, holds no video stream or gives no frame
(a truncated download, say) is left out as undecodable, with FFmpeg's reason. The same bytes
give the same record on every machine: frames are decoded on one thread and encoded by Pillow
at a fixed quality.
"""

from __future__ import annotations

import dataclasses
import io
import wave

import av
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
AUDIO_RATE = 16_000  # Hz: what the audio front end reads by default
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """How make_shards samples a video: `fps` frames a second (from the first frame), at most
    `max_frames` of them, each scaled so its shorter side is at most `max_side` (0: as
    decoded)."""

    fps: float = 8.0
    max_frames: int = 64
    max_side: int = 256


@dataclasses.dataclass
class Clip:
    """A decoded video as a record stores it."""

    frames: list[bytes]  # JPEG
    timestamps: list[float]  # seconds from the video's start
    audio: bytes | None  # 16-bit mono WAV at AUDIO_RATE, or None without a soundtrack


def _jpeg(frame: av.VideoFrame, max_side: int) -> bytes:
    image = frame.to_image()
    shorter = min(image.size)
    if max_side and shorter > max_side:
        scale = max_side / shorter
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _soundtrack(data: bytes) -> bytes | None:
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        parts = []
        for frame in container.decode(container.streams.audio[0]):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not parts:
        return None
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(AUDIO_RATE)
        f.writeframes(np.concatenate(parts).astype("<i2").tobytes())
    return buffer.getvalue()


def decode_video(data: bytes, settings: VideoSettings) -> tuple[Clip | None, str | None]:
    """(the clip, None), or (None, why not)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                return None, "no video stream"
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1  # the same frames everywhere
            frames, timestamps, start = [], [], None
            for frame in container.decode(stream):
                if frame.pts is None or frame.time is None:
                    continue
                start = frame.time if start is None else start
                time = frame.time - start
                # The first frame at or after each sampling instant (within a millisecond:
                # timestamps are rounded to the container's time base).
                if time + 1e-3 >= len(frames) / settings.fps:
                    frames.append(_jpeg(frame, settings.max_side))
                    timestamps.append(round(float(time), 6))
                    if len(frames) == settings.max_frames:
                        break
        audio = _soundtrack(data)
    except (av.error.FFmpegError, ValueError, OSError) as e:
        return None, f"{type(e).__name__}: {e}"
    if not frames:
        return None, "no frames decode"
    return Clip(frames, timestamps, audio), None
