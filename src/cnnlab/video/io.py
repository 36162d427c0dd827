"""Reading and writing video files: the ONE decoding policy for video, as ``load_image`` is for images.

PyAV (FFmpeg's libraries) decodes and encodes; cnnlab adds the policy around it:

- every frame comes back as an RGB ``(H, W, 3)`` uint8 array, already turned upright when the
  container carries a display matrix (phones record portrait video as landscape frames plus a
  "rotate 90" flag); the rotation is recorded in :class:`VideoInfo` and said once in the log;
- every frame carries its own presentation time in seconds. A variable frame rate (screen
  recordings, phones under load) is detected from those times and said; timelines then use the
  real times, never ``index / fps``;
- a file that is missing, not a video, corrupt or truncated raises :class:`DataError` naming it.
  Truncation is caught two ways: FFmpeg's own decode error, or fewer frames decoded than the
  container's index promises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import DataError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv")
# Relative spread of frame-to-frame intervals above which the rate is called variable. Constant
# rate files have exactly equal steps in their own time base; 5% leaves room for rounding of
# 29.97 fps into millisecond time bases.
_VFR_TOLERANCE = 0.05


def _av():
    try:
        import av
    except ImportError as e:  # a dependency of cnnlab; only a broken install gets here
        raise DataError("PyAV", "the `av` package is missing; run `make install`") from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as seen after the cnnlab policy (upright sizes)."""

    path: str
    width: int  # pixels, after rotation
    height: int
    fps: float  # average frames per second (frames / duration when the rate is variable)
    frames: int | None  # frames the container's index promises; None when it does not say
    duration_s: float | None
    codec: str
    rotation: int  # degrees counter-clockwise applied to make frames upright: 0, 90, 180, 270
    variable_frame_rate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def notes(self) -> list[str]:
        """Plain sentences about what was handled, for logs and reports."""
        out = []
        if self.rotation:
            out.append(
                f"{self.path}: rotation metadata of {self.rotation} degrees; frames were turned upright"
            )
        if self.variable_frame_rate:
            out.append(
                f"{self.path}: variable frame rate (average {self.fps:.2f} fps); "
                "times come from each frame's own timestamp"
            )
        return out


def _open(path: Path):
    av = _av()
    if not path.exists():
        raise DataError(path, "no such file; check the path")
    if path.is_dir():
        raise DataError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise DataError(path, "is empty (0 bytes); the file was not written completely")
    try:
        container = av.open(os.fspath(path))
    except av.error.FFmpegError as e:
        raise DataError(
            path,
            f"not a readable video, corrupt or truncated (FFmpeg: {e.strerror or e}); "
            "copy it again, re-encode it or remove it",
        ) from e
    if not container.streams.video:
        container.close()
        raise DataError(path, "has no video stream (audio only or not a video)")
    # FFmpeg reads a still image as a one-frame video (its image2 / *_pipe demuxers: jpeg_pipe,
    # png_pipe, ...): a clip model would answer for 1 frame repeated, without a word
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        container.close()
        raise DataError(
            path, "is a still image, not a video; give a video file (.mp4, .avi, .mkv, ...)"
        )
    return container


def _rotation_of(stream, first_frame) -> int:
    rot = 0
    if first_frame is not None:
        rot = int(getattr(first_frame, "rotation", 0) or 0)
    if not rot:  # older files and FFmpeg builds: the legacy "rotate" tag (clockwise degrees)
        tag = stream.metadata.get("rotate")
        if tag:
            try:
                rot = -int(float(tag))
            except ValueError:
                rot = 0
    return int(round(rot / 90.0)) * 90 % 360


