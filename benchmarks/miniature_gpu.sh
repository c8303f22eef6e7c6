#!/usr/bin/env bash
# Issue 16 on a lent GPU, as one prepared device call: train a miniature3 variant with `--device cuda` and bring
# the exported model back for the report here (on the CPU, as every recorded report).
#
#   bash benchmarks/miniature_gpu.sh prepare            # here: the wheels the device lacks, into .whl (~22 MB)
#   device run (carry [".whl"], timeout_s 560):
#     bash benchmarks/miniature_gpu.sh train VARIANT [SEED]
#   here: tar -xf <files_at>/model.tar -C .cache/miniature-gpu-VARIANT && \
#         .venv/bin/python -m focuslib.offline.miniature_report --model .cache/miniature-gpu-VARIANT/final \
#             --out .cache/miniature-gpu-VARIANT/report
#
# Why wheels: the device image's transformers (5.17 when last read, KINDS.md) is below the range the kit tests
# (>= 5.23); the set below is this venv's transformers and what it needs that the image lacks or has too old.
# The run folder (.cache/, ignored) stays on a warm machine, so a second `train` call resumes from the last
# checkpoint if the first ran out of time (the trainer checkpoints every 100 steps; time already spent counts
# against the recipe's budget). The device has torchvision, so its CLIP image processor is the torchvision one,
# not the PIL one used here: the report here reads the model through the PIL processor, as the kit's CPU users do.
set -euo pipefail
cmd=${1:?usage: miniature_gpu.sh prepare | train VARIANT [SEED]}

if [ "$cmd" = prepare ]; then
  mkdir -p .whl
  plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  for n in transformers huggingface_hub kernels httpx2 httpcore2 truststore hf-xet tomlkit click regex idna; do
    v=$(.venv/bin/python -m pip show "$n" 2>/dev/null | sed -n 's/^Version: //p')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
      -d .whl "$n==$v"
  done
  ls .whl
  exit 0
fi

variant=${2:?a miniature3 variant, e.g. gpu-1}
seed=${3:-0}
out=${OUT:-/tmp/miniature-gpu-out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
device=${DEVICE:-cuda}   # DEVICE=cpu EXTRA="--scale 0.002": a dry run of this script anywhere
py=${PY:-python3}
$py -c "import torch, transformers, focuslib; assert '$device' != 'cuda' or torch.cuda.is_available(); \
print('torch', torch.__version__, 'transformers', transformers.__version__, '$device')"
run=.cache/miniature-gpu-$variant-seed$seed
mkdir -p "$run"
set +e
PYTHONUNBUFFERED=1 timeout "${TRAIN_S:-480}" $py -m focuslib.offline.miniature3 --variant "$variant" \
  --seed "$seed" --device "$device" --workers "${WORKERS:-14}" --out "$run" ${EXTRA:-} >"$out/train.log" 2>&1
rc=$?
set -e
tr "\r" "\n" <"$out/train.log" | grep -v -e "it/s" -e "s/it" | tail -40
cp "$run/history.json" "$out/" 2>/dev/null || true
[ -d "$run/final" ] && tar -C "$run" -cf "$out/model.tar" final
echo "train rc=$rc (124: out of time, call train again to resume; 3: a gate was missed)"
