/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * DNS over TCP in the slow path (DESIGN14B): per-queue stream state for the TCP DNS classes.
 * RFC 7766 / RFC 1035 4.2.2 frame every message with a 2-byte length. Per connection (the client's
 * direction, struct hyp_dns_tcp_key): B = the stream position of the first byte not yet delivered,
 * `pending` = the bytes of the incomplete message that starts before B, and an ended flag. Only a
 * segment starting exactly at B is read: a server trims a segment overlapping what it already has,
 * so judging a segment from its own first byte could judge other bytes than the server reads.
 *
 * The table is bounded (capacity connections, a probe window of SP_TCP_PROBE slots) and forgets a
 * connection idle for idle_ns; a full window evicts its least recently used connection. A forgotten
 * connection's later payload is dropped (midstream): where its queries start is no longer known.
 */
#ifndef HYP_SLOWPATH_TCP_STREAM_H
#define HYP_SLOWPATH_TCP_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "hyperion_abi.h"
#include "packet.h"

#define SP_TCP_PROBE 8
#define SP_TCP_DEFAULT_CAPACITY 8192
#define SP_TCP_DEFAULT_IDLE_NS (60ULL * 1000000000ULL)
/* A declared length over this is malformed (queries are small; RFC 7766 allows up to 65535). */
#define SP_TCP_DEFAULT_MAX_MESSAGE 4096
#define SP_TCP_MAX_MESSAGE_LIMIT 65535
/* What an answer needs of the deciding message: header and question (12 + 255 + 4). */
#define SP_TCP_HEAD_MAX (DNS_HEADER_LEN + DNS_MAX_NAME + 4)

#define SP_TCP_FIN 0x01
#define SP_TCP_SYN 0x02
#define SP_TCP_RST 0x04
#define SP_TCP_PSH 0x08
#define SP_TCP_ACK 0x10

struct sp_tcp_conn {
	struct hyp_dns_tcp_key key;
	uint64_t last_ns;
	uint32_t next;       /* B */
	uint32_t map_next;   /* the hyp_dns_tcp `next` this state was taken from (from_map) */
	uint32_t skip;       /* bytes of a passed oversized message still to come */
	uint32_t pending_len;
	uint8_t *pending;    /* 2 + max_message bytes while pending_len > 0, else NULL */
	uint8_t used, ended, from_map;
};

/* The hand-off from XDP: hyp_dns_tcp's entry for a key; 0 found, -1 none. */
typedef int (*sp_tcp_lookup_fn)(void *owner, const struct hyp_dns_tcp_key *key, struct hyp_dns_tcp_flow *flow);
typedef void (*sp_tcp_forget_fn)(void *owner, const struct hyp_dns_tcp_key *key);

struct sp_tcp_streams {
	struct sp_tcp_conn *slots;
	uint32_t mask;           /* capacity - 1, capacity a power of two */
	uint32_t count;
	uint64_t idle_ns;
	uint32_t max_message;
	uint64_t seed;           /* of the slot hash: drawn at creation, so slots cannot be aimed at */
	uint8_t *scratch;        /* a message completed across segments, 2 + max_message bytes */
	uint64_t *stats;         /* ST_* counters (control.h), the owner's */
	sp_tcp_lookup_fn lookup; /* NULL: no hand-off */
	sp_tcp_forget_fn forget; /* a handed-off connection forgotten here: XDP must not resume it */
	void *owner;
};

enum sp_tcp_cause {
	SP_TCP_NO_DATA = 0,   /* no payload (handshake, ACK, FIN, RST): delivered */
	SP_TCP_DATA,          /* every whole message passed (or none was whole yet): delivered */
	SP_TCP_MIDSTREAM,     /* payload, no state here nor in hyp_dns_tcp: dropped */
	SP_TCP_OUT_OF_ORDER,  /* seq != B: dropped */
	SP_TCP_ENDED,         /* the connection was answered in-stream and ended: dropped */
	SP_TCP_RULE,          /* a message decided (action): the caller carries it out */
	SP_TCP_CAUSE_COUNT,
};

/* Judges one whole message (oversized: its declared length is over max_message and msg holds
 * none of it); returns the action (SP_PASS, SP_ALERT go on to the next message). */
typedef uint8_t (*sp_tcp_judge_fn)(void *ctx, const uint8_t *msg, size_t len, int oversized);
/* Whether the server still holds the segment's connection established: a SYN for it is then
 * discarded by the server (RFC 9293 3.10.7.4, RFC 5961 4), so it must not restart B here. */
typedef int (*sp_tcp_established_fn)(void *ctx);

struct sp_tcp_result {
	enum sp_tcp_cause cause;
	uint8_t action;                 /* SP_TCP_RULE: the deciding action */
	uint32_t messages;              /* whole messages judged in this segment */
	struct sp_tcp_conn *conn;       /* SP_TCP_RULE: for sp_tcp_end(); valid until the next call */
	uint8_t head[SP_TCP_HEAD_MAX];  /* SP_TCP_RULE: the deciding message's first head_len bytes */
	size_t head_len;
	uint32_t seq, ack;              /* the segment's */
	uint8_t flags;
};

/* capacity rounded up to a power of two (>= SP_TCP_PROBE); NULL when out of memory. */
struct sp_tcp_streams *sp_tcp_streams_new(uint32_t capacity, uint64_t idle_ns, uint32_t max_message,
					   uint64_t *stats);
void sp_tcp_streams_free(struct sp_tcp_streams *t);

/* The key of a parsed TCP segment (the client's direction, as XDP writes it). */
void sp_tcp_key(const struct sp_packet *p, struct hyp_dns_tcp_key *key);

/*
 * One TCP segment of a DNS class (p from sp_parse_frame): updates the connection and judges every
 * message the segment makes whole. SP_TCP_NO_DATA / SP_TCP_DATA: deliver it (state advanced);
 * SP_TCP_MIDSTREAM, _OUT_OF_ORDER, _ENDED: drop it; SP_TCP_RULE: the connection is as before the
 * segment, and the caller carries out result->action (then sp_tcp_end() when it ends the stream).
 */
void sp_tcp_segment(struct sp_tcp_streams *t, const uint8_t *frame, const struct sp_packet *p, uint64_t now_ns,
		    sp_tcp_judge_fn judge, sp_tcp_established_fn established, void *ctx,
		    struct sp_tcp_result *result);

/* Marks the connection of an SP_TCP_RULE result ended (answered in-stream, or its source blocked). */
void sp_tcp_end(struct sp_tcp_streams *t, struct sp_tcp_result *result);

/* Connections held now. */
uint32_t sp_tcp_count(const struct sp_tcp_streams *t);

#endif
