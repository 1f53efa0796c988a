/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The single exit of the program: count (verdict, reason) and the rx queue,
 * sample an event for drops (and DNS answers and alerts), map the verdict to an
 * XDP action (building the DNS answer for ANSWER). */
#ifndef HYP_STATS_H
#define HYP_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "dns.h"
#include "dns_tcp.h"
#include "events.h"
#include "maps.h"

static __always_inline void count_verdict(struct xdp_md *ctx, __u32 verdict, __u32 reason)
{
	__u32 index = verdict * HYP_REASON__MAX + reason;
	struct hyp_counter *counter = bpf_map_lookup_elem(&hyp_counters, &index);

	if (counter) {
		/* Per-CPU slot: no atomics needed. */
		counter->packets++;
		counter->bytes += ctx->data_end - ctx->data;
	}
}

static __always_inline void count_queue(struct xdp_md *ctx, __u32 verdict, __u32 reason)
{
	__u32 queue = ctx->rx_queue_index;
	struct hyp_queue_counter *counter = bpf_map_lookup_elem(&hyp_queue_stats, &queue);

	if (!counter)
		return; /* queues beyond HYP_CAP_QUEUES are counted in hyp_counters only */
	counter->packets++;
	if (verdict == HYP_VERDICT_DROP)
		counter->drops++;
	else if (verdict == HYP_VERDICT_REDIRECT)
		counter->redirects++;
	if (reason == HYP_REASON_REDIRECT_FAILED)
		counter->redirect_failures++;
	else if (reason == HYP_REASON_QUEUE_FENCED)
		counter->fenced++;
}

/* What finish() needs of the packet and the run (scalars only: the argument of a
 * global function). */
struct hyp_finish_args {
	struct hyp_event_args event; /* verdict and reason in it */
	struct hyp_dns_args answer;  /* verdict ANSWER: how to build it */
	__u32 mode;
	__u32 want_event;            /* a stage asked for an event (DNS alerts) */
};

/* A global function: the verifier checks it once, with any verdict and reason,
 * instead of once for each of the program's exits and the parser paths behind
 * them. In monitor mode every would-be drop, redirect or answer is counted as
 * such and passed. */
__attribute__((noinline)) int hyp_finish(struct xdp_md *ctx, struct hyp_finish_args *f)
{
	__u32 verdict, reason;

	if (!f)
		return XDP_ABORTED;
	verdict = f->event.verdict;
	reason = f->event.reason;
	if (verdict >= HYP_VERDICT__MAX || reason >= HYP_REASON__MAX)
		return XDP_ABORTED;
	if (f->mode == HYP_MODE_MONITOR) {
		if (verdict == HYP_VERDICT_DROP)
			verdict = HYP_VERDICT_WOULD_DROP;
		else if (verdict == HYP_VERDICT_REDIRECT)
			verdict = HYP_VERDICT_WOULD_REDIRECT;
		else if (verdict == HYP_VERDICT_ANSWER)
			verdict = HYP_VERDICT_WOULD_ANSWER;
	}
	/* Counted and sampled as received: an answer is built only afterwards. */
	count_verdict(ctx, verdict, reason);
	count_queue(ctx, verdict, reason);
	if (verdict == HYP_VERDICT_DROP || verdict == HYP_VERDICT_WOULD_DROP ||
	    verdict == HYP_VERDICT_ANSWER || verdict == HYP_VERDICT_WOULD_ANSWER || f->want_event ||
	    reason == HYP_REASON_REDIRECT_FAILED || reason == HYP_REASON_QUEUE_FENCED ||
	    reason == HYP_REASON_REDIRECT_OVERSIZE || reason == HYP_REASON_QUEUE_OVER_CAPACITY) {
		f->event.verdict = verdict;
		hyp_emit_event(ctx, &f->event);
	}
	switch (verdict) {
	case HYP_VERDICT_DROP:
		return XDP_DROP;
	case HYP_VERDICT_REDIRECT:
		return XDP_REDIRECT;
	case HYP_VERDICT_ANSWER:
		if (f->event.protocol == HYP_IPPROTO_TCP)
			return hyp_dns_tcp_answer(ctx, &f->answer); /* in the stream */
		return hyp_dns_answer(ctx, &f->answer);
	default:
		return XDP_PASS;
	}
}

static __always_inline int finish(struct xdp_md *ctx, const struct packet_info *pkt,
				  const struct run_config *cfg, __u32 verdict, __u32 reason)
{
	struct hyp_finish_args f = {
		.event = {
			.events_per_sec = cfg->events_per_sec,
			.rule_id = pkt->rule_id,
			.verdict = verdict,
			.reason = reason,
			.ip_version = pkt->is_ipv4 ? 4 : pkt->is_ipv6 ? 6 : 0,
			.protocol = pkt->l4_protocol,
			.src_port = pkt->src_port,
			.dst_port = pkt->dst_port,
			.l3_off = pkt->l3_off,
		},
		.answer = {
			.l3_off = pkt->l3_off,
			.payload_off = pkt->payload_off,
			.is_ipv6 = pkt->is_ipv6,
			.answer_len = pkt->dns_answer_len,
			.rcode = pkt->dns_rcode,
		},
		.mode = cfg->mode,
		.want_event = pkt->event,
	};
	int action;

	__builtin_memcpy(f.event.saddr, pkt->saddr, 16);
	action = hyp_finish(ctx, &f);
	/* The verifier knows nothing of a global function's result: keep it an XDP action. */
	return action >= XDP_ABORTED && action <= XDP_REDIRECT ? action : XDP_ABORTED;
}

#endif /* HYP_STATS_H */
