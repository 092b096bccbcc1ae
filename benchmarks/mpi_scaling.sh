#!/usr/bin/env bash
# Data-parallel scaling, side by side: `nettrain bench` of one config at one global batch as
#   p1t1      1 process x 1 thread
#   r2t1      2 ranks x 1 thread (mpiexec -n 2)
#   p1t2      1 process x 2 threads
#   r2nosync  2 ranks x 1 thread, train.distributed.sync_batchnorm=false
#   r2bind    2 ranks x 1 thread, each bound to a core (mpiexec -bind-to core)
#   2xp1t1    two independent 1-thread processes at half the batch each, at the same time (their
#             throughputs added): what two ranks could reach on this machine with no communication
# interleaved round by round, so that a busy machine disturbs every mode alike.
# Prints one line per run: round, mode, training img/s, forward img/s, 1-minute load average.
#   bash benchmarks/mpi_scaling.sh [rounds=6] [config=configs/fashion_cnn.yaml] [batch=128]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-6}; config=${2:-configs/fashion_cnn.yaml}; batch=${3:-128}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bench=(bench "$config" --batch-size "$batch" --steps 20 --warmup 3 --format json)
for round in $(seq 1 "$rounds"); do
  for mode in p1t1 r2t1 p1t2 r2nosync r2bind 2xp1t1; do
    case $mode in
      p1t1) out=$(nettrain "${bench[@]}" --threads 1) ;;
      r2t1) out=$(NETTRAIN_THREADS=1 mpiexec -n 2 nettrain "${bench[@]}") ;;
      p1t2) out=$(nettrain "${bench[@]}" --threads 2) ;;
      r2nosync) out=$(NETTRAIN_THREADS=1 mpiexec -n 2 nettrain "${bench[@]}" --set train.distributed.sync_batchnorm=false) ;;
      r2bind) out=$(NETTRAIN_THREADS=1 mpiexec -bind-to core -n 2 nettrain "${bench[@]}") ;;
      2xp1t1)
        half=(bench "$config" --batch-size $((batch / 2)) --steps 20 --warmup 3 --format json --threads 1)
        nettrain "${half[@]}" > "$tmp/a.json" & nettrain "${half[@]}" > "$tmp/b.json"; wait
        out=$(python -c "import json; a, b = (json.load(open('$tmp/' + f)) for f in ('a.json', 'b.json')); \
print(json.dumps({k: a[k] + b[k] for k in ('train_img_per_s', 'forward_img_per_s')}))") ;;
    esac
    echo "$out" | python -c "import json, sys; r = json.load(sys.stdin); \
print('$round $mode', round(r['train_img_per_s'], 1), round(r['forward_img_per_s'], 1), open('/proc/loadavg').read().split()[0])"
  done
done
