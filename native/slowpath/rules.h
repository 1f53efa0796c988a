/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Slow-path rule sets. DNS names: exact and "*.suffix" names in one hash
 * table (a lookup per label suffix of the query name, so the cost depends on
 * the name, not on the rule count) and regexes in one Hyperscan database.
 * Payload signatures: one Hyperscan database per redirect class.
 * Precedence of DNS rules (the same as the XDP stage's, DESIGN14): the most specific name rule
 * wins (the exact rule on the whole name, then "*.x" rules by decreasing length of x); on the
 * same (kind, name) a rule with the query's qtype beats one without qtype; identical (kind, name,
 * qtype): the first in the policy. Regex rules only when no name rule matches: the first in the
 * policy among them. Among signatures of a class, the first in the policy.
 */
#ifndef HYP_SLOWPATH_RULES_H
#define HYP_SLOWPATH_RULES_H

#include <stddef.h>
#include <stdint.h>
#include <hs/hs.h>

#include "dns.h"

enum sp_action {
	SP_DROP = 0,
	SP_PASS = 1,
	SP_ALERT = 2,
	SP_NXDOMAIN = 3,
	SP_REFUSE = 4,
	SP_BLOCK_SOURCE = 5,
	SP_ACTION_COUNT,
};

enum sp_name_kind {
	SP_EXACT = 0,
	SP_SUFFIX = 1, /* "*.evil.com": strict subdomains; the apex does not match */
};

#define SP_NO_RULE UINT32_MAX

struct sp_rule {
	uint8_t action;
	uint16_t qtype;      /* 0 = any */
	uint64_t ttl_ns;     /* block_source */
	uint32_t next;       /* next rule for the same (kind, name), in policy order */
	/* block_source: a token bucket of max_blocks_per_sec tokens (one second's worth), refilled at
	 * that rate; 0 = uncapped. Per Rules object, i.e. per worker (queue) and rule generation. */
	uint32_t max_blocks_per_sec;
	double tokens;
	uint64_t refilled_ns;
};

/* A closed range of addresses, big-endian (the first 4 bytes for IPv4). */
struct sp_range {
	uint8_t lo[16];
	uint8_t hi[16];
};

struct sp_name_slot {
	uint64_t hash;
	char *name;          /* NULL = empty slot */
	uint16_t len;
	uint8_t kind;
	uint32_t first_rule;
};

struct sp_class_db {
	uint8_t protocol;
	uint16_t port;
	hs_database_t *db;
	uint32_t *rule_ids;  /* Hyperscan id -> rule index */
	uint32_t rule_id_count;
};

struct sp_rules {
	struct sp_rule *rules;         /* every rule, DNS and signatures, by index */
	uint32_t rule_count;
	struct sp_name_slot *names;    /* open addressing, power-of-two size */
	uint32_t name_mask;
	hs_database_t *dns_regex;      /* NULL if no regex rules */
	uint32_t *dns_regex_rules;     /* Hyperscan id -> rule index */
	uint32_t dns_regex_count;
	struct sp_class_db *classes;
	uint32_t class_count;
	hs_scratch_t *scratch_proto;   /* sized for every database; cloned per worker */
	uint8_t malformed_action;
	uint8_t dns_fragments;     /* enum hyp_dns_fragment_policy: what a first fragment to a DNS class gets */
	uint64_t *hits;                /* per rule, updated atomically by all workers */
	/* DNS classes (a redirect class whose port is in slow_path.dns_ports), a bit per port: [0] UDP,
	 * [1] TCP. Only UDP ones are parsed as DNS this round; TCP ones are carried for DNS over TCP. */
	uint8_t dns_ports[2][65536 / 8];
	/* never_block: sorted, disjoint ranges per family; block_source never inserts a source in one. */
	struct sp_range *never4, *never6;
	uint32_t never4_count, never6_count;
};

struct sp_rules *sp_rules_new(uint32_t rule_count, uint32_t name_capacity);
void sp_rules_free(struct sp_rules *r);
/* Each returns 0 or -1 with *error set (static or allocated in err_buf). */
int sp_rules_add_name(struct sp_rules *r, uint32_t index, uint8_t kind, const char *name);
int sp_rules_compile_dns_regex(struct sp_rules *r, const char **patterns, const uint32_t *rule_ids,
			       uint32_t count, char *err_buf, size_t err_len);
int sp_rules_add_class(struct sp_rules *r, uint8_t protocol, uint16_t port, const char **patterns,
		       const uint32_t *rule_ids, uint32_t count, char *err_buf, size_t err_len);
int sp_rules_finish(struct sp_rules *r, char *err_buf, size_t err_len);
/* The same two, from databases hs_serialize_database wrote (a worker takes what the daemon compiled). */
int sp_rules_load_dns_regex(struct sp_rules *r, const char *bytes, size_t len, const uint32_t *rule_ids,
			    uint32_t count, char *err_buf, size_t err_len);
int sp_rules_load_class(struct sp_rules *r, uint8_t protocol, uint16_t port, const char *bytes, size_t len,
			const uint32_t *rule_ids, uint32_t count, char *err_buf, size_t err_len);
/* Marks (protocol, port) a DNS class: 0, or -1 if the protocol is neither UDP nor TCP. */
int sp_rules_add_dns_class(struct sp_rules *r, uint8_t protocol, uint16_t port);
/* 1 if (protocol, port) is a DNS class. */
int sp_is_dns_class(const struct sp_rules *r, uint8_t protocol, uint16_t port);
/* Hyperscan compiles done by this process (a worker that loads serialized databases does none). */
unsigned long sp_compile_count(void);

/* The deciding rule for a question (precedence above), or SP_NO_RULE. */
uint32_t sp_match_dns(const struct sp_rules *r, hs_scratch_t *scratch, const struct dns_question *q);
/* Best signature rule for a payload of the class, or SP_NO_RULE. */
uint32_t sp_match_payload(const struct sp_rules *r, hs_scratch_t *scratch, uint8_t protocol, uint16_t port,
			  const uint8_t *payload, size_t len);

/* 1 if the source (4 or 16 bytes, by version) is in a never_block range. */
int sp_never_blocked(const struct sp_rules *r, uint8_t ip_version, const uint8_t *addr);
/* Takes one block token of the rule at now_ns: 1 if the block may be inserted, 0 if over the cap. */
int sp_take_block_token(struct sp_rules *r, uint32_t rule, uint64_t now_ns);

#endif
