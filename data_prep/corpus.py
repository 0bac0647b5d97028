"""The offline Telugu demo corpus: a few minutes of multi-speaker Telugu speech from local TTS.

Lets the whole path (prep → shards → training) run on a machine with no network and no dataset.
The sentences are `telugu_sentences.txt` (Telugu script only); the speakers are a TTS engine plus
a voice variant, e.g. `espeak-te-m3` or `festival-te-nsk`. About 15% of the files are written as
float WAV that peaks above full scale, so that clipping downstream has something to do.

    python -m data_prep.corpus OUT_DIR [--minutes 3] [--seed 0]     (or: telucodec corpus OUT_DIR)

Needs espeak-ng and/or festival with its Telugu voice (Debian: apt-get install espeak-ng festival
festvox-te-nsk festival-te). Each engine is tried on one sentence first; one that fails is reported
(`CorpusSummary.broken`) and left out, and the corpus is made with the others. Layout: OUT_DIR/wavs/{speaker}/{speaker}_{n:05d}.wav and OUT_DIR/manifest.tsv
(columns path, text, speaker, voice), the manifest written last so a half-made corpus has none.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.errors import TelucodecError

SENTENCES_FILE = Path(__file__).with_name("telugu_sentences.txt")
SAMPLE_RATE = 22050
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices/telugu/telugu_NSK_diphone")
OVER_RANGE_SHARE = 0.15
SPEED_RANGE = (0.8, 1.15)
"""Speaking rate relative to each engine's default."""
PITCH_RANGE = (0.7, 1.3)
"""Pitch relative to each engine's default."""
OVER_RANGE_PEAKS = (1.02, 1.29)  # inside [1.01, 1.3] with room for float32 rounding
IN_RANGE_PEAKS = (0.3, 0.95)
THREADS = 2
QUEUED = 4  # files submitted ahead of the one being written, so both threads stay busy

APT_FIX = {"espeak": "apt-get install espeak-ng",
           "festival": "apt-get install festival festvox-te-nsk festival-te"}
"""The Debian packages that give each engine a working Telugu voice."""
NO_TTS = ("no Telugu TTS found: install espeak-ng (apt-get install espeak-ng) "
          "and/or festival's Telugu voice (apt-get install festival festvox-te-nsk festival-te)")
_TELUGU_LINE = re.compile(r"[\u0C00-\u0C7F .,?!]+")

# The Debian voice never sets Int_Method (it leans on a default English voice that is not
# installed): festival then prints "Feature Int_Method not defined", exits 0 and writes an empty
# file. Use the voice's own hat-accent targets through the General method, scaled for pitch.
_FESTIVAL_SETUP = (
    "(voice_telugu_NSK_diphone)",
    "(Parameter.set 'Int_Method 'General)",
    "(set! int_general_params (list (list 'targ_func (lambda (utt syl) (mapcar (lambda (p) "
    "(list (car p) (* {pitch} (cadr p)))) (telugu_NSK_targ_func1 utt syl))))))",
    "(Parameter.set 'Duration_Stretch {stretch})",
)
_FESTIVAL_STRETCH = 1.4  # the voice's own default


class CorpusError(TelucodecError, RuntimeError):
    """The corpus cannot be made here: no Telugu TTS, a bad sentence file, or an engine failed."""


@dataclass
class CorpusSummary:
    files: int
    seconds: float
    """Total audio written."""
    over_range: int
    """Files whose peak is above 1.0 (float WAV)."""
    speakers: list[str]
    manifest: Path
    broken: list[str] = field(default_factory=list)
    """One line per installed engine that failed its trial sentence and was left out."""


@dataclass(frozen=True)
class Voice:
    speaker: str
    """Engine plus variant, e.g. `espeak-te-m3`."""
    engine: str
    """`espeak` or `festival`."""
    variant: str
    program: Path


@dataclass(frozen=True)
class Utterance:
    """One planned file: everything drawn from the seed."""

    index: int
    text: str
    voice: Voice
    speed: float
    pitch: float
    peak: float

    @property
    def settings(self) -> str:
        """The full engine settings, as they go into the manifest's `voice` column."""
        if self.voice.engine == "espeak":
            return (f"espeak-ng -v te+{self.voice.variant} -s {_espeak_wpm(self.speed)} "
                    f"-p {_espeak_pitch(self.pitch)}")
        return (f"text2wave voice_telugu_NSK_diphone Duration_Stretch={_festival_stretch(self.speed)} "
                f"f0_scale={self.pitch}")


