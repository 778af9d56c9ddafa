#!/usr/bin/env bash
# kill -9 at a random moment, then --resume: the result must equal an uninterrupted run.
set -u
X=${X:-target/debug/xtask}
W=${W:-$(mktemp -d)}
RUNS=${RUNS:-5}
rm -rf "$W"; mkdir -p "$W"
args=(train --max-steps 300 --save-steps 25 --logging-steps 10)
"$X" "${args[@]}" --output-dir "$W/ref" >/dev/null 2>&1
strip() { sed 's/,"pairs_per_sec":[^}]*//' "$1/metrics.jsonl"; }
same=0
for i in $(seq "$RUNS"); do
  "$X" "${args[@]}" --output-dir "$W/run$i" >/dev/null 2>&1 &
  pid=$!
  sleep "$(python3 -c "import random; random.seed($i); print(round(random.uniform(1, 25), 2))")"
  kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  last=$(ls -d "$W/run$i"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
  "$X" "${args[@]}" --output-dir "$W/run$i" --resume >"$W/run$i.log" 2>&1 || { echo "run $i: resume failed"; cat "$W/run$i.log"; continue; }
  if cmp -s "$W/ref/model.safetensors" "$W/run$i/model.safetensors" && [ "$(strip "$W/ref")" = "$(strip "$W/run$i")" ]; then
    same=$((same + 1)); verdict="identical"
  else
    verdict="DIFFERENT"
  fi
  echo "run $i: killed after ${last##*/} existed; resumed: model and metrics $verdict"
done
echo "$same of $RUNS interrupted runs identical to the uninterrupted one"
