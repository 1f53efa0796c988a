// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Hyperion fast path. Stages, in order: parse (malformed -> drop), allowlist
 * (pass, nothing later applies), static CIDR blocklist, static exact-IP
 * blocklist, dynamic blocklist, redirect classes: for a DNS class's UDP
 * queries first the DNS stage (name rules: drop, answer in place, allow,
 * alert; lib/dns.h), for its TCP segments the connection's stage (a whole query at
 * the stream position judged the same way, the rest to the slow path;
 * lib/dns_tcp.h), then what it did not decide to AF_XDP if the class has
 * something for the slow path; default pass.
 * Every exit goes through finish(), which counts (verdict, reason).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "hyperion_parser.h"
#include "dns.h"
#include "dns_tcp.h"
#include "events.h"
#include "maps.h"
#include "parsing.h"
#include "policy.h"
#include "stats.h"

/* Puts every ABI enum and struct, complete, into the object's BTF, where user
 * space reads them (maps alone would leave some as forward declarations). */
struct hyp_abi_types {
	enum hyp_verdict verdict;
	enum hyp_reason reason;
	enum hyp_mode mode;
	enum hyp_fallback fallback;
	enum hyp_capacity capacity;
	enum hyp_policy_map policy_map;
	enum hyp_queue_state_id queue_state_id;
	enum hyp_queue_reason queue_reason;
	enum hyp_parser_limit parser_limit;
	enum hyp_dns_action dns_action;
	enum hyp_dns_kind dns_kind;
	enum hyp_dns_rule_flag dns_rule_flag;
	enum hyp_class_flag class_flag;
	enum hyp_dns_fragment_policy dns_fragment_policy;
	enum hyp_dns_tcp_state dns_tcp_state;
	struct hyp_counter counter;
	struct hyp_config config;
	struct hyp_settings settings;
	struct hyp_lpm_v4_key lpm_v4_key;
	struct hyp_lpm_v6_key lpm_v6_key;
	struct hyp_ip_v4_key ip_v4_key;
	struct hyp_ip_v6_key ip_v6_key;
	struct hyp_rule_value rule_value;
	struct hyp_dyn_block dyn_block;
	struct hyp_class_key class_key;
	struct hyp_class_value class_value;
	struct hyp_dns_key_short dns_key_short;
	struct hyp_dns_key dns_key;
	struct hyp_dns_rule dns_rule;
	struct hyp_dns_tcp_key dns_tcp_key;
	struct hyp_dns_tcp_flow dns_tcp_flow;
	struct hyp_queue_counter queue_counter;
	struct hyp_class_counter class_counter;
	struct hyp_event_state event_state;
	struct hyp_event event;
	struct hyp_queue_state queue_state;
};
const volatile struct hyp_abi_types hyp_abi __attribute__((used));

/* Sets *verdict and returns the reason. All the program's decisions are here;
 * the one exit that counts them is finish(), below. */
