"""Folders of captioned image and video files as users have them, for tests and the loader
benchmark.

Images are the embedded dataset's renderings scaled up, saved as JPEG and PNG, with 1-5 captions
each; among them one grayscale, one RGBA PNG and one CMYK JPEG, and on request broken files
(truncated JPEG, random bytes, an empty file) and an empty caption. Videos are mmjax_clips'
clips encoded by FFmpeg (PyAV) as H.264 mp4 and VP9 webm, some with a soundtrack, and on request
a truncated one.
"""

from __future__ import annotations

import csv
import io
import os

import av
import numpy as np
from PIL import Image

from input_pipeline.generated import clips, shapes

PHRASINGS = (
    "{}",
    "a picture of {}",
    "there are {}",
    "an image with {}",
    "{}, on a plain background",
)


def write_captioned_images(directory: str, count: int, *, image_size: int = 64,
                           corrupt: int = 0, test_fraction: float = 0.0,
                           seed: int = 0, first: int = 0, phrasings=PHRASINGS) -> dict:
    """Writes `directory`/images/*.{jpg,png} and `directory`/captions.csv (image, caption, split).

    Returns {"csv": path, "corrupt": [image paths as in the CSV], "special": {kind: path}}.
    The corrupt files are the last `corrupt` images of the train split. The images are the
    embedded dataset's train examples `first`, `first` + 1, ... (beyond its 20,000: new ones).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rows, corrupt_keys, special = [], [], {}
    num_test = int(round(count * test_fraction))
    for index in range(count):
        split = "test" if index >= count - num_test else "train"
        example = shapes.render_example("train", first + index)
        image = Image.fromarray(example["image"]).resize((image_size, image_size), Image.BILINEAR)
        kind = {0: "grayscale", 1: "rgba", 2: "cmyk"}.get(index, "jpeg" if index % 2 else "png")
        broken = split == "train" and count - num_test - corrupt <= index < count - num_test
        key = f"images/{index:05d}.{'png' if kind in ('png', 'rgba') else 'jpg'}"
        buffer = io.BytesIO()
        if kind == "grayscale":
            image.convert("L").save(buffer, "JPEG", quality=90)
        elif kind == "rgba":
            image.convert("RGBA").save(buffer, "PNG")
        elif kind == "cmyk":
            image.convert("CMYK").save(buffer, "JPEG", quality=90)
        else:
            image.save(buffer, "PNG" if kind == "png" else "JPEG", quality=90)
        data = buffer.getvalue()
        if broken:
            way = len(corrupt_keys) % 3
            data = (data[: len(data) // 3] if way == 0 else
                    rng.bytes(len(data)) if way == 1 else b"")
            corrupt_keys.append(key)
        elif kind in ("grayscale", "rgba", "cmyk"):
            special[kind] = key
        with open(os.path.join(directory, key), "wb") as f:
            f.write(data)
        for phrasing in rng.choice(phrasings, size=rng.integers(1, len(phrasings) + 1),
                                   replace=False):
            rows.append({"image": key, "caption": phrasing.format(example["caption"]),
                         "split": split})
    path = os.path.join(directory, "captions.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return {"csv": path, "corrupt": corrupt_keys, "special": special}


def encode_video(frames: np.ndarray, path: str, *, fps: int = 12,
                 tone_hz: float | None = None) -> None:
    """uint8 frames [T, H, W, 3] (H and W even) as an H.264 mp4 or VP9 webm (by `path`'s
    extension) at `fps`, with a soundtrack of a sine at `tone_hz` (AAC or Opus) if given."""
    webm = path.endswith(".webm")
    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = None
        if tone_hz is not None:
            audio = container.add_stream("libopus" if webm else "aac", rate=48_000)
            audio.layout = "mono"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if audio is not None:
            seconds = len(frames) / fps
            samples = np.sin(2 * np.pi * tone_hz * np.arange(int(48_000 * seconds)) / 48_000)
            chunk = 960
            for start in range(0, len(samples), chunk):
                piece = (0.3 * samples[start:start + chunk]).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48_000, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())


def write_captioned_videos(directory: str, count: int, *, truncated: int = 0,
                           fps: int = 12) -> dict:
    """Writes `directory`/videos/*.{mp4,webm}, each with a same-named .txt caption (the folder
    layout): mmjax_clips' train clips 0, 1, ...; every third a webm, every other one with a
    soundtrack; the last `truncated` cut to a third of their bytes.

    Returns {"folder": directory, "truncated": [keys], "with_sound": [keys]}."""
    os.makedirs(os.path.join(directory, "videos"), exist_ok=True)
    cut, with_sound = [], []
    for index in range(count):
        example = clips.render_example("train", index)
        key = f"videos/{index:04d}.{'webm' if index % 3 == 2 else 'mp4'}"
        path = os.path.join(directory, key)
        tone = 440.0 if index % 2 == 0 else None
        encode_video(example["frames"], path, fps=fps, tone_hz=tone)
        if index >= count - truncated:
            data = open(path, "rb").read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 3])
            cut.append(key)
        elif tone is not None:
            with_sound.append(key)
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write(example["caption"] + "\n")
    return {"folder": directory, "truncated": cut, "with_sound": with_sound}
