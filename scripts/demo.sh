#!/usr/bin/env bash
# The whole product on an example, in about a minute on a 2-core machine under TCG (once packages are there):
#  1. validate a VM spec, show its per-device backend plan and render the exact acrn-dm command line and
#     launch script, planned for an ACRN Service VM;
#  2. build a bootable guest from Debian's packages (acrnmgr image build) and boot examples/linux-qemu.yaml on
#     the qemu engine, its disk and RNG served by acrnmgr's embedded device model over vhost-user;
#  3. show its status, prove the embedded disk works from inside the guest (write, sync, drop the page cache,
#     read back) through the console, stop it, and find the guest's bytes in the disk image on the host.
# apt and pip output goes to demo.log (setup), not to the screen.
set -euo pipefail
cd "$(dirname "$0")/.."
log=${ACRNMGR_DEMO_LOG:-demo.log}
spec=${1:-examples/linux-vm.yaml}
host=${2:-examples/hosts/acrn-service-vm.yaml}
qemu_spec=examples/linux-qemu.yaml
acrnmgr=.venv/bin/acrnmgr

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "setup: Debian packages and .venv (output in $log)"
if ! bash scripts/setup.sh >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "demo: setup failed; the whole output is in $log" >&2
    exit 1
fi

step "1. compile a spec for an ACRN Service VM"
run $acrnmgr validate "$spec"
run $acrnmgr plan "$spec" --host "$host"
run $acrnmgr render "$spec" --host "$host" --format argv
run $acrnmgr render "$spec" --host "$host" --format script

step "2. build a guest image from Debian's packages and boot it on the qemu engine"
run $acrnmgr image build
trap '$acrnmgr down linux-qemu --force >/dev/null 2>&1 || true' EXIT
run $acrnmgr plan $qemu_spec --engine qemu
run $acrnmgr up $qemu_spec --engine qemu --wait-ready

step "3. status, the embedded disk from inside the guest, down"
run $acrnmgr status linux-qemu
stamp="acrnmgr-demo-$(date +%s)"
cmd="echo $stamp > /data/proof && sync && echo 3 > /proc/sys/vm/drop_caches && cat /data/proof && df -h /data && cat /sys/class/misc/hw_random/rng_current"
console_out=$(mktemp)
printf "\$ echo '%s' | %s console linux-qemu\n" "$cmd" "$acrnmgr"
echo "$cmd" | $acrnmgr console linux-qemu >"$console_out"
# The guest's shell asks the terminal for its cursor position (ESC [6n); a pipe does not answer.
tr -d '\r' <"$console_out" | sed 's/\x1b\[6n//g' | grep -v '^$'
run $acrnmgr down linux-qemu
trap - EXIT
data=~/.cache/acrnmgr/images/debian/data.img
found=$(tr -d '\r' <"$console_out" | grep -c "^$stamp" || true)
rm -f "$console_out"
run grep -ac "$stamp" "$data" || true
if [[ $found -ge 1 ]] && grep -aq "$stamp" "$data"; then
    echo "the guest wrote $stamp through the embedded virtio-blk device model, read it back after dropping"
    echo "its page cache, and the bytes are in $data on the host."
else
    echo "demo: the guest's write did not come back or did not reach $data" >&2
    exit 1
fi
