/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The control block a supervisor shares with its worker: one memfd, mapped by both. The
 * layout is defined here only; the extension exports its offsets (CONTROL_LAYOUT), Python
 * reads the block in one place (hyperion.worker.ControlBlock), and tests/test_limits.py
 * checks the two agree. Counters are written by the worker's loop as packets are handled,
 * so a scrape shows every packet already answered, without waiting for a report.
 */
#ifndef SP_CONTROL_H
#define SP_CONTROL_H

#include <stdint.h>

/* Worker counters, in this order (the extension exports their names as STAT_NAMES). */
enum sp_stat {
	ST_RX, ST_PASSED, ST_DROPPED, ST_ALERTED, ST_NXDOMAIN, ST_REFUSED, ST_BLOCKED_SOURCES,
	ST_MALFORMED_DNS, ST_DNS_INSPECTED, ST_NOT_PARSED, ST_TX_SENT, ST_TX_FAILED, ST_DELIVER_ERRORS,
	ST_BLOCK_ERRORS, ST_EVENTS_LOST, ST_BATCHES, ST_BUSY_NS,
	ST_BLOCK_NEVER, ST_BLOCK_RATE_LIMITED, ST_BLOCK_NOT_ESTABLISHED, ST_CSUM_COMPLETED, ST_CSUM_BAD, ST_COUNT,
};

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
