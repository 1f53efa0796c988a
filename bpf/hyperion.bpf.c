// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Hyperion fast path. Stages, in order: parse (malformed -> drop), allowlist
 * (pass, nothing later applies), static CIDR blocklist, static exact-IP
 * blocklist, dynamic blocklist, redirect classes (AF_XDP), default pass.
 * Every exit goes through finish(), which counts (verdict, reason).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "consts.h"
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
};
const volatile struct hyp_abi_types hyp_abi __attribute__((used));

SEC("xdp")
int hyperion_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet_info pkt = {};
	struct hyp_class_value *class;
	struct hyp_settings *settings;
	struct hyp_config *config;
	__u32 zero = 0, slot, mode;
	long action;
	int rc;

	config = bpf_map_lookup_elem(&hyp_config, &zero);
	if (!config)
		return finish(ctx, HYP_VERDICT_PASS, HYP_REASON_NO_CONFIG, HYP_MODE_ENFORCE);
	/* Read once: the whole packet is judged by one policy generation. */
	slot = config->active_slot & (HYP_CAP_GENERATIONS - 1);
	settings = bpf_map_lookup_elem(&hyp_settings, &slot);
	if (!settings || settings->generation == 0)
		return finish(ctx, HYP_VERDICT_PASS, HYP_REASON_NO_CONFIG, HYP_MODE_ENFORCE);
	mode = settings->mode;

	rc = parse_packet(data, data_end, &pkt);
	if (rc != HYP_PARSE_OK)
		return finish(ctx, HYP_VERDICT_DROP, rc, mode);
	if (!pkt.is_ipv4 && !pkt.is_ipv6)
		return finish(ctx, HYP_VERDICT_PASS, HYP_REASON_NON_IP, mode);

	if (source_in_cidrs(&hyp_allow4, &hyp_allow6, slot, &pkt,
			    settings->entries[HYP_PMAP_ALLOW4], settings->entries[HYP_PMAP_ALLOW6]))
		return finish(ctx, HYP_VERDICT_PASS, HYP_REASON_ALLOWLIST, mode);
	if (source_in_cidrs(&hyp_bcidr4, &hyp_bcidr6, slot, &pkt,
			    settings->entries[HYP_PMAP_BCIDR4], settings->entries[HYP_PMAP_BCIDR6]))
		return finish(ctx, HYP_VERDICT_DROP, HYP_REASON_BLOCKLIST_CIDR, mode);
	if (source_in_exact_ips(slot, &pkt, settings))
		return finish(ctx, HYP_VERDICT_DROP, HYP_REASON_BLOCKLIST_IP, mode);
	if (source_dynamically_blocked(&pkt))
		return finish(ctx, HYP_VERDICT_DROP, HYP_REASON_BLOCKLIST_DYNAMIC, mode);

	if (pkt.nonfirst_fragment)
		return finish(ctx, HYP_VERDICT_PASS, HYP_REASON_FRAGMENT, mode);

	class = redirect_class(slot, &pkt, settings);
	if (!class)
		return finish(ctx, HYP_VERDICT_PASS, HYP_REASON_NO_MATCH, mode);
	if (mode == HYP_MODE_MONITOR)
		return finish(ctx, HYP_VERDICT_REDIRECT, HYP_REASON_REDIRECT_CLASS, mode);
	/* Flags 0: XDP_ABORTED (0) comes back when the queue has no socket. */
	action = bpf_redirect_map(&xsk_map, ctx->rx_queue_index, 0);
	if (action == XDP_REDIRECT)
		return finish(ctx, HYP_VERDICT_REDIRECT, HYP_REASON_REDIRECT_CLASS, mode);
	return finish(ctx,
		      class->on_failure == HYP_FALLBACK_DROP ? HYP_VERDICT_DROP : HYP_VERDICT_PASS,
		      HYP_REASON_REDIRECT_FAILED, mode);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
