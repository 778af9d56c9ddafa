#!/usr/bin/env bash
# Four `train` runs started at once into one output directory: one runs, the others fail at once
# naming its PID; every checkpoint left is complete. Then the running one is killed with -9, and
# the next run takes over the directory, saying so.
set -u
X=${X:-target/debug/xtask}
W=${W:-$(mktemp -d)}
rm -rf "$W"; mkdir -p "$W"
args=(train --output-dir "$W/out" --max-steps 400 --save-steps 10)
pids=()
for i in 1 2 3 4; do "$X" "${args[@]}" >"$W/$i.log" 2>&1 & pids+=($!); done
sleep 8
failed=0
for i in 1 2 3 4; do
  if ! kill -0 "${pids[$((i-1))]}" 2>/dev/null; then
    wait "${pids[$((i-1))]}"; rc=$?
    [ $rc -ne 0 ] && failed=$((failed+1)) && echo "run $i: exit $rc: $(grep '^error' "$W/$i.log")"
  else
    running=${pids[$((i-1))]}; echo "run $i (PID $running): still training"
  fi
done
kill -9 "$running"; wait "$running" 2>/dev/null
incomplete=0
for d in "$W/out"/checkpoint-*; do [ -f "$d/model.safetensors" ] && [ -f "$d/optimizer.safetensors" ] || incomplete=$((incomplete+1)); done
echo "$failed of 3 other runs refused; $(ls -d "$W/out"/checkpoint-* | wc -l) checkpoints left, $incomplete incomplete; temp entries: $(ls -a "$W/out" | grep -c '\.tmp')"
"$X" train --output-dir "$W/out" --max-steps 400 --save-steps 10 --resume 2>&1 | grep -E 'warning|resumed' | head -3
