#!/usr/bin/env bash
# Makes .device_kit/ here: what the lent GPU machine lacks for benchmarks/gpu_check.py.
#
#     bash benchmarks/device_kit.sh            # here, once (about a minute; needs .venv and the TTS packages)
#     device run: bash benchmarks/device_check.sh [gpu_check options]   with carry [".device_kit"]
#
# That machine's python3 (3.12) holds CUDA torch, accelerate, numpy, scipy, PyYAML and rich, but not
# soundfile, soxr, pesq or pystoi, no espeak-ng or festival, and it reaches no package registry. The
# kit holds wheels for it (the versions this .venv has; pesq as source, built there) and a dataset
# prepped here from 10 minutes of the synthetic Telugu corpus (gpu_check --prepare-only), about 12 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.device_kit
PY=.venv/bin/python
rm -rf "$KIT" && mkdir -p "$KIT/wheels"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$KIT/wheels" \
    "soundfile==$(version soundfile)" "cffi==$(version cffi)" "pycparser==$(version pycparser)" \
    "soxr==$(version soxr)" "pystoi==$(version pystoi)"
"$PY" -m pip download -q --no-deps --no-build-isolation --no-binary=:all: -d "$KIT/wheels" "pesq==$(version pesq)"
"$PY" benchmarks/gpu_check.py --config gpu --speech-minutes 10 --prepare-only --out "$KIT/made"
mv "$KIT/made/data" "$KIT/data" && rm -rf "$KIT/made"  # the corpus's WAVs stay behind: shards only
du -sh "$KIT" && ls "$KIT/wheels"
