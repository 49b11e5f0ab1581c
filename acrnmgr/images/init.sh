#!/bin/sh
# PID 1 of the acrnmgr test guest (busybox ash). Mounts the kernel filesystems, loads the virtio modules in the
# dependency order computed at build time, watches the ACPI power button, runs /test.sh (appended to the
# initramfs per test), prints ACRNMGR-GUEST-EXIT=<rc> and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /mnt
mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1

# The base's modules, then those of optional initrd layers (e.g. gpio-i2c: acrnmgr/images/gpio_i2c.py), each list
# in dependency order.
for list in /etc/acrnmgr/modules.load /etc/acrnmgr/modules.d/*.load; do
    [ -f "$list" ] || continue
    while read -r mod; do
        insmod "/lib/modules/$mod" || echo "ACRNMGR-GUEST-WARN: insmod $mod failed"
    done <"$list"
done

. /lib/acrnmgr/functions.sh
settle_devices

# The power button is an input device named "Power Button" (acpi button driver + evdev). Any event on it is a
# press: sync and power off, whatever the test script is doing -- that is what `system_powerdown` asks for.
powerbutton=
for e in /sys/class/input/event*; do
    [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] && powerbutton=/dev/input/${e##*/}
done
if [ -n "$powerbutton" ]; then
    (
        i=0
        while [ ! -c "$powerbutton" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        # evdev refuses reads shorter than one struct input_event (24 bytes on x86_64).
        if [ "$(dd if="$powerbutton" bs=24 count=1 2>/dev/null | wc -c)" = 24 ]; then
            echo "ACRNMGR-GUEST-POWERDOWN"
            sync
            poweroff -f
        fi
        echo "ACRNMGR-GUEST-WARN: cannot read power button events from $powerbutton"
    ) &
else
    echo "ACRNMGR-GUEST-WARN: no ACPI power button input device"
fi

if [ -f /test.sh ]; then
    sh -c '. /lib/acrnmgr/functions.sh && . /test.sh'
    rc=$?
else
    echo "ACRNMGR-GUEST-WARN: no /test.sh in the initramfs"
    rc=127
fi
echo "ACRNMGR-GUEST-EXIT=$rc"
sync
poweroff -f
