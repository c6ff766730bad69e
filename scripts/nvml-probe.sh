#!/usr/bin/env bash
# Issue 9: run gpu-agent on the REAL NVML backend and save what it sees, next to what nvidia-smi
# says, under $OUT. Read-only: it never changes MIG mode or any GPU setting.
#
# One short call on a GPU machine, with release builds carried from an x86-64 machine (this is how
# tests/data/h200 was recorded):
#   cargo build --release --locked --bin gpu-agent --example test_kubelet
#   mkdir -p probe-bin && cp target/release/gpu-agent target/release/examples/test_kubelet probe-bin/
#   echo /probe-bin/ >> .git/info/exclude
#   on the GPU machine: OUT=<dir> bash scripts/nvml-probe.sh probe-bin
# Optionally also the telemetry collection cost on the real GPUs (issue 14), from the bench binary:
#   cargo bench --bench telemetry --no-run   # prints target/release/deps/telemetry-<hash>
#   cp target/release/deps/telemetry-<hash> probe-bin/telemetry-bench
set -uo pipefail
bin="${1:-target/release}"
out="${OUT:-/tmp/nvml-probe}"
mkdir -p "$out"
agent="$bin/gpu-agent"
kubelet="$bin/test_kubelet"
[ -x "$kubelet" ] || kubelet="$bin/examples/test_kubelet"

{
  date -u
  uname -a
  nvidia-smi
  nvidia-smi -q
  nvidia-smi topo -m
  nvidia-smi nvlink --status
  nvidia-smi --query-gpu=index,uuid,name,memory.total,pci.bus_id,mig.mode.current,driver_version --format=csv
  nvidia-smi mig -lgip || true
  for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ]; then echo "$d numa_node=$(cat "$d/numa_node")"; fi
  done
} >"$out/nvidia-smi.txt" 2>&1

"$agent" --version >"$out/agent.txt" 2>&1
"$agent" list --backend nvml --output json >"$out/list.json" 2>>"$out/agent.txt"
echo "list rc=$?" >>"$out/agent.txt"
"$agent" list --backend nvml >>"$out/agent.txt" 2>&1

# curl may be missing on a bare machine: plain HTTP/1.0 over bash's /dev/tcp.
http_get() {
  exec 3<>/dev/tcp/127.0.0.1/9400 || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
  cat <&3
  exec 3<&-
}

dir=$(mktemp -d)
"$kubelet" --dir "$dir" --allocate 1 >"$out/kubelet.jsonl" 2>&1 &
kpid=$!
sleep 0.5
RUST_LOG=info,gpu_agent::gpu::nvml=debug "$agent" run --backend nvml --device-plugin-dir "$dir" --metrics-addr 127.0.0.1:9400 \
  --nfd-features-file "$dir/features" --collect-interval 1s --cdi-spec-dir "$dir/cdi" --log-format json \
  >"$out/run.log" 2>&1 &
apid=$!
sleep 20
{
  http_get /metrics
  echo "--- readyz"; http_get /readyz
  echo "--- features"; cat "$dir/features"
} >"$out/metrics.txt" 2>&1
grep -E "VmRSS|VmHWM" "/proc/$apid/status" >>"$out/metrics.txt"
kill -TERM "$apid"; wait "$apid"; echo "agent exit=$?" >>"$out/run.log"
kill -INT "$kpid"; wait "$kpid" 2>/dev/null
ls -la "$dir" >>"$out/run.log"

# NVML collection cost per GPU (GPM included), when the bench binary was carried.
if [ -x "$bin/telemetry-bench" ]; then
  "$bin/telemetry-bench" >"$out/telemetry-bench.txt" 2>&1
  echo "telemetry-bench rc=$?" >>"$out/telemetry-bench.txt"
fi
