#!/usr/bin/env bash
# The full-size GPU benchmark, without downloads: SD 1.5 at 512x512 and SDXL at 1024x1024 with
# random weights (`easel bench --architecture ... --random-weights`), easel against plain diffusers,
# fp16 + SDPA, then + channels_last, then + torch.compile (reduce-overhead), batch 1 and 4.
#
# Needs only `pip install torch -e .` on an H100/H200-class machine; about 8 minutes. Each row is
# one `easel bench --json` line in $RESULTS (default: $OUT/gpu-bench.jsonl when $OUT is set, else
# ./gpu-bench.jsonl); a summary table is printed at the end. Rows run cheapest first and each has
# its own time limit, so a slow torch.compile costs only its own rows.
#
# Knobs (environment): DEVICE (cuda), DTYPE (float16), STEPS (20), ROUNDS (3), BATCHES ("1 4"),
# SD15_SIZE (512), SDXL_SIZE (1024), COMPILE (1: also the compiled rows), ROW_TIMEOUT (seconds, 240),
# BUDGET (seconds for all rows, 450: a row that would start later is recorded as skipped).
# A flags check on a CPU: DEVICE=cpu DTYPE=float32 STEPS=1 ROUNDS=1 SD15_SIZE=64 ONLY=sd15 COMPILE=0.
set -uo pipefail

DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-float16}
STEPS=${STEPS:-20}
ROUNDS=${ROUNDS:-3}
BATCHES=${BATCHES:-"1 4"}
SD15_SIZE=${SD15_SIZE:-512}
SDXL_SIZE=${SDXL_SIZE:-1024}
COMPILE=${COMPILE:-1}
ROW_TIMEOUT=${ROW_TIMEOUT:-240}
BUDGET=${BUDGET:-450}
ONLY=${ONLY:-"sd15 sdxl"}
RESULTS=${RESULTS:-${OUT:-.}/gpu-bench.jsonl}
EASEL=${EASEL:-easel}

export HF_HUB_OFFLINE=1
export EASEL_HOME=${EASEL_HOME:-$(mktemp -d)}
: >"$RESULTS"

if [ "$DEVICE" != cpu ]; then
  python - <<'EOF' || true
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0))
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi

row() {  # row ARCHITECTURE SIZE BATCH EXTRA-FLAGS...
  local arch=$1 size=$2 batch=$3
  shift 3
  local started=$SECONDS line limit=$((BUDGET - SECONDS))
  [ "$limit" -gt "$ROW_TIMEOUT" ] && limit=$ROW_TIMEOUT
  if [ "$limit" -lt 30 ]; then
    echo "{\"architecture\": \"$arch\", \"size\": \"${size}x${size}\", \"num_images\": $batch, \"flags\": \"$*\", \"failed\": \"skipped: over budget\"}" >>"$RESULTS"
    return
  fi
  echo ">>> $arch ${size}x${size} batch $batch $* (limit $limit s)" >&2
  line=$(timeout "$limit" "$EASEL" bench --architecture "$arch" --random-weights \
    --width "$size" --height "$size" --steps "$STEPS" --rounds "$ROUNDS" --warmup 1 \
    --batch "$batch" --device "$DEVICE" --dtype "$DTYPE" --json "$@" | grep '^{' | tail -n 1)
  if [ -n "$line" ]; then
    echo "$line" >>"$RESULTS"
  else
    echo "{\"architecture\": \"$arch\", \"size\": \"${size}x${size}\", \"num_images\": $batch, \"flags\": \"$*\", \"failed\": \"failed or timed out\"}" >>"$RESULTS"
  fi
  echo "    ($((SECONDS - started)) s)" >&2
}

for arch in $ONLY; do
  size=$SD15_SIZE
  [ "$arch" = sdxl ] && size=$SDXL_SIZE
  for batch in $BATCHES; do
    row "$arch" "$size" "$batch"
  done
  row "$arch" "$size" 1 --channels-last
done
if [ "$COMPILE" = 1 ]; then
  for arch in $ONLY; do
    size=$SD15_SIZE
    [ "$arch" = sdxl ] && size=$SDXL_SIZE
    row "$arch" "$size" 1 --channels-last --compile
  done
fi

echo
echo "results: $RESULTS"
python - "$RESULTS" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
header = f"{'model':<6} {'size':>9} {'batch':>5} {'flags':<28} {'easel it/s':>10} {'diff it/s':>10} " \
         f"{'s/image':>8} {'ratio':>6} {'equal':>5} {'GPU MB':>8} {'1st image s':>12}"
print(header)
print("-" * len(header))
for r in rows:
    if r.get("failed"):
        print(f"{r['architecture']:<6} {r['size']:>9} {r['num_images']:>5} {r['flags']:<28} {r['failed']}")
        continue
    flags = "+".join([r["dtype"], "sdpa", *(f for f in ("channels_last", "compile") if r.get(f))])
    batch = r.get("num_images", 1)
    first = r.get("first_image_s", {})  # loading and compiling included; easel's
    print(f"{r['architecture']:<6} {r['size']:>9} {batch:>5} {flags:<28} {r['easel_steps_per_s']:>10} "
          f"{r['diffusers_steps_per_s']:>10} {r['easel_median_s'] / batch:>8.3f} "
          f"{r['ratio_easel_over_diffusers']:>6} {str(r['images_equal']):>5} "
          f"{str(r['cuda_max_allocated_mb']):>8} {first.get('easel', float('nan')):>12.1f}")
EOF
