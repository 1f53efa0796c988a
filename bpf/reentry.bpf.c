// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Re-entry of what the slow path passes. A worker sends each passed frame, as it came off the
 * wire, onto one end of a helper veth pair; this program, at the other end's TC ingress, hands
 * it to the real interface's ingress (bpf_redirect with BPF_F_INGRESS). The stack then sees it as
 * received on the real interface: iif, rp_filter, netfilter, conntrack and routing as on the
 * wire, and no address or sysctl of the host is touched. Native XDP runs in the driver's receive
 * path, which a redirected skb does not take, so the frame never meets Hyperion's program again
 * (generic XDP would see it: the daemon keeps the TUN path there).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hyp_reentry_target);
} hyp_reentry SEC(".maps");

SEC("tc")
int hyperion_reentry(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct hyp_reentry_target *target = bpf_map_lookup_elem(&hyp_reentry, &zero);

	if (!target || !target->ifindex)
		return TC_ACT_SHOT; /* not configured yet: nothing may reach the helper's own stack */
	/* veth marks what it forwards CHECKSUM_UNNECESSARY: reset that, so the real interface's
	 * stack verifies checksums as for a frame whose NIC did not. */
	bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	return bpf_redirect(target->ifindex, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
