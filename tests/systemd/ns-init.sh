#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# ns-init.sh - PID 1 of the test's PID namespace until it execs systemd (see sdmachine.py).
#
# Runs inside `unshare --pid --fork --mount --mount-proc --uts --ipc --net`. It makes every mount private,
# gives the namespace its own /run, /tmp, /var/tmp, a copy-on-write /var/lib and private copies of the
# user database, lays the staged `meson install --destdir` tree over the real prefix (read-only overlay),
# and then becomes systemd. Nothing done here is visible on the host.
#
# Arguments: WORKDIR PREFIX [TARGET]. WORKDIR (on the host's /tmp) holds dest/ (the DESTDIR), etc/
# (passwd, group, shadow, gshadow copies), run/ (files to copy into /run), data/ (the etcd2 data dir).
set -eu

W=$1
PREFIX=$2
TARGET=${3:-etcd2-test.target}

mount --make-rprivate /
hostname etcd2-test

# Our own /run: the host's is on the root disk and shared.
mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m tmpfs /run
mkdir -p /run/etcd2-test/w
mount --bind "$W" /run/etcd2-test/w
W=/run/etcd2-test/w

# The installed tree as `meson install` lays it out, over the host's files of the same prefix.
if [ -d "$W/dest$PREFIX" ]; then
        mount -t overlay overlay -o "lowerdir=$W/dest$PREFIX:$PREFIX" "$PREFIX"
fi

# /var is the host's: writes under /var/lib go to an upper dir of ours, and the data dir is our tmp dir.
mkdir -p "$W/varlib/upper" "$W/varlib/work"
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$W/varlib/upper,workdir=$W/varlib/work" /var/lib
mkdir -p /var/lib/etcd2
mount --bind "$W/data" /var/lib/etcd2

# PrivateTmp= would otherwise create its directories in the host's /tmp and /var/tmp.
mkdir -p "$W/tmp" "$W/vartmp"
chmod 1777 "$W/tmp" "$W/vartmp"
mount --bind "$W/tmp" /tmp
mount --bind "$W/vartmp" /var/tmp

# Private user database (systemd-sysusers ran on these copies).
for f in passwd group shadow gshadow; do
        [ -e "/etc/$f" ] && [ -e "$W/etc/$f" ] && mount --bind "$W/etc/$f" "/etc/$f"
done
# The cloud-config generator's /etc/environment (COREOS_*_IPV4), if the test provides one.
[ -e "$W/etc/environment" ] && [ -e /etc/environment ] && mount --bind "$W/etc/environment" /etc/environment

# The kernel log is the host's: what the namespace writes there (the generator's errors) goes to a file.
: > "$W/kmsg"
mount --bind "$W/kmsg" /dev/kmsg

# Kernel tunables and sysfs read-only, as in a container.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount -o remount,bind,ro /sys

ip link set lo up

# Units, configuration and the generator link prepared by the harness.
cp -a "$W/run/." /run/

# What systemd does itself when booted by the kernel (not in a container): every mount shared, so that
# mounts made in a unit's helper's namespace reach PID 1's (LoadCredential= mounts the credentials in a child
# of its own and moves them to /run/credentials/<unit>; with private mounts PID 1 and the service would see
# an empty directory). The peer groups are new and of this namespace alone: nothing propagates to the host.
mount --make-rshared /

export container=etcd2-test
export SYSTEMD_UNIT_PATH=/run/systemd/system:/run/systemd/generator
export SYSTEMD_GENERATOR_PATH=/run/etcd2-test/generators
export ETCD2_CLOUD_CONFIG="$W/cloud-config.yml"
exec /lib/systemd/systemd --system --unit="$TARGET" --log-target=journal --log-level=info
