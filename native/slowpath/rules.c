/* SPDX-License-Identifier: BSD-2-Clause */
#include "rules.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyperion_parser.h"

static uint64_t fnv1a(const char *s, size_t len, uint8_t kind)
{
	uint64_t h = 1469598103934665603ULL ^ kind;

	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

struct sp_rules *sp_rules_new(uint32_t rule_count, uint32_t name_capacity)
{
	struct sp_rules *r = calloc(1, sizeof(*r));
	uint32_t size = 16;

	if (!r)
		return NULL;
	while (size < name_capacity * 2)  /* load factor <= 0.5 */
		size <<= 1;
	r->rules = calloc(rule_count ? rule_count : 1, sizeof(*r->rules));
	r->hits = calloc(rule_count ? rule_count : 1, sizeof(*r->hits));
	r->names = calloc(size, sizeof(*r->names));
	r->name_mask = size - 1;
	r->rule_count = rule_count;
	if (!r->rules || !r->hits || !r->names) {
		sp_rules_free(r);
		return NULL;
	}
	for (uint32_t i = 0; i < rule_count; i++)
		r->rules[i].next = SP_NO_RULE;
	return r;
}

void sp_rules_free(struct sp_rules *r)
{
	if (!r)
		return;
	if (r->names)
		for (uint32_t i = 0; i <= r->name_mask; i++)
			free(r->names[i].name);
	for (uint32_t i = 0; i < r->class_count; i++) {
		hs_free_database(r->classes[i].db);
		free(r->classes[i].rule_ids);
	}
	free(r->classes);
	hs_free_database(r->dns_regex);
	free(r->dns_regex_rules);
	hs_free_scratch(r->scratch_proto);
	free(r->names);
	free(r->rules);
	free(r->hits);
	free(r->never4);
	free(r->never6);
	free(r);
}

static struct sp_name_slot *find_slot(const struct sp_rules *r, const char *name, size_t len, uint8_t kind)
{
	uint64_t h = fnv1a(name, len, kind);

	for (uint32_t i = (uint32_t)h & r->name_mask;; i = (i + 1) & r->name_mask) {
		struct sp_name_slot *slot = &r->names[i];

		if (!slot->name || (slot->hash == h && slot->len == len && slot->kind == kind &&
				    memcmp(slot->name, name, len) == 0))
			return slot;
	}
}

int sp_rules_add_name(struct sp_rules *r, uint32_t index, uint8_t kind, const char *name)
{
	size_t len = strlen(name);
	struct sp_name_slot *slot = find_slot(r, name, len, kind);

	if (index >= r->rule_count || len > DNS_MAX_NAME)
		return -1;
	if (!slot->name) {
		slot->name = strdup(name);
		if (!slot->name)
			return -1;
		slot->hash = fnv1a(name, len, kind);
		slot->len = (uint16_t)len;
		slot->kind = kind;
		slot->first_rule = index;
		return 0;
	}
	/* Same name again: append, keeping policy order along the chain. */
	uint32_t *link = &slot->first_rule;

	while (*link != SP_NO_RULE && *link < index)
		link = &r->rules[*link].next;
	r->rules[index].next = *link;
	*link = index;
	return 0;
}

static int dns_family(uint8_t protocol)
{
	return protocol == HYP_IPPROTO_UDP ? 0 : protocol == HYP_IPPROTO_TCP ? 1 : -1;
}

int sp_rules_add_dns_class(struct sp_rules *r, uint8_t protocol, uint16_t port)
{
	int family = dns_family(protocol);

	if (family < 0)
		return -1;
	r->dns_ports[family][port / 8] |= (uint8_t)(1u << (port % 8));
	return 0;
}

int sp_is_dns_class(const struct sp_rules *r, uint8_t protocol, uint16_t port)
{
	int family = dns_family(protocol);

	return family >= 0 && (r->dns_ports[family][port / 8] >> (port % 8)) & 1;
}

static unsigned long compile_count;

unsigned long sp_compile_count(void)
{
	return __atomic_load_n(&compile_count, __ATOMIC_RELAXED);
}

static int compile(const char **patterns, const uint32_t *rule_ids, uint32_t count, hs_database_t **db,
		   uint32_t **ids_out, char *err_buf, size_t err_len)
{
	unsigned *flags = calloc(count, sizeof(*flags));
	unsigned *ids = calloc(count, sizeof(*ids));
	hs_compile_error_t *error = NULL;
	int rc = -1;

	*ids_out = calloc(count, sizeof(**ids_out));
	if (!flags || !ids || !*ids_out)
		goto out;
	for (uint32_t i = 0; i < count; i++) {
		/* One match is enough to decide; DOTALL so '.' spans payload bytes. */
		flags[i] = HS_FLAG_SINGLEMATCH | HS_FLAG_DOTALL | HS_FLAG_ALLOWEMPTY;
		ids[i] = i;
		(*ids_out)[i] = rule_ids[i];
	}
	__atomic_add_fetch(&compile_count, 1, __ATOMIC_RELAXED);
	if (hs_compile_multi(patterns, flags, ids, count, HS_MODE_BLOCK, NULL, db, &error) != HS_SUCCESS) {
		snprintf(err_buf, err_len, "pattern %d: %s", error ? error->expression : -1,
			 error && error->message ? error->message : "compile failed");
		hs_free_compile_error(error);
		goto out;
	}
	rc = 0;
out:
	free(flags);
	free(ids);
	if (rc) {
		free(*ids_out);
		*ids_out = NULL;
	}
	return rc;
}

/* A serialized database; ids as compile() numbers them (0..count-1, mapped through rule_ids). */
static int load(const char *bytes, size_t len, const uint32_t *rule_ids, uint32_t count, hs_database_t **db,
		uint32_t **ids_out, char *err_buf, size_t err_len)
{
	hs_error_t rc;

	*ids_out = calloc(count ? count : 1, sizeof(**ids_out));
	if (!*ids_out) {
		snprintf(err_buf, err_len, "out of memory");
		return -1;
	}
	memcpy(*ids_out, rule_ids, count * sizeof(**ids_out));
	rc = hs_deserialize_database(bytes, len, db);
	if (rc != HS_SUCCESS) {
		snprintf(err_buf, err_len, "serialized database refused by Hyperscan (error %d)", rc);
		free(*ids_out);
		*ids_out = NULL;
		*db = NULL;
		return -1;
	}
	return 0;
}

int sp_rules_compile_dns_regex(struct sp_rules *r, const char **patterns, const uint32_t *rule_ids,
			       uint32_t count, char *err_buf, size_t err_len)
{
	if (!count)
		return 0;
	r->dns_regex_count = count;
	return compile(patterns, rule_ids, count, &r->dns_regex, &r->dns_regex_rules, err_buf, err_len);
}

int sp_rules_load_dns_regex(struct sp_rules *r, const char *bytes, size_t len, const uint32_t *rule_ids,
			    uint32_t count, char *err_buf, size_t err_len)
{
	if (!count)
		return 0;
	r->dns_regex_count = count;
	return load(bytes, len, rule_ids, count, &r->dns_regex, &r->dns_regex_rules, err_buf, err_len);
}

static struct sp_class_db *new_class(struct sp_rules *r, uint8_t protocol, uint16_t port, uint32_t count)
{
	struct sp_class_db *grown = realloc(r->classes, (r->class_count + 1) * sizeof(*grown));
	struct sp_class_db *c;

	if (!grown)
		return NULL;
	r->classes = grown;
	c = &r->classes[r->class_count];
	memset(c, 0, sizeof(*c));
	c->protocol = protocol;
	c->port = port;
	c->rule_id_count = count;
	return c;
}

int sp_rules_add_class(struct sp_rules *r, uint8_t protocol, uint16_t port, const char **patterns,
		       const uint32_t *rule_ids, uint32_t count, char *err_buf, size_t err_len)
{
	struct sp_class_db *c = new_class(r, protocol, port, count);

	if (!c)
		return -1;
	if (count && compile(patterns, rule_ids, count, &c->db, &c->rule_ids, err_buf, err_len))
		return -1;
	r->class_count++;
	return 0;
}

int sp_rules_load_class(struct sp_rules *r, uint8_t protocol, uint16_t port, const char *bytes, size_t len,
			const uint32_t *rule_ids, uint32_t count, char *err_buf, size_t err_len)
{
	struct sp_class_db *c = new_class(r, protocol, port, count);

	if (!c)
		return -1;
	if (count && load(bytes, len, rule_ids, count, &c->db, &c->rule_ids, err_buf, err_len))
		return -1;
	r->class_count++;
	return 0;
}

int sp_rules_finish(struct sp_rules *r, char *err_buf, size_t err_len)
{
	if (r->dns_regex && hs_alloc_scratch(r->dns_regex, &r->scratch_proto) != HS_SUCCESS)
		goto fail;
	for (uint32_t i = 0; i < r->class_count; i++)
		if (r->classes[i].db && hs_alloc_scratch(r->classes[i].db, &r->scratch_proto) != HS_SUCCESS)
			goto fail;
	return 0;
fail:
	snprintf(err_buf, err_len, "cannot allocate Hyperscan scratch space");
	return -1;
}

struct best_match {
	const struct sp_rules *rules;
	const uint32_t *ids;
	uint32_t id_count;   /* a database that reports an id past its table is ignored, not trusted */
	uint16_t qtype;
	uint32_t best;
};

static int qtype_ok(const struct sp_rule *rule, uint16_t qtype)
{
	return rule->qtype == 0 || rule->qtype == qtype;
}

static int on_match(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags,
		    void *ctx)
{
	struct best_match *m = ctx;
	uint32_t rule;

	(void)from, (void)to, (void)flags;
	if (id >= m->id_count)
		return 0;
	rule = m->ids[id];
	if (rule < m->best && qtype_ok(&m->rules->rules[rule], m->qtype))
		m->best = rule;
	return 0; /* keep scanning: a later pattern may be an earlier rule */
}

/* The rule a (kind, name) slot decides for a qtype: the first rule in policy order whose qtype is
 * the query's, else the first without qtype (a qtype-specific rule is the more specific one). */
static uint32_t best_in_chain(const struct sp_rules *r, uint32_t rule, uint16_t qtype)
{
	uint32_t any = SP_NO_RULE;

	for (; rule != SP_NO_RULE; rule = r->rules[rule].next) {
		uint16_t want = r->rules[rule].qtype;

		if (want != 0 && want == qtype)
			return rule;
		if (want == 0 && any == SP_NO_RULE)
			any = rule;
	}
	return any;
}

static uint32_t lookup(const struct sp_rules *r, const char *name, size_t len, uint8_t kind, uint16_t qtype)
{
	const struct sp_name_slot *slot = find_slot(r, name, len, kind);

	return slot->name ? best_in_chain(r, slot->first_rule, qtype) : SP_NO_RULE;
}

uint32_t sp_match_dns(const struct sp_rules *r, hs_scratch_t *scratch, const struct dns_question *q)
{
	/* The most specific name rule: the exact rule on the whole name, then each proper suffix
	 * after a dot from the longest to the shortest (at most one lookup per label). */
	uint32_t best = lookup(r, q->name, q->name_len, SP_EXACT, q->qtype);

	for (size_t i = 0; best == SP_NO_RULE && i < q->name_len; i++)
		if (q->name[i] == '.')
			best = lookup(r, q->name + i + 1, q->name_len - i - 1, SP_SUFFIX, q->qtype);
	/* Regexes only when no name rule matched: the first in policy order. */
	if (best == SP_NO_RULE && r->dns_regex && scratch) {
		struct best_match m = { r, r->dns_regex_rules, r->dns_regex_count, q->qtype, SP_NO_RULE };

		hs_scan(r->dns_regex, q->name, (unsigned)q->name_len, 0, scratch, on_match, &m);
		best = m.best;
	}
	return best;
}

uint32_t sp_match_payload(const struct sp_rules *r, hs_scratch_t *scratch, uint8_t protocol, uint16_t port,
			  const uint8_t *payload, size_t len)
{
	for (uint32_t i = 0; i < r->class_count; i++) {
		const struct sp_class_db *c = &r->classes[i];

		if (c->protocol != protocol || c->port != port || !c->db || !scratch)
			continue;
		struct best_match m = { r, c->rule_ids, c->rule_id_count, 0, SP_NO_RULE };

		hs_scan(c->db, (const char *)payload, (unsigned)len, 0, scratch, on_match, &m);
		return m.best;
	}
	return SP_NO_RULE;
}

int sp_never_blocked(const struct sp_rules *r, uint8_t ip_version, const uint8_t *addr)
{
	const struct sp_range *ranges = ip_version == 4 ? r->never4 : r->never6;
	uint32_t lo = 0, hi = ip_version == 4 ? r->never4_count : r->never6_count;
	size_t width = ip_version == 4 ? 4 : 16;

	/* The last range starting at or below addr is the only one that can hold it. */
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (memcmp(ranges[mid].lo, addr, width) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && memcmp(addr, ranges[lo - 1].hi, width) <= 0;
}

int sp_take_block_token(struct sp_rules *r, uint32_t rule, uint64_t now_ns)
{
	struct sp_rule *rl = &r->rules[rule];
	double cap = (double)rl->max_blocks_per_sec;

	if (!rl->max_blocks_per_sec)
		return 1;
	if (rl->refilled_ns == 0) {  /* first use: a full bucket */
		rl->tokens = cap;
	} else if (now_ns > rl->refilled_ns) {
		rl->tokens += (double)(now_ns - rl->refilled_ns) * cap / 1e9;
		if (rl->tokens > cap)
			rl->tokens = cap;
	}
	rl->refilled_ns = now_ns;
	if (rl->tokens < 1.0)
		return 0;
	rl->tokens -= 1.0;
	return 1;
}
