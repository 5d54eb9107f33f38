/*
 * xsk_echo: a C program using the xsk_client C ABI. It leases QUEUES queues
 * of IFNAME from the broker at SOCKET, adopts them with FRAMES umem frames
 * each, and sends every received frame back with Ethernet, IPv4 and UDP
 * addresses swapped, until SIGTERM or SIGINT. It prints one JSON line
 * "ready" once bound and one "done" line with per-queue statistics.
 *
 * usage: xsk_echo SOCKET IFNAME QUEUES FRAMES
 * exit status: 0 after a signal; 2 bad usage; 3 when a library call fails
 * (the message from xsk_last_error() is printed on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xsk_client.h"

#define BATCH 64
#define MAX_QUEUES 16
#define MAX_FRAME 2048

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

struct batch {
    uint8_t data[BATCH][MAX_FRAME];
    xsk_frame frames[BATCH];
    uint32_t n;
};

static void swap(uint8_t *f, size_t a, size_t b, size_t len) {
    for (size_t i = 0; i < len; i++) {
        uint8_t t = f[a + i];
        f[a + i] = f[b + i];
        f[b + i] = t;
    }
}

/* Swap MACs, IPv4 addresses and UDP/TCP ports; checksums stay valid. */
static void reflect(uint8_t *f, uint32_t len) {
    if (len < 14) return;
    swap(f, 0, 6, 6);
    if (len < 34 || f[12] != 0x08 || f[13] != 0x00) return;
    swap(f, 26, 30, 4);
    uint32_t ihl = (uint32_t)(f[14] & 0x0f) * 4;
    uint32_t l4 = 14 + ihl;
    if (ihl >= 20 && (f[23] == 17 || f[23] == 6) && len >= l4 + 4) swap(f, l4, l4 + 2, 2);
}

static void on_frame(void *ctx, const uint8_t *data, uint32_t len) {
    struct batch *b = ctx;
    if (b->n >= BATCH || len > MAX_FRAME) return;
    memcpy(b->data[b->n], data, len);
    reflect(b->data[b->n], len);
    b->frames[b->n].data = b->data[b->n];
    b->frames[b->n].len = len;
    b->n++;
}

static int die(const char *what) {
    fprintf(stderr, "xsk_echo: %s: %s\n", what, xsk_last_error());
    return 3;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: xsk_echo SOCKET IFNAME QUEUES FRAMES\n");
        return 2;
    }
    uint32_t queues = (uint32_t)strtoul(argv[3], NULL, 10);
    uint32_t frames = (uint32_t)strtoul(argv[4], NULL, 10);
    if (queues == 0 || queues > MAX_QUEUES) {
        fprintf(stderr, "xsk_echo: QUEUES must be 1..%d\n", MAX_QUEUES);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    xsk_broker *broker = NULL;
    xsk_lease *lease = NULL;
    if (xsk_connect(argv[1], &broker) != XSK_OK) return die("xsk_connect");
    int rc = xsk_open(broker, argv[2], queues, 0, XSK_MODE_AUTO, &lease);
    if (rc != XSK_OK) {
        fprintf(stderr, "xsk_echo: xsk_open returned %d (%s): %s\n", rc,
                rc == XSK_ERR_REFUSED ? "refused" : "error", xsk_last_error());
        return 3;
    }
    if (xsk_adopt(lease, frames) != XSK_OK) return die("xsk_adopt");

    struct pollfd pfd[MAX_QUEUES];
    printf("{\"event\":\"ready\",\"ifindex\":%u,\"queues\":[", xsk_ifindex(lease));
    for (uint32_t i = 0; i < queues; i++) {
        pfd[i].fd = xsk_socket_fd(lease, i);
        pfd[i].events = POLLIN;
        if (pfd[i].fd < 0) return die("xsk_socket_fd");
        printf("%s{\"queue_id\":%lld,\"fd\":%d}", i ? "," : "",
               (long long)xsk_queue_id(lease, i), pfd[i].fd);
    }
    printf("]}\n");
    fflush(stdout);

    static struct batch b;
    while (!stop) {
        int64_t moved = 0;
        for (uint32_t i = 0; i < queues; i++) {
            b.n = 0;
            int64_t n = xsk_receive(lease, i, BATCH, on_frame, &b);
            if (n < 0) return die("xsk_receive");
            moved += n;
            uint32_t done = 0;
            for (int tries = 0; done < b.n && tries < 1000; tries++) {
                int64_t sent = xsk_transmit(lease, i, b.frames + done, b.n - done);
                if (sent < 0) return die("xsk_transmit");
                done += (uint32_t)sent;
                if (done < b.n && xsk_flush(lease, i) != XSK_OK) return die("xsk_flush");
            }
            if (xsk_flush(lease, i) != XSK_OK) return die("xsk_flush");
        }
        if (moved == 0) poll(pfd, queues, 50);
    }
    for (int tries = 0; tries < 100; tries++) {
        int64_t left = 0;
        for (uint32_t i = 0; i < queues; i++) {
            xsk_flush(lease, i);
            left += xsk_outstanding_tx(lease, i);
        }
        if (left == 0) break;
        poll(NULL, 0, 10);
    }

    printf("{\"event\":\"done\",\"queues\":[");
    for (uint32_t i = 0; i < queues; i++) {
        xsk_stats st;
        if (xsk_statistics(lease, i, &st) != XSK_OK) return die("xsk_statistics");
        printf("%s{\"queue_id\":%lld,\"rx_packets\":%llu,\"tx_packets\":%llu,"
               "\"rx_dropped\":%llu,\"rx_ring_full\":%llu}",
               i ? "," : "", (long long)xsk_queue_id(lease, i),
               (unsigned long long)st.rx_packets, (unsigned long long)st.tx_packets,
               (unsigned long long)st.rx_dropped, (unsigned long long)st.rx_ring_full);
    }
    printf("]}\n");
    fflush(stdout);
    xsk_lease_close(lease);
    return 0;
}
