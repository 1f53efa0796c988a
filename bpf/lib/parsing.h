/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Bounded header parsing. Each parser moves a cursor over one header after
 * checking `ptr + 1 > data_end`, and returns HYP_PARSE_OK or the reason the
 * packet is malformed.
 */
#ifndef HYP_PARSING_H
#define HYP_PARSING_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "hyperion_abi.h"
#include "hyperion_parser.h"

/* Not a reason: parsing may continue. Outside the hyp_reason range. */
#define HYP_PARSE_OK (-1)

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};


struct hyp_ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, low bit = more fragments */
	__be32 identification;
};

struct icmp_common_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
};

/* What the policy stages need to know about a packet. */
struct packet_info {
	__u8 is_ipv4;
	__u8 is_ipv6;
	__u8 l4_protocol;    /* IPPROTO_*, final after IPv6 extension headers */
	__u8 nonfirst_fragment;
	__u16 dst_port;      /* host order, 0 without ports */
	__u16 src_port;
	__u8 saddr[16];      /* IPv4 in the first 4 bytes */
	void *l3;            /* the IP header, for events */
	void *l3_end;        /* end of the L3 datagram as its header claims */
	__u32 rule_id;       /* set by the stage that decided, for events */
	/* Offset 0 with more fragments to come: its L4 header is the reassembled
	 * datagram's, whose length fields this fragment cannot be checked against. */
	__u8 first_fragment;
	/* For the DNS stage, which reads the message and may answer in place. */
	__u8 ip_ext;         /* IPv4 options or IPv6 extension headers present */
	__u8 event;          /* a stage asks for an event whatever the verdict (DNS alerts) */
	__u16 l3_off;        /* the IP header, from the frame's start */
	__u16 payload_off;   /* UDP: the payload, from the frame's start */
	__u16 payload_len;   /* UDP: payload bytes in this datagram (or first fragment) */
	__u16 dns_answer_len; /* verdict ANSWER: DNS bytes the answer keeps */
	__u8 dns_rcode;      /* verdict ANSWER: its rcode */
	__u16 l4_off;        /* TCP: the header, from the frame's start (for DNS over TCP) */
};

static __always_inline int parse_ethernet(struct hdr_cursor *nh, void *data_end,
					  __u16 *eth_proto)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlan;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return HYP_REASON_TRUNCATED_ETH;
	nh->pos = eth + 1;
	proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int depth = 0; depth < HYP_VLAN_MAX_DEPTH; depth++) {
		if (proto != HYP_ETH_P_8021Q && proto != HYP_ETH_P_8021AD)
			break;
		vlan = nh->pos;
		if ((void *)(vlan + 1) > data_end)
			return HYP_REASON_TRUNCATED_VLAN;
		nh->pos = vlan + 1;
		proto = bpf_ntohs(vlan->encapsulated_proto);
	}
	if (proto == HYP_ETH_P_8021Q || proto == HYP_ETH_P_8021AD)
		return HYP_REASON_TOO_MANY_VLANS;
	*eth_proto = proto;
	return HYP_PARSE_OK;
}

static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data_end,
				      struct packet_info *pkt)
{
	struct iphdr *iph = nh->pos;
	__u32 header_len, total_len;

	if ((void *)(iph + 1) > data_end)
		return HYP_REASON_TRUNCATED_IPV4;
	if (iph->version != 4)
		return HYP_REASON_BAD_IP_VERSION;
	if (iph->ihl < 5)
		return HYP_REASON_BAD_IHL;
	header_len = iph->ihl * 4;
	if ((void *)iph + header_len > data_end)
		return HYP_REASON_TRUNCATED_IPV4;
	total_len = bpf_ntohs(iph->tot_len);
	/* The frame may carry trailing padding, never less than the header claims. */
	if (total_len < header_len || (void *)iph + total_len > data_end)
		return HYP_REASON_BAD_IP_LENGTH;

