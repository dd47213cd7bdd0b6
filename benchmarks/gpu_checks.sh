#!/usr/bin/env bash
# Every GPU check of the GPU issue in one run, for the device tool's machine: at most 9 minutes (the stages'
# limits add up to 560 s), about 6 expected on one H200.
#
# Here, first (from the project root, with the venv active):
#   ../shared/tools/offline-bundle.sh pennfudan,camvid,coco128
#   python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .offline/whl \
#       segmentation-models-pytorch==0.6.0 effdet==0.4.1 omegaconf==2.4.0 pytest-xdist execnet
# (smp and effdet are the references of segdet[dev]; timm is on the machine; omegaconf 2.4 needs no antlr4)
# then, through the device tool: run `bash benchmarks/gpu_checks.sh` with carry [".offline"].
# Outputs (at most 8 files) go to $OUT (default ./gpu-checks): pytest.log, agreement.log, pennfudan.log,
# throughput.log, detection.log, segmentation.log, profile.log.
# SMOKE=1 DEVICE=cpu runs every stage at toy sizes on the CPU, to check the script itself.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-checks}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
THREADS=${THREADS:-16}  # torch threads of the benchmarks
export PYTHONUNBUFFERED=1

# --- set-up: pycocotools (and smp) wheels, the JPEG copies of the data where configs look for them
if ls .offline/whl/*.whl >/dev/null 2>&1 && ! $PY -c "import pycocotools, segmentation_models_pytorch" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .offline/whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .offline/shared/data ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && ln -sfn "$PWD/.offline/shared/data" ../shared/data
fi
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$OUT/$name.log"
  local start=$SECONDS
  # through bash -c so that the exported shell functions below can be staged too
  timeout "$limit" bash -c "$(printf '%q ' "$@")" >>"$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
}

if [ "$SMOKE" = 1 ]; then
  TESTS=(tests/engine/test_cuda.py tests/engine/test_loader.py)
  SIZE=128; REPEATS=1; MINUTES=0.2; STEPS=2; EPOCHS=1; BATCHES=1,2; PROFILE_STEPS=1
  # toy sizes and few training images (the same code paths)
  PF_SMALL="model.min_size=96 model.max_size=128 data.val_fraction=0.8"
  CV_SMALL="data.size=64 data.val_fraction=0.9"
else
  TESTS=(); SIZE=800; REPEATS=5; MINUTES=0.75; STEPS=10; EPOCHS=2; BATCHES=1,8; PROFILE_STEPS=5
  PF_SMALL=""; CV_SMALL=""
fi

# 1. The suite, CUDA tests included (-rs: the reasons of every skip; no -q, which with pyproject's -q
# would drop the summary line). 2 threads per xdist worker: 8 workers x 16 threads would oversubscribe the
# 16 cores. The selective-search tests skip there (tests/conftest.py): the image's OpenCV has no contrib
# modules and the contrib wheel (69 MB) is over what travels.
# Without pytest-xdist (not in .offline/whl unless downloaded with it) the suite runs in one process.
XDIST=(); $PY -c "import xdist" 2>/dev/null && XDIST=(-n 8)
stage pytest 170 env OMP_NUM_THREADS=2 SEGDET_TESTS_OPENCV_CONTRIB=optional \
  $PY -m pytest ${XDIST[@]+"${XDIST[@]}"} -rs -p no:cacheprovider ${TESTS[@]+"${TESTS[@]}"}

# 2. Fused vs torchvision with TF32 on and off (the cause of the disagreement).
stage agreement 40 $PY benchmarks/fused_agreement.py --device "$DEVICE" --size "$SIZE"

# 3. A trained Penn-Fudan Mask R-CNN: default inference vs unfused, CUDA and CPU, and seconds per image.
export PY DEVICE MINUTES STEPS EPOCHS PF_SMALL CV_SMALL RUN=$OUT/runs
pf() {
  $PY -m segdet train configs/pennfudan_maskrcnn.yaml "train.device=$DEVICE" "train.max_minutes=$MINUTES" \
    data.workers=6 data.batch_size=4 data.cache=true train.eval_every=100 "output_dir=$RUN" train.progress=false \
    $PF_SMALL
  local ckpt=$RUN/pennfudan_maskrcnn/last.safetensors
  for opts in "--device $DEVICE" "--device $DEVICE --no-fuse" "--device $DEVICE --precision bf16" \
              "--device cpu --no-fuse --no-nnpack" "--device cpu"; do
    echo "--- segdet eval $opts"
    # shellcheck disable=SC2086
    $PY -m segdet eval "$ckpt" $opts | grep -E "^(AP|AP50|AP75|mask_AP|mask_AP50) |per image"
  done
  rm -rf "$RUN"
}
export -f pf
stage pennfudan 150 pf

# 4. Input pipeline: (b) trainer steps on real data / (a) model-bound steps.
tp() {
  $PY benchmarks/train_throughput.py configs/pennfudan_maskrcnn.yaml "train.device=$DEVICE" \
    data.workers=6 data.batch_size=4 $PF_SMALL --steps "$STEPS" --epochs "$EPOCHS" --profile 3
  $PY benchmarks/train_throughput.py configs/pennfudan_maskrcnn.yaml "train.device=$DEVICE" \
    data.workers=6 data.batch_size=4 data.cache=true $PF_SMALL --steps "$STEPS" --epochs "$EPOCHS"
  $PY benchmarks/train_throughput.py configs/camvid_unet.yaml "train.device=$DEVICE" data.workers=6 \
    train.amp=bf16 $CV_SMALL --steps "$STEPS" --epochs "$EPOCHS"
}
export -f tp
stage throughput 80 tp

# 5. Speed against torchvision / smp, same weights.
stage detection 60 $PY benchmarks/detection.py --device "$DEVICE" --size "$SIZE" --infer-batches "$BATCHES" \
  --train-batch 4 --bf16 --repeats "$REPEATS" --warmup 3 --threads "$THREADS"
stage segmentation 40 $PY benchmarks/segmentation.py --device "$DEVICE" --infer-batches "$BATCHES" --bf16 \
  --fused --repeats "$REPEATS" --warmup 3 --threads "$THREADS" --size $((SIZE < 512 ? SIZE : 512))

# 6. Why bf16 training is slower than float32 (ours) while torchvision's is faster.
stage profile 20 $PY benchmarks/profile_step.py --device "$DEVICE" --size "$SIZE" --steps "$PROFILE_STEPS"
ls -la "$OUT"
