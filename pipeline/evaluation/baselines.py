"""The baseline codecs every evaluation compares with: Opus at 6 kbps and Codec2 at 3.2 kbps, run as
their command-line tools on temporary files, aligned to the input, with their coded bytes measured.

    out = run_baseline_opus(audio, 16000)                # BaselineOutput(audio [T], payload_bytes)

Alignment, measured on speech (demo_out test clips) and on a harmonic test tone:
- Opus (opusenc --bitrate 6, opusdec --rate 16000): opusdec applies the pre-skip and ends at the
  granule position, so the output has the input's length. At 6 kbps Opus codes SILK narrowband and
  resamples to 16 kHz on decode, leaving a lag of about 0.6 samples: waveform cross-correlation
  peaks at +1 sample on every clip tried. OPUS_DELAY drops that sample.
- Codec2 3200 (c2enc/c2dec on 8 kHz s16 raw): output has the padded input's length (whole 160-sample
  frames) and lags by about one frame. Codec2 is a parametric vocoder that keeps no phase, so
  waveform cross-correlation is meaningless; the log-spectral distance is smallest at lags of 142-168
  samples at 8 kHz (median 153, eight speech clips), flat around 160. CODEC2_DELAY is 160 (20 ms).
  Expect SNR and SI-SDR near or below 0 dB for Codec2 even when aligned; judge it by mel/PESQ/STOI.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.storage.audio import resample

OPUS_KBPS = 6
OPUS_RATE = 16000
OPUS_DELAY = 1
"""Samples (at OPUS_RATE) the opusdec output lags the input at 6 kbps; see the module notes."""
CODEC2_MODE = 3200
CODEC2_RATE = 8000
CODEC2_FRAME = 160
"""Samples (at CODEC2_RATE) per Codec2 3200 frame: 20 ms, 8 bytes."""
CODEC2_DELAY = 160
"""Samples (at CODEC2_RATE) the c2dec output lags the input; see the module notes."""


class BaselineError(RuntimeError):
    """A baseline codec that could not run: tool missing or failed; the message says which."""


@dataclass
class BaselineOutput:
    audio: np.ndarray
    """Decoded float32 [T] at the input's rate and length, aligned to the input."""
    payload_bytes: int
    """Bytes of coded audio (container headers excluded)."""


def run_baseline_opus(audio: np.ndarray, sr: int) -> BaselineOutput:
    """Opus at 6 kbps: [T] float at sr -> BaselineOutput (16 kHz inside, back to sr)."""
    x = resample(np.asarray(audio, np.float32), sr, OPUS_RATE)
    with tempfile.TemporaryDirectory(prefix="telucodec-opus-") as tmp:
        wav, ogg, out = Path(tmp, "in.wav"), Path(tmp, "coded.opus"), Path(tmp, "out.wav")
        sf.write(wav, _pad(x, OPUS_DELAY), OPUS_RATE, subtype="PCM_16")
        run_tool(["opusenc", "--quiet", "--bitrate", str(OPUS_KBPS), str(wav), str(ogg)])
        run_tool(["opusdec", "--quiet", "--rate", str(OPUS_RATE), str(ogg), str(out)])
        decoded, _ = sf.read(out, dtype="float32", always_2d=True)
        payload = ogg_audio_bytes(ogg.read_bytes())
    y = align(decoded[:, 0], OPUS_DELAY, len(x))
    return BaselineOutput(align(resample(y, OPUS_RATE, sr), 0, len(audio)), payload)


def run_baseline_codec2(audio: np.ndarray, sr: int) -> BaselineOutput:
    """Codec2 at 3.2 kbps: [T] float at sr -> BaselineOutput (8 kHz s16 inside, back to sr)."""
    x = resample(np.asarray(audio, np.float32), sr, CODEC2_RATE)
    frames = -(-(len(x) + CODEC2_DELAY) // CODEC2_FRAME)  # enough frames to cover the delay too
    pcm = np.round(np.clip(_pad(x, frames * CODEC2_FRAME - len(x)), -1, 1) * 32767).astype("<i2")
    with tempfile.TemporaryDirectory(prefix="telucodec-codec2-") as tmp:
        raw, bits, out = Path(tmp, "in.raw"), Path(tmp, "coded.bit"), Path(tmp, "out.raw")
        raw.write_bytes(pcm.tobytes())
        run_tool(["c2enc", str(CODEC2_MODE), str(raw), str(bits)])
        run_tool(["c2dec", str(CODEC2_MODE), str(bits), str(out)])
        decoded = np.frombuffer(out.read_bytes(), "<i2").astype(np.float32) / 32768
        payload = bits.stat().st_size
    y = align(decoded, CODEC2_DELAY, len(x))
    return BaselineOutput(align(resample(y, CODEC2_RATE, sr), 0, len(audio)), payload)


def run_tool(args: list[str]) -> None:
    """Run a codec tool; BaselineError naming it when it is missing or fails."""
    if shutil.which(args[0]) is None:
        raise BaselineError(f"{args[0]} not installed")
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BaselineError(f"{args[0]} failed: {reason}")


def align(audio: np.ndarray, delay: int, length: int) -> np.ndarray:
    """Drop `delay` leading samples, then crop or zero-pad to `length`: [T'] -> [length]."""
    return _pad(audio[delay:delay + length], max(0, length - len(audio[delay:])))


def _pad(audio: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([audio, np.zeros(n, np.float32)]).astype(np.float32) if n else audio


def ogg_audio_bytes(data: bytes) -> int:
    """Payload bytes of an Ogg stream's audio pages (granule > 0): headers and page framing excluded."""
    total, pos = 0, 0
    while pos + 27 <= len(data) and data[pos:pos + 4] == b"OggS":
        granule = struct.unpack_from("<q", data, pos + 6)[0]
        n_segments = data[pos + 26]
        body = sum(data[pos + 27:pos + 27 + n_segments])
        if granule > 0:
            total += body
        pos += 27 + n_segments + body
    return total
