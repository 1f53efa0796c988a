/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DNS over TCP in XDP (RFC 7766, RFC 1035 4.2.2: each message is preceded by a
 * 2-byte length). A connection to a DNS class is tracked from the client's SYN in
 * hyp_dns_tcp (the client's direction): `next` is the sequence number where the
 * next unjudged query starts. Only a segment that starts exactly at `next` and
 * holds one whole message is judged here, by the UDP stage's rules (lib/dns.h);
 * judging a segment by its own first byte elsewhere could judge other bytes than
 * the server reads (a server trims a segment that overlaps what it has and reads
 * from its own stream position). Everything else of a tracked connection goes to
 * the slow path, which reassembles from `next` on.
 *
 * nxdomain/refuse are answered in the stream (XDP_TX) with FIN, and the
 * connection is ENDED here: the server never saw the query, so the two ends'
 * stream positions disagree and anything more on this connection would stall;
 * the client opens a new one (RFC 7766 6.2.3).
 *
 * Both functions are global (checked once by the verifier), as in lib/dns.h.
 */
#ifndef HYP_DNS_TCP_H
#define HYP_DNS_TCP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "hyperion_parser.h"
#include "dns.h"
#include "maps.h"

#define TCP_FL_FIN 0x01
#define TCP_FL_SYN 0x02
#define TCP_FL_PSH 0x08
#define TCP_FL_ACK 0x10

#define TCP_OPT_EOL 0
#define TCP_OPT_NOP 1
#define TCP_OPT_TIMESTAMPS 8
#define TCP_OPT_TIMESTAMPS_LEN 10

/* The connection's key: addresses and ports as received (the client's direction); the ports
 * from the TCP header's first bytes, already in hdr. */
static __always_inline int dns_tcp_key(struct xdp_md *ctx, const struct hyp_dns_args *a,
				       const __u8 *hdr, struct hyp_dns_tcp_key *key)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (a->is_ipv6) {
		/* saddr and daddr are adjacent in the IPv6 header and in the key */
		if (bpf_xdp_load_bytes(ctx, a->l3_off + offsetof(struct ipv6hdr, saddr), key->saddr, 32))
			return -1;
		key->family = 6;
	} else {
		if (bpf_xdp_load_bytes(ctx, a->l3_off + offsetof(struct iphdr, saddr), key->saddr, 4) ||
		    bpf_xdp_load_bytes(ctx, a->l3_off + offsetof(struct iphdr, daddr), key->daddr, 4))
			return -1;
		key->family = 4;
	}
	key->sport = (__u16)hdr[0] << 8 | hdr[1];
	key->dport = (__u16)hdr[2] << 8 | hdr[3];
	return 0;
}

/* TCP states of a local socket that is not (or no longer) an open connection: a SYN on the
 * 4-tuple really starts one (include/net/tcp_states.h). */
#define TCP_STATE_TIME_WAIT 6
#define TCP_STATE_CLOSE 7
#define TCP_STATE_LISTEN 10
#define TCP_STATE_NEW_SYN_RECV 12

/* Whether this host holds an open connection for the segment's 4-tuple (the socket a segment from
 * the client would reach). Then a SYN on it is not a new connection: the server answers it with a
 * challenge ACK (RFC 5961 4) and keeps its stream, so `next` must stay where the server's stream
 * is; a client that could move it would get a "whole query" judged over bytes the server already
 * holds. A gateway holds no socket for what it forwards: 0 there. */
