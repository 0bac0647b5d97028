#!/usr/bin/env bash
# The GPU check on the lent GPU machine, from the kit benchmarks/device_kit.sh made (carried there):
#
#     bash benchmarks/device_check.sh [--minutes 6] [key=value ...]      (device run, carry [".device_kit"])
#
# Installs the kit's wheels into /tmp/site (pesq built from source; without it the check runs with
# no PESQ-WB and says why), then runs benchmarks/gpu_check.py on the kit's dataset. The log and
# report.json go to $OUT when the device tool sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.device_kit
[ -d "$KIT/data" ] || { echo "no $KIT/data: run 'bash benchmarks/device_kit.sh' first, then carry $KIT" >&2; exit 2; }
RESULTS=${OUT:-/tmp/gpu_check_results}
mkdir -p "$RESULTS"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$KIT"/wheels/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site \
    "$KIT"/wheels/pesq-*.tar.gz || echo "!!! pesq did not build here: the check runs without PESQ-WB"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
python3 benchmarks/gpu_check.py --data "$KIT/data" --out /tmp/gpu_check "$@" 2>&1 | tee "$RESULTS/gpu_check.log" || status=$?
cp /tmp/gpu_check/report.json "$RESULTS/" 2>/dev/null || true
exit "$status"
