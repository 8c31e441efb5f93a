#!/bin/bash
# A short, bounded libFuzzer run over the hand-off parser (longer runs:
# `make fuzz FUZZ_SECONDS=600`). clang comes with `make deps`.
set -eu
B=${B:-build}
command -v clang >/dev/null || { echo "clang is missing: run 'make deps'"; exit 1; }
make --no-print-directory -s fuzz B="$B" FUZZ_SECONDS="${FUZZ_SECONDS:-10}" 2>&1 | tail -5
