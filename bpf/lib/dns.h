/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The XDP DNS stage: a UDP query of a DNS class is judged by the name rules
 * (hyp_dns_short / hyp_dns_long of the active slot), and nxdomain/refuse rules
 * are answered in place (XDP_TX).
 *
 * The stage and the answer builder are global functions: the verifier checks
 * each once, not once per parser path that reaches the class lookup (the main
 * program already has many). Their loops are bpf_loop callbacks, likewise
 * checked once: one call per label of the question name, one per lookup
 * candidate.
 *
 * Key building: the message prefix is copied into a per-CPU scratch buffer;
 * the name's labels are written into scratch->key in reverse order so that
 * the key's name bytes END at DNS_KEY_BASE: label i (wire offset p_i from the
 * name's start, length len_i) lands at DNS_KEY_BASE - p_i - 1 - len_i. A name
 * of T bytes then starts at DNS_KEY_BASE - T, its 4-byte key header (qtype,
 * kind, pad) just before. Everything from DNS_KEY_BASE on is only ever
 * zeroed, so the whole name's key is zero-padded without a memset; the key of
 * the suffix without labels 0..k-1 is the first T - p_k bytes, padded by
 * zeroing the dropped labels' bytes [DNS_KEY_BASE - p_k, ...) as the suffix
 * shrinks (lookups go from the longest candidate to the shortest).
 */
#ifndef HYP_DNS_H
#define HYP_DNS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "hyperion_parser.h"
#include "maps.h"

/* What the stage needs from the parser, and what it decided (scalars only: the
 * argument of a global function). Offsets from the frame's start. */
struct hyp_dns_args {
	__u32 slot;
	__u16 l3_off;
	__u16 payload_off;     /* the DNS message */
	__u16 payload_len;
	__u8 is_ipv6;
	__u8 ip_ext;           /* IPv4 options or IPv6 extension headers */
	/* DNS over TCP (lib/dns_tcp.h), which sets payload_off and payload_len to the message
	 * (2 bytes into the segment's payload) before it calls the stage. */
	__u8 fragment;         /* a first fragment: the segment is not whole here */
	__u8 mode;             /* enum hyp_mode */
	__u16 tcp_off;         /* the TCP header */
	/* out */
	__u32 verdict;         /* enum hyp_verdict */
	__u32 rule_id;         /* TCP: in, the class id (kept by the connection's own reasons) */
	__u16 answer_len;      /* DNS bytes the answer keeps: header and question */
	__u8 rcode;
	__u8 event;            /* an event is due (alerts) */
};

enum {
	DNS_WALK_RUNNING = 0,
	DNS_WALK_DONE = 1,
	DNS_WALK_MALFORMED = 2,
};

/* State of the lookups (bpf_loop context). */
struct dns_match {
	__u64 exact_bits;
	__u64 suffix_bits;
	__u32 slot;
	__u32 name_len;        /* T */
	__u32 labels;          /* n */
	__u32 qtype;           /* host order */
	__u32 short_entries;
	__u32 long_entries;
	__u32 rule_id;         /* out: the deciding rule */
	__u32 action;          /* out: enum hyp_dns_action, HYP_DNS_NONE when nothing matched */
};

/* An index into a scratch buffer, masked in a way the compiler cannot drop (it
 * would, knowing the value in range; the verifier does not). */
static __always_inline __u64 dns_index(__u64 v)
{
	asm volatile("" : "+r"(v));
	return v & (DNS_MSG_BUF - 1);
}

/* A header offset the compiler may not rebase onto another pointer (the verifier
 * wants each packet pointer checked from data upwards). */
static __always_inline __u64 dns_offset(__u64 v)
{
	asm volatile("" : "+r"(v));
	return v & 0xFF;
}

/* 8 bytes of scratch at any offset. clang takes &buf[i] as 1-byte aligned and
 * would split the access into bytes; BPF on the JITs' architectures accesses
 * map values unaligned, which the verifier allows. */
static __always_inline __u64 *dns_word(__u8 *p)
{
	return __builtin_assume_aligned(p, 8);
}

static __always_inline struct hyp_dns_scratch *dns_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&hyp_dns_scratch, &zero);
}

