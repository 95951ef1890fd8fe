#!/bin/busybox sh
# The guest's /init: prepares a busybox initramfs, then runs the test's script chrooted into the
# host's own root filesystem (read-only over virtio-9p), so the guest has the same binaries at the
# same paths as the host. Everything the host test reads is an `MNVM {json}` line on the console.

/bin/busybox --install -s /bin
export PATH=/bin

emit() { echo "MNVM $1"; }
uptime() { cut -d' ' -f1 /proc/uptime; }
# Anything that stops the guest from running the script ends the boot; the host reports the line.
fatal() {
    emit "{\"event\":\"fatal\",\"what\":\"$1\"}"
    poweroff -f
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
emit "{\"event\":\"init\",\"uptime\":$(uptime)}"
# The host types barrier releases on the serial port; they need not show up in the console.
stty -F /dev/console -echo 2>/dev/null

for module in $(cat /mnvm/modules); do
    insmod "/lib/modules/$module.ko" || fatal "insmod $module"
done

hostname "$(cat /mnvm/name)"
ip link set lo up
# NICs get the names the spec asked for, found by their MACs. Everything is renamed to a
# temporary name first, so a wanted name that a NIC holds already (eth1) cannot collide.
i=0
while read -r mac name; do
    for dev in /sys/class/net/*; do
        if [ "$(cat "$dev/address")" = "$mac" ]; then
            ip link set "${dev##*/}" name "mnvmnic$i" || fatal "rename ${dev##*/}"
        fi
    done
    i=$((i + 1))
done </mnvm/nics
i=0
while read -r mac name; do
    ip link set "mnvmnic$i" name "$name" || fatal "no NIC with MAC $mac (for $name)"
    i=$((i + 1))
done </mnvm/nics

mkdir -p /host
# cache=loose: the host tree does not change while a test runs, and re-reading it over 9p under
# TCG is the slowest part of starting host programs.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host \
    || fatal "mount the host root over 9p"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
# What udev would add and programs expect (nft -f /dev/stdin, bash's <(...)).
ln -s /proc/self/fd /host/dev/fd
ln -s /proc/self/fd/0 /host/dev/stdin
ln -s /proc/self/fd/1 /host/dev/stdout
ln -s /proc/self/fd/2 /host/dev/stderr
# Writable places for the script (and `ip netns`, which keeps its state under /run). The
# host's /tmp stays visible (read-only, like everything else): a checkout or target directory
# may live there. Scratch space is $TMPDIR, a fresh tmpfs under /run.
mount -t tmpfs tmpfs /host/run
mkdir -p /host/run/mnvm /host/run/tmp
cp /mnvm/* /host/run/mnvm/

emit "{\"event\":\"ready\",\"uptime\":$(uptime)}"
chroot /host /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/run/tmp TMPDIR=/run/tmp TERM=dumb MNVM_NAME="$(cat /mnvm/name)" \
    /bin/bash -c 'cd /run/tmp && . /run/mnvm/env && . /run/mnvm/lib.sh && . /run/mnvm/script' \
    </dev/null
code=$?
emit "{\"event\":\"exit\",\"code\":$code,\"uptime\":$(uptime)}"
# Stay up until every guest of the cluster is done: a peer may still be talking to this one.
emit '{"event":"barrier","name":"exit"}'
while read -r word name </dev/console; do
    [ "$word $name" = "go exit" ] && break
done
poweroff -f
sleep 60
