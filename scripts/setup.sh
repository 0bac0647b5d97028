#!/usr/bin/env bash
# One-time (and quick repeat) set-up behind `make demo` and `make test`:
#   - Debian packages for the Telugu demo corpus and the baseline codecs (when root on Debian),
#   - a virtualenv at .venv/ with torch and telucodec (editable) installed.
# Re-running is cheap: each step is skipped when already done for the current pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="espeak-ng festival festvox-te-nsk codec2 opus-tools"
# The CPU machines we develop on carry this torch wheel locally; on a GPU machine the same pin
# resolves to PyPI's CUDA build. Override with TELUCODEC_TORCH="torch==X --index-url ..." if needed.
TORCH_SPEC="${TELUCODEC_TORCH:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

missing_tools() {
  local missing=""
  command -v espeak-ng >/dev/null || missing="$missing espeak-ng"
  command -v text2wave >/dev/null || missing="$missing festival"
  [ -d /usr/share/festival/voices/telugu ] || missing="$missing festvox-te-nsk"
  command -v c2enc >/dev/null || missing="$missing codec2"
  command -v opusenc >/dev/null || missing="$missing opus-tools"
  echo "$missing"
}

need="$(missing_tools)"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages:$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  else
    echo "setup: some tools are missing:$need"
    echo "setup: install them with:  sudo apt-get install -y $APT_PACKAGES"
    echo "setup: (the demo corpus needs espeak-ng or festival + festvox-te-nsk; eval's baselines need codec2 and opus-tools)"
  fi
fi

stamp=".venv/.telucodec-setup-$( (cat pyproject.toml scripts/setup.sh; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
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
.venv/bin/python -c "import torch, ray, webdataset, wandb, accelerate, boto3, moto, soundfile, soxr" \
  || { echo "setup: the virtualenv is incomplete (see pip's output above)"; exit 1; }
rm -f .venv/.telucodec-setup-*
touch "$stamp"
echo "setup: done"
