#!/bin/sh
# The QEMU tests' guest program (tests/tests/qemu.rs), run by the test guest's
# /init (scripts/build-guest). It reads from the kernel command line:
#   net.ip=ADDR/LEN     the guest's address on its virtio-net NIC (eth0)
#   net.peer=ADDR       the host-side peer to talk to
#   net.streams=N       parallel iperf3 streams (default 1)
#   net.seconds=S       seconds per iperf3 run (default 3)
#   net.reset=1         after the first ping, reset the virtio device (unload
#                       and reload virtio_net: the driver resets the device on
#                       removal and sets it up anew on probe), print
#                       "NET-RESET ok ifindex=OLD->NEW" and ping again
#                       ("NET-REPING ok ...") before
#                       the iperf3 runs
#   net.bench=PHASES    benchmark mode (scripts/bench-vm): instead of the two
#                       TCP runs, run each comma-separated phase of tcp-up,
#                       tcp-down, udp-up, udp-down (UDP: unbounded rate,
#                       net.udplen= bytes of payload, default 64), each
#                       between "NET-PHASE begin P" and "NET-PHASE end P"
#                       lines, and print "NET-BENCH P mbits=.. pps=..
#                       sent=.. cpu=.. nic_rx_pps=.. nic_tx_pps=.." (pps:
#                       datagrams that arrived at the receiver per second;
#                       cpu: the guest's busy share; nic_*: eth0's packet
#                       counters and the NIC's interrupts over the run)
# brings eth0 up with as many queue pairs as the NIC offers, pings the peer,
# runs iperf3 TCP to the peer and from it (-R), counts the interrupts of each
# receive queue, and prints every result on the serial console as lines
# starting with "NET-". /init then prints
# "GUEST-EXIT rc=N" and powers off.
ip= peer= streams=1 seconds=3 reset= bench= udplen=64
for w in $(cat /proc/cmdline); do
    case $w in
        net.ip=*) ip=${w#net.ip=} ;;
        net.peer=*) peer=${w#net.peer=} ;;
        net.streams=*) streams=${w#net.streams=} ;;
        net.seconds=*) seconds=${w#net.seconds=} ;;
        net.reset=*) reset=${w#net.reset=} ;;
        net.bench=*) bench=${w#net.bench=} ;;
        net.udplen=*) udplen=${w#net.udplen=} ;;
    esac
done
[ -n "$ip" ] && [ -n "$peer" ] || { echo "NET-ERROR net.ip= and net.peer= are needed on the kernel command line"; exit 2; }
dev=eth0
[ -e /sys/class/net/$dev ] || { echo "NET-ERROR no $dev: $(ls /sys/class/net)"; exit 3; }
echo "NET-NIC $dev mac=$(cat /sys/class/net/$dev/address) rx_queues=$(ls -d /sys/class/net/$dev/queues/rx-* | wc -l) tx_queues=$(ls -d /sys/class/net/$dev/queues/tx-* | wc -l) cpus=$(grep -c ^processor /proc/cpuinfo)"
ip addr add "$ip" dev $dev
ip link set $dev up
# No offloads the AF_XDP path cannot carry (AF_XDP has no checksum or
# segmentation offload; virtio-net offers none with the af-xdp backend).
rc=0
# ping_peer TAG: ping the peer, print "NET-TAG ok ..." or fail the script.
ping_peer() {
    if ping -c 3 -W 5 "$peer" > /tmp/ping 2>&1; then
        echo "NET-$1 ok $(grep -o '[0-9]*/[0-9]*/[0-9]* packets\|[0-9]* packets transmitted, [0-9]* packets received' /tmp/ping)"
    else
        cat /tmp/ping
        ip -s link show dev $dev
        cat /proc/net/arp
        grep virtio /proc/interrupts
        echo "NET-$1 failed"
        exit 4
    fi
}
ping_peer PING
if [ "$reset" = 1 ]; then
    old=$(cat /sys/class/net/$dev/ifindex)
    ip link set $dev down
    rmmod virtio_net || { echo "NET-RESET failed: rmmod virtio_net"; exit 6; }
    insmod /lib/modules/virtio_net.ko || { echo "NET-RESET failed: insmod virtio_net"; exit 6; }
    n=0
    while [ ! -e /sys/class/net/$dev ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    [ -e /sys/class/net/$dev ] || { echo "NET-RESET failed: no $dev after reloading virtio_net"; exit 6; }
    ip addr add "$ip" dev $dev
    ip link set $dev up
    echo "NET-RESET ok ifindex=$old->$(cat /sys/class/net/$dev/ifindex)"
    ping_peer REPING
fi
# The guest's busy and total jiffies from /proc/stat (all CPUs).
cpu_jiffies() {
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
# eth0's rx_packets, tx_packets, rx_dropped, and the interrupts of every
# virtio0 line (INTx "virtio0", or MSI-X "virtio0-*") on all CPUs.
nic_counts() {
    s=/sys/class/net/$dev/statistics
    irq=$(awk '$NF ~ /^virtio0/ { for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i; else break } END { print n + 0 }' /proc/interrupts)
    echo "$(cat $s/rx_packets) $(cat $s/tx_packets) $(cat $s/rx_dropped) $irq"
}
if [ -n "$bench" ]; then
    for phase in $(echo "$bench" | tr , ' '); do
        case $phase in
            tcp-up) args= ;;
            tcp-down) args=-R ;;
            udp-up) args="-u -b 0 -l $udplen" ;;
            udp-down) args="-u -b 0 -l $udplen -R" ;;
            *) echo "NET-BENCH $phase unknown"; rc=6; continue ;;
        esac
        echo "NET-PHASE begin $phase"
        set -- $(cpu_jiffies) $(nic_counts)
        b0=$1 t0=$2 r0=$3 x0=$4 d0=$5 i0=$6
        /usr/bin/iperf3 -c "$peer" $args -P "$streams" -t "$seconds" -f m --connect-timeout 5000 > /tmp/iperf 2>&1
        ok=$?
        set -- $(cpu_jiffies) $(nic_counts)
        echo "NET-PHASE end $phase"
        cpu=$(awk -v b="$(($1 - b0))" -v t="$(($2 - t0))" 'BEGIN { if (t > 0) printf "%.3f", b / t; else print 0 }')
        nic="$(($3 - r0)) $(($4 - x0)) $(($5 - d0)) $(($6 - i0))"
        if [ $ok -eq 0 ]; then
            line=$(grep receiver /tmp/iperf | tail -n 1)
            # "[ ID] 0.00-5.00 sec ... Mbits/sec [jitter ms LOST/TOTAL (x%)] receiver"
            echo "$line" | awk -v phase="$phase" -v cpu="$cpu" -v nic="$nic" '{
                mb = 0; secs = 0; pps = 0; sent = 0
                for (i = 1; i < NF; i++) {
                    if ($(i+1) == "Mbits/sec") mb = $i
                    if ($(i+1) == "sec" && $i ~ /-/) { split($i, a, "-"); secs = a[2] - a[1] }
                    if ($i ~ /^[0-9]+\/[0-9]+$/) { split($i, c, "/"); sent = c[2]; if (secs > 0) pps = (c[2] - c[1]) / secs }
                }
                split(nic, n, " ")
                printf "NET-BENCH %s mbits=%s pps=%.0f sent=%s seconds=%s cpu=%s nic_rx_pps=%.0f nic_tx_pps=%.0f nic_rx_dropped=%s nic_irqs=%s\n", phase, mb, pps, sent, secs, cpu, n[1] / (secs > 0 ? secs : 1), n[2] / (secs > 0 ? secs : 1), n[3], n[4]
            }'
        else
            cat /tmp/iperf
            echo "NET-BENCH $phase failed"
            rc=5
        fi
        sleep 1
    done
    exit $rc
fi
for dir in up down; do
    flag=
    [ $dir = down ] && flag=-R
    if /usr/bin/iperf3 -c "$peer" $flag -P "$streams" -t "$seconds" -f m --connect-timeout 5000 > /tmp/iperf 2>&1; then
        # The receiver's total: the [SUM] line with more than one stream.
        line=$(grep receiver /tmp/iperf | tail -n 1)
        mbits=$(echo "$line" | awk '{for (i = 1; i < NF; i++) if ($(i+1) == "Mbits/sec") print $i}')
        echo "NET-IPERF $dir streams=$streams mbits=$mbits"
    else
        cat /tmp/iperf
        echo "NET-IPERF $dir failed"
        rc=5
    fi
done
# Interrupts of each receive queue, all CPUs together: a queue that never
# received anything has none.
irqs=
for q in $(ls -d /sys/class/net/$dev/queues/rx-* | sed 's/.*rx-//'); do
    n=$(awk -v q="virtio0-input.$q" '$NF == q { for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break } END { print s + 0 }' /proc/interrupts)
    irqs="$irqs input.$q=$n"
done
echo "NET-RXIRQ$irqs"
exit $rc