	pkt->is_ipv4 = 1;
	pkt->ip_ext = header_len > sizeof(*iph);
	pkt->l4_protocol = iph->protocol;
	pkt->nonfirst_fragment = (bpf_ntohs(iph->frag_off) & HYP_IP_OFFSET) != 0;
	pkt->first_fragment = (bpf_ntohs(iph->frag_off) & (HYP_IP_OFFSET | HYP_IP_MF)) == HYP_IP_MF;
	__builtin_memcpy(pkt->saddr, &iph->saddr, 4);
	pkt->l3 = iph;
	pkt->l3_end = (void *)iph + total_len;
	nh->pos = (void *)iph + header_len;
	return HYP_PARSE_OK;
}

static __always_inline int parse_ipv6(struct hdr_cursor *nh, void *data_end,
				      struct packet_info *pkt)
{
	struct ipv6hdr *ip6h = nh->pos;
	struct ipv6_opt_hdr *opt;
	struct hyp_ipv6_frag_hdr *frag;
	__u32 ext_len;
	__u8 nexthdr;

	if ((void *)(ip6h + 1) > data_end)
		return HYP_REASON_TRUNCATED_IPV6;
	if (ip6h->version != 6)
		return HYP_REASON_BAD_IP_VERSION;
	pkt->l3_end = (void *)(ip6h + 1) + bpf_ntohs(ip6h->payload_len);
	if (pkt->l3_end > data_end)
		return HYP_REASON_BAD_IP_LENGTH;

	pkt->is_ipv6 = 1;
	__builtin_memcpy(pkt->saddr, &ip6h->saddr, 16);
	pkt->l3 = ip6h;
	nh->pos = ip6h + 1;
	nexthdr = ip6h->nexthdr;

#pragma unroll
	for (int i = 0; i <= HYP_IPV6_EXT_MAX; i++) { /* up to MAX headers, then the upper layer */
		switch (nexthdr) {
		case HYP_IPPROTO_HOPOPTS:
		case HYP_IPPROTO_ROUTING:
		case HYP_IPPROTO_DSTOPTS:
		case HYP_IPPROTO_AH:
			opt = nh->pos;
			pkt->ip_ext = 1;
			/* Within the frame and within the datagram its header claims. */
			if ((void *)(opt + 1) > data_end || (void *)(opt + 1) > pkt->l3_end)
				return HYP_REASON_TRUNCATED_EXTHDR;
			/* AH counts 4-byte units minus 2, the others 8-byte units minus 1. */
			ext_len = nexthdr == HYP_IPPROTO_AH ? ((__u32)opt->hdrlen + 2) * 4
							    : ((__u32)opt->hdrlen + 1) * 8;
			if ((void *)opt + ext_len > data_end || (void *)opt + ext_len > pkt->l3_end)
				return HYP_REASON_TRUNCATED_EXTHDR;
			nexthdr = opt->nexthdr;
			nh->pos = (void *)opt + ext_len;
			break;
		case HYP_IPPROTO_FRAGMENT:
			frag = nh->pos;
			pkt->ip_ext = 1;
			if ((void *)(frag + 1) > data_end || (void *)(frag + 1) > pkt->l3_end)
				return HYP_REASON_TRUNCATED_EXTHDR;
			nexthdr = frag->nexthdr;
			nh->pos = frag + 1;
			if (bpf_ntohs(frag->frag_off) & HYP_IP6_FRAG_OFFSET) {
				/* What follows is the middle of the fragmented payload, not
				 * headers: nothing more to parse. */
				pkt->nonfirst_fragment = 1;
				pkt->l4_protocol = nexthdr;
				return HYP_PARSE_OK;
			}
			/* Offset 0 and M set; M clear is an atomic fragment (RFC 6946), a whole datagram. */
			pkt->first_fragment |= bpf_ntohs(frag->frag_off) & HYP_IP6_FRAG_MF;
			break;
		default:
			pkt->l4_protocol = nexthdr;
			return HYP_PARSE_OK;
		}
	}
	return HYP_REASON_TOO_MANY_EXTHDRS;
}

/* Non-first fragments carry no L4 header: nothing to parse. */
static __always_inline int parse_l4(struct hdr_cursor *nh, void *data_end,
				    struct packet_info *pkt)
{
	struct tcphdr *tcph;
	struct udphdr *udph;
	struct icmp_common_hdr *icmph;
	__u32 udp_len;

