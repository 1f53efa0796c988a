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

/* What an event says about the packet (scalars only: the argument of a global
 * function). */
struct hyp_event_args {
	__u32 events_per_sec;
	__u32 rule_id;
	__u8 verdict;
	__u8 reason;
	__u8 ip_version;      /* 0 when the packet was rejected before its IP header */
	__u8 protocol;
	__u16 src_port;
	__u16 dst_port;
	__u16 l3_off;         /* the IP header, for the destination */
	__u16 pad;
	__u8 saddr[16];
};

/* A global function: the verifier checks it once, not on every path to finish()
 * (each parser path arrives there with its own packet pointers). */
__attribute__((noinline)) int hyp_emit_event(struct xdp_md *ctx, struct hyp_event_args *e)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct run_config cfg;
	struct hyp_event *event;
	__u32 zero = 0;

	if (!e)
		return 0;
	cfg.events_per_sec = e->events_per_sec;
	if (!cfg.events_per_sec || !event_budget_allows(&cfg))
		return 0;
	event = bpf_ringbuf_reserve(&hyp_events, sizeof(*event), 0);
	if (!event) {
		struct hyp_event_state *state = bpf_map_lookup_elem(&hyp_event_state, &zero);

		if (state)
			state->ring_full++;
		return 0;
	}
	__builtin_memset(event, 0, sizeof(*event));
	event->timestamp_ns = bpf_ktime_get_boot_ns();
	event->ifindex = ctx->ingress_ifindex;
	event->rx_queue = ctx->rx_queue_index;
	event->rule_id = e->rule_id;
	event->pkt_len = data_end - data;
	event->verdict = e->verdict;
	event->reason = e->reason;
	event->ip_version = e->ip_version;
	event->protocol = e->protocol;
	event->src_port = e->src_port;
	event->dst_port = e->dst_port;
	__builtin_memcpy(event->saddr, e->saddr, 16);
	if (e->ip_version == 4) {
		struct iphdr *iph = data + (e->l3_off & 0xFF);

		if ((void *)(iph + 1) <= data_end)
			__builtin_memcpy(event->daddr, &iph->daddr, 4);
	} else if (e->ip_version == 6) {
		struct ipv6hdr *ip6h = data + (e->l3_off & 0xFF);

		if ((void *)(ip6h + 1) <= data_end)
			__builtin_memcpy(event->daddr, &ip6h->daddr, 16);
	}
	bpf_ringbuf_submit(event, 0);

	struct hyp_event_state *state = bpf_map_lookup_elem(&hyp_event_state, &zero);

	if (state)
		state->emitted++;
	return 0;
}

#endif /* HYP_EVENTS_H */
