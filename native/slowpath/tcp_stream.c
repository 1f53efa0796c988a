/* SPDX-License-Identifier: BSD-2-Clause */
#include "tcp_stream.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "control.h"
#include "rules.h"

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

struct sp_tcp_streams *sp_tcp_streams_new(uint32_t capacity, uint64_t idle_ns, uint32_t max_message,
					   uint64_t *stats)
{
	struct sp_tcp_streams *t = calloc(1, sizeof(*t));
	uint32_t n = SP_TCP_PROBE;

	if (!t)
		return NULL;
	while (n < capacity && n < (1U << 24))
		n <<= 1;
	t->slots = calloc(n, sizeof(*t->slots));
	t->scratch = malloc(2 + (size_t)max_message);
	if (!t->slots || !t->scratch) {
		sp_tcp_streams_free(t);
		return NULL;
	}
	t->mask = n - 1;
	t->idle_ns = idle_ns;
	t->max_message = max_message;
	t->stats = stats;
	if (getrandom(&t->seed, sizeof(t->seed), GRND_NONBLOCK) != sizeof(t->seed)) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		t->seed = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)t;
	}
	return t;
}

static void conn_clear(struct sp_tcp_streams *t, struct sp_tcp_conn *c)
{
	free(c->pending);
	memset(c, 0, sizeof(*c));
	t->count--;
}

void sp_tcp_streams_free(struct sp_tcp_streams *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; t->slots && i <= t->mask; i++)
		free(t->slots[i].pending);
	free(t->slots);
	free(t->scratch);
	free(t);
}

uint32_t sp_tcp_count(const struct sp_tcp_streams *t)
{
	return t->count;
}

void sp_tcp_key(const struct sp_packet *p, struct hyp_dns_tcp_key *key)
{
	size_t width = p->ip_version == 4 ? 4 : 16;

	memset(key, 0, sizeof(*key));
	memcpy(key->saddr, p->saddr, width);
	memcpy(key->daddr, p->daddr, width);
	key->sport = p->src_port;
	key->dport = p->dst_port;
	key->family = p->ip_version;
}

/* A keyed mix of the key's 40 bytes (5 words). */
static uint32_t slot_of(const struct sp_tcp_streams *t, const struct hyp_dns_tcp_key *key)
{
	uint64_t w[5], h = t->seed;

	_Static_assert(sizeof(*key) == sizeof(w), "hyp_dns_tcp_key is 40 bytes");
	memcpy(w, key, sizeof(w));
	for (int i = 0; i < 5; i++) {
		h ^= w[i];
		h *= 0xFF51AFD7ED558CCDULL;
		h ^= h >> 33;
	}
	h *= 0xC4CEB9FE1A85EC53ULL;
	h ^= h >> 29;
	return (uint32_t)h & t->mask;
}

/* A connection forgotten (expired or evicted): if XDP handed it over, XDP must not resume it from
 * its stale `next` either, so its entry goes too (its later payload is then midstream there). */
static void forget(struct sp_tcp_streams *t, struct sp_tcp_conn *c, enum sp_stat why)
{
	t->stats[why]++;
	if (c->from_map && t->forget)
		t->forget(t->owner, &c->key);
	conn_clear(t, c);
}

static int expired(const struct sp_tcp_streams *t, const struct sp_tcp_conn *c, uint64_t now)
{
	return now - c->last_ns > t->idle_ns && now > c->last_ns;
}

static struct sp_tcp_conn *lookup(struct sp_tcp_streams *t, const struct hyp_dns_tcp_key *key, uint64_t now)
{
	uint32_t base = slot_of(t, key);

	for (uint32_t i = 0; i < SP_TCP_PROBE; i++) {
		struct sp_tcp_conn *c = &t->slots[(base + i) & t->mask];

		if (!c->used || memcmp(&c->key, key, sizeof(*key)))
			continue;
		if (expired(t, c, now)) {
			forget(t, c, ST_DNS_TCP_EXPIRED);
			return NULL;
		}
		return c;
	}
	return NULL;
}

/* A fresh connection for key (not in the table): a free or idle slot of its window, else the
 * window's least recently used one is evicted. */
static struct sp_tcp_conn *insert(struct sp_tcp_streams *t, const struct hyp_dns_tcp_key *key, uint64_t now)
{
	uint32_t base = slot_of(t, key);
	struct sp_tcp_conn *victim = NULL, *free_slot = NULL;