/* Whether any byte of v is b (bytes of a little-endian load; the classic
 * has-zero-byte test, exact about existence). */
static __always_inline int dns_has_byte(__u64 v, __u8 b)
{
	__u64 x = v ^ (0x0101010101010101ULL * b);

	return ((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) != 0;
}

/* 0x80 in each byte of v that is ASCII 'A'..'Z'. */
static __always_inline __u64 dns_upper(__u64 v)
{
	__u64 low7 = v & 0x7F7F7F7F7F7F7F7FULL;
	__u64 ge_a = low7 + 0x3F3F3F3F3F3F3F3FULL;       /* bit 7: >= 'A' (0x41) */
	__u64 gt_z = low7 + 0x2525252525252525ULL;       /* bit 7: > 'Z' (0x5A) */

	return (ge_a ^ gt_z) & ~v & 0x8080808080808080ULL; /* and no high bit of its own */
}

/* One label of the question name (or its root label), as dns_parse_query in
 * native/slowpath/dns.c validates it. */
static long dns_walk_label(__u64 index, void *arg)
{
	struct hyp_dns_scratch *s = dns_scratch();
	__u32 pos, name_off, key_at, len;
	__u8 c;

	if (!s)
		return 1;
	pos = s->walk_pos;
	if (pos >= s->walk_len || pos > DNS_PREFIX_MAX)
		goto malformed; /* the name runs past the message */
	c = s->msg[dns_index(pos)];
	if (c & 0xC0)
		goto malformed; /* compression pointer in the question, or a reserved label type */
	if (c == 0) {
		s->walk_status = DNS_WALK_DONE;
		return 1;
	}
	len = c;
	name_off = pos - DNS_HEADER_LEN;
	/* With its root label the name may not exceed 255 bytes. */
	if (name_off + 1 + len + 1 > DNS_MAX_NAME)
		goto malformed;
	if (pos + 1 + len > s->walk_len)
		goto malformed; /* the label runs past the message */
	s->label_off[index & 127] = name_off;
	key_at = DNS_KEY_BASE - name_off - 1 - len;
	/* Eight bytes at a time, right-aligned on the label's end: a chunk may start
	 * before the label (bytes of the key that later labels, or the key header,
	 * overwrite), never after it (the labels already written). */
	for (__u32 k = 0; k < (DNS_MAX_LABEL + 7) / 8; k++) {
		__u32 right = 8 * k;      /* label bytes right of this chunk */
		__u64 v, junk = 0, upper;

		if (right >= len)
			break;
		v = *dns_word(&s->msg[dns_index(pos + 1 + len - right - 8)]);
		if (len - right < 8)      /* the low bytes (little-endian) precede the label */
			junk = ~0ULL >> (8 * (len - right));
		v |= junk;                /* 0xFF: neither NUL, dot nor upper case */
		/* Legal on the wire, but they would make the dotted name ambiguous (as the
		 * native parser, which refuses them). */
		if (dns_has_byte(v, 0) || dns_has_byte(v, '.'))
			goto malformed;
		upper = dns_upper(v);
		*dns_word(&s->key[dns_index(key_at + 1 + len - right - 8)]) = v | upper >> 2;
	}
	s->key[dns_index(key_at)] = c; /* after the chunks, which may have covered it */
	s->walk_labels = index + 1;
	s->walk_pos = pos + 1 + len;
	return 0;
malformed:
	s->walk_status = DNS_WALK_MALFORMED;
	return 1;
}

/* The lookups of one candidate key in one map of the active slot: the any-qtype
 * entry, then, if it says so, the query's qtype. Returns 1 when a rule decided
 * (m->rule_id, m->action set, its hits counted). One function per map: a call
 * site that sees one map gets the kernel's inlined lookup, one that may see
 * either map the generic helper (an indirect call). */
#define HYP_DNS_LOOKUP(fn, outer)                                                        \
	static __attribute__((noinline)) int fn(struct dns_match *m,                   \
						 struct hyp_dns_key_short *key)         \
	{                                                                              \
		struct hyp_dns_rule *any, *chosen = NULL;                              \
		void *table = bpf_map_lookup_elem(&outer, &m->slot);                   \
                                                                                       \
		if (!table || !key)                                                    \
			return 0;                                                      \
		any = bpf_map_lookup_elem(table, key);                                 \
		if (!any)                                                              \
			return 0;                                                      \
		if ((any->flags & HYP_DNS_F_QTYPES) && m->qtype) {                     \
			key->qtype = m->qtype;                                         \
			chosen = bpf_map_lookup_elem(table, key);                      \
			if (chosen && chosen->action == HYP_DNS_NONE)                  \
				chosen = NULL;                                         \
		}                                                                      \
		if (!chosen && any->action != HYP_DNS_NONE)                            \
			chosen = any;                                                  \
		if (!chosen)                                                           \
			return 0; /* a placeholder: shorter suffixes may still match */\
		__sync_fetch_and_add(&chosen->hits, 1);                                \
		m->rule_id = chosen->rule_id;                                          \
		m->action = chosen->action;                                            \
		return 1;                                                              \
	}

HYP_DNS_LOOKUP(dns_lookup_short, hyp_dns_short)
HYP_DNS_LOOKUP(dns_lookup_long, hyp_dns_long)

/* Candidate `index` of the lookups: 0 is the whole name (an exact rule), k > 0
 * the suffix without the first k labels ("*.x" rules). Stops at the first rule
 * that decides; a placeholder (qtype rules only, none for this qtype) does not. */
static long dns_lookup_candidate(__u64 index, void *arg)
{
	struct dns_match *m = arg;
	struct hyp_dns_scratch *s = dns_scratch();
	struct hyp_dns_key_short *key;
	__u32 name_len = m->name_len, labels = m->labels, key_len, count, bit;
	__u64 bits;
	__u8 kind;

	if (!s || name_len > DNS_MAX_NAME - 1 || labels > DNS_MAX_LABELS || index > labels)
		return 1;
	if (index == 0) {
		kind = HYP_DNS_EXACT;
		count = labels;
		key_len = name_len;
		bits = m->exact_bits;
	} else {
		__u32 dropped = s->label_off[index & 127]; /* name bytes of the labels dropped */
		__u64 below;

		if (dropped > name_len)
			return 1;
		kind = HYP_DNS_SUFFIX;
		count = labels - index;
		key_len = name_len - dropped;
		bits = m->suffix_bits;
		bit = count >= 63 ? 63 : count;
		below = bit == 63 ? ~0ULL : (2ULL << bit) - 1;
		if (!(bits & below))
			return 1; /* no suffix rule this short or shorter */
		/* Zero-pad the shorter key: the bytes of the label just dropped (and, as
		 * DNS_ZERO_SPAN exceeds any label, some already zero after them). */
		__u64 zero_at = dns_index(DNS_KEY_BASE - dropped);

#pragma unroll
		for (int i = 0; i < DNS_ZERO_SPAN; i += 8)
			*dns_word(&s->key[zero_at + i]) = 0;
	}
	bit = count >= 63 ? 63 : count;
	if (!(bits & (1ULL << bit)))
		return 0;
	key = (void *)&s->key[dns_index(DNS_KEY_BASE - 4 - name_len)];
	key->qtype = 0;
	key->kind = kind;
	key->pad = 0;
	if (key_len <= HYP_CAP_DNS_SHORT_NAME)
		return m->short_entries ? dns_lookup_short(m, key) : 0;
	return m->long_entries ? dns_lookup_long(m, key) : 0;
}

/* nxdomain/refuse are answered only where the answer is well-formed and goes to
 * one host: no IP options to echo or extension headers to rebuild, a unicast
 * destination, and the headers in the frame's linear part. */
static __always_inline int dns_answerable(struct xdp_md *ctx, const struct hyp_dns_args *a)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off = a->l3_off;
	__u8 *eth = data;

	if (a->ip_ext || l3_off > 64)
		return 0;
	if ((void *)(eth + 6) > data_end || (eth[0] & 1))
		return 0; /* group (multicast or broadcast) destination MAC */
	if (data + a->payload_off + DNS_HEADER_LEN > data_end)
		return 0;
	if (a->is_ipv6) {
		struct ipv6hdr *ip6h = data + l3_off;

		if ((void *)(ip6h + 1) > data_end)
			return 0;
		return ip6h->daddr.in6_u.u6_addr8[0] != 0xFF; /* ff00::/8 */
	}
	struct iphdr *iph = data + l3_off;

	if ((void *)(iph + 1) > data_end)
		return 0;
	/* 224.0.0.0/4 multicast, the limited broadcast. (A subnet's directed broadcast
	 * is not known here; routers do not forward it by default, RFC 2644.) */
	if ((bpf_ntohl(iph->daddr) >> 28) == 0xE || iph->daddr == 0xFFFFFFFF)
		return 0;
	return 1;
}

