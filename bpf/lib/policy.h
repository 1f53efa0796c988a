/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Policy stages: lookups in the active generation's maps. */
#ifndef HYP_POLICY_H
#define HYP_POLICY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "maps.h"
#include "parsing.h"

/* Looks the source address up in a generation's pair of LPM tries. */
/* Empty maps (per the slot's settings) are skipped: a lookup is a helper call
 * even when it cannot match. */
static __always_inline int source_in_cidrs(void *outer4, void *outer6, __u32 slot,
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
		return bpf_map_lookup_elem(trie, &key) != NULL;
	}
	struct hyp_lpm_v6_key key = { .prefixlen = 128 };

	if (!entries6)
		return 0;
	trie = bpf_map_lookup_elem(outer6, &slot);
	if (!trie)
		return 0;
	__builtin_memcpy(key.addr, pkt->saddr, 16);
	return bpf_map_lookup_elem(trie, &key) != NULL;
}

static __always_inline int source_in_exact_ips(__u32 slot, const struct packet_info *pkt,
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
		return bpf_map_lookup_elem(table, &key) != NULL;
	}
	struct hyp_ip_v6_key key;

	if (!settings->entries[HYP_PMAP_BIP6])
		return 0;
	table = bpf_map_lookup_elem(&hyp_bip6, &slot);
	if (!table)
		return 0;
	__builtin_memcpy(key.addr, pkt->saddr, 16);
	return bpf_map_lookup_elem(table, &key) != NULL;
}

/* A dynamic block counts only until it expires; expired entries stay until
 * the control plane sweeps them or the LRU evicts them. */
static __always_inline int source_dynamically_blocked(const struct packet_info *pkt)
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
		return 0;
	return block->expires_ns == 0 || block->expires_ns > bpf_ktime_get_boot_ns();
}

static __always_inline struct hyp_class_value *redirect_class(__u32 slot,
							      const struct packet_info *pkt,
							      const struct hyp_settings *settings)
{
	struct hyp_class_key key = {
		.port = pkt->dst_port,
		.protocol = pkt->l4_protocol,
	};
	void *classes;

	if (!settings->entries[HYP_PMAP_CLASSES])
		return NULL;
	classes = bpf_map_lookup_elem(&hyp_classes, &slot);
	if (!classes)
		return NULL;
	return bpf_map_lookup_elem(classes, &key);
}

#endif /* HYP_POLICY_H */