def _upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    # np.rot90 with k > 0 turns counter-clockwise as displayed, the display-matrix convention.
    return np.ascontiguousarray(np.rot90(frame, k=rotation // 90)) if rotation else frame


def _is_variable(times: np.ndarray) -> bool:
    if len(times) < 3:
        return False
    steps = np.diff(times)
    if np.any(steps <= 0):
        return True
    return bool((steps.max() - steps.min()) > _VFR_TOLERANCE * np.median(steps))


def probe(path: str | os.PathLike[str], *, scan: bool = True) -> VideoInfo:
    """Describe ``path``. With ``scan`` (the default) every packet's timestamp is read (no pixel
    decoding) so a variable frame rate is found; otherwise only the container header is used."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        first = None
        try:
            for first in container.decode(stream):  # noqa: B007 (first is read after the loop)
                break
        except _av().error.FFmpegError as e:
            raise DataError(
                path, f"corrupt: the first frame cannot be decoded ({e.strerror or e})"
            ) from e
        if first is None:
            raise DataError(path, "holds no decodable frames (truncated or empty video stream)")
        rotation = _rotation_of(stream, first)
        times = None
        if scan:
            container.seek(0)
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
            if pts and stream.time_base is not None:
                times = np.sort(np.asarray(pts, dtype=np.float64)) * float(stream.time_base)
        frames = int(stream.frames) or (len(times) if times is not None else None) or None
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000.0
        vfr = times is not None and _is_variable(times)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if vfr and frames and duration:
            fps = frames / duration
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        return VideoInfo(
            path=str(path), width=w, height=h, fps=fps, frames=frames, duration_s=duration,
            codec=stream.codec_context.name, rotation=rotation, variable_frame_rate=vfr,
        )  # fmt: skip


@dataclass
class Frame:
    index: int  # 0-based decode order
    time_s: float  # presentation time in seconds from the stream start
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright


def iter_frames(
    path: str | os.PathLike[str], *, stride: int = 1, max_frames: int | None = None,
    info: VideoInfo | None = None,
) -> Iterator[Frame]:  # fmt: skip
    """Decode ``path`` frame by frame (every ``stride``-th frame, at most ``max_frames``).

    Raises :class:`DataError` naming the file when decoding fails part-way, or when a full read
    ends with fewer frames than the container promises (a truncated file).
    """
    if stride < 1:
        raise ValueError("stride must be >= 1")
    path = Path(path)
    info = info or probe(path, scan=False)
    av = _av()
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding is the slow part of a video job
        start = stream.start_time or 0
        tb = float(stream.time_base) if stream.time_base is not None else 0.0
        i = emitted = 0
        try:
            for frame in container.decode(stream):
                if i % stride == 0:
                    pts = frame.pts if frame.pts is not None else i
                    yield Frame(
                        i,
                        (pts - start) * tb if tb else i / (info.fps or 1.0),
                        _upright(frame.to_ndarray(format="rgb24"), info.rotation),
                    )
                    emitted += 1
                    if max_frames is not None and emitted >= max_frames:
                        return
                i += 1
        except av.error.FFmpegError as e:
            raise DataError(
                path, f"corrupt or truncated: decoding failed after frame {i} ({e.strerror or e})"
            ) from e
        if info.frames and i < info.frames * 0.98 - 1:  # index promised more: the data was cut off
            raise DataError(
                path,
                f"truncated: the container lists {info.frames} frames but only {i} could be decoded; "
                "copy the file again or re-encode it",
            )
        if i == 0:
            raise DataError(path, "holds no decodable frames (truncated or empty video stream)")


def read_video(
    path: str | os.PathLike[str], *, stride: int = 1, max_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray, VideoInfo]:
    """The whole video in memory: frames (T, H, W, 3) uint8, times (T,) seconds, info."""
    info = probe(path)
    for note in info.notes():
        log.warning(note)
    frames, times = [], []
    for f in iter_frames(path, stride=stride, max_frames=max_frames, info=info):
        frames.append(f.image)
        times.append(f.time_s)
    return np.stack(frames), np.asarray(times, dtype=np.float64), info


def sample_clip(
    path: str | os.PathLike[str], num_frames: int, *, info: VideoInfo | None = None
) -> np.ndarray:
    """``num_frames`` frames spread evenly over the whole video: (T, H, W, 3) uint8.

    Short videos repeat frames (nearest index), so every clip has the same length.
    """
    frames, _, _ = read_video(path)
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return frames[idx]


class VideoWriter:
    """Write RGB frames to a video file (H.264 in MP4 when the build has libx264, else MPEG-4 Part 2).

        with VideoWriter("out.mp4", fps=25) as w:
            w.write(frame)                       # (H, W, 3) uint8
            w.write(frame, time_s=0.48)          # or with an explicit time (variable rate)

    The file is written beside its final name and renamed when closed, so a crash never leaves a
    half-written file under the name the user asked for.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fps: float = 25.0, codec: str | None = None,
        rotation: int = 0,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.fps = fps
        self.rotation = rotation
        av = _av()
        self.codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._container = None
        self._stream = None
        self._count = 0

    def _start(self, h: int, w: int) -> None:
        av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(os.fspath(self._tmp), "w")
        stream = self._container.add_stream(
            self.codec, rate=Fraction(self.fps).limit_denominator(1001)
        )
        # Encoders with 4:2:0 chroma need even sides.
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)  # milliseconds: room for any timing
        if self.codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast"}
        if self.rotation:
            stream.set_display_rotation(self.rotation)
        self._stream = stream

    def write(self, frame: np.ndarray, *, time_s: float | None = None) -> None:
        av = _av()
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[2] not in (1, 3):
            raise ValueError(f"frames must be (H, W, 3) uint8, got shape {frame.shape}")
        if frame.shape[2] == 1:
            frame = np.repeat(frame, 3, axis=2)
        if self._container is None:
            self._start(*frame.shape[:2])
        h, w = self._stream.height, self._stream.width
        if frame.shape[:2] != (h, w):  # pad odd sides by repeating the edge
            frame = np.pad(
                frame, ((0, h - frame.shape[0]), (0, w - frame.shape[1]), (0, 0)), mode="edge"
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
        t = time_s if time_s is not None else self._count / self.fps
        vf.pts = int(round(t * 1000))
        vf.time_base = Fraction(1, 1000)
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self._count += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: str | os.PathLike[str], frames: np.ndarray, *, fps: float = 25.0,
    times: np.ndarray | None = None, codec: str | None = None, rotation: int = 0,
) -> Path:  # fmt: skip
    """Write frames (T, H, W, 3) uint8 in one call; ``times`` (seconds) for a variable rate."""
    with VideoWriter(path, fps=fps, codec=codec, rotation=rotation) as w:
        for i, frame in enumerate(frames):
            w.write(frame, time_s=None if times is None else float(times[i]))
    return Path(path)
