/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy stages: lookups in the active generation's maps. Each returns the
 * matching rule's id (1-based), or 0 when nothing matched. */
#ifndef HYP_POLICY_H
#define HYP_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "maps.h"
#include "parsing.h"

static __always_inline __u32 rule_of(const struct hyp_rule_value *value)
{
	return value ? value->rule_id : 0;
}

/* Empty maps (per the slot's settings) are skipped: a lookup is a helper call
 * even when it cannot match. */
static __always_inline __u32 source_in_cidrs(void *outer4, void *outer6, __u32 slot,
					     const struct packet_info *pkt,
					     __u32 entries4, __u32 entries6)
{
	void *trie;

	if (pkt->is_ipv4) {
		struct hyp_lpm_v4_key key = { .prefixlen = 32 };

		if (!entries4)
			return 0;
		trie = bpf_map_lookup_elem(outer4, &slot);
		if (!trie)
			return 0;
		__builtin_memcpy(key.addr, pkt->saddr, 4);
		return rule_of(bpf_map_lookup_elem(trie, &key));
	}
	struct hyp_lpm_v6_key key = { .prefixlen = 128 };

	if (!entries6)
		return 0;
	trie = bpf_map_lookup_elem(outer6, &slot);
	if (!trie)
		return 0;
	__builtin_memcpy(key.addr, pkt->saddr, 16);
	return rule_of(bpf_map_lookup_elem(trie, &key));
}

static __always_inline __u32 source_in_exact_ips(__u32 slot, const struct packet_info *pkt,
						 const struct hyp_settings *settings)
{
	void *table;

	if (pkt->is_ipv4) {
		struct hyp_ip_v4_key key;

		if (!settings->entries[HYP_PMAP_BIP4])
			return 0;
		table = bpf_map_lookup_elem(&hyp_bip4, &slot);
		if (!table)
			return 0;
		__builtin_memcpy(key.addr, pkt->saddr, 4);
		return rule_of(bpf_map_lookup_elem(table, &key));
	}
	struct hyp_ip_v6_key key;

	if (!settings->entries[HYP_PMAP_BIP6])
		return 0;
	table = bpf_map_lookup_elem(&hyp_bip6, &slot);
	if (!table)
		return 0;
	__builtin_memcpy(key.addr, pkt->saddr, 16);
	return rule_of(bpf_map_lookup_elem(table, &key));
}

/* A dynamic block counts only until it expires; expired entries stay until
 * the control plane sweeps them or the LRU evicts them. */
static __always_inline struct hyp_dyn_block *source_dynamically_blocked(const struct packet_info *pkt)
{
	struct hyp_dyn_block *block;

	if (pkt->is_ipv4) {
		struct hyp_ip_v4_key key;

		__builtin_memcpy(key.addr, pkt->saddr, 4);
		block = bpf_map_lookup_elem(&hyp_dyn4, &key);
	} else {
		struct hyp_ip_v6_key key;

		__builtin_memcpy(key.addr, pkt->saddr, 16);
		block = bpf_map_lookup_elem(&hyp_dyn6, &key);
	}
	if (!block)
		return NULL;
	if (block->expires_ns == 0 || block->expires_ns > bpf_ktime_get_boot_ns())
		return block;
	return NULL;
}

static __always_inline struct hyp_class_value *redirect_class(__u32 slot,
							      const struct packet_info *pkt,
							      const struct hyp_settings *settings,
							      struct hyp_class_key *key)
{
	void *classes;

	if (!settings->entries[HYP_PMAP_CLASSES])
		return NULL;
	key->port = pkt->dst_port;
	key->protocol = pkt->l4_protocol;
	key->pad = 0;
	classes = bpf_map_lookup_elem(&hyp_classes, &slot);
	if (!classes)
		return NULL;
	return bpf_map_lookup_elem(classes, key);
}

/* The watchdog's fence: a queue whose worker is gone, stalled or starved gets
 * no redirects, even while its socket is still in xsk_map. */
static __always_inline int queue_fenced(__u32 queue)
{
	struct hyp_queue_state *state = bpf_map_lookup_elem(&hyp_queue_state, &queue);

	return state && state->state >= HYP_QSTATE_FENCED;
}

/* Counted here, not in finish(): only redirect-class packets pay the lookup. */
static __always_inline void count_class(const struct hyp_class_key *key, int failed)
{
	struct hyp_class_counter *counter = bpf_map_lookup_elem(&hyp_class_stats, key);

	if (!counter)
		return;
	if (failed)
		counter->failed++;
	else
		counter->redirected++;
}

#endif /* HYP_POLICY_H */
