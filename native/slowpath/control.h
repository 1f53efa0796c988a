/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The worker interface, C side: the control block a supervisor shares with its worker (one
 * memfd, mapped by both), the worker's counters, the event record and the Rules constructor's
 * arguments. Each is defined here only; the extension exports them (CONTROL_LAYOUT, STAT_NAMES,
 * EVENT_FIELDS, RULE_SPEC_FIELDS), Python defines the same in hyperion.slowpath.protocol, and
 * tests/unit/test_worker_protocol.py checks the two agree. Counters are written by the worker's
 * loop as packets are handled, so a scrape shows every packet already answered, without
 * waiting for a report.
 */
#ifndef SP_CONTROL_H
#define SP_CONTROL_H

#include <stdint.h>

#include "dns.h"

/* Worker counters, in this order: X(ID, "name") generates enum sp_stat (ST_ID) and the names
 * the extension exports as STAT_NAMES (and Queue.stats() uses). */
#define SP_STATS(X)                                                                          \
	X(RX, "rx") X(PASSED, "passed") X(DROPPED, "dropped") X(ALERTED, "alerted")             \
	X(NXDOMAIN, "nxdomain") X(REFUSED, "refused") X(BLOCKED_SOURCES, "blocked_sources")     \
	X(MALFORMED_DNS, "malformed_dns") X(DNS_INSPECTED, "dns_inspected")                     \
	X(NOT_PARSED, "not_parsed") X(TX_SENT, "tx_sent") X(TX_FAILED, "tx_failed")             \
	X(DELIVER_ERRORS, "deliver_errors") X(BLOCK_ERRORS, "block_errors")                     \
	X(EVENTS_LOST, "events_lost") X(BATCHES, "batches") X(BUSY_NS, "busy_ns")               \
	X(BLOCK_NEVER, "block_never_block") X(BLOCK_RATE_LIMITED, "block_rate_limited")         \
	X(BLOCK_NOT_ESTABLISHED, "block_not_established") X(CSUM_COMPLETED, "csum_completed")   \
	X(CSUM_BAD, "csum_bad") X(DNS_TCP_MESSAGES, "dns_tcp_messages")                           \
	X(DNS_TCP_MIDSTREAM, "dns_tcp_midstream") X(DNS_TCP_OUT_OF_ORDER, "dns_tcp_out_of_order") \
	X(DNS_TCP_ENDED, "dns_tcp_ended") X(DNS_TCP_ANSWERED, "dns_tcp_answered")                 \
	X(DNS_TCP_HANDOFF, "dns_tcp_handoff") X(DNS_TCP_EXPIRED, "dns_tcp_expired")               \
	X(DNS_TCP_EVICTED, "dns_tcp_evicted")

enum sp_stat {
#define SP_STAT_ENUM(id, name) ST_##id,
	SP_STATS(SP_STAT_ENUM)
#undef SP_STAT_ENUM
	ST_COUNT,
};

/* One event (a packet a rule matched, or malformed DNS), as Queue.drain_events() returns it: a
 * tuple of these fields in this order (module.c builds it from this list). */
#define SP_EVENT_FIELDS(X) \
	X(rule) X(action) X(malformed) X(ip_version) X(protocol) X(src_port) X(dst_port) X(qtype) X(saddr) \
	X(daddr) X(qname)

struct sp_event {
	uint32_t rule;     /* SP_NO_RULE: None */
	uint8_t action;
	uint8_t malformed;
	uint8_t ip_version;
	uint8_t protocol;
	uint16_t src_port;
	uint16_t dst_port;
	uint16_t qtype;
	uint8_t saddr[16]; /* 4 bytes used for IPv4 */
	uint8_t daddr[16];
	char qname[DNS_MAX_NAME + 1];
};

/* The Rules constructor's arguments, in this order (its keywords; exported as RULE_SPEC_FIELDS):
 * what a rule spec carries. The optional `databases` keyword follows them. dns_classes: the
 * (protocol, port) pairs judged as DNS (none given: no port is). */
#define SP_RULE_SPEC_FIELDS(X) \
	X(rules) X(names) X(dns_regex) X(classes) X(malformed_action) X(never_block) X(block_limits) \
	X(dns_classes) X(dns_fragments)

/* Per-packet inspection latency buckets (upper bounds in module.c); the last is +Inf. */
#define SP_LATENCY_BUCKETS 10

/* Bits of flags. The product's loop reads none: only the lab's fault build of this extension
 * (HYP_FAULT_INJECTION, hyperion.lab._slowpath_faults) reads this one. */
#define CTL_FLAG_STARVE_FILL 1ULL /* stop refilling the fill ring */

struct sp_control {
	uint64_t heartbeat_ns;                /* CLOCK_MONOTONIC, written every loop iteration */
	uint64_t flags;                       /* CTL_FLAG_*: reserved in the product build */
	uint64_t loops;
	uint64_t stat_count;                  /* ST_COUNT, for readers to check */
	uint64_t stats[ST_COUNT];             /* monotonic counters of this worker */
	uint64_t latency[SP_LATENCY_BUCKETS]; /* packets per latency bucket */
};

#endif /* SP_CONTROL_H */
