// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * xdp-tool: the kernel-side helpers of the xsk-broker benchmark (root only).
 *
 *   xdp-tool gen IFNAME DST_MAC SECONDS [--hold HOLDIF] [CPU...]
 *       Traffic generator: runs a two-instruction XDP program (return XDP_TX)
 *       with BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES),
 *       so every run transmits a 60-byte UDP/IPv4 frame (64 bytes on the
 *       wire with the FCS) out of IFNAME through its ndo_xdp_xmit. One thread
 *       per CPU given (default: the current CPU), each pinned to its CPU; on
 *       veth the peer's receive queue is chosen by the sending CPU
 *       (cpu % queues), and its NAPI runs on that CPU too. Prints one JSON
 *       line with the frames handed to the kernel and the rate.
 *
 *       --hold HOLDIF attaches the same program (native mode) to HOLDIF, an
 *       otherwise unused interface (e.g. one end of a spare veth pair), for
 *       the generator's lifetime. Without it, every BPF_PROG_RUN call adds
 *       the program to the kernel's XDP dispatcher and removes it again, and
 *       the removal waits for an RCU grace period (synchronize_rcu, ~20 ms
 *       here): a single generator thread then sleeps most of the time.
 *
 *   xdp-tool drop IFNAME native|skb SECONDS [drop|tx]
 *       Attach a two-instruction XDP program (return XDP_DROP, or XDP_TX:
 *       send every frame back unchanged, the kernel's own forwarder) for
 *       SECONDS, then detach it. The rate is read from the device counters
 *       by the benchmark script.
 *
 * Why not xdp-trafficgen / xdp-bench from Debian's xdp-tools 1.3.1: they
 * attach to the tracepoint xdp_redirect_map_err, which newer kernels (6.18
 * here) no longer have, and fail to load. pktgen is not built into this
 * kernel (CONFIG_NET_PKTGEN is not set).
 */
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int prog_load(int action)
{
	struct bpf_insn insns[] = {
		/* r0 = action */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = action },
		/* exit */
		{ .code = BPF_JMP | BPF_EXIT },
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts);
	int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, action == XDP_TX ? "bench_tx" : "bench_drop",
			       "GPL", insns, 2, &opts);
	if (fd < 0) {
		fprintf(stderr, "xdp-tool: loading the XDP program failed: %s\n", strerror(-fd));
		exit(1);
	}
	return fd;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t csum16(const uint8_t *p, int len)
{
	uint32_t s = 0;
	for (int i = 0; i + 1 < len; i += 2)
		s += (p[i] << 8) | p[i + 1];
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

/* A 60-byte Ethernet/IPv4/UDP frame 198.18.0.2:9 -> 198.18.0.1:9. */
static void build_frame(uint8_t *f, const uint8_t dst[6], const uint8_t src[6])
{
	memset(f, 0, 60);
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	f[12] = 0x08;
	uint8_t *ip = f + 14;
	ip[0] = 0x45;
	ip[3] = 46; /* total length: 20 + 8 + 18 */
	ip[8] = 64;
	ip[9] = 17;
	ip[12] = 198, ip[13] = 18, ip[14] = 0, ip[15] = 2;
	ip[16] = 198, ip[17] = 18, ip[18] = 0, ip[19] = 1;
	uint16_t c = csum16(ip, 20);
	ip[10] = c >> 8, ip[11] = c & 0xff;
	uint8_t *udp = ip + 20;
	udp[1] = 9, udp[3] = 9, udp[5] = 26; /* ports 9 -> 9, length 26, checksum 0 */
}

struct gen {
	int prog_fd, ifindex, cpu;
	double until;
	uint8_t frame[60];
	uint64_t sent;
	int err;
};

static void *gen_thread(void *arg)
{
	struct gen *g = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(g->cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		g->err = errno;
		return NULL;
	}
	struct xdp_md ctx = { .data_end = 60, .ingress_ifindex = g->ifindex };
	const uint32_t repeat = 1 << 16;
	while (now() < g->until) {
		LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = g->frame, .data_size_in = 60,
			    .ctx_in = &ctx, .ctx_size_in = sizeof(ctx), .repeat = repeat,
			    .flags = BPF_F_TEST_XDP_LIVE_FRAMES, .batch_size = 64);
		int rc = bpf_prog_test_run_opts(g->prog_fd, &o);
		if (rc) {
			g->err = -rc;
			return NULL;
		}
		g->sent += repeat;
	}
	return NULL;
}

static int parse_mac(const char *s, uint8_t m[6])
{
	unsigned v[6];
	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		m[i] = v[i];
	return 0;
}

