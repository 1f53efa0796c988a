/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parser limits. Each bounds a loop the verifier must see end. */
#ifndef HYP_CONSTS_H
#define HYP_CONSTS_H

/* 802.1Q / 802.1ad tags accepted in front of the L3 header (QinQ = 2). */
#ifndef HYP_VLAN_MAX_DEPTH
#define HYP_VLAN_MAX_DEPTH 2
#endif

/* IPv6 extension headers walked before giving up with TOO_MANY_EXTHDRS. */
#ifndef HYP_IPV6_EXT_MAX
#define HYP_IPV6_EXT_MAX 8
#endif

#define HYP_ETH_P_IP 0x0800
#define HYP_ETH_P_IPV6 0x86DD
#define HYP_ETH_P_8021Q 0x8100
#define HYP_ETH_P_8021AD 0x88A8

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

#define HYP_IP_MF 0x2000
#define HYP_IP_OFFSET 0x1FFF

#endif /* HYP_CONSTS_H */
