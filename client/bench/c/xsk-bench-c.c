// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * xsk-bench-c: the C reference for xsk-bench.
 *
 * Written for this project against libxdp's ring helpers (<xdp/xsk.h> from
 * Debian's libxdp-dev: xsk_ring_prod__reserve/submit, xsk_ring_cons__peek/
 * release, xsk_ring_prod__needs_wakeup, ...). It takes its sockets exactly
 * as the Rust tool does -- inherited from `xsk-client exec` as a sock-fds
 * list -- registers the same umem and ring sizes, and runs the same
 * algorithm with the same batch size:
 *
 *   - a LIFO pool of free frames; the fill ring is topped up completely
 *     after every batch, keeping `batch` frames back for transmission;
 *   - rxdrop: peek up to `batch` rx descriptors, return their frames to the
 *     pool, release, refill, recvfrom only if the fill ring asks for it;
 *   - txonly: reclaim completions, take up to `batch` frames, copy the
 *     60-byte UDP frame into each, submit, sendto if the tx ring asks for
 *     it, repeating while the kernel answers EAGAIN and makes progress;
 *   - l2fwd: reclaim completions, peek as many rx descriptors as the tx ring
 *     has room for (back-pressure), swap the MAC addresses in place, put the
 *     same descriptors on the tx ring, refill, wake rx/tx if asked;
 *   - rxtx (an experiment, not one of the compared modes): rxdrop on the
 *     first socket and txonly on socket --tx-queue-index (0: the same
 *     socket), in one loop on one thread, no idle backoff; counts frames
 *     transmitted (pps) and received (rx_pps). It shows what receiving on
 *     a socket costs that socket's copy-mode transmit (docs/BENCHMARKS.md).
 *   - rxdrop and l2fwd idle the way xsk_client::IdleBackoff does: after a
 *     poll that took less than a batch, spin-wait (PAUSE between clock
 *     reads) until 8 ns << step have passed since that poll began, the step
 *     growing from 0 up to --idle-backoff (default 8: 2.048 us); a full
 *     batch starts over (--no-idle-backoff: re-poll at once).
 *
 * Like any program on libxdp, it leaves the kernel's copy-mode transmit
 * budget at 32 frames per sendto unless given --tx-budget (xsk_client raises
 * it to the batch size by itself).
 *
 * The ring set-up (XDP_UMEM_REG, ring sizes, XDP_MMAP_OFFSETS, mmap, bind)
 * is done with plain syscalls because the sockets come from the broker
 * (the inhibit flow): libxdp's xsk_socket__create would create or look up
 * things by interface name in this process's namespace.
 *
 * Prints one JSON line, in the same shape as xsk-bench.
 *
 * Build: cc -O2 -o xsk-bench-c xsk-bench-c.c -lxdp -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <linux/if_xdp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xdp/xsk.h>

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

#define FRAME_SIZE 2048u
#define TX_FRAME_LEN 60u
#define MAX_QUEUES 64

enum mode { RXDROP, TXONLY, L2FWD, RXTX };
static const char *mode_names[] = { "rxdrop", "txonly", "l2fwd", "rxtx" };

struct opts {
	enum mode mode;
	const char *sock_fds;
	int ifindex;
	unsigned queues, start_queue, batch, frames, ring_size;
	bool need_wakeup, prefer_busy_poll;
	int idle_backoff; /* max doubling steps, -1: none */
	int busy_poll, busy_poll_budget, tx_budget;
	unsigned tx_queue_index; /* rxtx */
	double duration, warmup;
	int cpus[MAX_QUEUES], ncpus;
	uint8_t dst_mac[6], src_mac[6];
	const char *label;
};

struct counters {
	uint64_t rx_packets, tx_packets, tx_completed, wakeups;
};