	if (pkt->nonfirst_fragment)
		return HYP_PARSE_OK;

	switch (pkt->l4_protocol) {
	case HYP_IPPROTO_TCP:
		tcph = nh->pos;
		if ((void *)(tcph + 1) > data_end || (void *)(tcph + 1) > pkt->l3_end)
			return HYP_REASON_TRUNCATED_TCP;
		if (tcph->doff < 5)
			return HYP_REASON_BAD_TCP_OFFSET;
		/* A first fragment may end inside the options (RFC 8200 4.5 only asks for
		 * the fixed header; the stack checks the options after reassembly). */
		if (!pkt->first_fragment && (void *)tcph + tcph->doff * 4 > pkt->l3_end)
			return HYP_REASON_TRUNCATED_TCP;
		pkt->src_port = bpf_ntohs(tcph->source);
		pkt->dst_port = bpf_ntohs(tcph->dest);
		/* For DNS over TCP, which reads the rest of the header itself (lib/dns_tcp.h):
		 * every instruction here is verified once per parser path. */
		pkt->l4_off = pkt->l3_off + ((void *)tcph - pkt->l3);
		break;
	case HYP_IPPROTO_UDP:
		udph = nh->pos;
		if ((void *)(udph + 1) > data_end || (void *)(udph + 1) > pkt->l3_end)
			return HYP_REASON_TRUNCATED_UDP;
		udp_len = bpf_ntohs(udph->len);
		/* IPv6: 0 stands for the rest of the datagram (RFC 2675), which the Linux
		 * stack accepts at any size; the 8-byte header is already within it. */
		if (udp_len == 0 && pkt->is_ipv6)
			udp_len = sizeof(*udph);
		if (udp_len < sizeof(*udph))
			return HYP_REASON_BAD_UDP_LENGTH;
		/* A first fragment's UDP length counts the reassembled datagram (RFC 768,
		 * RFC 791): larger than this fragment's payload is the normal case. */
		if (!pkt->first_fragment && (void *)udph + udp_len > pkt->l3_end)
			return HYP_REASON_BAD_UDP_LENGTH;
		pkt->src_port = bpf_ntohs(udph->source);
		pkt->dst_port = bpf_ntohs(udph->dest);
		pkt->payload_off = pkt->l3_off + ((void *)(udph + 1) - pkt->l3);
		/* What this datagram holds: a first fragment's length claims more, and
		 * IPv6's 0 is the rest of the datagram. */
		if (bpf_ntohs(udph->len) == 0 || (void *)udph + udp_len > pkt->l3_end)
			pkt->payload_len = pkt->l3_end - (void *)(udph + 1);
		else
			pkt->payload_len = udp_len - sizeof(*udph);
		break;
	case HYP_IPPROTO_ICMP:
	case HYP_IPPROTO_ICMPV6:
		icmph = nh->pos;
		if ((void *)(icmph + 1) > data_end || (void *)(icmph + 1) > pkt->l3_end)
			return HYP_REASON_TRUNCATED_ICMP;
		break;
	default:
		break;
	}
	return HYP_PARSE_OK;
}

/* Parses Ethernet through L4. Non-IP frames come back as OK with neither
 * is_ipv4 nor is_ipv6 set. */
static __always_inline int parse_packet(void *data, void *data_end,
					struct packet_info *pkt)
{
	struct hdr_cursor nh = { .pos = data };
	__u16 eth_proto = 0;
	int rc;

	rc = parse_ethernet(&nh, data_end, &eth_proto);
	if (rc != HYP_PARSE_OK)
		return rc;
	pkt->l3_off = nh.pos - data;
	if (eth_proto == HYP_ETH_P_IP)
		rc = parse_ipv4(&nh, data_end, pkt);
	else if (eth_proto == HYP_ETH_P_IPV6)
		rc = parse_ipv6(&nh, data_end, pkt);
	else
		return HYP_PARSE_OK;
	if (rc != HYP_PARSE_OK)
		return rc;
	return parse_l4(&nh, data_end, pkt);
}

#endif /* HYP_PARSING_H */
