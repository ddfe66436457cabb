#!/usr/bin/env bash
# The prepared GPU check of psapose, in one call: CUDA tests, training-step and loop
# throughput, a short train + evaluate run and a val2017-sized evaluation, written as
# gpu_check.json and gpu_check.log in $OUT (or --out DIR). psapose/commands/gpu_check.py
# (its --help) documents each part and figure; every part has a time limit and a failing part
# never stops the rest.
#
#   bash tools/gpu_check.sh                 # on the GPU machine, about 7 minutes at most
#   bash tools/gpu_check.sh --cpu-small     # every part at tiny sizes on the CPU, first
#   bash tools/gpu_check.sh --fetch-wheels  # here (needs PyPI): fill .whl/ for the GPU machine
#   make gpu-check                          # the same as the first line
#   other arguments go to tools/gpu_check.py (--parts step eval, --budget 300, --coco-mini DIR)
#
# Before spending device time (once per working tree, on the machine with PyPI):
#   1. bash tools/gpu_check.sh --cpu-small                     # must end with every part "ok"
#   2. bash tools/gpu_check.sh --fetch-wheels                  # .whl/ (ignored), ~0.8 MB
#   3. mkdir -p data && cp -r ../shared/data/coco_mini data/   # real JPEGs, 26 MB; data/* is
#      ignored, so the copy never enters a commit; without it the loop part uses synthetic
#      JPEGs and says so in the JSON
# then one call of the device tool:
#   command: bash tools/gpu_check.sh --out $OUT      carry: [".whl", "data/coco_mini"]
#   timeout_s: 540
#
# The GPU machine has PyTorch 2.11 + CUDA 13, torchvision, OpenCV, TensorBoard and PyYAML but
# not hydra-core, omegaconf, antlr4-python3-runtime or pycocotools; --fetch-wheels downloads
# them for its Python (3.12, x86-64 manylinux) with exactly:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 pycocotools==2.0.11
#   python3 -m pip wheel --no-deps --no-binary :all: -w .whl antlr4-python3-runtime==4.9.3
# (antlr4-python3-runtime 4.9.3, the version omegaconf needs, exists only as a source
# archive: pip wheel builds its pure-Python wheel here.) On the GPU machine this script
# installs them with --no-index --no-deps --target into a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 pycocotools==2.0.11)
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)

if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi

if [ "${1:-}" = "--fetch-wheels" ]; then
    set -e
    mkdir -p .whl
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    "$PY" -m pip wheel --no-deps --no-binary :all: -w .whl "${SOURCE_ONLY[@]}"
    ls -l .whl
    exit 0
fi

ARGS=()
for arg in "$@"; do
    if [ "$arg" = "--cpu-small" ]; then ARGS+=(--device cpu --small); else ARGS+=("$arg"); fi
done

# The packages the GPU machine lacks, from the carried wheels (never from a network there).
if ! "$PY" -c "import hydra, omegaconf, pycocotools" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "hydra-core, omegaconf or pycocotools missing and no .whl/ to install them from:" >&2
        echo "run 'bash tools/gpu_check.sh --fetch-wheels' where PyPI is reachable, carry .whl" >&2
        exit 2
    fi
    SITE=${TMPDIR:-/tmp}/psapose-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# psapose is not installed there: the tools (thin wrappers of psapose/commands) and the parts'
# own processes import the package from this checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" tools/gpu_check.py "${ARGS[@]}"