struct queue {
	int fd;
	unsigned queue_id;
	int cpu;
	uint8_t *umem;
	struct xsk_ring_prod fq, tx;
	struct xsk_ring_cons cq, rx;
	uint64_t *pool;
	uint32_t pool_len, pool_cap;
	uint32_t fill_size, batch, outstanding_tx;
	bool need_wakeup, busy_poll;
	int backoff_max; /* -1: no backoff */
	unsigned backoff_step;
	uint64_t poll_began; /* ns, CLOCK_MONOTONIC; 0: none */
	enum mode mode;
	uint8_t frame[TX_FRAME_LEN];
	struct counters c, start;
	uint64_t kicks, start_kicks;
	double seconds;
	struct xdp_statistics stats;
	int err;
};

static _Atomic unsigned phase; /* 0 warm-up, 1 measure, 2 stop */

static void die(const char *what)
{
	fprintf(stderr, "xsk-bench-c: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *map_ring(int fd, size_t len, off_t pgoff)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff);
	if (p == MAP_FAILED)
		die("mmap(ring)");
	return p;
}

/* Fill in libxdp's ring structs the way xsk_umem__create/xsk_socket__create do. */
static void init_prod(struct xsk_ring_prod *r, void *map, const struct xdp_ring_offset *o,
		      uint32_t size)
{
	r->producer = (uint32_t *)((char *)map + o->producer);
	r->consumer = (uint32_t *)((char *)map + o->consumer);
	r->flags = (uint32_t *)((char *)map + o->flags);
	r->ring = (char *)map + o->desc;
	r->mask = size - 1;
	r->size = size;
	r->cached_prod = *r->producer;
	r->cached_cons = *r->consumer + size;
}

static void init_cons(struct xsk_ring_cons *r, void *map, const struct xdp_ring_offset *o,
		      uint32_t size)
{
	r->producer = (uint32_t *)((char *)map + o->producer);
	r->consumer = (uint32_t *)((char *)map + o->consumer);
	r->flags = (uint32_t *)((char *)map + o->flags);
	r->ring = (char *)map + o->desc;
	r->mask = size - 1;
	r->size = size;
	r->cached_prod = *r->producer;
	r->cached_cons = *r->consumer;
}

/* Top the fill ring up with up to `want` pool frames, keeping `batch` back. */
static inline void refill(struct queue *q, uint32_t want)
{
	uint32_t spare = q->pool_len > q->batch ? q->pool_len - q->batch : 0;
	if (want > spare)
		want = spare;
	if (!want)
		return;
	uint32_t n = xsk_prod_nb_free(&q->fq, want);
	if (n > want)
		n = want;
	uint32_t idx;
	if (!n || xsk_ring_prod__reserve(&q->fq, n, &idx) != n)
		return;
	for (uint32_t i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&q->fq, idx + i) = q->pool[--q->pool_len];
	xsk_ring_prod__submit(&q->fq, n);
}

static inline void kick_rx_if_needed(struct queue *q)
{
	if (q->need_wakeup && xsk_ring_prod__needs_wakeup(&q->fq)) {
		q->c.wakeups++;
		recvfrom(q->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
	}
}

static inline uint32_t complete_tx(struct queue *q)
{
	uint32_t idx;
	uint32_t n = xsk_ring_cons__peek(&q->cq, q->cq.size, &idx);
	if (!n)
		return 0;
	for (uint32_t i = 0; i < n; i++)
		q->pool[q->pool_len++] = *xsk_ring_cons__comp_addr(&q->cq, idx + i);
	xsk_ring_cons__release(&q->cq, n);
	q->outstanding_tx -= n;
	q->c.tx_completed += n;
	return n;
}

static inline uint32_t tx_unconsumed(struct queue *q)
{
	return q->tx.cached_prod - __atomic_load_n(q->tx.consumer, __ATOMIC_ACQUIRE);
}

/* Same policy as XskSocket: kick when asked (copy mode: always); on EAGAIN
 * reclaim completions and kick again while the kernel keeps consuming. */
static inline void kick_tx_if_needed(struct queue *q)
{
	if (!q->outstanding_tx || (q->need_wakeup && !xsk_ring_prod__needs_wakeup(&q->tx)))
		return;
	uint32_t pending = tx_unconsumed(q);
	if (!pending)
		return;
	for (;;) {
		q->c.wakeups++;
		if (sendto(q->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
			return;
		if (errno != EAGAIN)
			return;
		complete_tx(q);
		uint32_t left = tx_unconsumed(q);
		if (!left || left >= pending)
			return;
		pending = left;
	}
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

static inline uint64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* After a poll that took n of the batch: if the ring was drained, spin until
 * 8 ns << step have passed since that poll began (the end of the previous
 * wait; 0 after a full batch: count from now), as xsk_client::IdleBackoff. */
static inline void backoff_after_poll(struct queue *q, uint32_t n)
{
	if (n >= q->batch) {
		q->backoff_step = 0;
		q->poll_began = 0;
		return;
	}
	uint64_t now = monotonic_ns();
	uint64_t until = (q->poll_began ? q->poll_began : now) + (8ull << q->backoff_step);
	while (now < until) {
		cpu_relax();
		now = monotonic_ns();
	}
	q->poll_began = now;
	if ((int)q->backoff_step < q->backoff_max)
		q->backoff_step++;
}

static inline uint32_t rxdrop(struct queue *q)
{
	uint32_t idx;
	uint32_t n = xsk_ring_cons__peek(&q->rx, q->batch, &idx);
	if (n) {
		for (uint32_t i = 0; i < n; i++)
			q->pool[q->pool_len++] =
				xsk_ring_cons__rx_desc(&q->rx, idx + i)->addr & ~(uint64_t)(FRAME_SIZE - 1);
		xsk_ring_cons__release(&q->rx, n);
		q->c.rx_packets += n;
	}
	refill(q, q->fill_size);
	kick_rx_if_needed(q);
	return n;
}

static inline void txonly(struct queue *q)
{
	complete_tx(q);
	uint32_t want = q->batch < q->pool_len ? q->batch : q->pool_len;
	uint32_t n = xsk_prod_nb_free(&q->tx, want);
	if (n > want)
		n = want;
	uint32_t idx;
	if (n && xsk_ring_prod__reserve(&q->tx, n, &idx) == n) {
		for (uint32_t i = 0; i < n; i++) {
			uint64_t addr = q->pool[--q->pool_len];
			memcpy(q->umem + addr, q->frame, TX_FRAME_LEN);
			struct xdp_desc *d = xsk_ring_prod__tx_desc(&q->tx, idx + i);
			d->addr = addr;
			d->len = TX_FRAME_LEN;
			d->options = 0;
		}
		xsk_ring_prod__submit(&q->tx, n);
		q->outstanding_tx += n;
		q->c.tx_packets += n;
	}
	kick_tx_if_needed(q);
}

static inline void swap_macs(uint8_t *p)
{
	uint8_t tmp[6];
	memcpy(tmp, p, 6);
	memcpy(p, p + 6, 6);
	memcpy(p + 6, tmp, 6);
}

static inline uint32_t l2fwd(struct queue *q)
{
	complete_tx(q);
	uint32_t space = xsk_prod_nb_free(&q->tx, q->batch);
	if (space > q->batch)
		space = q->batch;
	uint32_t rx_idx = 0, tx_idx = 0;
	uint32_t n = space ? xsk_ring_cons__peek(&q->rx, space, &rx_idx) : 0;
	if (n) {
		xsk_ring_prod__reserve(&q->tx, n, &tx_idx);
		for (uint32_t i = 0; i < n; i++) {
			const struct xdp_desc *in = xsk_ring_cons__rx_desc(&q->rx, rx_idx + i);
			struct xdp_desc *out = xsk_ring_prod__tx_desc(&q->tx, tx_idx + i);
			if (in->len >= 12)
				swap_macs(q->umem + in->addr);
			*out = *in;
		}
		xsk_ring_cons__release(&q->rx, n);
		xsk_ring_prod__submit(&q->tx, n);
		q->outstanding_tx += n;
		q->c.rx_packets += n;
		q->c.tx_packets += n;
	}
	refill(q, q->fill_size);
	kick_rx_if_needed(q);
	kick_tx_if_needed(q);
	return n;
}

/* What rxdrop and l2fwd do after a poll: the busy-poll syscall when it
 * found nothing (it is the wait), else the backoff. */
static inline void after_rx_poll(struct queue *q, uint32_t n)
{
	if (!n && q->busy_poll) {
		q->kicks++;
		recvfrom(q->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
	} else if (q->backoff_max >= 0) {
		backoff_after_poll(q, n);
	}
}

/* Let the workers warm up, count for --duration, then tell them to stop. */
static void run_phases(const struct opts *o)
{
	usleep((useconds_t)(o->warmup * 1e6));
	atomic_store_explicit(&phase, 1, memory_order_relaxed);
	usleep((useconds_t)(o->duration * 1e6));
	atomic_store_explicit(&phase, 2, memory_order_relaxed);
}

/* Pin the calling thread to `cpu` (none if negative); 0 or the errno. */
static int pin_self(int cpu)
{
	if (cpu < 0)
		return 0;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? errno : 0;
}

static void *worker(void *arg)
{
	struct queue *q = arg;
	if ((q->err = pin_self(q->cpu)))
		return NULL;
	unsigned state = 0;
	double t0 = now();
	for (;;) {
		unsigned p = atomic_load_explicit(&phase, memory_order_relaxed);
		if (p != state) {
			state = p;
			if (p == 1) {
				q->start = q->c;
				q->start_kicks = q->kicks;
				t0 = now();
			} else {
				break;
			}
		}
		switch (q->mode) {
		case RXDROP:
			after_rx_poll(q, rxdrop(q));
			break;
		case TXONLY:
			txonly(q);
			break;
		case L2FWD:
			after_rx_poll(q, l2fwd(q));
			break;
		case RXTX: /* runs in rxtx_worker */
			break;
		}
	}
	q->seconds = now() - t0;
	socklen_t len = sizeof(q->stats);
	getsockopt(q->fd, SOL_XDP, XDP_STATISTICS, &q->stats, &len);
	return NULL;
}

/* rxtx: rxdrop on qs[0] and txonly on qs[tx_index], one loop, one thread. */
struct rxtx {
	struct queue *rx, *tx;
	double seconds;
	uint64_t rx_packets, tx_completed;
};

static void *rxtx_worker(void *arg)
{
	struct rxtx *w = arg;
	if ((w->rx->err = pin_self(w->rx->cpu)))
		return NULL;
	unsigned state = 0;
	double t0 = now();
	uint64_t rx0 = 0, tx0 = 0;
	for (;;) {
		unsigned p = atomic_load_explicit(&phase, memory_order_relaxed);
		if (p != state) {
			state = p;
			if (p == 1) {
				rx0 = w->rx->c.rx_packets;
				tx0 = w->tx->c.tx_completed;
				t0 = now();
			} else {
				break;
			}
		}
		rxdrop(w->rx);
		txonly(w->tx);
	}
	w->seconds = now() - t0;
	w->rx_packets = w->rx->c.rx_packets - rx0;
	w->tx_completed = w->tx->c.tx_completed - tx0;
	socklen_t len = sizeof(w->rx->stats);
	getsockopt(w->rx->fd, SOL_XDP, XDP_STATISTICS, &w->rx->stats, &len);
	return NULL;
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

/* The same 60-byte frame as xsk-bench: 198.18.0.1:9 -> 198.18.0.2:9. */
static void build_frame(uint8_t *f, const uint8_t dst[6], const uint8_t src[6])
{
	memset(f, 0, TX_FRAME_LEN);
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	f[12] = 0x08;
	uint8_t *ip = f + 14;
	ip[0] = 0x45;
	ip[3] = 46;
	ip[8] = 64;
	ip[9] = 17;
	ip[12] = 198, ip[13] = 18, ip[14] = 0, ip[15] = 1;
	ip[16] = 198, ip[17] = 18, ip[18] = 0, ip[19] = 2;
	uint16_t c = csum16(ip, 20);
	ip[10] = c >> 8, ip[11] = c & 0xff;
	f[35] = 9, f[37] = 9, f[39] = 26;
}

static void setup(struct queue *q, const struct opts *o)
{
	int domain = 0;
	socklen_t dl = sizeof(domain);
	if (getsockopt(q->fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) || domain != AF_XDP) {
		fprintf(stderr, "xsk-bench-c: fd %d is not an AF_XDP socket\n", q->fd);
		exit(1);
	}
	uint32_t ring = o->ring_size;
	if (!ring) {
		/* Same rule as SocketConfig::with_frame_count: a quarter each,
		 * rounded down to a power of two. */
		uint32_t quarter = o->frames / 4 ? o->frames / 4 : 1;
		ring = 1u << (31 - __builtin_clz(quarter));
	}
	size_t umem_len = (size_t)o->frames * FRAME_SIZE;
	q->umem = mmap(NULL, umem_len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (q->umem == MAP_FAILED)
		die("mmap(umem)");
	struct xdp_umem_reg reg = {
		.addr = (uint64_t)(uintptr_t)q->umem,
		.len = umem_len,
		.chunk_size = FRAME_SIZE,
		.headroom = 0,
	};
	if (setsockopt(q->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)))
		die("setsockopt(XDP_UMEM_REG) (ENOBUFS: RLIMIT_MEMLOCK)");
	int sz = ring;
	if (setsockopt(q->fd, SOL_XDP, XDP_UMEM_FILL_RING, &sz, sizeof(sz)) ||
	    setsockopt(q->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &sz, sizeof(sz)) ||
	    setsockopt(q->fd, SOL_XDP, XDP_RX_RING, &sz, sizeof(sz)) ||
	    setsockopt(q->fd, SOL_XDP, XDP_TX_RING, &sz, sizeof(sz)))
		die("setsockopt(ring size)");
	struct xdp_mmap_offsets off;
	socklen_t ol = sizeof(off);
	if (getsockopt(q->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &ol))
		die("getsockopt(XDP_MMAP_OFFSETS)");
	init_cons(&q->rx, map_ring(q->fd, off.rx.desc + ring * sizeof(struct xdp_desc), XDP_PGOFF_RX_RING),
		  &off.rx, ring);
	init_prod(&q->tx, map_ring(q->fd, off.tx.desc + ring * sizeof(struct xdp_desc), XDP_PGOFF_TX_RING),
		  &off.tx, ring);
	init_prod(&q->fq, map_ring(q->fd, off.fr.desc + ring * sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING),
		  &off.fr, ring);
	init_cons(&q->cq, map_ring(q->fd, off.cr.desc + ring * sizeof(uint64_t),
				   XDP_UMEM_PGOFF_COMPLETION_RING),
		  &off.cr, ring);

	q->pool_cap = o->frames;
	q->pool = calloc(o->frames, sizeof(uint64_t));
	if (!q->pool)
		die("calloc(pool)");
	for (uint32_t i = 0; i < o->frames; i++)
		q->pool[i] = (uint64_t)(o->frames - 1 - i) * FRAME_SIZE; /* frame 0 on top */
	q->pool_len = o->frames;
	q->fill_size = ring;
	q->batch = o->batch;
	q->need_wakeup = o->need_wakeup;
	q->busy_poll = o->busy_poll >= 0;
	q->backoff_max = o->idle_backoff;
	q->mode = o->mode;
	build_frame(q->frame, o->dst_mac, o->src_mac);
	refill(q, ring);

	struct sockaddr_xdp sxdp = {
		.sxdp_family = AF_XDP,
		.sxdp_flags = o->need_wakeup ? XDP_USE_NEED_WAKEUP : 0,
		.sxdp_ifindex = o->ifindex,
		.sxdp_queue_id = q->queue_id,
	};
	if (bind(q->fd, (struct sockaddr *)&sxdp, sizeof(sxdp)))
		die("bind");

	int one = 1;
	if (o->prefer_busy_poll &&
	    setsockopt(q->fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &one, sizeof(one)))
		die("setsockopt(SO_PREFER_BUSY_POLL) (needs CAP_NET_ADMIN)");
	if (o->busy_poll >= 0 &&
	    setsockopt(q->fd, SOL_SOCKET, SO_BUSY_POLL, &o->busy_poll, sizeof(int)))
		die("setsockopt(SO_BUSY_POLL)");
	/* XDP_MAX_TX_SKB_BUDGET (9, Linux 6.17+): frames per copy-mode sendto. */
	if (o->tx_budget >= 0 && setsockopt(q->fd, SOL_XDP, 9, &o->tx_budget, sizeof(int)))
		die("setsockopt(XDP_MAX_TX_SKB_BUDGET) (Linux 6.17+)");
	if (o->busy_poll_budget >= 0 &&
	    setsockopt(q->fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &o->busy_poll_budget, sizeof(int)))
		die("setsockopt(SO_BUSY_POLL_BUDGET) (raising it needs CAP_NET_ADMIN)");
}

static int parse_mac(const char *s, uint8_t m[6])
{
	unsigned v[6];
	char extra;
	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &extra) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return -1;
		m[i] = v[i];
	}
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: xsk-bench-c rxdrop|txonly|l2fwd|rxtx --sock-fds A[:B...] --ifindex N\n"
		"       [--queues N] [--start-queue Q] [--batch 64] [--frames 2048] [--ring-size N]\n"
		"       [--no-need-wakeup] [--busy-poll USECS] [--busy-poll-budget N]\n"
		"       [--prefer-busy-poll] [--duration S] [--warmup S] [--cpus A,B]\n"
		"       [--dst-mac MAC] [--src-mac MAC] [--label TEXT] [--tx-budget N]\n"
		"       [--idle-backoff 0..16 | --no-idle-backoff] [--tx-queue-index N (rxtx)]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = {
		.queues = 1, .batch = 64, .frames = 2048, .need_wakeup = true,
		.busy_poll = -1, .busy_poll_budget = -1, .tx_budget = -1, .duration = 5, .warmup = 1,
		.idle_backoff = 8,
		.ifindex = -1, .dst_mac = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff },
		.src_mac = { 2, 0, 0, 0, 0, 1 },
	};
	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "rxdrop"))
		o.mode = RXDROP;
	else if (!strcmp(argv[1], "txonly"))
		o.mode = TXONLY;
	else if (!strcmp(argv[1], "l2fwd"))
		o.mode = L2FWD;
	else if (!strcmp(argv[1], "rxtx"))
		o.mode = RXTX;
	else
		usage();
	static const struct option lo[] = {
		{ "sock-fds", 1, 0, 'f' }, { "ifindex", 1, 0, 'i' }, { "queues", 1, 0, 'q' },
		{ "start-queue", 1, 0, 's' }, { "batch", 1, 0, 'b' }, { "frames", 1, 0, 'F' },
		{ "ring-size", 1, 0, 'r' }, { "no-need-wakeup", 0, 0, 'N' },
		{ "busy-poll", 1, 0, 'B' }, { "busy-poll-budget", 1, 0, 'u' },
		{ "prefer-busy-poll", 0, 0, 'P' }, { "duration", 1, 0, 'd' },
		{ "warmup", 1, 0, 'w' }, { "cpus", 1, 0, 'c' }, { "dst-mac", 1, 0, 'm' },
		{ "src-mac", 1, 0, 'M' }, { "label", 1, 0, 'l' }, { "tx-budget", 1, 0, 'T' },
		{ "idle-backoff", 1, 0, 'I' }, { "no-idle-backoff", 0, 0, 'n' },
		{ "tx-queue-index", 1, 0, 'X' }, { 0, 0, 0, 0 },
	};
	int c;
	optind = 2;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'f': o.sock_fds = optarg; break;
		case 'i': o.ifindex = atoi(optarg); break;
		case 'q': o.queues = atoi(optarg); break;
		case 's': o.start_queue = atoi(optarg); break;
		case 'b': o.batch = atoi(optarg); break;
		case 'F': o.frames = atoi(optarg); break;
		case 'r': o.ring_size = atoi(optarg); break;
		case 'N': o.need_wakeup = false; break;
		case 'B': o.busy_poll = atoi(optarg); break;
		case 'u': o.busy_poll_budget = atoi(optarg); break;
		case 'P': o.prefer_busy_poll = true; break;
		case 'd': o.duration = atof(optarg); break;
		case 'w': o.warmup = atof(optarg); break;
		case 'c': {
			char *s = strdup(optarg), *tok, *save;
			for (tok = strtok_r(s, ",", &save); tok && o.ncpus < MAX_QUEUES;
			     tok = strtok_r(NULL, ",", &save))
				o.cpus[o.ncpus++] = atoi(tok);
			free(s);
			break;
		}
		case 'm': if (parse_mac(optarg, o.dst_mac)) usage(); break;
		case 'M': if (parse_mac(optarg, o.src_mac)) usage(); break;
		case 'l': o.label = optarg; break;
		case 'T': o.tx_budget = atoi(optarg); break;
		case 'I':
			o.idle_backoff = atoi(optarg);
			if (o.idle_backoff < 0 || o.idle_backoff > 16)
				usage();
			break;
		case 'n': o.idle_backoff = -1; break;
		case 'X': o.tx_queue_index = atoi(optarg); break;
		default: usage();
		}
	}
	if (!o.sock_fds || o.ifindex < 0 || !o.queues || o.queues > MAX_QUEUES || !o.batch ||
	    o.frames < 8 || o.frames % 2 || o.duration <= 0)
		usage();
	uint32_t ring = o.ring_size ? o.ring_size : 1u << (31 - __builtin_clz(o.frames / 4));
	if (o.batch > ring || o.frames < 2 * ring || (ring & (ring - 1))) {
		fprintf(stderr, "xsk-bench-c: need batch <= ring size, frames >= 2 * ring size, "
				"ring size a power of two\n");
		return 2;
	}

	struct queue *qs = calloc(o.queues, sizeof(*qs));
	char *list = strdup(o.sock_fds), *save, *tok;
	unsigned n = 0;
	for (tok = strtok_r(list, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
		if (n == o.queues) {
			fprintf(stderr, "xsk-bench-c: more sock-fds than --queues\n");
			return 2;
		}
		qs[n].fd = atoi(tok);
		qs[n].queue_id = o.start_queue + n;
		qs[n].cpu = o.ncpus ? o.cpus[n % o.ncpus] : -1;
		n++;
	}
	if (n != o.queues) {
		fprintf(stderr, "xsk-bench-c: %u sock-fds for %u queues\n", n, o.queues);
		return 2;
	}
	for (unsigned i = 0; i < n; i++)
		setup(&qs[i], &o);

	if (o.mode != RXTX && o.tx_queue_index) {
		fprintf(stderr, "xsk-bench-c: --tx-queue-index is for the rxtx mode only\n");
		return 2;
	}
	if (o.mode == RXTX) {
		if (o.tx_queue_index >= n) {
			fprintf(stderr, "xsk-bench-c: --tx-queue-index %u, but only %u sockets\n",
				o.tx_queue_index, n);
			return 2;
		}
		struct rxtx w = { .rx = &qs[0], .tx = &qs[o.tx_queue_index] };
		pthread_t wt;
		pthread_create(&wt, NULL, rxtx_worker, &w);
		run_phases(&o);
		pthread_join(wt, NULL);
		if (qs[0].err) {
			errno = qs[0].err;
			die("sched_setaffinity");
		}
		printf("{\"tool\":\"xsk-bench\",\"impl\":\"c\",\"mode\":\"rxtx\",\"queues\":%u,"
		       "\"tx_queue_index\":%u,\"batch\":%u,\"frames\":%u,\"ring_size\":%u,"
		       "\"tx_budget\":%d,\"pps\":%.0f,\"tx_pps\":%.0f,\"rx_pps\":%.0f,"
		       "\"seconds\":%.6f,\"rx_ring_full\":%llu}\n",
		       n, o.tx_queue_index, o.batch, o.frames, ring,
		       o.tx_budget >= 0 ? o.tx_budget : 32, w.tx_completed / w.seconds,
		       w.tx_completed / w.seconds, w.rx_packets / w.seconds, w.seconds,
		       (unsigned long long)qs[0].stats.rx_ring_full);
		return 0;
	}
	pthread_t t[MAX_QUEUES];
	for (unsigned i = 0; i < n; i++)
		pthread_create(&t[i], NULL, worker, &qs[i]);
	run_phases(&o);
	for (unsigned i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		if (qs[i].err) {
			errno = qs[i].err;
			die("sched_setaffinity");
		}
	}

	uint64_t packets = 0, syscalls = 0, rx = 0, tx = 0, life_rx = 0, life_tx = 0, life_sc = 0;
	double pps = 0, seconds = 0;
	char per_queue[8192];
	size_t pl = 0;
	per_queue[0] = 0;
	for (unsigned i = 0; i < n; i++) {
		struct queue *q = &qs[i];
		uint64_t qrx = q->c.rx_packets - q->start.rx_packets;
		uint64_t qtx = q->c.tx_completed - q->start.tx_completed;
		uint64_t p = o.mode == RXDROP ? qrx : qtx;
		uint64_t sc = q->c.wakeups - q->start.wakeups + q->kicks - q->start_kicks;
		packets += p, syscalls += sc, rx += qrx, tx += qtx;
		life_rx += q->c.rx_packets, life_tx += q->c.tx_completed, life_sc += q->c.wakeups;
		pps += p / q->seconds;
		if (q->seconds > seconds)
			seconds = q->seconds;
		pl += snprintf(per_queue + pl, sizeof(per_queue) - pl,
			       "%s{\"queue_id\":%u,\"cpu\":%d,\"pps\":%.0f,\"packets\":%llu,"
			       "\"rx_packets\":%llu,\"tx_completed\":%llu,\"seconds\":%.6f,"
			       "\"syscalls\":%llu,\"xdp_statistics\":{\"rx_dropped\":%llu,"
			       "\"rx_invalid_descs\":%llu,\"tx_invalid_descs\":%llu,"
			       "\"rx_ring_full\":%llu,\"rx_fill_ring_empty_descs\":%llu,"
			       "\"tx_ring_empty_descs\":%llu}}",
			       i ? "," : "", q->queue_id, q->cpu, p / q->seconds,
			       (unsigned long long)p, (unsigned long long)qrx,
			       (unsigned long long)qtx, q->seconds, (unsigned long long)sc,
			       (unsigned long long)q->stats.rx_dropped,
			       (unsigned long long)q->stats.rx_invalid_descs,
			       (unsigned long long)q->stats.tx_invalid_descs,
			       (unsigned long long)q->stats.rx_ring_full,
			       (unsigned long long)q->stats.rx_fill_ring_empty_descs,
			       (unsigned long long)q->stats.tx_ring_empty_descs);
		if (pl >= sizeof(per_queue))
			pl = sizeof(per_queue) - 1;
	}
	char backoff_json[16];
	if (o.idle_backoff >= 0)
		snprintf(backoff_json, sizeof(backoff_json), "%d", o.idle_backoff);
	else
		snprintf(backoff_json, sizeof(backoff_json), "null");
	printf("{\"tool\":\"xsk-bench\",\"impl\":\"c\",\"label\":%s%s%s,\"mode\":\"%s\","
	       "\"queues\":%u,\"batch\":%u,\"frames\":%u,\"ring_size\":%u,\"need_wakeup\":%s,"
	       "\"busy_poll\":%d,\"tx_budget\":%d,\"idle_backoff\":%s,\"pps\":%.0f,\"packets\":%llu,\"seconds\":%.6f,\"rx_pps\":%.0f,"
	       "\"tx_pps\":%.0f,\"syscalls\":%llu,\"syscalls_per_mpkt\":%.2f,"
	       "\"lifetime\":{\"rx_packets\":%llu,\"tx_completed\":%llu,\"wakeups\":%llu},"
	       "\"per_queue\":[%s]}\n",
	       o.label ? "\"" : "", o.label ? o.label : "null", o.label ? "\"" : "",
	       mode_names[o.mode], o.queues, o.batch, o.frames, ring,
	       o.need_wakeup ? "true" : "false", o.busy_poll, o.tx_budget >= 0 ? o.tx_budget : 32, backoff_json, pps, (unsigned long long)packets,
	       seconds, rx / seconds, tx / seconds, (unsigned long long)syscalls,
	       packets ? syscalls * 1e6 / packets : 0.0, (unsigned long long)life_rx,
	       (unsigned long long)life_tx, (unsigned long long)life_sc, per_queue);
	return 0;
}
