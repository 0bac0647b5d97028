"""Compare telucodec with Opus and Codec2 on the same clips: scores, bitrates and spectrograms.

    report = evaluate_checkpoint("runs/r1", "demo_out/data", split="test", n_clips=8, seconds=4.0,
                                 out_dir="eval_out", save_audio=True)   # EvalReport; writes eval.json,
                                                         # PNGs and eval_out/audio/CLIP/CODEC.wav
    results = evaluate_codecs(codec, clips, 16000)       # [CodecResult(score, outputs, clips)]

Every codec sees the same clips and is scored by the one scorer (evaluation/scorer.py): SNR, SI-SDR, mel
distance, PESQ-WB and STOI, averaged over clips (PESQ and STOI over the clips they could score). Bitrates are
measured, not nominal: the bytes each codec needed for its codes, over the clips' duration
(telucodec: the .tcq payload; Opus: the Ogg audio pages without the header pages, so VBR shows;
Codec2: its raw frames). A missing tool is a row with a note, not an error.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pipeline.codec.bitstream import payload_size
from pipeline.codec.metrics import Score, mean_score
from pipeline.codec.model import Codec
from pipeline.evaluation.baselines import BaselineError, run_baseline_codec2, run_baseline_opus
from pipeline.evaluation.clips import load_eval_clips
from pipeline.evaluation.scorer import ClipMetrics, score_clip
from pipeline.storage.audio import log_spectrogram


@dataclass
class CodecScore:
    name: str
    bitrate_kbps: float | None
    """Measured: coded bytes x 8 / seconds of audio."""
    snr: float | None
    si_sdr: float | None
    mel_distance: float | None
    pesq: float | None
    """Mean wide-band PESQ over the clips it could score (None if none)."""
    stoi: float | None
    note: str = ""
    """Why a value is missing, or anything else a reader should know about this row."""


@dataclass
class CodecResult:
    score: CodecScore
    outputs: list[np.ndarray] | None = None
    """Decoded clips [T] in clip order; None when the codec could not run."""
    clips: list[ClipMetrics] | None = None
    """Each clip's scores, in clip order; None when the codec could not run."""


@dataclass
class EvalReport:
    scores: list[CodecScore]
    clips: list[str]
    """Keys of the clips scored, in order."""
    step: int
    checkpoint: str = ""
    data: str = ""
    split: str = ""
    sample_rate: int = 16000
    seconds: float = 0.0
    """Total audio scored, in seconds."""
    spectrograms: list[str] = field(default_factory=list)
    """PNG paths written."""
    audio: list[str] = field(default_factory=list)
    """Folders written by save_audio, one per clip (OUT/audio/CLIP): input.wav and one WAV per codec row."""

    def score(self, name: str) -> CodecScore:
        return next(s for s in self.scores if s.name == name)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Scoring.

