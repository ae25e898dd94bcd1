"""Video files and live streams for `fpn detect`: decoding frames and writing the annotated video.

PyAV (the optional extra ``video``: ``pip install "fpncli[video]"``) decodes and encodes
through the FFmpeg its wheels bundle: every common container and codec, RTSP/HTTP streams and
webcams (v4l2, avfoundation), per-frame timestamps, and decoder errors as exceptions, so a
truncated file keeps the frames before the fault. (OpenCV's ``VideoCapture`` hides decoder
errors and timestamps behind a boolean; torchvision's video reader is deprecated.)

Sources: a video file (by extension, :data:`VIDEO_EXTENSIONS`), ``rtsp://``, ``rtmp://``,
``http(s)://``, ``udp://``, ``tcp://`` URLs, and ``webcam:N`` (``/dev/videoN`` on Linux,
camera N on macOS).

The annotated video has the input's container (streams and webcams: MP4) and frame rate,
every frame of the input (with ``--vid-stride N`` the frames between two detected ones show
the last detections), H.264 where the container takes it. It is written to a temporary file
beside its target and renamed into place when the video ends, fails or is interrupted, so
the file at the target is always a finished, playable video.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from fpncli.errors import FpnError, first_line
from fpncli.runtime.interrupts import deferred_interrupt

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mpg", ".mpeg")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
INSTALL_HINT = 'video input needs PyAV: pip install "fpncli[video]" (or pip install av)'
# Output muxer and codecs (first available wins) per container extension.
_MUXERS = {
    ".mp4": ("mp4", ("libx264", "h264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "h264", "mpeg4")),
    ".mov": ("mov", ("libx264", "h264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "h264", "mpeg4")),
    ".avi": ("avi", ("mpeg4", "mjpeg")),
    ".webm": ("webm", ("libvpx", "libvpx-vp9")),
    ".ts": ("mpegts", ("libx264", "h264", "mpeg2video")),
    ".mpg": ("mpeg", ("mpeg2video", "mpeg1video")),
    ".mpeg": ("mpeg", ("mpeg2video", "mpeg1video")),
}
_OPEN_TIMEOUT = 10.0  # seconds to connect to a stream / wait for its next packet
_DEFAULT_RATE = Fraction(30)


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_stream(source: str | os.PathLike) -> bool:
    """A URL FFmpeg reads over the network, or ``webcam:N``."""
    text = os.fspath(source).lower()
    return text.startswith(STREAM_PREFIXES) or re.fullmatch(r"webcam:\d+", text) is not None


def require_av() -> Any:
    """The ``av`` module, or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise FpnError(INSTALL_HINT) from None
    return av


def stream_output_name(source: str) -> str:
    """A file name for the annotated video of a stream: ``webcam:0`` -> ``webcam0.mp4``,
    ``rtsp://cam.local:554/live`` -> ``rtsp_cam.local_554_live.mp4``."""
    webcam = re.fullmatch(r"webcam:(\d+)", source.lower())
    if webcam:
        return f"webcam{webcam.group(1)}.mp4"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.split("?", 1)[0]).strip("_.")
    return (name[:100] or "stream") + ".mp4"


def _reason(exc: BaseException) -> str:
    text = first_line(exc)
    # PyAV's messages repeat the path: "[Errno 2] No such file or directory: 'x.mp4'".
    return re.sub(r":\s*'[^']*'$", "", text)


def _open_input(av: Any, source: str) -> Any:
    """Open a file, URL or ``webcam:N`` for reading."""
    webcam = re.fullmatch(r"webcam:(\d+)", source.lower())
    if webcam:
        index = webcam.group(1)
        if sys.platform.startswith("linux"):
            return av.open(f"/dev/video{index}", format="v4l2", timeout=_OPEN_TIMEOUT)
        if sys.platform == "darwin":
            return av.open(index, format="avfoundation", timeout=_OPEN_TIMEOUT)
        raise FpnError(f"{source}: webcams are read on Linux and macOS; give the camera's stream URL")
    options = {"rtsp_transport": "tcp"} if source.lower().startswith(("rtsp://", "rtsps://")) else {}
    return av.open(source, options=options, timeout=_OPEN_TIMEOUT)


@dataclass
class Frame:
    """One decoded frame: its index in the video (from 0), time in seconds, RGB pixels
    (``numpy`` uint8 ``[H, W, 3]``)."""

    index: int
    time: float
    rgb: Any


