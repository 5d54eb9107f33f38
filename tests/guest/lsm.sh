#!/bin/sh
# Runs inside the test guest built by scripts/build-guest (a Debian kernel booted
# with lsm=...,bpf), for tests/tests/guest_lsm.rs: the broker on a one-interface
# policy, and xsk-attack as uid 65534 with no capabilities binding its leased
# socket where the lease does not allow. Every result is one line on the
# serial console: "RESULT NAME {json}" (xsk-attack's step output), "INFO ...".
set -u
ip=/usr/bin/ip
ctl=/usr/bin/xsk-brokerctl
sock=/run/xsk/broker.sock
mkdir -p /run/xsk /run/xsk/state
for pair in "vta vtb" "vtc vtd"; do
    set -- $pair
    $ip link add "$1" numrxqueues 2 numtxqueues 2 type veth peer name "$2" numrxqueues 2 numtxqueues 2
    $ip link set "$1" up
    $ip link set "$2" up
done
vta=$(cat /sys/class/net/vta/ifindex)
vtc=$(cat /sys/class/net/vtc/ifindex)
echo "INFO ifindex vta=$vta vtc=$vtc"
# Only interface vta, for uid 65534; zero-copy never (copy-only leases).
cat > /run/xsk/policy.json <<'POLICY'
{"version": 1, "rules": [{"name": "one-interface", "uids": [65534], "interfaces": ["vta"],
  "max_queues": 2, "copy": ["auto", "copy"]}]}
POLICY

start_broker() {
    /usr/bin/xsk-brokerd --socket "$sock" --socket-mode 0666 --policy /run/xsk/policy.json \
        --state-dir /run/xsk/state --pin-dir /sys/fs/bpf/xsk "$@" >> /run/xsk/broker.log 2>&1 &
    broker=$!
    i=0
    while [ $i -lt 200 ]; do
        grep -q "listening" /run/xsk/broker.log 2>/dev/null && [ -S "$sock" ] && return 0
        kill -0 $broker 2>/dev/null || return 1
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

stop_broker() {
    kill -TERM $broker
    wait $broker
}

# Run xsk-attack as nobody (su drops every capability with the uid).
attack() {
    name=$1
    shift
    su -s /bin/sh nobody -c "/usr/bin/xsk-attack --socket $sock $*" 2>&1 | sed "s/^/RESULT $name /"
}

su -s /bin/sh nobody -c 'grep -E "^(Uid|CapInh|CapPrm|CapEff|CapBnd|CapAmb):" /proc/self/status' \
    | tr -s '\t ' ' ' | sed 's/^/INFO attacker /'

start_broker || echo "INFO broker did not start"
sed 's/^/BROKERLOG /' /run/xsk/broker.log
$ctl --socket "$sock" status --json | sed 's/^/STATUS /'
$ctl --socket "$sock" status | grep confinement | sed 's/^/STATUSTEXT /'

# The lease as granted: copy mode on queue 0 of vta.
attack granted open-copy vta 0 copy bind 0 0 2
# Another queue of the granted interface.
attack other-queue open-copy vta 0 copy bind 0 1 2
# Zero-copy, and "zero-copy if possible" (no mode flag), on a copy-only lease.
attack zerocopy open-copy vta 0 copy bind 0 0 4
attack no-mode-flag open-copy vta 0 copy bind 0 0 0
# "auto" where the policy allows no zero-copy is a copy lease: zero-copy is
# refused, XDP_COPY works.
attack auto-zerocopy open vta 0 bind 0 0 4
attack auto-copy open vta 0 bind 0 0 2
# XDP_SHARED_UMEM onto the lease's second socket's umem.
attack shared-umem open2 vta 0 bind-shared 0
# Another interface, same queue.
attack other-interface open-copy vta 0 copy bind "$vtc" 0 2
# An interface the policy does not grant cannot be leased at all.
attack not-granted open-copy vtc 0 copy

# A socket leased before the broker stops stays confined while no broker
# runs: the program and its lease storage are pinned in --pin-dir.
mkfifo /run/xsk/go
su -s /bin/sh nobody -c "/usr/bin/xsk-attack --socket $sock open-copy vta 0 copy wait bind 0 1 2" \
    < /run/xsk/go > /run/xsk/held.out 2>&1 &
held=$!
exec 3> /run/xsk/go
i=0
while [ $i -lt 100 ] && ! grep -q '"step":"wait"' /run/xsk/held.out; do
    sleep 0.1
    i=$((i + 1))
done
stop_broker
echo "INFO broker stopped"
echo "INFO pins $(ls /sys/fs/bpf/xsk | tr '\n' ' ')"
echo go >&3
wait $held
exec 3>&-
sed 's/^/RESULT no-broker /' /run/xsk/held.out

# Restart: the pinned program is reused, not loaded twice.
: > /run/xsk/broker.log
start_broker --confinement kernel || echo "INFO broker did not restart"
sed 's/^/BROKERLOG2 /' /run/xsk/broker.log
$ctl --socket "$sock" status --json | sed 's/^/STATUS2 /'
attack restarted-other-queue open-copy vta 0 copy bind 0 1 2
attack restarted-granted open-copy vta 0 copy bind 0 0 2
stop_broker
echo "INFO done"