def telucodec_outputs(codec: Codec, clips: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Decoded clips per level count: result[n - 1][i] is clip i through n codebooks.

    Encodes once with every level and decodes prefixes: the same audio as
    codec(x, n_quantizers=n).audio in eval mode, since residual levels are chosen greedily.
    """
    per_level: list[list[np.ndarray]] = [[] for _ in range(codec.cfg.n_codebooks)]
    codec.eval()
    with torch.inference_mode():
        for clip in clips:
            x = torch.from_numpy(np.asarray(clip, np.float32))[None, None]
            codes = codec.encode(x)
            for n in range(1, codes.shape[1] + 1):
                per_level[n - 1].append(codec.decode(codes[:, :n], length=len(clip))[0, 0].numpy())
    return per_level


def score_outputs(name: str, refs: list[np.ndarray], outputs: list[np.ndarray], payloads: list[int],
                  sample_rate: int, note: str = "", on_scored: Callable[[], None] | None = None) -> CodecResult:
    """Scores of outputs against refs (lists of [T]) and the measured bitrate from each clip's coded
    bytes (`payloads`), per clip and averaged; on_scored() after each clip."""
    clips = []
    for r, o, size in zip(refs, outputs, payloads):
        clips.append(score_clip(r, o, sample_rate, size))
        if on_scored:
            on_scored()
    pesq_scores, stoi_scores = [c.pesq for c in clips], [c.stoi for c in clips]
    notes = [note] + [_failures(label, s) for label, s in (("PESQ", pesq_scores), ("STOI", stoi_scores))]
    seconds = sum(c.seconds for c in clips)
    score = CodecScore(
        name=name, bitrate_kbps=sum(payloads) * 8 / seconds / 1000, snr=_mean(c.snr for c in clips),
        si_sdr=_mean(c.si_sdr for c in clips), mel_distance=_mean(c.mel_distance for c in clips),
        pesq=mean_score(pesq_scores), stoi=mean_score(stoi_scores), note="; ".join(n for n in notes if n))
    return CodecResult(score, outputs, clips)


def _mean(values) -> float:
    return float(np.mean([float(v) for v in values]))


def _failures(label: str, scores: list[Score]) -> str:
    failed = [s for s in scores if s.value is None]
    if not failed:
        return ""
    return f"{label} not scored on {len(failed)}/{len(scores)} clips ({failed[0].reason})"


def evaluate_codecs(codec: Codec, clips: list[np.ndarray], sample_rate: int,
                    on_clip: Callable[[int, int], None] | None = None) -> list[CodecResult]:
    """telucodec at 1..n_codebooks levels, Opus 6 kbps and Codec2 3.2 kbps on the same clips [T].

    on_clip(done, total) after each clip a codec has scored (or could not run on): done counts up
    to total = (n_codebooks + 2) x len(clips), so a caller can draw a progress bar.
    """
    bits, hop = codec.cfg.codebook_bits, codec.hop_length
    total, done = (codec.cfg.n_codebooks + 2) * len(clips), itertools.count(1)
    scored = (lambda: on_clip(next(done), total)) if on_clip else None
    results = []
    for n, outputs in enumerate(telucodec_outputs(codec, clips), start=1):
        payloads = [payload_size(n, -(-len(c) // hop), bits) for c in clips]
        results.append(score_outputs(f"telucodec-{n}", clips, outputs, payloads, sample_rate, on_scored=scored))
    for name, baseline in (("opus-6k", run_baseline_opus), ("codec2-3200", run_baseline_codec2)):
        results.append(baseline_result(name, baseline, clips, sample_rate, on_scored=scored))
    return results


def baseline_result(name: str, baseline, clips: list[np.ndarray], sample_rate: int,
                    on_scored: Callable[[], None] | None = None) -> CodecResult:
    """Run one baseline over every clip and score it; a row with a note if it cannot run (on_scored()
    is then called once per clip all the same, so progress still reaches its total)."""
    try:
        coded = [baseline(c, sample_rate) for c in clips]
    except BaselineError as e:
        if on_scored:
            for _ in clips:
                on_scored()
        return CodecResult(CodecScore(name, None, None, None, None, None, None, note=str(e)))
    return score_outputs(name, clips, [c.audio for c in coded], [c.payload_bytes for c in coded], sample_rate,
                         on_scored=on_scored)


# ---------------------------------------------------------------------------------------------
# Spectrograms, audio to listen to, and the whole evaluation.

def save_spectrograms(path: str | Path, panels: dict[str, np.ndarray], sample_rate: int, title: str = "") -> Path:
    """One PNG with a spectrogram per panel (label -> audio [T]), stacked, on a shared colour scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    specs = {name: log_spectrogram(a) for name, a in panels.items()}
    top = max(float(s.max()) for s in specs.values())
    fig = Figure(figsize=(10, 2.2 * len(specs)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0]
    seconds = len(next(iter(panels.values()))) / sample_rate
    for ax, (name, spec) in zip(axes, specs.items()):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                          extent=(0, seconds, 0, sample_rate / 2000))
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=list(axes), label="dB", shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=80)
    return path


