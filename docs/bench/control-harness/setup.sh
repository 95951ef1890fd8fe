#!/bin/bash
# Builds N two-sided networks' interfaces: namespace mnperf (middleman) with nIa/nIb, peers in mnperf-sink.
set -e
PERF_DIR=${PERF_DIR:-/tmp/mirrornet-perf}; mkdir -p $PERF_DIR
N=${1:-127}
ip netns del mnperf 2>/dev/null || true
ip netns del mnperf-sink 2>/dev/null || true
ip netns add mnperf; ip netns add mnperf-sink
ip -n mnperf link set lo up; ip -n mnperf-sink link set lo up
B=${PERF_DIR}/links.batch; : > $B
for i in $(seq 0 $((N-1))); do
  echo "link add name n${i}a netns mnperf type veth peer name n${i}a netns mnperf-sink" >> $B
  echo "link add name n${i}b netns mnperf type veth peer name n${i}b netns mnperf-sink" >> $B
done
ip -batch $B
U=${PERF_DIR}/up.batch; : > $U
for i in $(seq 0 $((N-1))); do echo "link set n${i}a up"; echo "link set n${i}b up"; done > $U
ip -n mnperf -batch $U; ip -n mnperf-sink -batch $U
# files
gen() { # from to file
  : > $3
  for i in $(seq $1 $2); do
    h=$((i>>8)); l=$((i&255)); name=$(printf 'bench-%04d' $i)
    [ -s $3 ] && echo '---' >> $3
    cat >> $3 <<Y
apiVersion: mirrornet.io/v1alpha1
kind: MirrorNetwork
metadata:
  name: $name
spec:
  nodeSelector:
    matchLabels:
      mirrornet.io/gateway: "true"
  subnet: 10.$h.$l.0/24
  gatewayAddress: 10.$h.$l.1
  sides:
    - {name: inner, interface: n${i}a, aliasPrefix: 10.$((64+h)).$l.0/24}
    - {name: outer, interface: n${i}b, aliasPrefix: 10.$((64+h)).$l.0/24}
Y
  done
}
gen 0 $((N-1)) ${PERF_DIR}/all.yaml
gen 0 $((N-2)) ${PERF_DIR}/rest.yaml
gen $((N-1)) $((N-1)) ${PERF_DIR}/extra.yaml
gen 0 0 ${PERF_DIR}/one.yaml
echo ok
