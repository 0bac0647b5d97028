#!/usr/bin/env bash
# One-time (and quick repeat) set-up behind `make demo` and `make test`:
#   - Debian packages for the Telugu demo corpus and the baseline codecs (when root on Debian),
#     each tool checked by *using* it, and reinstalled when a check fails;
#   - a virtualenv at .venv/ with torch and telucodec (editable) installed.
# Re-running is cheap: the tool checks take a few seconds, the venv step is skipped when it is
# already done for the current pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

# festvox-te-nsk only *recommends* festival-te (the Telugu language files: telugu_phones.scm ...),
# so --no-install-recommends needs it named.
APT_PACKAGES="espeak-ng festival festvox-te-nsk festival-te codec2 opus-tools"
APT_LINE="apt-get update && apt-get install -y --no-install-recommends $APT_PACKAGES"
# The CPU machines we develop on carry this torch wheel locally; on a GPU machine the same pin
# resolves to PyPI's CUDA build. Override with TELUCODEC_TORCH="torch==X --index-url ..." if needed.
TORCH_SPEC="${TELUCODEC_TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
TELUGU_LINE="నమస్కారం, ఇది ఒక పరీక్ష."

check_dir="$(mktemp -d)"
trap 'rm -rf "$check_dir"' EXIT

# A file exists and holds more than a header.
has_audio() { [ -f "$1" ] && [ "$(stat -c %s "$1")" -gt 2000 ]; }

# One second of a 440 Hz tone: $1 = rate, $2 = out file, $3 = "wav" or "raw" (s16le).
tone() {
  "$PYTHON" - "$@" <<'PY'
import math, struct, sys, wave
rate, out, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]
frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
                  for n in range(rate))
if kind == "raw":
    open(out, "wb").write(frames)
else:
    with wave.open(out, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(frames)
PY
}

check_espeak() {
  espeak-ng -v te -w "$check_dir/espeak.wav" "$TELUGU_LINE" >/dev/null 2>&1 \
    && has_audio "$check_dir/espeak.wav"
}

# The same voice set-up the corpus uses (data_prep/corpus.py _FESTIVAL_SETUP).
check_festival() {
  printf '%s\n' "$TELUGU_LINE" > "$check_dir/line.txt"
  text2wave -F 22050 -eval "(voice_telugu_NSK_diphone)" -eval "(Parameter.set 'Int_Method 'General)" \
    -eval "(set! int_general_params (list (list 'targ_func telugu_NSK_targ_func1)))" \
    -o "$check_dir/festival.wav" "$check_dir/line.txt" >"$check_dir/festival.log" 2>&1 \
    && has_audio "$check_dir/festival.wav"
}

check_opus() {
  tone 16000 "$check_dir/tone.wav" wav \
    && opusenc --quiet --bitrate 6 "$check_dir/tone.wav" "$check_dir/tone.opus" \
    && opusdec --quiet --rate 16000 "$check_dir/tone.opus" "$check_dir/opus.wav" \
    && has_audio "$check_dir/opus.wav"
}

check_codec2() {
  tone 8000 "$check_dir/tone.raw" raw \
    && c2enc 3200 "$check_dir/tone.raw" "$check_dir/tone.c2" \
    && c2dec 3200 "$check_dir/tone.c2" "$check_dir/codec2.raw" \
    && has_audio "$check_dir/codec2.raw"
}

# The names of the checks that fail (each tool used for real, not just found on PATH).
failing_tools() {
  local failing=""
  check_espeak 2>/dev/null || failing="$failing espeak-ng"
  check_festival 2>/dev/null || failing="$failing festival-te"
  check_opus 2>/dev/null || failing="$failing opus-tools"
  check_codec2 2>/dev/null || failing="$failing codec2"
  echo "$failing"
}

failing="$(failing_tools)"
if [ -n "$failing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: these tools do not work yet:$failing; installing: $APT_PACKAGES"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --reinstall mends a package whose files were removed by hand; dpkg alone would say "installed".
    apt-get install -y -qq --reinstall --no-install-recommends $APT_PACKAGES >/dev/null
    failing="$(failing_tools)"
    if [ -n "$failing" ]; then
      echo "setup: still not working after apt-get install:$failing"
      [ -s "$check_dir/festival.log" ] && tail -3 "$check_dir/festival.log" | sed 's/^/setup:   festival: /'
      exit 1
    fi
    echo "setup: espeak-ng, festival (Telugu), opus-tools and codec2 work"
  else
    echo "setup: these tools do not work:$failing"
    echo "setup: install them with:  sudo sh -c '$APT_LINE'"
    echo "setup: (the demo corpus needs espeak-ng or festival's Telugu voice; eval's baselines need opus-tools and codec2)"
  fi
fi

stamp=".venv/.telucodec-setup-$( (cat pyproject.toml scripts/setup.sh; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ -x .venv/bin/telucodec ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing $TORCH_SPEC and telucodec into .venv (first run takes a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i "warning" || true
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC 2>&1 | grep -v -i "warning" || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v -i "warning" || true
.venv/bin/python -c "import torch, ray, webdataset, wandb, accelerate, boto3, moto, soundfile, soxr, xdist, av, pyarrow" \
  || { echo "setup: the virtualenv is incomplete (see pip's output above)"; exit 1; }
rm -f .venv/.telucodec-setup-*
touch "$stamp"
echo "setup: done"
