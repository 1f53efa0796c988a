/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of the fast path. User space finds them by these names in the
 * object (and pins them by the same names).
 *
 * Policy maps are double-buffered through ARRAY_OF_MAPS outers with
 * HYP_CAP_GENERATIONS slots: the control plane fills fresh inner maps in the
 * inactive slot, then flips hyp_config.active_slot, so a reload is atomic.
 */
#ifndef HYP_MAPS_H
#define HYP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HYP_VERDICT__MAX * HYP_REASON__MAX);
	__type(key, __u32);
	__type(value, struct hyp_counter);
} hyp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hyp_config);
} hyp_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HYP_CAP_GENERATIONS);
	__type(key, __u32);
	__type(value, struct hyp_settings);
} hyp_settings SEC(".maps");

/* Declares an outer map of HYP_CAP_GENERATIONS slots holding inner maps of the
 * given shape; the inner definition is the template libbpf creates for it. */
#define HYP_GENERATION_MAP(name, inner_type, key_t, value_t, capacity, inner_flags) \
	struct {                                                                \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);                       \
		__uint(max_entries, HYP_CAP_GENERATIONS);                       \
		__type(key, __u32);                                             \
		__array(values, struct {                                        \
			__uint(type, inner_type);                               \
			__uint(max_entries, capacity);                          \
			__uint(map_flags, inner_flags);                         \
			__type(key, key_t);                                     \
			__type(value, value_t);                                 \
		});                                                             \
	} name SEC(".maps")

HYP_GENERATION_MAP(hyp_allow4, BPF_MAP_TYPE_LPM_TRIE, struct hyp_lpm_v4_key,
		   struct hyp_rule_value, HYP_CAP_ALLOW, BPF_F_NO_PREALLOC);
HYP_GENERATION_MAP(hyp_allow6, BPF_MAP_TYPE_LPM_TRIE, struct hyp_lpm_v6_key,
		   struct hyp_rule_value, HYP_CAP_ALLOW, BPF_F_NO_PREALLOC);
HYP_GENERATION_MAP(hyp_bcidr4, BPF_MAP_TYPE_LPM_TRIE, struct hyp_lpm_v4_key,
		   struct hyp_rule_value, HYP_CAP_BLOCK_CIDR, BPF_F_NO_PREALLOC);
HYP_GENERATION_MAP(hyp_bcidr6, BPF_MAP_TYPE_LPM_TRIE, struct hyp_lpm_v6_key,
		   struct hyp_rule_value, HYP_CAP_BLOCK_CIDR, BPF_F_NO_PREALLOC);
/* Exact IPs get hash maps: O(1) lookups where a trie walks 32/128 levels. */
HYP_GENERATION_MAP(hyp_bip4, BPF_MAP_TYPE_HASH, struct hyp_ip_v4_key,
		   struct hyp_rule_value, HYP_CAP_BLOCK_IP, BPF_F_NO_PREALLOC);
HYP_GENERATION_MAP(hyp_bip6, BPF_MAP_TYPE_HASH, struct hyp_ip_v6_key,
		   struct hyp_rule_value, HYP_CAP_BLOCK_IP, BPF_F_NO_PREALLOC);
HYP_GENERATION_MAP(hyp_classes, BPF_MAP_TYPE_HASH, struct hyp_class_key,
		   struct hyp_class_value, HYP_CAP_CLASSES, 0);
/* DNS name rules by key length: most names fit the short key, which is cheaper to hash. */
HYP_GENERATION_MAP(hyp_dns_short, BPF_MAP_TYPE_HASH, struct hyp_dns_key_short,
		   struct hyp_dns_rule, HYP_CAP_DNS_NAMES, BPF_F_NO_PREALLOC);
HYP_GENERATION_MAP(hyp_dns_long, BPF_MAP_TYPE_HASH, struct hyp_dns_key,
		   struct hyp_dns_rule, HYP_CAP_DNS_NAMES, BPF_F_NO_PREALLOC);

/* Runtime blocks (operator, slow path): outside the policy generations so a
 * reload keeps them. LRU so a full table evicts the oldest instead of failing. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HYP_CAP_DYN_BLOCK);
	__type(key, struct hyp_ip_v4_key);
	__type(value, struct hyp_dyn_block);
} hyp_dyn4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HYP_CAP_DYN_BLOCK);
	__type(key, struct hyp_ip_v6_key);
	__type(value, struct hyp_dyn_block);
} hyp_dyn6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, HYP_CAP_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsk_map SEC(".maps");

/* Written by the control plane only; the program reads it per redirect. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HYP_CAP_QUEUES);
	__type(key, __u32);
	__type(value, struct hyp_queue_state);
} hyp_queue_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HYP_CAP_QUEUES);
	__type(key, __u32);
	__type(value, struct hyp_queue_counter);
} hyp_queue_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, HYP_CAP_CLASS_STATS);
	__type(key, struct hyp_class_key);
	__type(value, struct hyp_class_counter);
} hyp_class_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hyp_event_state);
} hyp_event_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, HYP_CAP_EVENT_RING_BYTES);
} hyp_events SEC(".maps");

#endif /* HYP_MAPS_H */
