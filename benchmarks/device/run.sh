#!/usr/bin/env bash
# On the lent GPU machine (see prepare_wheels.sh): install the carried wheels, then the smoke
# test of the user paths and gpu_check.py; results and gzipped logs land in $OUT.
# ~2 min for the machine, ~20 s install, ~2 min smoke, ~5-6 min check: about 10 of the
# session's 15 device minutes. Pass CHECK_ARGS to change the check, e.g.
#   CHECK_ARGS="--time-limit 300 --train-variants compile" bash benchmarks/device/run.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L
mkdir -p benchmarks/results_tmp/gpu_check
# the 1,000,000-cell file is written while the smoke test runs
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check as g; \
print(g.make_file_worker({'work': 'benchmarks/results_tmp/gpu_check', 'infer_cells': 1000000}))" \
    > "$OUT/file.log" 2>&1 &
writer=$!
timeout 200 python3 benchmarks/gpu_smoke.py --out "$OUT" > "$OUT/smoke.log" 2>&1
echo "smoke rc $?"
cat "$OUT/gpu_smoke.md"
wait "$writer"
timeout 420 python3 benchmarks/gpu_check.py --out "$OUT" ${CHECK_ARGS:---time-limit 360} \
    > "$OUT/check.log" 2>&1
echo "check rc $?"
grep -A16 Traceback "$OUT/check.log" | head -60
cat "$OUT/gpu_check.md"
gzip -f "$OUT/smoke.log" "$OUT/check.log"