	for (uint32_t i = 0; i < SP_TCP_PROBE; i++) {
		struct sp_tcp_conn *c = &t->slots[(base + i) & t->mask];

		if (c->used && expired(t, c, now))
			forget(t, c, ST_DNS_TCP_EXPIRED);
		if (!c->used) {
			free_slot = free_slot ? free_slot : c;
			continue;
		}
		if (!victim || c->last_ns < victim->last_ns)
			victim = c;
	}
	if (!free_slot) {
		forget(t, victim, ST_DNS_TCP_EVICTED);
		free_slot = victim;
	}
	free_slot->used = 1;
	free_slot->key = *key;
	free_slot->last_ns = now;
	t->count++;
	return free_slot;
}

static void restart(struct sp_tcp_conn *c, uint32_t next)
{
	free(c->pending);
	c->pending = NULL;
	c->pending_len = 0;
	c->skip = 0;
	c->ended = 0;
	c->from_map = 0;
	c->next = next;
}

/* From the XDP program's hand-off (hyp_dns_tcp): 0 when the entry gave a state. */
static int take_handoff(struct sp_tcp_streams *t, struct sp_tcp_conn *c, const struct hyp_dns_tcp_flow *flow)
{
	restart(c, flow->next);
	c->from_map = 1;
	c->map_next = flow->next;
	c->ended = flow->state == HYP_DNS_TCP_ENDED;
	t->stats[ST_DNS_TCP_HANDOFF]++;
	return 0;
}

static void decided(struct sp_tcp_result *res, struct sp_tcp_conn *c, uint8_t action, const uint8_t *msg,
		    size_t len)
{
	res->cause = SP_TCP_RULE;
	res->action = action;
	res->conn = c;
	res->head_len = len < SP_TCP_HEAD_MAX ? len : SP_TCP_HEAD_MAX;
	memcpy(res->head, msg, res->head_len);
}

void sp_tcp_segment(struct sp_tcp_streams *t, const uint8_t *frame, const struct sp_packet *p, uint64_t now,
		    sp_tcp_judge_fn judge, sp_tcp_established_fn established, void *ctx,
		    struct sp_tcp_result *res)
{
	const uint8_t *tcp = frame + p->l4_offset, *pay = frame + p->payload_offset;
	struct hyp_dns_tcp_key key;
	struct sp_tcp_conn *c;
	size_t n = p->payload_len, pos = 0;
	uint32_t seq = rd32(tcp + 4), data_seq = seq;
	uint8_t flags = tcp[13];

	memset(res, 0, offsetof(struct sp_tcp_result, head));
	res->seq = seq;
	res->ack = rd32(tcp + 8);
	res->flags = flags;
	res->cause = SP_TCP_NO_DATA;
	/* The server processes a reset before any data, which it never reads (RFC 9293 3.10.7.4). */
	if (flags & SP_TCP_RST)
		return;
	sp_tcp_key(p, &key);
	c = lookup(t, &key, now);
	if ((flags & (SP_TCP_SYN | SP_TCP_ACK)) == SP_TCP_SYN) {
		/* A new connection, or a reused 4-tuple: B starts after the SYN. Not while the server still
		 * has the old one established (it discards the SYN): else a client could restart B anywhere. */
		if (!c)
			c = insert(t, &key, now);
		else if (c->next != seq + 1 && established && established(ctx))
			goto established_syn;
		restart(c, seq + 1);
established_syn:
		data_seq = seq + 1; /* TCP Fast Open: data in the SYN starts there */
	} else if (flags & SP_TCP_SYN) {
		/* SYN|ACK towards the server: never a DNS client's; the server accepts no data with it. */
		if (n)
			res->cause = SP_TCP_OUT_OF_ORDER, t->stats[ST_DNS_TCP_OUT_OF_ORDER]++;
		return;
	}
	if (c)
		c->last_ns = now;
	if (!n)
		return;
	if (!c) {
		struct hyp_dns_tcp_flow flow;

		if (!t->lookup || t->lookup(t->owner, &key, &flow) || (flow.state != HYP_DNS_TCP_SLOWPATH &&
									flow.state != HYP_DNS_TCP_XDP &&
									flow.state != HYP_DNS_TCP_ENDED)) {
			res->cause = SP_TCP_MIDSTREAM;
			t->stats[ST_DNS_TCP_MIDSTREAM]++;
			return;
		}
		c = insert(t, &key, now);
		take_handoff(t, c, &flow);
	}
	if (c->ended) {
		res->cause = SP_TCP_ENDED;
		t->stats[ST_DNS_TCP_ENDED]++;
		return;
	}
	if (data_seq != c->next) {
		struct hyp_dns_tcp_flow flow;

		/* XDP may have restarted the 4-tuple on a new SYN since it handed the old one over. */
		if (!(c->from_map && t->lookup && !t->lookup(t->owner, &key, &flow) && flow.next != c->map_next &&
		      flow.next == data_seq && flow.state == HYP_DNS_TCP_SLOWPATH)) {
			res->cause = SP_TCP_OUT_OF_ORDER;
			t->stats[ST_DNS_TCP_OUT_OF_ORDER]++;
			return;
		}
		take_handoff(t, c, &flow);
	}

