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

#define DNS_HEADER_LEN 12
#define DNS_MAX_NAME 255                 /* wire bytes with the root label (RFC 1035) */
#define DNS_MAX_LABEL 63
#define DNS_MAX_LABELS 127
/* The header, the longest name and QTYPE/QCLASS: all the stage reads. */
#define DNS_PREFIX_MAX (DNS_HEADER_LEN + DNS_MAX_NAME + 4)
#define DNS_MSG_BUF 512                  /* power of two: indices are masked with DNS_MSG_BUF - 1 */
#define DNS_KEY_BASE 260                 /* >= 4 + 254: the header of the longest name fits before */
#define DNS_KEY_BUF 1024                 /* > any masked index (511) plus a long key (260) */
#define DNS_ZERO_SPAN 64                 /* >= 1 + DNS_MAX_LABEL: one dropped label zeroed at once */

#define DNS_FLAGS_QR 0x80
#define DNS_FLAGS_OPCODE 0x78

/* The DNS stage's per-CPU scratch (lib/dns.h): one packet's message prefix and
 * name key. Kernel-only: user space never reads it. udp directly precedes msg so
 * the answer's UDP checksum is one sum over both. */
struct hyp_dns_scratch {
	__u8 pseudo[40];                 /* the answer's checksum pseudo-header */
	__u8 udp[8];                     /* the answer's UDP header, checksum 0 */
	__u8 msg[DNS_MSG_BUF];           /* the message prefix (DNS_PREFIX_MAX bytes at most) */
	__u8 key[DNS_KEY_BUF];
	__u8 label_off[DNS_MAX_LABELS + 2]; /* p_i per label; [n] = T */
	/* The name walk's state, kept here rather than on the stack: the verifier
	 * tracks no values in map memory, so the walk's callback converges at once
	 * instead of being checked once per label. */
	__u32 walk_pos;                  /* msg offset of the current label's length byte */
	__u32 walk_len;                  /* bytes in msg */
	__u32 walk_labels;
	__u32 walk_status;               /* DNS_WALK_* */
	/* The in-stream TCP answer (lib/dns_tcp.h): the query's TCP header, rewritten here, and
	 * its options walk (state in map memory for the reason above). */
	__u8 tcp[64];                    /* 20 to 60 bytes used */
	__u8 ts[8];                      /* the query's TSval and TSecr, network order */
	__u32 opt_pos;                   /* offset in tcp of the option being walked */
	__u32 opt_end;                   /* the header's length */
	__u32 opt_ts;                    /* offset of the timestamps option, 0 if none */
	struct hyp_dns_tcp_key tcp_key;  /* the segment's connection */
	struct hyp_dns_tcp_flow tcp_flow; /* a new connection's entry */
	struct bpf_sock_tuple sk_tuple;  /* a SYN's 4-tuple, for the local socket lookup */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hyp_dns_scratch);
} hyp_dns_scratch SEC(".maps");

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

/* TCP connections to DNS classes (outside the generations: a reload keeps them). LRU: a full
 * table evicts the oldest, whose payload then counts as HYP_REASON_DNS_TCP_MIDSTREAM. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HYP_CAP_DNS_TCP_FLOWS);
	__type(key, struct hyp_dns_tcp_key);
	__type(value, struct hyp_dns_tcp_flow);
} hyp_dns_tcp SEC(".maps");

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