/* The malformed-query action from the settings: drop, allow or alert. */
static __always_inline __u32 dns_malformed(struct hyp_dns_args *a, __u32 action, __u32 reason)
{
	if (action == HYP_DNS_ALLOW) {
		a->verdict = HYP_VERDICT_PASS;
	} else if (action == HYP_DNS_ALERT) {
		a->verdict = HYP_VERDICT_PASS;
		a->event = 1;
	} else {
		/* drop, and what no policy writes (a settings entry from before the DNS stage) */
		a->verdict = HYP_VERDICT_DROP;
	}
	return reason;
}

/* Judges one UDP query of a DNS class. Returns the reason and sets a->verdict;
 * HYP_REASON_REDIRECT_CLASS: a rule for the slow path (take the redirect path);
 * HYP_REASON_DNS_NO_MATCH / HYP_REASON_DNS_NOT_QUERY (verdict pass): nothing was
 * decided here, the class's HYP_CLASS_F_SLOWPATH decides. */
__attribute__((noinline)) int hyp_dns_stage(struct xdp_md *ctx, struct hyp_dns_args *a)
{
	struct hyp_dns_scratch *s;
	struct hyp_settings *settings;
	struct dns_match match = {};
	__u32 len, pos, labels, reason;
	__u8 flags;

	if (!a)
		return HYP_REASON_DNS_NO_MATCH;
	a->verdict = HYP_VERDICT_PASS;
	a->rule_id = 0;
	a->event = 0;
	a->rcode = 0;
	a->answer_len = 0;
	settings = bpf_map_lookup_elem(&hyp_settings, &a->slot);
	s = dns_scratch();
	if (!settings || !s)
		return HYP_REASON_DNS_NO_MATCH;
	len = a->payload_len;
	if (len < DNS_HEADER_LEN)
		return dns_malformed(a, settings->dns_malformed, HYP_REASON_DNS_MALFORMED);
	if (len > DNS_PREFIX_MAX)
		len = DNS_PREFIX_MAX;
	if (bpf_xdp_load_bytes(ctx, a->payload_off, s->msg, len))
		return dns_malformed(a, settings->dns_malformed, HYP_REASON_DNS_MALFORMED);
	flags = s->msg[2];
	if (flags & (DNS_FLAGS_QR | DNS_FLAGS_OPCODE))
		return HYP_REASON_DNS_NOT_QUERY; /* a response, or an opcode other than QUERY */
	if (s->msg[4] != 0 || s->msg[5] != 1)
		return dns_malformed(a, settings->dns_malformed, HYP_REASON_DNS_QDCOUNT);

	s->walk_pos = DNS_HEADER_LEN;
	s->walk_len = len;
	s->walk_labels = 0;
	s->walk_status = DNS_WALK_RUNNING;
	bpf_loop(DNS_MAX_LABELS + 1, dns_walk_label, NULL, 0);
	if (s->walk_status != DNS_WALK_DONE)
		return dns_malformed(a, settings->dns_malformed, HYP_REASON_DNS_MALFORMED);
	pos = s->walk_pos; /* the root label */
	labels = s->walk_labels;
	if (pos < DNS_HEADER_LEN || pos + 1 + 4 > len || labels > DNS_MAX_LABELS)
		return dns_malformed(a, settings->dns_malformed, HYP_REASON_DNS_MALFORMED);
	match.name_len = pos - DNS_HEADER_LEN;
	match.labels = labels;
	s->label_off[labels & 127] = match.name_len;
	match.qtype = (__u32)s->msg[dns_index(pos + 1)] << 8 | s->msg[dns_index(pos + 2)];
	/* QCLASS is parsed (it is part of the question's length) but rules match any class. */
	a->answer_len = pos + 1 + 4;

	match.exact_bits = settings->dns_exact_labels;
	match.suffix_bits = settings->dns_suffix_labels;
	match.short_entries = settings->entries[HYP_PMAP_DNS_SHORT];
	match.long_entries = settings->entries[HYP_PMAP_DNS_LONG];
	match.slot = a->slot;
	if ((match.short_entries || match.long_entries) && (match.exact_bits || match.suffix_bits))
		bpf_loop(match.labels + 1, dns_lookup_candidate, &match, 0);

	a->rule_id = match.rule_id;
	switch (match.action) {
	case HYP_DNS_DROP:
		a->verdict = HYP_VERDICT_DROP;
		return HYP_REASON_DNS_DROP;
	case HYP_DNS_NXDOMAIN:
	case HYP_DNS_REFUSE:
		reason = match.action == HYP_DNS_NXDOMAIN ? HYP_REASON_DNS_NXDOMAIN : HYP_REASON_DNS_REFUSED;
		if (!dns_answerable(ctx, a)) {
			a->verdict = HYP_VERDICT_DROP;
			return HYP_REASON_DNS_UNANSWERABLE;
		}
		a->verdict = HYP_VERDICT_ANSWER;
		a->rcode = match.action == HYP_DNS_NXDOMAIN ? 3 : 5; /* RFC 1035 4.1.1 */
		return reason;
	case HYP_DNS_ALLOW:
		return HYP_REASON_DNS_ALLOW;
	case HYP_DNS_ALERT:
		a->event = 1;
		return HYP_REASON_DNS_ALERT;
	case HYP_DNS_SLOWPATH:
		return HYP_REASON_REDIRECT_CLASS;
	default:
		a->rule_id = 0;
		return HYP_REASON_DNS_NO_MATCH;
	}
}

