#!/bin/bash
# pairs.sh PAIRS SYS_A SYS_B WORKLOAD N [options]: runs two systems of kiln-bench alternately
# (a fresh folder, `sync`, then one run of each, the order swapped every pair) and prints each
# system's median and the A/B ratio of every pair. BIN: the kiln-bench binary (default
# target/release/kiln-bench); build it with `cargo build --release -p kiln-bench`.
P=$1; A=$2; B=$3; shift 3
BIN=${BIN:-target/release/kiln-bench}
for i in $(seq 1 $P); do
  if [ $((i % 2)) -eq 1 ]; then o="$A $B"; else o="$B $A"; fi
  for s in $o; do rm -rf ${TMPDIR:-/tmp}/kiln-pairs; sync; sleep 0.3; echo "$i $s $($BIN $s "$@" ${TMPDIR:-/tmp}/kiln-pairs | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_sec"])')"; done
done | python3 -c "
import sys,statistics
A,B=sys.argv[1],sys.argv[2]
d={}
for l in sys.stdin:
    i,w,v=l.split(); d.setdefault(i,{})[w]=float(v)
r=sorted(d[i][A]/d[i][B] for i in d)
print(A,'vs',B, sys.argv[3:], A,'med',round(statistics.median(d[i][A] for i in d)), B,'med',round(statistics.median(d[i][B] for i in d)),'ratios',[round(x,2) for x in r],'median',round(statistics.median(r),2))
" $A $B "$@"
