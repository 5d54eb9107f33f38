// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * af-packet-rx: the plain AF_PACKET baseline of the xsk-broker benchmark.
 *
 *   af-packet-rx IFNAME [--batch 64] [--duration S] [--warmup S]
 *
 * One SOCK_RAW/ETH_P_ALL socket bound to IFNAME, receiving with
 * recvmmsg(batch, MSG_WAITFORONE) into 2048-byte buffers (the socket's
 * default receive buffer, no PACKET_MMAP ring): what an ordinary program
 * without AF_XDP gets. Needs CAP_NET_RAW. Prints one JSON line in the shape
 * of xsk-bench's.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: af-packet-rx IFNAME [--batch N] [--duration S] [--warmup S]\n");
		return 2;
	}
	unsigned batch = 64;
	double duration = 5, warmup = 1;
	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--batch"))
			batch = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--duration"))
			duration = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--warmup"))
			warmup = atof(argv[i + 1]);
		else {
			fprintf(stderr, "af-packet-rx: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (!batch || batch > MAX_BATCH) {
		fprintf(stderr, "af-packet-rx: --batch must be 1..%d\n", MAX_BATCH);
		return 2;
	}
	int ifindex = if_nametoindex(argv[1]);
	if (!ifindex) {
		fprintf(stderr, "af-packet-rx: no interface %s\n", argv[1]);
		return 1;
	}
	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (fd < 0) {
		perror("af-packet-rx: socket(AF_PACKET)");
		return 1;
	}
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				   .sll_ifindex = ifindex };
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		perror("af-packet-rx: bind");
		return 1;
	}
	/* Wake up at least every 10 ms so the clock is checked when idle. */
	struct timeval tv = { .tv_usec = 10000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	static uint8_t bufs[MAX_BATCH][2048];
	struct iovec iov[MAX_BATCH];
	struct mmsghdr msgs[MAX_BATCH];
	memset(msgs, 0, sizeof(msgs));
	for (unsigned i = 0; i < batch; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = sizeof(bufs[i]);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	uint64_t packets = 0, calls = 0, start_packets = 0, start_calls = 0;
	double t_start = now(), t0 = t_start + warmup, t1 = t0 + duration, m0 = 0;
	int measuring = 0;
	for (;;) {
		int n = recvmmsg(fd, msgs, batch, MSG_WAITFORONE, NULL);
		calls++;
		if (n > 0)
			packets += n;
		else if (n < 0 && errno != EAGAIN && errno != EINTR) {
			perror("af-packet-rx: recvmmsg");
			return 1;
		}
		double t = now();
		if (!measuring && t >= t0) {
			measuring = 1;
			start_packets = packets;
			start_calls = calls;
			m0 = t;
		} else if (measuring && t >= t1) {
			break;
		}
	}
	double secs = now() - m0;
	uint64_t p = packets - start_packets, c = calls - start_calls;
	struct tpacket_stats st;
	socklen_t sl = sizeof(st);
	getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
	printf("{\"tool\":\"af-packet-rx\",\"impl\":\"af_packet\",\"mode\":\"rxdrop\",\"queues\":1,"
	       "\"batch\":%u,\"pps\":%.0f,\"packets\":%llu,\"seconds\":%.6f,\"syscalls\":%llu,"
	       "\"syscalls_per_mpkt\":%.2f,\"socket_drops\":%u}\n",
	       batch, p / secs, (unsigned long long)p, secs, (unsigned long long)c,
	       p ? c * 1e6 / p : 0.0, st.tp_drops);
	return 0;
}
