/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Sampled drop events through a ring buffer. A per-CPU budget of
 * events_per_sec per one-second window keeps a flood from flooding user
 * space; what the budget refuses is counted as suppressed, what the full ring
 * refuses as ring_full.
 */
#ifndef HYP_EVENTS_H
#define HYP_EVENTS_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "maps.h"
#include "parsing.h"

#define HYP_NSEC_PER_SEC 1000000000ULL

/* Settings of one run of the program, read once from the config maps. */
struct run_config {
	__u32 mode;
	__u32 events_per_sec;
};

static __always_inline int event_budget_allows(const struct run_config *cfg)
{
	__u32 zero = 0;
	struct hyp_event_state *state = bpf_map_lookup_elem(&hyp_event_state, &zero);
	__u64 now;

	if (!state)
		return 0;
	/* Coarse clock: a one-second window does not need more, and it is cheaper. */
	now = bpf_ktime_get_coarse_ns();
	if (now - state->window_start_ns >= HYP_NSEC_PER_SEC) {
		state->window_start_ns = now;
		state->window_used = 0;
	}
	if (state->window_used >= cfg->events_per_sec) {
		state->suppressed++;
		return 0;
	}
	state->window_used++;
	return 1;
}

static __always_inline void copy_destination(struct hyp_event *event, const struct packet_info *pkt,
					     void *data_end)
{
	if (pkt->is_ipv4) {
		struct iphdr *iph = pkt->l3;

		if (iph && (void *)(iph + 1) <= data_end)
			__builtin_memcpy(event->daddr, &iph->daddr, 4);
	} else if (pkt->is_ipv6) {
		struct ipv6hdr *ip6h = pkt->l3;

		if (ip6h && (void *)(ip6h + 1) <= data_end)
			__builtin_memcpy(event->daddr, &ip6h->daddr, 16);
	}
}

static __always_inline void emit_event(struct xdp_md *ctx, const struct packet_info *pkt,
				       const struct run_config *cfg, __u32 verdict, __u32 reason)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct hyp_event *event;
	__u32 zero = 0;

	if (!cfg->events_per_sec || !event_budget_allows(cfg))
		return;
	event = bpf_ringbuf_reserve(&hyp_events, sizeof(*event), 0);
	if (!event) {
		struct hyp_event_state *state = bpf_map_lookup_elem(&hyp_event_state, &zero);

		if (state)
			state->ring_full++;
		return;
	}
	__builtin_memset(event, 0, sizeof(*event));
	event->timestamp_ns = bpf_ktime_get_boot_ns();
	event->ifindex = ctx->ingress_ifindex;
	event->rx_queue = ctx->rx_queue_index;
	event->rule_id = pkt->rule_id;
	event->pkt_len = ctx->data_end - ctx->data;
	event->verdict = verdict;
	event->reason = reason;
	event->ip_version = pkt->is_ipv4 ? 4 : pkt->is_ipv6 ? 6 : 0;
	event->protocol = pkt->l4_protocol;
	event->src_port = pkt->src_port;
	event->dst_port = pkt->dst_port;
	__builtin_memcpy(event->saddr, pkt->saddr, 16);
	copy_destination(event, pkt, data_end);
	bpf_ringbuf_submit(event, 0);

	struct hyp_event_state *state = bpf_map_lookup_elem(&hyp_event_state, &zero);

	if (state)
		state->emitted++;
}

#endif /* HYP_EVENTS_H */