def spectrogram_panels(index: int, clips: list[np.ndarray], results: list[CodecResult],
                       full_name: str) -> dict[str, np.ndarray]:
    """Input, telucodec at full codebooks and each baseline that ran, for clip `index`, each
    labelled with what that clip scored (panel_label)."""
    panels = {"input": clips[index]}
    for r in results:
        if r.outputs is not None and (r.score.name == full_name or not r.score.name.startswith("telucodec")):
            panels[panel_label(r, index)] = r.outputs[index]
    return panels


def panel_label(result: CodecResult, index: int) -> str:
    """'opus-6k: 5.12 kbps, PESQ-WB 2.91, STOI 0.832' for clip `index`: the sheet shows one clip, so
    its own bitrate and scores, not the means; a score that could not be computed is left out."""
    clip = result.clips[index]
    parts = [f"{clip.kbps:.2f} kbps"]
    if clip.pesq.value is not None:
        parts.append(f"PESQ-WB {clip.pesq.value:.2f}")
    if clip.stoi.value is not None:
        parts.append(f"STOI {clip.stoi.value:.3f}")
    return f"{result.score.name}: {', '.join(parts)}"


def save_clip_audio(folder: Path, index: int, clips: list[np.ndarray], results: list[CodecResult],
                    sample_rate: int) -> Path:
    """FOLDER/input.wav and FOLDER/ROW.wav for every codec row that ran (telucodec-1 .. telucodec-N,
    opus-6k, codec2-3200), for clip `index`: exactly what was scored, to listen to. Float WAV at
    the model's rate and the input's length, so nothing is clipped or resampled on the way; WAVs
    left from an earlier run are removed first, so a row that did not run this time has no file."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.wav"):
        old.unlink()
    sf.write(folder / "input.wav", clips[index], sample_rate, subtype="FLOAT")
    for r in results:
        if r.outputs is not None:
            sf.write(folder / f"{r.score.name}.wav", r.outputs[index], sample_rate, subtype="FLOAT")
    return folder


def evaluate_checkpoint(checkpoint, data: str, split: str = "test", n_clips: int = 8,
                        seconds: float = 4.0, out_dir: str | Path = "eval_out", n_spectrograms: int = 3,
                        save_audio: bool = False, on_clip: Callable[[int, int], None] | None = None) -> EvalReport:
    """Score a model (a checkpoint URL, or an inference.TrainedCodec such as an export) and the
    baselines on a split; writes OUT/eval.json, spectrogram PNGs for the first n_spectrograms clips
    and, with save_audio, every clip's decoded audio under OUT/audio/CLIP/ (save_clip_audio).
    on_clip(done, total) as in evaluate_codecs."""
    from pipeline.codec.inference import load_trained
    from pipeline.codec.trained import TrainedCodec

    trained = checkpoint if isinstance(checkpoint, TrainedCodec) else load_trained(checkpoint=checkpoint)
    codec, step, sr = trained.codec, trained.step or 0, trained.sample_rate
    keyed = load_eval_clips(data, split, n_clips, seconds, sr)
    clips = [audio for _, audio in keyed]
    results = evaluate_codecs(codec, clips, sr, on_clip)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = f"telucodec-{trained.cfg.n_codebooks}"
    pngs = [str(save_spectrograms(out / f"spectrogram_{i:02d}_{keyed[i][0]}.png",
                                  spectrogram_panels(i, clips, results, full), sr,
                                  title=f"{keyed[i][0]}: each codec's kbps and scores on this clip"))
            for i in range(min(n_spectrograms, len(clips)))]
    folders = [str(save_clip_audio(out / "audio" / key, i, clips, results, sr))
               for i, (key, _) in enumerate(keyed)] if save_audio else []
    report = EvalReport([r.score for r in results], [k for k, _ in keyed], step, trained.source, str(data),
                        split, sr, sum(len(c) for c in clips) / sr, pngs, folders)
    (out / "eval.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report