static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xFFFFFFFF) + (sum >> 32);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

/* The answer's DNS header in scratch->msg (the question after it is the query's): flags of
 * a response, QDCOUNT 1, the other counts 0. Returns dns_len rounded up to 4, the bytes a
 * checksum sums, zeroed past dns_len. */
static __always_inline __u32 dns_answer_message(struct hyp_dns_scratch *s, __u8 rcode, __u32 dns_len)
{
	s->msg[2] = DNS_FLAGS_QR | (s->msg[2] & 0x79); /* opcode and RD kept, AA and TC cleared */
	s->msg[3] = 0x80 | (rcode & 0x0F);              /* RA, Z/AD/CD clear, the rcode */
	s->msg[4] = 0;
	s->msg[5] = 1;
#pragma unroll
	for (int i = 6; i < DNS_HEADER_LEN; i++)
		s->msg[i] = 0;
	/* The checksum sums 4-byte words: zero up to the next multiple of 4. */
#pragma unroll
	for (int i = 0; i < 3; i++)
		s->msg[dns_index(dns_len + i)] = 0;
	return (dns_len + 3) & ~3U;
}

/* Turns the query into its answer in place, as sp_build_dns_answer in
 * native/slowpath/packet.c does: the question only, flags of a response (opcode
 * and RD kept, RA set), addresses and ports swapped (VLAN tags kept), TTL / hop
 * limit 64, and a UDP checksum computed over the whole answer (never updated
 * from the query's, which an offloading sender leaves partial). Returns the XDP
 * action: XDP_TX, or XDP_DROP if the frame could not be rewritten. */
