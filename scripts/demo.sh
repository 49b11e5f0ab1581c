#!/usr/bin/env bash
# The main job on an example: validate a VM spec, show the per-device backend plan and
# render the exact acrn-dm command line and launch script, planned for an ACRN Service VM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --python-only
spec=${1:-examples/linux-vm.yaml}
host=${2:-examples/hosts/acrn-service-vm.yaml}
set -x
.venv/bin/acrnmgr validate "$spec"
.venv/bin/acrnmgr plan "$spec" --host "$host"
.venv/bin/acrnmgr render "$spec" --host "$host" --format argv
.venv/bin/acrnmgr render "$spec" --host "$host" --format script