static int cmd_gen(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: xdp-tool gen IFNAME DST_MAC SECONDS [--hold HOLDIF] [CPU...]\n");
		return 2;
	}
	int ifindex = if_nametoindex(argv[0]);
	if (!ifindex) {
		fprintf(stderr, "xdp-tool gen: no interface %s in this namespace\n", argv[0]);
		return 1;
	}
	uint8_t dst[6], src[6] = { 0x02, 0, 0, 0, 0, 0x02 };
	if (parse_mac(argv[1], dst)) {
		fprintf(stderr, "xdp-tool gen: bad MAC %s\n", argv[1]);
		return 2;
	}
	double secs = atof(argv[2]);
	argc -= 3;
	argv += 3;
	int hold_ifindex = 0;
	if (argc >= 2 && !strcmp(argv[0], "--hold")) {
		hold_ifindex = if_nametoindex(argv[1]);
		if (!hold_ifindex) {
			fprintf(stderr, "xdp-tool gen: no interface %s in this namespace\n", argv[1]);
			return 1;
		}
		argc -= 2;
		argv += 2;
	}
	int nthreads = argc > 0 ? argc : 1;
	struct gen *g = calloc(nthreads, sizeof(*g));
	pthread_t *t = calloc(nthreads, sizeof(*t));
	int prog_fd = prog_load(XDP_TX);
	if (hold_ifindex) {
		int rc = bpf_xdp_attach(hold_ifindex, prog_fd, XDP_FLAGS_DRV_MODE, NULL);
		if (rc) {
			fprintf(stderr, "xdp-tool gen: attaching to the --hold interface failed: %s\n",
				strerror(-rc));
			return 1;
		}
	}
	double start = now();
	for (int i = 0; i < nthreads; i++) {
		g[i].prog_fd = prog_fd;
		g[i].ifindex = ifindex;
		g[i].cpu = argc > 0 ? atoi(argv[i]) : sched_getcpu();
		g[i].until = start + secs;
		build_frame(g[i].frame, dst, src);
		pthread_create(&t[i], NULL, gen_thread, &g[i]);
	}
	uint64_t total = 0;
	int err = 0;
	for (int i = 0; i < nthreads; i++) {
		pthread_join(t[i], NULL);
		total += g[i].sent;
		if (g[i].err)
			err = g[i].err;
	}
	double el = now() - start;
	if (hold_ifindex)
		bpf_xdp_detach(hold_ifindex, XDP_FLAGS_DRV_MODE, NULL);
	if (err) {
		fprintf(stderr, "xdp-tool gen: BPF_PROG_RUN (live frames) failed: %s\n", strerror(err));
		return 1;
	}
	printf("{\"tool\":\"xdp-gen\",\"threads\":%d,\"packets\":%llu,\"seconds\":%.3f,\"pps\":%.0f}\n",
	       nthreads, (unsigned long long)total, el, total / el);
	return 0;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int cmd_drop(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: xdp-tool drop IFNAME native|skb SECONDS [drop|tx]\n");
		return 2;
	}
	int action = XDP_DROP;
	if (argc > 3 && !strcmp(argv[3], "tx"))
		action = XDP_TX;
	else if (argc > 3 && strcmp(argv[3], "drop")) {
		fprintf(stderr, "xdp-tool drop: action must be drop or tx\n");
		return 2;
	}
	int ifindex = if_nametoindex(argv[0]);
	if (!ifindex) {
		fprintf(stderr, "xdp-tool drop: no interface %s in this namespace\n", argv[0]);
		return 1;
	}
	__u32 flags = XDP_FLAGS_UPDATE_IF_NOEXIST;
	if (!strcmp(argv[1], "native"))
		flags |= XDP_FLAGS_DRV_MODE;
	else if (!strcmp(argv[1], "skb"))
		flags |= XDP_FLAGS_SKB_MODE;
	else {
		fprintf(stderr, "xdp-tool drop: mode must be native or skb\n");
		return 2;
	}
	int fd = prog_load(action);
	int rc = bpf_xdp_attach(ifindex, fd, flags, NULL);
	if (rc) {
		fprintf(stderr, "xdp-tool drop: attaching to %s failed: %s\n", argv[0], strerror(-rc));
		return 1;
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	double until = now() + atof(argv[2]);
	printf("{\"tool\":\"xdp-drop\",\"event\":\"attached\"}\n");
	fflush(stdout);
	while (!stop && now() < until)
		usleep(10000);
	bpf_xdp_detach(ifindex, flags & ~XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "gen"))
		return cmd_gen(argc - 2, argv + 2);
	if (argc >= 2 && !strcmp(argv[1], "drop"))
		return cmd_drop(argc - 2, argv + 2);
	fprintf(stderr, "usage: xdp-tool gen IFNAME DST_MAC SECONDS [--hold HOLDIF] [CPU...]\n"
			"       xdp-tool drop IFNAME native|skb SECONDS [drop|tx]\n");
	return 2;
}
