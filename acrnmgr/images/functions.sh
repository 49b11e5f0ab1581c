# Helpers sourced before every test script (busybox ash).

# Wait (up to 5 s) until every device the kernel registered has its /dev node (block disks, virtio console
# ports, hvc, hwrng, input...): devtmpfs creates nodes asynchronously after the driver probe. Builtins only, no
# forks: this runs on every boot.
settle_devices() {
    i=0
    while [ $i -lt 50 ]; do
        missing=
        for u in /sys/dev/block/*/uevent /sys/dev/char/*/uevent; do
            [ -e "$u" ] || continue
            while read -r line; do
                case $line in DEVNAME=*) [ -e "/dev/${line#DEVNAME=}" ] || missing=${line#DEVNAME=} ;; esac
            done <"$u"
        done
        [ -z "$missing" ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "ACRNMGR-GUEST-WARN: no /dev node for $missing"
}

# Service mode: announce that the script's work is done, then keep the guest running until the ACPI power button
# (QMP system_powerdown, `acrnmgr down`) powers it off. Call it last in a test script.
wait_for_powerdown() {
    sync
    echo "ACRNMGR-GUEST-READY"
    while :; do sleep 3600; done
}