__attribute__((noinline)) int hyp_dns_answer(struct xdp_md *ctx, struct hyp_dns_args *a)
{
	struct hyp_dns_scratch *s = dns_scratch();
	__u32 l3_off, payload_off, dns_len, udp_len, padded;
	void *data, *data_end;
	struct udphdr *udph;
	__u8 *eth, *dns;
	__s64 sum;
	int delta;

	if (!s || !a)
		return XDP_DROP;
	l3_off = a->l3_off;
	payload_off = a->payload_off;
	dns_len = a->answer_len;
	if (l3_off > 64 || payload_off > 128 || payload_off < l3_off + 28 || dns_len < DNS_HEADER_LEN + 5 || dns_len > DNS_PREFIX_MAX)
		return XDP_DROP;
	delta = (int)(payload_off + dns_len) - (int)bpf_xdp_get_buff_len(ctx);
	if (delta > 0)
		return XDP_DROP;
	if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
		return XDP_DROP;
	udp_len = sizeof(struct udphdr) + dns_len;

	/* The DNS header, in scratch (for the checksum) and in the frame. */
	padded = dns_answer_message(s, a->rcode, dns_len);

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 2 * ETH_ALEN) > data_end)
		return XDP_DROP;
	/* The UDP header, then the DNS header right after it. */
	udph = data + dns_offset(payload_off - sizeof(struct udphdr));
	if ((void *)(udph + 1) > data_end)
		return XDP_DROP;
	dns = (void *)(udph + 1);
	if ((void *)(dns + DNS_HEADER_LEN) > data_end)
		return XDP_DROP;
	{
		__u32 d4 = *(__u32 *)eth, s4 = *(__u32 *)(eth + 6);
		__u16 d2 = *(__u16 *)(eth + 4), s2 = *(__u16 *)(eth + 10);

		*(__u32 *)eth = s4;
		*(__u16 *)(eth + 4) = s2;
		*(__u32 *)(eth + 6) = d4;
		*(__u16 *)(eth + 10) = d2;
	}
	__builtin_memcpy(dns, s->msg, DNS_HEADER_LEN);

	/* UDP header with checksum 0, in scratch before the message. */
	__builtin_memcpy(&s->udp[0], &udph->dest, 2);
	__builtin_memcpy(&s->udp[2], &udph->source, 2);
	*(__be16 *)&s->udp[4] = bpf_htons(udp_len);
	*(__be16 *)&s->udp[6] = 0;

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
		ip6h->payload_len = bpf_htons(udp_len);
		ip6h->hop_limit = 64;
		/* Pseudo-header (RFC 8200 8.1): addresses, upper-layer length, next header. */
		__builtin_memcpy(&s->pseudo[0], &ip6h->saddr, 16);
		__builtin_memcpy(&s->pseudo[16], &ip6h->daddr, 16);
		*(__be32 *)&s->pseudo[32] = bpf_htonl(udp_len);
		*(__be32 *)&s->pseudo[36] = bpf_htonl(HYP_IPPROTO_UDP);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)s->pseudo, 40, 0);
	} else {
		struct iphdr *iph = data + dns_offset(l3_off);
		__u64 ipsum = 0;

		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
		__be32 saddr = iph->saddr;

		iph->saddr = iph->daddr;
		iph->daddr = saddr;
		iph->tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
		iph->frag_off = bpf_htons(0x4000); /* DF, no offset */
		iph->ttl = 64;
		iph->check = 0;
#pragma unroll
		for (int i = 0; i < 10; i++)
			ipsum += ((__u16 *)iph)[i];
		iph->check = csum_fold32(ipsum);
		/* Pseudo-header (RFC 768): addresses, zero, protocol, UDP length. */
		__builtin_memcpy(&s->pseudo[0], &iph->saddr, 4);
		__builtin_memcpy(&s->pseudo[4], &iph->daddr, 4);
		s->pseudo[8] = 0;
		s->pseudo[9] = HYP_IPPROTO_UDP;
		*(__be16 *)&s->pseudo[10] = bpf_htons(udp_len);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)s->pseudo, 12, 0);
	}
	if (sum < 0)
		return XDP_DROP;
	if (padded > DNS_PREFIX_MAX + 1)
		return XDP_DROP;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)s->udp, sizeof(s->udp) + padded, (__u32)sum);
	if (sum < 0)
		return XDP_DROP;
	__u16 check = csum_fold32((__u64)(__u32)sum);

	__builtin_memcpy(&udph->source, &s->udp[0], 6);
	udph->check = check ? check : 0xFFFF; /* 0 means "no checksum" in UDP */
	return XDP_TX;
}

#endif /* HYP_DNS_H */