static __always_inline int dns_tcp_open_locally(struct xdp_md *ctx, struct hyp_dns_scratch *s)
{
	const struct hyp_dns_tcp_key *key = &s->tcp_key;
	struct bpf_sock_tuple *tuple = &s->sk_tuple; /* in scratch: the stack is short */
	struct bpf_sock *sk;
	__u32 size, state;

	__builtin_memset(tuple, 0, sizeof(*tuple));
	if (key->family == 6) {
		__builtin_memcpy(tuple->ipv6.saddr, key->saddr, 16);
		__builtin_memcpy(tuple->ipv6.daddr, key->daddr, 16);
		tuple->ipv6.sport = bpf_htons(key->sport);
		tuple->ipv6.dport = bpf_htons(key->dport);
		size = sizeof(tuple->ipv6);
	} else {
		__builtin_memcpy(&tuple->ipv4.saddr, key->saddr, 4);
		__builtin_memcpy(&tuple->ipv4.daddr, key->daddr, 4);
		tuple->ipv4.sport = bpf_htons(key->sport);
		tuple->ipv4.dport = bpf_htons(key->dport);
		size = sizeof(tuple->ipv4);
	}
	sk = bpf_skc_lookup_tcp(ctx, tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	state = sk->state;
	bpf_sk_release(sk);
	return state != TCP_STATE_LISTEN && state != TCP_STATE_TIME_WAIT && state != TCP_STATE_NEW_SYN_RECV &&
	       state != TCP_STATE_CLOSE;
}

/* Where the segment's payload starts (after the header's data offset, in doff_byte) and how
 * long it is, from the IP header's length. The parser has checked both; a first fragment
 * may end before its header's options do: no payload then. */
static __always_inline int dns_tcp_payload(struct xdp_md *ctx, const struct hyp_dns_args *a,
					   __u8 doff_byte, __u32 *off, __u32 *len)
{
	__be16 field;
	__u32 end;

	if (bpf_xdp_load_bytes(ctx, a->l3_off + (a->is_ipv6 ? 4 : 2), &field, sizeof(field)))
		return -1;
	/* IPv4 total length; IPv6 payload length, after the fixed header */
	end = a->l3_off + bpf_ntohs(field) + (a->is_ipv6 ? sizeof(struct ipv6hdr) : 0);
	*off = a->tcp_off + (doff_byte >> 4) * 4;
	*len = end > *off ? end - *off : 0;
	return 0;
}

/* Judges one TCP segment of a DNS class. Returns the reason and sets a->verdict (and, for
 * the DNS stage's reasons, what lib/dns.h sets, the rule id among them; the connection's own
 * reasons leave the rule id, the class's, as it came); HYP_REASON_REDIRECT_CLASS: the slow
 * path's (take the redirect path). */
__attribute__((noinline)) int hyp_dns_tcp_stage(struct xdp_md *ctx, struct hyp_dns_args *a)
{
	struct hyp_dns_scratch *s = dns_scratch();
	struct hyp_dns_tcp_flow *flow;
	struct hyp_dns_tcp_key *key;
	__u32 payload_off, payload_len, msg_len, reason, seq;
	__be16 prefix;
	__u8 flags;

	if (!a)
		return HYP_REASON_DNS_TCP_NO_DATA;
	if (!s) {
		a->verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_TCP_MIDSTREAM;
	}
	key = &s->tcp_key; /* in scratch: the stack is short (the DNS stage runs below this) */
	/* a->rule_id: the class's id, which the connection's own reasons keep */
	a->verdict = HYP_VERDICT_PASS;
	a->event = 0;
	a->rcode = 0;
	a->answer_len = 0;
	/* Ports, seq, ack, data offset and flags: the header's first 14 bytes. */
	if (bpf_xdp_load_bytes(ctx, a->tcp_off, s->tcp, 14) || dns_tcp_key(ctx, a, s->tcp, key)) {
		/* Not after the parser's checks; the same as an untracked connection. */
		a->verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_TCP_MIDSTREAM;
	}
	seq = bpf_ntohl(*(__be32 *)&s->tcp[4]);
	flags = s->tcp[13];
	if (dns_tcp_payload(ctx, a, s->tcp[12], &payload_off, &payload_len)) {
		a->verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_TCP_MIDSTREAM;
	}
	if ((flags & (TCP_FL_SYN | TCP_FL_ACK)) == TCP_FL_SYN) {
		/* A SYN on a connection this host holds open moves nothing (see dns_tcp_open_locally). */
		if (bpf_map_lookup_elem(&hyp_dns_tcp, key) && dns_tcp_open_locally(ctx, s))
			return payload_len || a->fragment ? HYP_REASON_REDIRECT_CLASS : HYP_REASON_DNS_TCP_NO_DATA;
		/* A new connection (also on a reused 4-tuple). Data on the SYN (TCP Fast Open):
		 * the slow path's, from the first byte after the SYN. */
		s->tcp_flow.next = seq + 1;
		s->tcp_flow.state = payload_len || a->fragment ? HYP_DNS_TCP_SLOWPATH : HYP_DNS_TCP_XDP;
		bpf_map_update_elem(&hyp_dns_tcp, key, &s->tcp_flow, BPF_ANY);
		return payload_len || a->fragment ? HYP_REASON_REDIRECT_CLASS : HYP_REASON_DNS_TCP_NO_DATA;
	}
	if (!payload_len && !a->fragment)
		return HYP_REASON_DNS_TCP_NO_DATA;
	flow = bpf_map_lookup_elem(&hyp_dns_tcp, key);
	if (!flow) {
		/* Opened before the program (or a reload gave it the class), or evicted. */
		a->verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_TCP_MIDSTREAM;
	}
	if (flow->state == HYP_DNS_TCP_ENDED) {
		a->verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_TCP_ENDED;
	}
	if (flow->state != HYP_DNS_TCP_XDP)
		return HYP_REASON_REDIRECT_CLASS;
	/* One whole message at the stream position, in this segment (a first fragment's
	 * payload continues in the next fragment: never whole). */
	if (a->fragment || seq != flow->next || payload_len < 2 ||
	    bpf_xdp_load_bytes(ctx, payload_off, &prefix, sizeof(prefix)))
		goto slowpath;
	msg_len = bpf_ntohs(prefix);
	if (payload_len != 2 + msg_len)
		goto slowpath; /* a partial message, or more than one */

	a->payload_off = payload_off + 2;
	a->payload_len = msg_len;
	reason = hyp_dns_stage(ctx, a);
	if (reason == HYP_REASON_REDIRECT_CLASS)
		goto slowpath; /* a name rule for the slow path (block_source) */
	if (a->verdict == HYP_VERDICT_PASS || a->mode == HYP_MODE_MONITOR) {
		/* Delivered (in monitor mode whatever the verdict): the server's stream moves on. */
		flow->next = seq + payload_len;
	} else if (a->verdict == HYP_VERDICT_ANSWER) {
		flow->state = HYP_DNS_TCP_ENDED;
	}
	/* Dropped: `next` stays, a retransmission is judged (and dropped) again. */
	return reason;
slowpath:
	flow->state = HYP_DNS_TCP_SLOWPATH;
	return HYP_REASON_REDIRECT_CLASS;
}

/* One option of the query's TCP header (bpf_loop callback, state in scratch): finds the
 * timestamps option and stops at the end of the list or at a malformed option. */
static long dns_tcp_option(__u64 index, void *arg)
{
	struct hyp_dns_scratch *s = dns_scratch();
	__u32 pos, end, len;
	__u8 kind;

	if (!s)
		return 1;
	pos = s->opt_pos;
	end = s->opt_end;
	if (pos >= end || end > 60)
		return 1;
	kind = s->tcp[pos & 63];
	if (kind == TCP_OPT_EOL)
		return 1;
	if (kind == TCP_OPT_NOP) {
		s->opt_pos = pos + 1;
		return 0;
	}
	if (pos + 2 > end)
		return 1;
	len = s->tcp[(pos + 1) & 63];
	if (len < 2 || pos + len > end)
		return 1;
	if (kind == TCP_OPT_TIMESTAMPS && len == TCP_OPT_TIMESTAMPS_LEN && !s->opt_ts) {
		s->opt_ts = pos;
		__builtin_memcpy(s->ts, &s->tcp[(pos + 2) & 63], 8);
	}
	s->opt_pos = pos + len;
	return 0;
}

/* Turns the query segment into the server's answer in the stream, in place: MACs (VLAN tags
 * kept), addresses and ports swapped, seq = the query's ack, ack = the end of the query
 * (its FIN counted), flags ACK|PSH|FIN, the window kept, the options kept in place as NOPs
 * except the timestamps (TSval := the query's TSecr, TSecr := its TSval), then the 2-byte
 * length and the DNS answer (the header and the question, as over UDP). IPv4: total length,
 * DF, TTL 64, header checksum; IPv6: payload length, hop limit 64. The TCP checksum is
 * computed over the whole segment (never updated from the query's, which an offloading
 * sender leaves partial). Returns XDP_TX, or XDP_DROP if the frame could not be rewritten. */
__attribute__((noinline)) int hyp_dns_tcp_answer(struct xdp_md *ctx, struct hyp_dns_args *a)
{
	struct hyp_dns_scratch *s = dns_scratch();
	__u32 l3_off, tcp_off, hlen, payload_off, payload_len, dns_len, seg_len, padded, seq, ack, ts;
	void *data, *data_end;
	__u8 *eth, tmp[2];
	__u16 check;
	__s64 sum;
	int delta;

	if (!s || !a)
		return XDP_DROP;
	l3_off = a->l3_off;
	dns_len = a->answer_len;
	if (l3_off > 64 || dns_len < DNS_HEADER_LEN + 5 || dns_len > DNS_PREFIX_MAX)
		return XDP_DROP;
	/* Answered only without IP options or extension headers: TCP follows the fixed header. */
	a->tcp_off = tcp_off = l3_off + (a->is_ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	/* The query's header, before the tail moves. */
	if (bpf_xdp_load_bytes(ctx, tcp_off, s->tcp, 20) ||
	    dns_tcp_payload(ctx, a, s->tcp[12], &payload_off, &payload_len))
		return XDP_DROP;
	hlen = dns_index((s->tcp[12] >> 4) * 4); /* masked in a register the check below bounds */
	if (hlen < 20 || hlen > 60 || bpf_xdp_load_bytes(ctx, tcp_off, s->tcp, hlen))
		return XDP_DROP; /* the whole header, options included */
	seg_len = hlen + 2 + dns_len;
	delta = (int)(payload_off + 2 + dns_len) - (int)bpf_xdp_get_buff_len(ctx);
	if (delta > 0)
		return XDP_DROP;
	if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
		return XDP_DROP;

	/* The payload: the length, then the answer; udp[4..7] precede msg, so the checksum
	 * sums them in one go (udp[4..5] zero, at an even offset like the segment's payload). */
	padded = dns_answer_message(s, a->rcode, dns_len);
	s->udp[4] = 0;
	s->udp[5] = 0;
	*(__be16 *)&s->udp[6] = bpf_htons(dns_len);

	/* The TCP header, in scratch. */
	__builtin_memcpy(tmp, &s->tcp[0], 2);
	__builtin_memcpy(&s->tcp[0], &s->tcp[2], 2);
	__builtin_memcpy(&s->tcp[2], tmp, 2);
	seq = *(__u32 *)&s->tcp[8];    /* the query's ack, network order */
	ack = bpf_ntohl(*(__be32 *)&s->tcp[4]) + payload_len + (s->tcp[13] & TCP_FL_FIN ? 1 : 0);
	*(__u32 *)&s->tcp[4] = seq;
	*(__be32 *)&s->tcp[8] = bpf_htonl(ack);
	s->tcp[12] = (hlen / 4) << 4;  /* data offset kept, reserved bits clear */
	s->tcp[13] = TCP_FL_ACK | TCP_FL_PSH | TCP_FL_FIN;
	/* s->tcp[14..15]: the window, kept */
	*(__u32 *)&s->tcp[16] = 0;     /* checksum (computed below), urgent pointer */
	s->opt_pos = 20;
	s->opt_end = hlen;
	s->opt_ts = 0;
	if (hlen > 20)
		bpf_loop(40, dns_tcp_option, NULL, 0);
	ts = s->opt_ts;
	/* Bytes past hlen are neither summed nor written. */
#pragma unroll
	for (int i = 20; i < 60; i += 4)
		*(__u32 *)&s->tcp[i] = 0x01010101; /* NOPs */
	if (ts >= 20 && ts + TCP_OPT_TIMESTAMPS_LEN <= hlen) {
		__u32 at = ts & 63;

		s->tcp[at] = TCP_OPT_TIMESTAMPS;
		s->tcp[(at + 1) & 63] = TCP_OPT_TIMESTAMPS_LEN;
		__builtin_memcpy(&s->tcp[(at + 2) & 63], &s->ts[4], 4); /* TSval := TSecr */
		__builtin_memcpy(&s->tcp[(at + 6) & 63], &s->ts[0], 4); /* TSecr := TSval */
	}

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 2 * ETH_ALEN) > data_end)
		return XDP_DROP;
	{
		__u32 d4 = *(__u32 *)eth, s4 = *(__u32 *)(eth + 6);
		__u16 d2 = *(__u16 *)(eth + 4), s2 = *(__u16 *)(eth + 10);

		*(__u32 *)eth = s4;
		*(__u16 *)(eth + 4) = s2;
		*(__u32 *)(eth + 6) = d4;
		*(__u16 *)(eth + 10) = d2;
	}
	if (a->is_ipv6) {
		struct ipv6hdr *ip6h = data + dns_offset(l3_off);

		if ((void *)(ip6h + 1) > data_end)
			return XDP_DROP;
		__u64 *src = (__u64 *)&ip6h->saddr, *dst = (__u64 *)&ip6h->daddr;
		__u64 s0 = src[0], s1 = src[1];

		src[0] = dst[0];
		src[1] = dst[1];
		dst[0] = s0;
		dst[1] = s1;
		ip6h->payload_len = bpf_htons(seg_len);
		ip6h->hop_limit = 64;
		/* Pseudo-header (RFC 8200 8.1): addresses, upper-layer length, next header. */
		__builtin_memcpy(&s->pseudo[0], &ip6h->saddr, 16);
		__builtin_memcpy(&s->pseudo[16], &ip6h->daddr, 16);
		*(__be32 *)&s->pseudo[32] = bpf_htonl(seg_len);
		*(__be32 *)&s->pseudo[36] = bpf_htonl(HYP_IPPROTO_TCP);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)s->pseudo, 40, 0);
	} else {
		struct iphdr *iph = data + dns_offset(l3_off);
		__u64 ipsum = 0;

		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
		__be32 saddr = iph->saddr;

		iph->saddr = iph->daddr;
		iph->daddr = saddr;
		iph->tot_len = bpf_htons(sizeof(struct iphdr) + seg_len);
		iph->frag_off = bpf_htons(0x4000); /* DF, no offset */
		iph->ttl = 64;
		iph->check = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			ipsum += ((__u16 *)iph)[i];
		iph->check = csum_fold32(ipsum);
		/* Pseudo-header (RFC 793 3.1): addresses, zero, protocol, TCP length. */
		__builtin_memcpy(&s->pseudo[0], &iph->saddr, 4);
		__builtin_memcpy(&s->pseudo[4], &iph->daddr, 4);
		s->pseudo[8] = 0;
		s->pseudo[9] = HYP_IPPROTO_TCP;
		*(__be16 *)&s->pseudo[10] = bpf_htons(seg_len);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)s->pseudo, 12, 0);
	}
	if (sum < 0)
		return XDP_DROP;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)s->tcp, hlen, (__u32)sum);
	if (sum < 0 || padded > DNS_PREFIX_MAX + 1)
		return XDP_DROP;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&s->udp[4], 4 + padded, (__u32)sum);
	if (sum < 0)
		return XDP_DROP;
	check = csum_fold32((__u64)(__u32)sum);
	__builtin_memcpy(&s->tcp[16], &check, 2);

	/* The header, the length and the DNS header; the question is the query's, in place. */
	if (bpf_xdp_store_bytes(ctx, tcp_off, s->tcp, hlen) ||
	    bpf_xdp_store_bytes(ctx, payload_off, &s->udp[6], 2 + DNS_HEADER_LEN))
		return XDP_DROP;
	return XDP_TX;
}

#endif /* HYP_DNS_TCP_H */