class VideoReader:
    """Frames of a video file or stream, in order, with the decoding fault (if any) kept.

    Iterating stops at the end or at the first decoder error; then :attr:`error` says why
    (``None`` after a clean end) and the frames decoded before it have been yielded.
    """

    def __init__(self, source: str) -> None:
        av = require_av()
        self.source = source
        try:
            self.container = _open_input(av, source)
        except FpnError:
            raise
        except (av.FFmpegError, OSError) as exc:
            what = "cannot open stream" if is_stream(source) else "cannot open video"
            raise FpnError(f"{source}: {what} ({_reason(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise FpnError(f"{source}: has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        self.width = int(self.stream.codec_context.width)
        self.height = int(self.stream.codec_context.height)
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.rate = Fraction(rate) if rate else _DEFAULT_RATE
        # From the container's frame count, else (Matroska, WebM) from its duration; a live
        # stream has neither.
        self.frames_total: int | None = int(self.stream.frames) or None
        self.frames_exact = self.frames_total is not None
        if self.frames_total is None and self.container.duration and not is_stream(source):
            self.frames_total = round(self.container.duration / 1_000_000 * float(self.rate)) or None
        self.decoded = 0
        self.error: str | None = None

    def __iter__(self) -> Iterator[Frame]:
        av = require_av()
        try:
            for frame in self.container.decode(self.stream):
                t = frame.time if frame.time is not None else self.decoded / float(self.rate)
                rgb = frame.to_ndarray(format="rgb24")
                index = self.decoded
                self.decoded += 1
                yield Frame(index, float(t), rgb)
        except (av.FFmpegError, OSError) as exc:
            self.error = (
                f"{self.source}: cannot decode past frame {self.decoded} ({_reason(exc)}); "
                f"the {self.decoded} frames before are kept"
            )
            return
        total = self.frames_total
        # An estimate from the duration may be one frame off.
        if total is not None and self.decoded < (total if self.frames_exact else total - 1):
            about = "" if self.frames_exact else "about "
            self.error = (
                f"{self.source}: ended after {self.decoded} of its {about}{total} frames "
                f"(truncated or corrupt); the {self.decoded} frames decoded are kept"
            )

    def close(self) -> None:
        self.container.close()


class VideoWriter:
    """An annotated video, written to a temporary file and renamed to ``target`` on :meth:`close`.

    ``target``'s extension picks the container (:data:`VIDEO_EXTENSIONS`; others: MP4 with
    an ``.mp4`` suffix), ``rate`` the frame rate; frames are RGB ``uint8 [H, W, 3]`` of
    ``width`` x ``height`` (odd sizes are scaled to the next even size where the codec needs it).
    """

    def __init__(self, target: Path, width: int, height: int, rate: Fraction) -> None:
        av = require_av()
        self._av = av
        suffix = target.suffix.lower()
        if suffix not in _MUXERS:
            target, suffix = target.with_suffix(".mp4"), ".mp4"
        self.target = target
        muxer, codecs = _MUXERS[suffix]
        codec = next((c for c in codecs if c in av.codecs_available), None)
        if codec is None:
            raise FpnError(f"{target}: this FFmpeg build has no encoder for {suffix} ({', '.join(codecs)})")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.written = 0
        self.tmp = Path()  # the temporary, once made
        try:
            # Held while the temporary is made and named: an interrupt in between left it behind.
            with deferred_interrupt():
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent
                )
                os.close(fd)
                self.tmp = Path(tmp)
            self.container = av.open(tmp, "w", format=muxer)
            stream = self.container.add_stream(codec, rate=rate)
            even = codec not in ("mjpeg",)  # 4:2:0 chroma needs even sizes
            stream.width = width + (width % 2 if even else 0)
            stream.height = height + (height % 2 if even else 0)
            stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "23", "preset": "veryfast"}
            elif codec in ("mpeg4", "mpeg2video", "mpeg1video", "libvpx", "libvpx-vp9"):
                stream.bit_rate = max(1_000_000, width * height * 4)
            self.stream = stream
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._remove_temporary()
            raise FpnError(f"{target}: cannot write video ({_reason(exc)})") from None
        except BaseException:  # Ctrl-C while the file opens: no hidden temporary left behind
            self._remove_temporary()
            raise

    def _remove_temporary(self) -> None:
        if self.tmp != Path():
            self.tmp.unlink(missing_ok=True)

    def write(self, rgb: Any) -> None:
        frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.written
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except (self._av.FFmpegError, OSError) as exc:
            raise FpnError(f"{self.target}: cannot write video ({_reason(exc)})") from None
        self.written += 1

    def close(self) -> Path | None:
        """Flush the encoder, finish the container and move it to the target (None when no
        frame was written: no file then)."""
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self.container.close()
        except (self._av.FFmpegError, OSError) as exc:
            self.tmp.unlink(missing_ok=True)
            raise FpnError(f"{self.target}: cannot write video ({_reason(exc)})") from None
        if self.written == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        from fpncli.atomic import current_umask

        os.chmod(self.tmp, 0o666 & ~current_umask())  # mkstemp's 0600 is not what a plain write gives
        os.replace(self.tmp, self.target)
        return self.target
