// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * xsk_confine: a BPF LSM program on socket_bind that holds every AF_XDP
 * socket the broker handed out to its lease.
 *
 * The broker records each socket's lease in the `xsk_leases` socket storage
 * (key: the socket's fd in the broker) before passing the socket on. A bind
 * of such a socket to another interface or queue, in zero-copy mode on a
 * copy-only lease, or with XDP_SHARED_UMEM when the lease does not allow it,
 * is refused with EPERM. Sockets without a record are not the broker's and
 * are left alone. io_uring's bind goes through the same hook.
 *
 * Built by broker/build.rs with clang -target bpf; the few kernel structures
 * read are declared here with preserve_access_index (CO-RE), so no vmlinux.h
 * is needed.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_xdp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define AF_XDP 44
#define EPERM 1

/* The lease of one socket; the broker writes the same layout (confine.rs). */
struct xsk_lease {
	__u32 ifindex;
	__u32 queue_id;
	__u32 allow; /* XSK_ALLOW_* */
};

/* Zero-copy may be asked for (XDP_ZEROCOPY, or no mode flag). */
#define XSK_ALLOW_ZEROCOPY (1U << 0)
/* XDP_SHARED_UMEM may be used. */
#define XSK_ALLOW_SHARED_UMEM (1U << 1)

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct xsk_lease);
} xsk_leases SEC(".maps");

struct sock_common {
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct sockaddr;

SEC("lsm/socket_bind")
int BPF_PROG(xsk_confine_bind, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	struct sockaddr_xdp sxdp = {};
	struct xsk_lease *lease;
	struct sock *sk;
	__u16 flags;

	if (ret)
		return ret;
	sk = sock->sk;
	if (!sk || sk->__sk_common.skc_family != AF_XDP)
		return 0;
	lease = bpf_sk_storage_get(&xsk_leases, sk, 0, 0);
	if (!lease)
		return 0;
	/* A short address is refused by xsk_bind itself (EINVAL). */
	if (addrlen < (int)sizeof(sxdp))
		return 0;
	if (bpf_probe_read_kernel(&sxdp, sizeof(sxdp), address))
		return -EPERM;
	if (sxdp.sxdp_ifindex != lease->ifindex || sxdp.sxdp_queue_id != lease->queue_id)
		return -EPERM;
	flags = sxdp.sxdp_flags;
	if (flags & XDP_SHARED_UMEM)
		/* The mode is then the sharing socket's, itself confined. */
		return (lease->allow & XSK_ALLOW_SHARED_UMEM) ? 0 : -EPERM;
	if (!(lease->allow & XSK_ALLOW_ZEROCOPY) && (!(flags & XDP_COPY) || (flags & XDP_ZEROCOPY)))
		return -EPERM;
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
