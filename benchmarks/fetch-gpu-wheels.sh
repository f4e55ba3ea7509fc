#!/usr/bin/env bash
# Download benchmarks/gpu-wheels.txt as wheels into .whl/ (or $1), for a GPU machine without a package index.
# Run it on any machine with pip and network access; PYTHON_VERSION picks the GPU machine's Python (3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
grep -v '^#' benchmarks/gpu-wheels.txt | xargs python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --implementation cp --python-version "${PYTHON_VERSION:-3.12}" "${platforms[@]}" --dest "$dest"
ls -1 "$dest"
