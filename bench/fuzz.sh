#!/bin/sh
# Long fuzz campaign: atheris (libFuzzer) on every parser of untrusted bytes.
#
#   bench/fuzz.sh SECONDS_PER_TARGET [CRASH_DIR] [TARGET ...]
#
# Each target runs for SECONDS_PER_TARGET, starting from a scratch copy of its
# seed corpus (tests/fuzz/corpus/TARGET; the committed corpus is never written).
# Crashes, hangs (> 10 s per input) and out-of-memory inputs (> 2 GiB RSS) are
# saved as CRASH_DIR/TARGET-crash-* (default: fuzz-crashes/). Executions per
# target and in total, and the crash count, are written to
# bench/results/fuzz.json (headline value = total executions). FUZZ_JOBS=N runs
# N targets at a time (default 1).
# Replay a saved input: .venv/bin/python -m tests.fuzz.run_atheris TARGET FILE
set -eu
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,13p "$0"; exit 2; }
secs=$1; shift
crashes=${1:-fuzz-crashes}; [ $# -ge 1 ] && shift
PY=.venv/bin/python
[ -x "$PY" ] || { echo "fuzz.sh: run ./dev test once to build .venv" >&2; exit 2; }
targets=$*
[ -n "$targets" ] || targets=$("$PY" -c 'from tests.fuzz.targets import TARGETS; print(" ".join(sorted(TARGETS)))')
mkdir -p "$crashes"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
stats="$work/stats.tsv"; : > "$stats"
fuzz_one() {
  t=$1
  mkdir -p "$work/corpus/$t"
  cp tests/fuzz/corpus/"$t"/* "$work/corpus/$t/" 2>/dev/null || true
  log="$work/$t.log"
  set +e
  "$PY" -m tests.fuzz.run_atheris "$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$crashes/$t-" "$work/corpus/$t" > "$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  found=$(ls "$crashes" | grep -c "^$t-" || true)
  printf '%s\t%s\t%s\t%s\n' "$t" "${runs:-0}" "$rc" "$found" >> "$stats"
  echo "fuzz.sh: $t: ${runs:-0} inputs, exit $rc, $found saved crash inputs" >&2
  [ "$rc" -eq 0 ] || tail -25 "$log" >&2
}
jobs=${FUZZ_JOBS:-1}; n=0
for t in $targets; do
  fuzz_one "$t" &
  n=$((n + 1))
  [ $((n % jobs)) -ne 0 ] || wait
done
wait
"$PY" - "$stats" "$secs" <<'EOF'
import json, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
targets = {t: {"executions": int(n), "exit": int(rc), "crash_inputs": int(c)} for t, n, rc, c in rows}
total = sum(v["executions"] for v in targets.values())
out = {
    "benchmark": "fuzz",
    "headline": {"name": "inputs executed across all parsers of untrusted bytes (atheris, coverage-guided)",
                 "unit": "executions", "value": total, "goal": 10_000_000},
    "seconds_per_target": int(sys.argv[2]),
    "crashes": sum(1 for v in targets.values() if v["exit"] != 0),
    "targets": targets,
}
json.dump(out, open("bench/results/fuzz.json", "w"), indent=2)
print(json.dumps({"total_executions": total, "crashes": out["crashes"]}))
EOF
