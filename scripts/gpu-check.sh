#!/usr/bin/env bash
# The GPU check (issue 18), in two halves, so that one short run on a GPU machine, which has no
# Rust toolchain and no network, does the whole check:
#
#   scripts/gpu-check.sh bundle   here, with the toolchain: builds the binaries into $BUNDLE
#                                 (xtask and the parity test suites for $FEATURES, and a CPU
#                                 xtask for the same-machine CPU side), packed as
#                                 $BUNDLE.tar.xz; carry that.
#   scripts/gpu-check.sh run      there, from the repository root: the parity fixtures, the
#                                 built-in training run and the benches on $DEVICE, the same
#                                 training run and benches on that machine's CPU, and PyTorch
#                                 eager on the GPU where Python has torch; the report and logs
#                                 go to $OUT (gpu-check.json sums it up).
#
# Settings (environment): DEVICE (cuda:0), FEATURES (cuda), PROFILE (release), BUNDLE
# (gpu-bundle), OUT (gpu-report), SECONDS_PER_CASE (3), PARITY (the trl-tests suites run on the
# device), REAL (1: also the 0.5B `real` bench case on the device, last), BUDGET_S (420: a stage
# that would start with under 30 s left is skipped, and said to be; each is cut at the budget).
#
# Both halves dry-run on a CPU: FEATURES=flex DEVICE=cpu PROFILE=dev REAL=0 scripts/gpu-check.sh bundle
# and then the same with `run`.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda:0}
FEATURES=${FEATURES:-cuda}
PROFILE=${PROFILE:-release}
BUNDLE=${BUNDLE:-gpu-bundle}
OUT=${OUT:-gpu-report}
SECONDS_PER_CASE=${SECONDS_PER_CASE:-3}
PARITY=${PARITY:-backbones heads encoders t5 dtype generate placement}
REAL=${REAL:-1}
BUDGET_S=${BUDGET_S:-420}

say() { echo "=== $* ($(date +%T))"; }