def load_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    """The sentence file's lines; each must be Telugu script, spaces and . , ? ! only."""
    sentences = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not _TELUGU_LINE.fullmatch(line):  # festival's Telugu voice crashes on Latin text
            raise CorpusError(f"{path}:{n}: not Telugu script only: {line!r}")
        sentences.append(line)
    return sentences


def available_voices() -> list[Voice]:
    """Every Telugu speaker the installed engines offer; CorpusError when there is none."""
    voices = []
    espeak = shutil.which("espeak-ng")
    if espeak and _espeak_has_telugu(espeak):
        listed = _run([espeak, "--voices=variant"]).stdout
        present = set(re.findall(r"!v/(\S+)", listed))
        voices += [Voice(f"espeak-te-{v}", "espeak", v, Path(espeak))
                   for v in ESPEAK_VARIANTS if v in present]
    text2wave = shutil.which("text2wave")
    if text2wave and FESTIVAL_VOICE_DIR.is_dir():
        voices.append(Voice("festival-te-nsk", "festival", "nsk", Path(text2wave)))
    if not voices:
        raise CorpusError(NO_TTS)
    return voices


def working_voices(voices: list[Voice], sentence: str) -> tuple[list[Voice], list[str]]:
    """Try each engine once on `sentence`; (voices of the engines that made audio, one line per
    engine that did not: the speaker, the engine's error and the apt line that fixes it)."""
    broken: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for voice in {v.engine: v for v in voices}.values():
            trial = Utterance(0, sentence, voice, speed=1.0, pitch=1.0, peak=0.5)
            try:
                _synthesize(trial, Path(tmp))
            except (CorpusError, subprocess.TimeoutExpired, OSError) as error:
                reason = " ".join(str(error).split())  # engines write multi-line errors
                broken[voice.engine] = f"{reason}; left out (fix: {APT_FIX[voice.engine]})"
    return [v for v in voices if v.engine not in broken], list(broken.values())


def synthesize_corpus(out_dir: Path, minutes: float = 3.0, seed: int = 0,
                      on_file: Callable[[float], None] | None = None) -> CorpusSummary:
    """Write at least `minutes` of Telugu TTS speech and its manifest under `out_dir`, with every
    engine that works (the others are listed in the summary's `broken`)."""
    if minutes <= 0:
        raise CorpusError(f"minutes must be > 0, got {minutes:g}")
    sentences = load_sentences()
    voices, broken = working_voices(available_voices(), sentences[0])
    if not voices:
        raise CorpusError("no Telugu voice works: " + "; ".join(broken))
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.tsv"
    manifest.unlink(missing_ok=True)  # a corpus being rewritten must not look finished
    plan = _plan(sentences, voices, random.Random(seed))
    rows, seconds, over_range = [], 0.0, 0
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(THREADS) as pool:
        queued: deque = deque()
        while seconds < minutes * 60:
            while len(queued) < QUEUED:
                utterance = next(plan)
                queued.append((utterance, pool.submit(_synthesize, utterance, Path(tmp))))
            utterance, future = queued.popleft()
            path, file_seconds = _write_scaled(future.result(), utterance, out_dir)
            rows.append(f"{path}\t{utterance.text}\t{utterance.voice.speaker}\t{utterance.settings}")
            seconds += file_seconds
            over_range += utterance.peak > 1.0
            if on_file is not None:
                on_file(file_seconds)
        for _, future in queued:  # drawn but not needed: the corpus is a prefix of the plan
            future.cancel()
    partial = manifest.with_name(manifest.name + ".partial")
    partial.write_text("\n".join(["path\ttext\tspeaker\tvoice", *rows]) + "\n", encoding="utf-8")
    os.replace(partial, manifest)
    speakers = sorted({row.split("\t")[2] for row in rows})
    return CorpusSummary(len(rows), seconds, over_range, speakers, manifest, broken)


