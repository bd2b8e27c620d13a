#!/usr/bin/env bash
# Runs a command with a background sweep paused, so the command is timed on quiet cores, and
# records the pause in the sweep folder's timing_windows.jsonl, so the report's cost table
# leaves out the cells whose clocks ran through it (tsynd_tf/report/cost.py).
#
#   bench/paused.sh PGID SWEEP_DIR "what was timed" -- COMMAND [ARGS...]
#
# PGID: the sweep's process group (`ps -o pgid= -p <pid of its launcher>`). The sweep is
# continued however the command ends (Ctrl-C included), and the window is written then.
set -euo pipefail

if [[ $# -lt 5 || $4 != "--" ]]; then
  echo "usage: $0 PGID SWEEP_DIR \"what was timed\" -- COMMAND [ARGS...]" >&2
  exit 2
fi
pgid=$1 sweep_dir=$2 what=$3
shift 4
if ! kill -0 -- "-$pgid" 2>/dev/null; then
  echo "$0: no process group $pgid: give the sweep's (ps -o pgid= -p <its pid>)." >&2
  exit 2
fi
if [[ ! -f $sweep_dir/results.jsonl ]]; then
  echo "$0: $sweep_dir has no results.jsonl: give the sweep's --sweep_dir." >&2
  exit 2
fi

utc_now() { date -u +%Y-%m-%dT%H:%M:%S+00:00; }
start=$(utc_now)
resume() {
  kill -CONT -- "-$pgid" 2>/dev/null || true
  local end
  end=$(utc_now)
  python3 -c 'import json, sys; print(json.dumps({"start": sys.argv[1], "end": sys.argv[2],
"kind": "paused", "what": sys.argv[3]}))' "$start" "$end" "$what" \
    >> "$sweep_dir/timing_windows.jsonl"
  echo "$0: sweep continued; $start to $end added to $sweep_dir/timing_windows.jsonl" >&2
}
trap resume EXIT
kill -STOP -- "-$pgid"
# SIGSTOP lands when each process is next scheduled: the command starts once all of the
# group shows T (stopped), so its clock starts on quiet cores.
all_stopped() {
  local states
  states=$(ps -o state= -p "$(pgrep -d, -g "$pgid")" 2>/dev/null) || return 1
  [[ -z $(tr -d 'T\n ' <<< "$states") ]]
}
for _ in $(seq 100); do all_stopped && break; sleep 0.1; done
all_stopped || echo "$0: warning: process group $pgid not all stopped after 10 s" >&2
"$@"