bundle() {
    local dir=$PROFILE
    [ "$PROFILE" = dev ] && dir=debug
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE/tests"
    say "xtask for $FEATURES ($PROFILE)"
    cargo build --profile "$PROFILE" -p xtask --no-default-features --features "$FEATURES"
    cp "target/$dir/xtask" "$BUNDLE/xtask"
    say "xtask for the CPU side (flex)"
    cargo build --profile "$PROFILE" -p xtask
    cp "target/$dir/xtask" "$BUNDLE/xtask-cpu"
    say "parity suites for $FEATURES: $PARITY"
    local tests=()
    for t in $PARITY; do tests+=(--test "$t"); done
    cargo test --profile "$PROFILE" -p trl-tests --no-default-features --features "$FEATURES" "${tests[@]}" \
        --no-run --message-format=json >"$BUNDLE/build.jsonl"
    python3 - "$BUNDLE" <<'EOF'
import json, shutil, sys
bundle = sys.argv[1]
for line in open(f"{bundle}/build.jsonl"):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], f"{bundle}/tests/{m['target']['name']}")
EOF
    rm "$BUNDLE/build.jsonl"
    if command -v strip >/dev/null; then strip "$BUNDLE"/xtask* "$BUNDLE"/tests/*; fi
    # test fixtures and bench scripts are found by the path the binaries were built at
    pwd >"$BUNDLE/build-root"
    echo "$FEATURES $DEVICE $PROFILE" >"$BUNDLE/built-for"
    # the device tool carries at most 64 MiB: the binaries go as one xz archive
    tar -C "$BUNDLE" -cJf "$BUNDLE.tar.xz" .
    say "bundle ready: $BUNDLE.tar.xz, $(du -h "$BUNDLE.tar.xz" | cut -f1) (carry it; then: scripts/gpu-check.sh run)"
}

run() {
    if [ ! -x "$BUNDLE/xtask" ] && [ -f "$BUNDLE.tar.xz" ]; then
        mkdir -p "$BUNDLE" && tar -C "$BUNDLE" -xJf "$BUNDLE.tar.xz"
    fi
    [ -x "$BUNDLE/xtask" ] || { echo "no $BUNDLE/xtask: build it first with scripts/gpu-check.sh bundle" >&2; exit 2; }
    local root start
    root=$(cat "$BUNDLE/build-root")
    if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
        mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
    fi
    [ -d "$root/tests/fixtures" ] || { echo "cannot reach the fixtures at $root/tests/fixtures" >&2; exit 2; }
    mkdir -p "$OUT"
    start=$(date +%s)
    left() { echo $((BUDGET_S - ($(date +%s) - start))); }
    (nvidia-smi -L || true) >"$OUT/gpus.txt" 2>&1
    local status="$OUT/status.txt"
    : >"$status"
    stage() { # name, then the command; its log in $OUT/name.log, its outcome in status.txt
        local name=$1
        shift
        if [ "$(left)" -le 30 ]; then
            echo "$name skipped (budget spent)" | tee -a "$status"
            return
        fi
        say "$name"
        if timeout "$(left)" "$@" >"$OUT/$name.log" 2>&1; then
            echo "$name ok" | tee -a "$status"
        else
            echo "$name FAILED ($?): see $OUT/$name.log" | tee -a "$status"
            tail -5 "$OUT/$name.log"
        fi
    }
    for t in "$BUNDLE"/tests/*; do
        stage "parity-$(basename "$t")" "$t" --test-threads 1
    done
    local quick=(--max-steps 40 --eval-steps 20 --save-steps 1000)
    stage train-device "$BUNDLE/xtask" train --device "$DEVICE" "${quick[@]}" --output-dir "$OUT/train-device"
    stage train-cpu "$BUNDLE/xtask-cpu" train --device cpu "${quick[@]}" --output-dir "$OUT/train-cpu"
    stage bench-device "$BUNDLE/xtask" bench --device "$DEVICE" --cases tiny,medium --seconds "$SECONDS_PER_CASE" \
        --out "$OUT/bench-device.json"
    stage bench-cpu "$BUNDLE/xtask-cpu" bench --device cpu --cases tiny,medium --seconds "$SECONDS_PER_CASE" \
        --out "$OUT/bench-cpu.json"
    # the 0.5B case last: the longest, and the first to go when the budget runs out
    if [ "$REAL" = 1 ]; then
        stage bench-real "$BUNDLE/xtask" bench --device "$DEVICE" --cases real --out "$OUT/bench-real.json"
    fi
    summary
}

# gpu-check.json: each stage's outcome, training on the device against the CPU (the same seeded
# job, so the losses agree to rounding), and the bench ratios (ours / PyTorch on the device, and
# device / CPU).
summary() {
    command -v python3 >/dev/null || { echo "no python3: see $OUT/*.log and $OUT/*.json"; return; }
    python3 - "$OUT" "$DEVICE" <<'EOF'
import json, os, sys
out, device = sys.argv[1], sys.argv[2]
def load(p):
    try:
        return json.load(open(os.path.join(out, p)))
    except (OSError, ValueError):
        return None
report = {"device": device, "gpus": open(os.path.join(out, "gpus.txt")).read().strip(),
          "stages": open(os.path.join(out, "status.txt")).read().split("\n")[:-1]}
dev, cpu = load("train-device/summary.json"), load("train-cpu/summary.json")
if dev and cpu:
    report["train"] = {"device_loss": dev["train_loss"], "cpu_loss": cpu["train_loss"],
                       "loss_delta": abs(dev["train_loss"] - cpu["train_loss"]),
                       "device_pairs_per_sec": dev["pairs_per_sec"], "cpu_pairs_per_sec": cpu["pairs_per_sec"]}
bd, bc = load("bench-device.json"), load("bench-cpu.json")
if bd:
    on_cpu = {r["name"]: r for r in (bc or {}).get("results", [])}
    rows = []
    for r in bd["results"]:
        c = on_cpu.get(r["name"], {})
        row = {"name": r["name"]}
        for k in ("train", "score"):
            v = r.get(f"{k}_pairs_per_sec")
            row[f"{k}_pairs_per_sec"] = v
            row[f"{k}_vs_torch"] = r.get(f"{k}_ratio")
            if v and c.get(f"{k}_pairs_per_sec"):
                row[f"{k}_vs_cpu"] = v / c[f"{k}_pairs_per_sec"]
        rows.append(row)
    report["bench"] = {"torch": bd.get("baseline"), "results": rows}
real = load("bench-real.json")
if real:
    report["real"] = real["results"]
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
print(json.dumps(report, indent=1))
EOF
}

case "${1:-}" in
bundle) bundle ;;
run) run ;;
*)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
