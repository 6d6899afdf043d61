#!/bin/busybox sh
# Kiln's VM init (the initramfs's /init): loads the virtio modules, mounts the root disk
# read-only and the workspace disk read-write, configures eth0 from the machine's settings,
# then hands PID 1 to the guest agent in the real root. Per-machine settings come from a
# second cpio archive appended to this one: /kiln/machine.env, /kiln/agent.json, /kiln/etc/*.
/bin/busybox --install -s /bin
export PATH=/bin

# Messages carry the guest's uptime, so a slow boot shows where the time went.
say() {
    read -r uptime _ </proc/uptime
    echo "kiln-init: [$uptime] $*"
}

fail() {
    say "$*"
    sync
    poweroff -f
}

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
say "loading modules"

for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module" || fail "cannot load $module"
done

if [ ! -f /kiln/machine.env ]; then
    # Booted without a machine's settings: the accelerator probe. Reaching here is the answer.
    echo "kiln-init: probe reached init"
    poweroff -f
fi
. /kiln/machine.env

# Every process of the machine, this one and so the agent included, counts against the
# machine's pids limit, as under the process driver: a fork bomb stops at the wall instead of
# filling the guest's memory. The app's user cannot leave the cgroup (its files are root's).
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
echo +pids >/sys/fs/cgroup/cgroup.subtree_control ||
    fail "the guest kernel has no pids cgroup controller (CONFIG_CGROUP_PIDS)"
mkdir /sys/fs/cgroup/machine
echo "$KILN_PIDS_MAX" >/sys/fs/cgroup/machine/pids.max || fail "cannot set pids.max"
echo $$ >/sys/fs/cgroup/machine/cgroup.procs || fail "cannot enter the machine's cgroup"

# virtio devices appear asynchronously after their modules load.
tries=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 1000 ] && fail "the root and workspace disks did not appear"
    sleep 0.01
done

say "mounting disks"
mount -t ext4 -o ro /dev/vda /newroot || fail "cannot mount the root disk"
mount -t ext4 -o nosuid,nodev /dev/vdb /newroot/workspace || fail "cannot mount the workspace disk"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/kiln/etc /newroot/run/lock
chmod 1777 /newroot/run/lock
# The agent's settings carry its token: readable by root only.
umask 077
cp /kiln/agent.json /newroot/run/kiln/agent.json
umask 022
for name in hosts hostname resolv.conf; do
    cp "/kiln/etc/$name" "/newroot/run/kiln/etc/$name"
    mount --bind "/newroot/run/kiln/etc/$name" "/newroot/etc/$name"
done
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/var/tmp
mount -t tmpfs -o "mode=0755,uid=$KILN_UID,gid=$KILN_GID,nosuid,nodev" tmpfs "/newroot$KILN_HOME"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm

hostname "$KILN_HOSTNAME"
ip link set lo up
ip link set eth0 up || fail "no network device"
ip addr add "$KILN_ADDRESS/$KILN_PREFIX" dev eth0
ip route add default via "$KILN_GATEWAY"

mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
say "starting the guest agent"
exec switch_root /newroot /sbin/kiln-guest --config /run/kiln/agent.json --poweroff
