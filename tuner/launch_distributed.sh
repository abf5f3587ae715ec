#!/usr/bin/env bash
# tuner/launch_distributed.sh CONFIG OUT WORKERS [PORT] [extra reprlearn tune arguments...]
#   e.g. tuner/launch_distributed.sh tuner/digits_smoke.yaml runs/tune_dist 2 8000 --tuner random --max-trials 4
# Starts a keras-tuner chief (the oracle) and WORKERS workers on this machine, all sharing OUT.
# On several machines: run the chief line on one host and the worker line on each other host,
# with KERASTUNER_ORACLE_IP set to the chief's address and OUT on a shared file system.
set -euo pipefail
config=$1 out=$2 workers=$3 port=${4:-8000}
shift $(( $# >= 4 ? 4 : 3 ))
reprlearn=${REPRLEARN:-.venv/bin/reprlearn}
export KERASTUNER_ORACLE_IP=${KERASTUNER_ORACLE_IP:-127.0.0.1} KERASTUNER_ORACLE_PORT=$port
mkdir -p "$out"
KERASTUNER_TUNER_ID=chief "$reprlearn" tune "$config" --out "$out" --quiet "$@" > "$out/chief.log" 2>&1 &
chief=$!
sleep 5  # let the oracle start listening
pids=()
for i in $(seq 0 $((workers - 1))); do
  KERASTUNER_TUNER_ID=tuner$i "$reprlearn" tune "$config" --out "$out" --quiet "$@" > "$out/worker$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
wait "$chief" || status=1
echo "chief and $workers workers done (status $status); results in $out/trials.csv"
exit $status
