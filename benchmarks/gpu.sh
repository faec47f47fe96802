#!/usr/bin/env bash
# The full-size GPU benchmark, without downloads: SD 1.5 at 512x512 and SDXL at 1024x1024 with
# random weights (`easel bench --architecture ... --random-weights`), easel against plain diffusers,
# fp16 + SDPA, then + channels_last, then + torch.compile (reduce-overhead), batch 1 and 4; then
# FLUX.1-dev (1024x1024), SD 3.5 medium (1024x1024) and Qwen-Image (1328x1328) in bfloat16, short runs
# (8 steps, 2 rounds, batch 1), built in GPU memory (16 to 58 GB; never written to disk).
#
# Needs only `pip install torch -e .` on an H100/H200-class machine (Qwen-Image needs about 62 GB
# free: an 80 GB H100 or an H200); about 10 minutes. Each row is
# one `easel bench --json` line in $RESULTS (default: $OUT/gpu-bench.jsonl when $OUT is set, else
# ./gpu-bench.jsonl); a summary table is printed at the end. Rows run cheapest first and each has
# its own time limit, so a slow torch.compile costs only its own rows.
#
# Knobs (environment): DEVICE (cuda), DTYPE (float16), STEPS (20), ROUNDS (3), BATCHES ("1 4"),
# SD15_SIZE (512), SDXL_SIZE (1024), COMPILE (1: also the compiled rows), ROW_TIMEOUT (seconds, 240),
# BUDGET (seconds for all rows, 600: a row that would start later is recorded as skipped);
# the transformer rows: DIT_ONLY ("flux-dev sd35-medium qwen-image"; "" for none), DIT_DTYPE (bfloat16),
# DIT_STEPS (8), DIT_ROUNDS (2), FLUX_SIZE (1024), SD35_SIZE (1024), QWEN_SIZE (1328).
# A flags check on a CPU: DEVICE=cpu DTYPE=float32 STEPS=1 ROUNDS=1 SD15_SIZE=64 ONLY=sd15 COMPILE=0
# DIT_ONLY= (a transformer row on a CPU is refused before anything is built: too little memory).
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
BUDGET=${BUDGET:-600}
ONLY=${ONLY:-"sd15 sdxl"}
DIT_ONLY=${DIT_ONLY-"flux-dev sd35-medium qwen-image"}
DIT_DTYPE=${DIT_DTYPE:-bfloat16}
DIT_STEPS=${DIT_STEPS:-8}
DIT_ROUNDS=${DIT_ROUNDS:-2}
FLUX_SIZE=${FLUX_SIZE:-1024}
SD35_SIZE=${SD35_SIZE:-1024}
QWEN_SIZE=${QWEN_SIZE:-1328}
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

row() {  # row ARCHITECTURE SIZE BATCH EXTRA-FLAGS... (ROW_STEPS / ROW_ROUNDS / ROW_DTYPE override)
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
    --width "$size" --height "$size" --steps "${ROW_STEPS:-$STEPS}" --rounds "${ROW_ROUNDS:-$ROUNDS}" \
    --warmup 1 --batch "$batch" --device "$DEVICE" --dtype "${ROW_DTYPE:-$DTYPE}" --json "$@" \
    | grep '^{' | tail -n 1)
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
for arch in $DIT_ONLY; do  # the transformer architectures: short runs in bfloat16
  case $arch in
    flux-dev) size=$FLUX_SIZE ;;
    sd35-medium) size=$SD35_SIZE ;;
    *) size=$QWEN_SIZE ;;
  esac
  ROW_STEPS=$DIT_STEPS ROW_ROUNDS=$DIT_ROUNDS ROW_DTYPE=$DIT_DTYPE row "$arch" "$size" 1
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
header = f"{'model':<11} {'size':>9} {'batch':>5} {'flags':<28} {'easel it/s':>10} {'diff it/s':>10} " \
         f"{'s/image':>8} {'ratio':>6} {'equal':>5} {'GPU MB':>8} {'1st image s':>12}"
print(header)
print("-" * len(header))
for r in rows:
    if r.get("failed"):
        print(f"{r['architecture']:<11} {r['size']:>9} {r['num_images']:>5} {r['flags']:<28} {r['failed']}")
        continue
    flags = "+".join([r["dtype"], "sdpa", *(f for f in ("channels_last", "compile") if r.get(f))])
    batch = r.get("num_images", 1)
    first = r.get("first_image_s", {})  # loading and compiling included; easel's
    print(f"{r['architecture']:<11} {r['size']:>9} {batch:>5} {flags:<28} {r['easel_steps_per_s']:>10} "
          f"{r['diffusers_steps_per_s']:>10} {r['easel_median_s'] / batch:>8.3f} "
          f"{r['ratio_easel_over_diffusers']:>6} {str(r['images_equal']):>5} "
          f"{str(r['cuda_max_allocated_mb']):>8} {first.get('easel', float('nan')):>12.1f}")
EOF