	/* The segment starts at B. Judge every message it makes whole, in order, before changing
	 * anything: a message that is not passed leaves the connection as it was. */
	uint32_t plen = c->pending_len, skip = c->skip;
	int completed = 0; /* the pending message was made whole (or skipped) by this segment */

	res->cause = SP_TCP_DATA;
	if (skip) {
		size_t k = skip < n ? skip : n;

		pos += k;
		skip -= (uint32_t)k;
	}
	if (plen) {
		uint8_t *whole = t->scratch;
		size_t have = plen, hdr_need = have < 2 ? 2 - have : 0;

		memcpy(whole, c->pending, plen);
		if (hdr_need && n - pos >= hdr_need) {
			memcpy(whole + have, pay + pos, hdr_need);
			have += hdr_need;
			pos += hdr_need;
		}
		if (have >= 2) {
			size_t len = rd16(whole);

			if (len > t->max_message) {
				uint8_t action = judge(ctx, NULL, len, 1);

				res->messages++;
				if (action != SP_PASS && action != SP_ALERT) {
					decided(res, c, action, whole, 0);
					return;
				}
				/* Passed unread: what is left of it is skipped. */
				size_t body = have - 2, k = len - body < n - pos ? len - body : n - pos;

				pos += k;
				skip = (uint32_t)(len - body - k);
				completed = 1;
			} else if (have - 2 + (n - pos) >= len) {
				size_t k = len - (have - 2);
				uint8_t action;

				memcpy(whole + have, pay + pos, k);
				pos += k;
				res->messages++;
				action = judge(ctx, whole + 2, len, 0);
				if (action != SP_PASS && action != SP_ALERT) {
					decided(res, c, action, whole + 2, len);
					return;
				}
				completed = 1;
			}
		}
		if (!completed)
			pos = n; /* still incomplete: all of it is appended below */
	}
	size_t tail = n; /* where the incomplete message at the end starts, n: none */

	while (pos < n) {
		size_t left = n - pos, len;
		uint8_t action;

		if (left < 2) {
			tail = pos;
			break;
		}
		len = rd16(pay + pos);
		if (len > t->max_message) {
			res->messages++;
			action = judge(ctx, NULL, len, 1);
			if (action != SP_PASS && action != SP_ALERT) {
				decided(res, c, action, pay + pos, 0);
				return;
			}
			size_t k = len < left - 2 ? len : left - 2;

			skip = (uint32_t)(len - k);
			pos += 2 + k;
			continue;
		}
		if (left - 2 < len) {
			tail = pos;
			break;
		}
		res->messages++;
		action = judge(ctx, pay + pos + 2, len, 0);
		if (action != SP_PASS && action != SP_ALERT) {
			decided(res, c, action, pay + pos + 2, len);
			return;
		}
		pos += 2 + len;
	}

	/* Delivered: commit. */
	c->next += (uint32_t)n;
	c->skip = skip;
	if (plen && !completed) {
		uint8_t *buf = c->pending;

		/* plen + n < 2 + len <= 2 + max_message: the message is still incomplete */
		memcpy(buf + plen, pay, n);
		c->pending_len = plen + (uint32_t)n;
		return;
	}
	if (tail < n) {
		if (!c->pending)
			c->pending = malloc(2 + (size_t)t->max_message);
		if (!c->pending) { /* out of memory: this connection cannot be followed any more */
			c->ended = 1;
			c->pending_len = 0;
			return;
		}
		memcpy(c->pending, pay + tail, n - tail);
		c->pending_len = (uint32_t)(n - tail);
	} else {
		free(c->pending);
		c->pending = NULL;
		c->pending_len = 0;
	}
}

void sp_tcp_end(struct sp_tcp_streams *t, struct sp_tcp_result *res)
{
	(void)t;
	if (res->conn)
		res->conn->ended = 1;
}
