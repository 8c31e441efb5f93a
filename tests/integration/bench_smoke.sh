#!/bin/bash
# The benchmarks must keep working: run each in its smoke-test size (numbers
# from such short runs mean nothing; `make bench` gives the real ones).
set -eu
B=${B:-build}
out=$(BENCH_QUICK=1 B="$B" bench/run 2>&1)
echo "$out" | grep -E '^\| (lazyvm|floor)-block \| 1 ' || { echo "$out"; echo "fault_bench table missing"; exit 1; }
echo "$out" | grep -E '^\| 64M \| lazy ' || { echo "$out"; echo "restore_bench table missing"; exit 1; }
echo "$out" | grep -E '^\| 2 \| exit \|' || { echo "$out"; echo "intake table missing"; exit 1; }
echo "$out" | grep -E '^\| both, apf user \|' || { echo "$out"; echo "apf table missing"; exit 1; }
echo "$out" | grep -E '^\| nbd 1ms, working-set replay \|' || { echo "$out"; echo "remote table missing"; exit 1; }
echo "$out" | grep -E '^\| 64M \| [0-9.]+ \| [0-9.]+ \|' || { echo "$out"; echo "migrate table missing"; exit 1; }
echo "$out" | grep -E '^\| nbd 1ms, working-set replay \| [0-9.]+ \| [0-9.]+x \|' || { echo "$out"; echo "fc remote table missing"; exit 1; }
echo "$out" | grep -E '^\| 8 \| [0-9.]+ \| [0-9]+ \| [0-9]+ \|' || { echo "$out"; echo "fc fleet table missing"; exit 1; }
echo "bench smoke: ok"