def _plan(sentences: list[str], voices: list[Voice], rng: random.Random) -> Iterator[Utterance]:
    """Endless (sentence, voice, speed, pitch, peak) draws; sentences repeat only once all are used."""
    order = list(sentences)
    rng.shuffle(order)
    index, over_so_far = 0, 0
    while True:
        voice = rng.choice(voices)
        speed = round(rng.uniform(*SPEED_RANGE), 3)
        pitch = round(rng.uniform(*PITCH_RANGE), 3)
        # The fourth file is forced over range if no earlier one was, so any corpus of >= 4 has one.
        over = rng.random() < OVER_RANGE_SHARE or (index == 3 and over_so_far == 0)
        peak = round(rng.uniform(*(OVER_RANGE_PEAKS if over else IN_RANGE_PEAKS)), 4)
        over_so_far += over
        yield Utterance(index, order[index % len(order)], voice, speed, pitch, peak)
        index += 1


def _synthesize(utterance: Utterance, tmp: Path) -> np.ndarray:
    """Run the utterance's engine; mono float64 [T] at SAMPLE_RATE."""
    text_file, wav = tmp / f"{utterance.index:05d}.txt", tmp / f"{utterance.index:05d}.wav"
    text_file.write_text(utterance.text + "\n", encoding="utf-8")
    voice = utterance.voice
    if voice.engine == "espeak":
        command = [str(voice.program), "-v", f"te+{voice.variant}",
                   "-s", str(_espeak_wpm(utterance.speed)), "-p", str(_espeak_pitch(utterance.pitch)),
                   "-w", str(wav), "-f", str(text_file)]
    else:
        setup = [part.format(pitch=utterance.pitch, stretch=_festival_stretch(utterance.speed))
                 for part in _FESTIVAL_SETUP]
        command = [str(voice.program), "-F", str(SAMPLE_RATE),
                   *[arg for part in setup for arg in ("-eval", part)], "-o", str(wav), str(text_file)]
    result = _run(command)
    try:  # festival reports errors on stderr and still exits 0, leaving an empty file
        audio, rate = sf.read(wav, dtype="float64", always_2d=True)
    except RuntimeError as error:  # soundfile's LibsndfileError
        raise CorpusError(f"{voice.speaker} wrote no audio for {utterance.text!r}: "
                          f"{result.stderr.strip()[-300:] or error}") from error
    if rate != SAMPLE_RATE or not np.abs(audio).max() > 0:
        raise CorpusError(f"{voice.speaker} wrote {rate} Hz / silent audio for {utterance.text!r}")
    wav.unlink()
    text_file.unlink()
    return audio.mean(axis=1)


def _write_scaled(audio: np.ndarray, utterance: Utterance, out_dir: Path) -> tuple[str, float]:
    """Scale to the planned peak and write; returns (path relative to out_dir, seconds)."""
    speaker = utterance.voice.speaker
    relative = f"wavs/{speaker}/{speaker}_{utterance.index:05d}.wav"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    scaled = audio * (utterance.peak / np.abs(audio).max())
    subtype = "FLOAT" if utterance.peak > 1.0 else "PCM_16"  # PCM would clip the over-range ones
    sf.write(out_dir / relative, scaled.astype(np.float32), SAMPLE_RATE, subtype=subtype)
    return relative, len(audio) / SAMPLE_RATE


def _espeak_has_telugu(espeak: str) -> bool:
    lines = _run([espeak, "--voices=te"]).stdout.splitlines()[1:]
    return any(line.split()[1:2] == ["te"] for line in lines)


def _espeak_wpm(speed: float) -> int:
    return round(175 * speed)


def _espeak_pitch(pitch: float) -> int:
    return round(50 * pitch)


def _festival_stretch(speed: float) -> float:
    return round(_FESTIVAL_STRETCH / speed, 3)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace",
                            timeout=120)
    if result.returncode != 0:
        raise CorpusError(f"{Path(command[0]).name} failed ({result.returncode}): "
                          f"{result.stderr.strip()[-300:]}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = synthesize_corpus(args.out_dir, args.minutes, args.seed)
    for line in summary.broken:
        print(f"warning: {line}")
    print(f"{summary.files} files, {summary.seconds / 60:.1f} min, {summary.over_range} over range, "
          f"{len(summary.speakers)} speakers ({', '.join(summary.speakers)}) -> {summary.manifest}")


if __name__ == "__main__":
    main()
