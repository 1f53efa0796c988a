/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The single exit of the program: count (verdict, reason) and the rx queue,
 * sample an event for drops, map the verdict to an XDP action. */
#ifndef HYP_STATS_H
#define HYP_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
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

/* In monitor mode every would-be drop or redirect is counted as such and passed. */
static __always_inline int finish(struct xdp_md *ctx, const struct packet_info *pkt,
				  const struct run_config *cfg, __u32 verdict, __u32 reason)
{
	if (cfg->mode == HYP_MODE_MONITOR) {
		if (verdict == HYP_VERDICT_DROP)
			verdict = HYP_VERDICT_WOULD_DROP;
		else if (verdict == HYP_VERDICT_REDIRECT)
			verdict = HYP_VERDICT_WOULD_REDIRECT;
	}
	count_verdict(ctx, verdict, reason);
	count_queue(ctx, verdict, reason);
	if (verdict == HYP_VERDICT_DROP || verdict == HYP_VERDICT_WOULD_DROP ||
	    reason == HYP_REASON_REDIRECT_FAILED || reason == HYP_REASON_QUEUE_FENCED ||
	    reason == HYP_REASON_REDIRECT_OVERSIZE || reason == HYP_REASON_QUEUE_OVER_CAPACITY)
		emit_event(ctx, pkt, cfg, verdict, reason);
	switch (verdict) {
	case HYP_VERDICT_DROP:
		return XDP_DROP;
	case HYP_VERDICT_REDIRECT:
		return XDP_REDIRECT;
	default:
		return XDP_PASS;
	}
}

#endif /* HYP_STATS_H */
