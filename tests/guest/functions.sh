# Helpers sourced before every test script (busybox ash).

# Wait (up to 5 s) until every block device and hwrng the kernel registered has its /dev node: devtmpfs creates
# nodes asynchronously after the driver probe.
settle_devices() {
    i=0
    while [ $i -lt 50 ]; do
        missing=
        for b in /sys/block/*; do
            [ -e "$b" ] && [ ! -e "/dev/${b##*/}" ] && missing=1
        done
        [ -z "$missing" ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "ACRNMGR-GUEST-WARN: device nodes did not settle"
}

# Service mode: announce that the script's work is done, then keep the guest running until the ACPI power button
# (QMP system_powerdown, `acrnmgr down`) powers it off. Call it last in a test script.
wait_for_powerdown() {
    sync
    echo "ACRNMGR-GUEST-READY"
    while :; do sleep 3600; done
}