static __always_inline __u32 judge(struct xdp_md *ctx, struct packet_info *pkt,
				   struct run_config *cfg, __u32 *verdict)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hyp_class_key class_key;
	struct hyp_class_value *class;
	struct hyp_settings *settings;
	struct hyp_dyn_block *block;
	struct hyp_config *config;
	__u32 zero = 0, slot, reason, flags;
	int rc;

	*verdict = HYP_VERDICT_PASS;
	config = bpf_map_lookup_elem(&hyp_config, &zero);
	if (!config)
		return HYP_REASON_NO_CONFIG;
	/* Read once: the whole packet is judged by one policy generation. */
	slot = config->active_slot & (HYP_CAP_GENERATIONS - 1);
	cfg->events_per_sec = config->events_per_sec;
	settings = bpf_map_lookup_elem(&hyp_settings, &slot);
	if (!settings || settings->generation == 0)
		return HYP_REASON_NO_CONFIG;
	cfg->mode = settings->mode;

	rc = parse_packet(data, data_end, pkt);
	if (rc != HYP_PARSE_OK) {
		*verdict = HYP_VERDICT_DROP;
		return rc;
	}
	if (!pkt->is_ipv4 && !pkt->is_ipv6)
		return HYP_REASON_NON_IP;

	pkt->rule_id = source_in_cidrs(&hyp_allow4, &hyp_allow6, slot, pkt,
				       settings->entries[HYP_PMAP_ALLOW4], settings->entries[HYP_PMAP_ALLOW6]);
	if (pkt->rule_id)
		return HYP_REASON_ALLOWLIST;
	*verdict = HYP_VERDICT_DROP;
	pkt->rule_id = source_in_cidrs(&hyp_bcidr4, &hyp_bcidr6, slot, pkt,
				       settings->entries[HYP_PMAP_BCIDR4], settings->entries[HYP_PMAP_BCIDR6]);
	if (pkt->rule_id)
		return HYP_REASON_BLOCKLIST_CIDR;
	pkt->rule_id = source_in_exact_ips(slot, pkt, settings);
	if (pkt->rule_id)
		return HYP_REASON_BLOCKLIST_IP;
	block = source_dynamically_blocked(pkt);
	if (block) {
		pkt->rule_id = block->rule_id;
		return HYP_REASON_BLOCKLIST_DYNAMIC;
	}

	*verdict = HYP_VERDICT_PASS;
	if (pkt->nonfirst_fragment)
		return HYP_REASON_FRAGMENT;
	class = redirect_class(slot, pkt, settings, &class_key);
	if (!class)
		return HYP_REASON_NO_MATCH;
	pkt->rule_id = class->class_id;
	/* flags 0: a class from before the DNS stage: redirect (as every class did). */
	flags = class->flags ? class->flags : HYP_CLASS_F_SLOWPATH;
	/* A first fragment holds the ports but maybe not the whole query, and its UDP checksum
	 * covers what the program cannot see; resolvers do not fragment queries. */
	if ((flags & HYP_CLASS_F_DNS) && pkt->first_fragment && settings->dns_fragments == HYP_DNS_FRAG_DROP) {
		*verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_FRAGMENT;
	}
	if ((flags & HYP_CLASS_F_DNS) && pkt->l4_protocol == HYP_IPPROTO_UDP) {
		struct hyp_dns_args dns = {
			.slot = slot,
			.l3_off = pkt->l3_off,
			.payload_off = pkt->payload_off,
			.payload_len = pkt->payload_len,
			.is_ipv6 = pkt->is_ipv6,
			.ip_ext = pkt->ip_ext,
		};

		reason = hyp_dns_stage(ctx, &dns);
		if (reason != HYP_REASON_REDIRECT_CLASS) {
			*verdict = dns.verdict;
			pkt->event = dns.event;
			pkt->dns_rcode = dns.rcode;
			pkt->dns_answer_len = dns.answer_len;
			pkt->rule_id = dns.rule_id;
			/* Not decided here: the slow path's, if the class has something for it. */
			if ((reason != HYP_REASON_DNS_NO_MATCH && reason != HYP_REASON_DNS_NOT_QUERY) ||
			    !(flags & HYP_CLASS_F_SLOWPATH))
				return reason;
			pkt->rule_id = class->class_id;
		}
		/* else a name rule for the slow path (block_source): redirect it, class id for events */
	} else if ((flags & HYP_CLASS_F_DNS) && pkt->l4_protocol == HYP_IPPROTO_TCP) {
		struct hyp_dns_args dns = {
			.slot = slot,
			.l3_off = pkt->l3_off,
			.is_ipv6 = pkt->is_ipv6,
			.ip_ext = pkt->ip_ext,
			.fragment = pkt->first_fragment,
			.mode = cfg->mode,
			.tcp_off = pkt->l4_off,
			.rule_id = class->class_id,
		};

		/* The connection's stage; a whole query at the stream position is judged by the
		 * DNS stage there. Over TCP a judged query is delivered or not: the slow path
		 * gets only the rest of the stream. */
		reason = hyp_dns_tcp_stage(ctx, &dns);
		if (reason != HYP_REASON_REDIRECT_CLASS) {
			*verdict = dns.verdict;
			pkt->event = dns.event;
			pkt->dns_rcode = dns.rcode;
			pkt->dns_answer_len = dns.answer_len;
			pkt->rule_id = dns.rule_id;
			return reason;
		}
		/* else the connection from `next` on, or a block_source rule: redirect */
	} else if (!(flags & HYP_CLASS_F_SLOWPATH)) {
		return HYP_REASON_NO_MATCH; /* nothing for the slow path in this class */
	}
	*verdict = HYP_VERDICT_REDIRECT;
	if (cfg->mode == HYP_MODE_MONITOR)
		return HYP_REASON_REDIRECT_CLASS;
	if (ctx->rx_queue_index >= HYP_CAP_QUEUES) {
		/* No xsk_map slot, state or counters for it. */
		reason = HYP_REASON_QUEUE_OVER_CAPACITY;
	} else if (bpf_xdp_get_buff_len(ctx) > HYP_CAP_UMEM_FRAME_BYTES - XDP_PACKET_HEADROOM) {
		/* The socket could not take it (net/xdp/xsk.c drops it): not a redirect. */
		reason = HYP_REASON_REDIRECT_OVERSIZE;
	} else if (queue_fenced(ctx->rx_queue_index)) {
		reason = HYP_REASON_QUEUE_FENCED;
	} else if (bpf_redirect_map(&xsk_map, ctx->rx_queue_index, 0) == XDP_REDIRECT) {
		/* Flags 0: XDP_ABORTED (0) comes back when the queue has no socket. */
		count_class(&class_key, 0);
		return HYP_REASON_REDIRECT_CLASS;
	} else {
		reason = HYP_REASON_REDIRECT_FAILED;
	}
	count_class(&class_key, 1);
	*verdict = class->on_failure == HYP_FALLBACK_DROP ? HYP_VERDICT_DROP : HYP_VERDICT_PASS;
	return reason;
}

SEC("xdp")
int hyperion_xdp(struct xdp_md *ctx)
{
	struct run_config cfg = { .mode = HYP_MODE_ENFORCE };
	struct packet_info pkt = {};
	__u32 verdict, reason;

	reason = judge(ctx, &pkt, &cfg, &verdict);
	return finish(ctx, &pkt, &cfg, verdict, reason);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
