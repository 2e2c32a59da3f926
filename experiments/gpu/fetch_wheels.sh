#!/usr/bin/env bash
# Downloads the wheels of experiments/gpu/wheels.txt (CPython 3.12, manylinux x86-64) into
# .whl/ at the repository root and keeps .whl/ out of git, for the device tool's `carry`.
# Run here, before asking for a GPU: it costs no device time. See experiments/gpu/README.md.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
grep -v '^#' experiments/gpu/wheels.txt | grep -v '^$' | while read -r pin; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$pin"
done
size=$(du -sm .whl | cut -f1)
echo "$(ls .whl | wc -l) wheels, ${size} MiB in .whl/"
if [ "$size" -gt 56 ]; then
  echo "over 56 MiB: with the working tree this would pass the 64 MiB a call may carry" >&2
  exit 1
fi
