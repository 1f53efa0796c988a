/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire constants and parser limits, shared by the two parsers of a frame: the
 * XDP program's (bpf/lib/parsing.h) and the slow path's (native/slowpath/packet.c,
 * also built into native/fuzz). Plain macros and one enum: it compiles for BPF
 * and for the host alike.
 *
 * Each limit bounds a loop the verifier must see end. A limit overridden at build
 * time (-DHYP_VLAN_MAX_DEPTH=...) must be given to both builds (EXTRA_BPF_CFLAGS
 * and the extension's CFLAGS): tests/unit/test_parser_limits.py compares the
 * values each built object reports.
 */
#ifndef HYPERION_PARSER_H
#define HYPERION_PARSER_H

/* 802.1Q / 802.1ad tags accepted in front of the L3 header (QinQ = 2). */
#ifndef HYP_VLAN_MAX_DEPTH
#define HYP_VLAN_MAX_DEPTH 2
#endif

/* IPv6 extension headers walked before giving up with TOO_MANY_EXTHDRS. */
#ifndef HYP_IPV6_EXT_MAX
#define HYP_IPV6_EXT_MAX 8
#endif

/* The limits as a BTF-visible enum (macros leave no trace in the object): user
 * space reads them back to check both parsers were built with the same ones. */
enum hyp_parser_limit {
	HYP_PLIMIT_VLAN_MAX_DEPTH = HYP_VLAN_MAX_DEPTH,
	HYP_PLIMIT_IPV6_EXT_MAX = HYP_IPV6_EXT_MAX,
};

/* EtherTypes (IEEE 802). */
#define HYP_ETH_P_IP 0x0800
#define HYP_ETH_P_IPV6 0x86DD
#define HYP_ETH_P_8021Q 0x8100
#define HYP_ETH_P_8021AD 0x88A8

/* IP protocol numbers / IPv6 next headers (IANA). */
#define HYP_IPPROTO_HOPOPTS 0
#define HYP_IPPROTO_ICMP 1
#define HYP_IPPROTO_TCP 6
#define HYP_IPPROTO_UDP 17
#define HYP_IPPROTO_ROUTING 43
#define HYP_IPPROTO_FRAGMENT 44
#define HYP_IPPROTO_AH 51
#define HYP_IPPROTO_ICMPV6 58
#define HYP_IPPROTO_NONE 59
#define HYP_IPPROTO_DSTOPTS 60

/* IPv4 frag_off (RFC 791): more-fragments flag, offset mask. */
#define HYP_IP_MF 0x2000
#define HYP_IP_OFFSET 0x1FFF

/* IPv6 Fragment header offset-and-flags word (RFC 8200 4.5): offset mask, M flag. */
#define HYP_IP6_FRAG_OFFSET 0xFFF8
#define HYP_IP6_FRAG_MF 0x0001

#endif /* HYPERION_PARSER_H */
