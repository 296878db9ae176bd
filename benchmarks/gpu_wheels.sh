#!/usr/bin/env bash
# Wheels the lent GPU machine lacks, for benchmarks/gpu_check.py (issue 21; docs/gpu.md).
#
# The device machine (FACTS.md, "The GPU machine") has Python 3.12 with torch 2.11+cu130,
# transformers 5.17, anyio, rich, typer, safetensors, numpy and pytest, but no pyzmq or msgspec,
# and no network. Run this here, in the repository root; it downloads their CPython 3.12
# manylinux x86-64 wheels (the versions this venv runs) into .gpu-wheels/ (git-ignored, ~1.2 MiB,
# well under the 64 MiB a device call may carry).
#
#     bash benchmarks/gpu_wheels.sh
#
# Then ONE device call runs the whole check (device tool `run`; about 5 minutes, at most ~7):
#
#     carry:     [".gpu-wheels"]
#     timeout_s: 480
#     command:   set -o pipefail; python3 -m pip install -q --no-index --no-deps .gpu-wheels/*.whl
#                && export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
#                && (python3 -m pip install -q --no-deps --no-build-isolation -e . || true)
#                && timeout 450 python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/log.txt
#
# (one line, joined by spaces). PYTHONPATH=$PWD already makes `rlhfless` importable from the
# tree; the editable install is tried too, but it cannot fetch build requirements there (no
# network; --no-build-isolation uses the image's setuptools, which must be >= 77 for this
# pyproject), so its failure is ignored. What comes back under $OUT: gpu_check.json,
# pytest_gpu.txt, log.txt (the table is at its end), and seen/ (what each forked function saw).
# Give the machine back (give_back) unless you rerun at once.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.gpu-wheels
PACKAGES=(pyzmq==27.3.0 msgspec==0.23.0)

mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$DEST" "${PACKAGES[@]}"

# Exactly one wheel per package: two versions of one stop the whole install there.
for pkg in pyzmq msgspec; do
    n=$(find "$DEST" -maxdepth 1 -iname "${pkg}-*.whl" | wc -l)
    if [ "$n" -ne 1 ]; then
        echo "gpu_wheels: expected one ${pkg} wheel in $DEST, found $n; empty it and rerun" >&2
        exit 1
    fi
done
ls -l "$DEST"
du -sh "$DEST"
