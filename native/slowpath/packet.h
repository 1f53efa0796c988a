/* SPDX-License-Identifier: BSD-2-Clause */
/* Frame parsing for the slow path and in-place DNS answers. The fast path has
 * already rejected malformed headers; these checks are kept anyway, since a
 * frame is attacker-controlled memory. */
#ifndef HYP_SLOWPATH_PACKET_H
#define HYP_SLOWPATH_PACKET_H

#include <stddef.h>
#include <stdint.h>

#include "dns.h"

struct sp_packet {
	size_t l3_offset;
	size_t l3_len;        /* as the IP header claims */
	size_t l4_offset;
	size_t payload_offset;
	size_t payload_len;
	uint8_t ip_version;
	uint8_t protocol;
	uint8_t has_ext_headers; /* IPv6 extension headers before L4 */
	uint16_t src_port;
	uint16_t dst_port;
	uint8_t saddr[16];
	uint8_t daddr[16];
	/* Offset 0 with more fragments to come: payload_len covers only this fragment's
	 * part of the datagram, and the L4 checksum cannot be checked or completed here. */
	uint8_t first_fragment;
};

/* The parser limits packet.c was built with (bpf/include/hyperion_parser.h), exported by the
 * extension so that a test can compare them with the XDP object's. */
extern const unsigned int sp_vlan_max_depth;
extern const unsigned int sp_ipv6_ext_max;

/* 0 on success, -1 if the frame is not IP/UDP-or-TCP with a whole header (a non-first
 * fragment has none). A first fragment parses: ports, and the payload it holds. */
int sp_parse_frame(const uint8_t *frame, size_t len, struct sp_packet *p);

/* Rewrites a DNS query frame into an answer with rcode (3 NXDOMAIN, 5 REFUSED)
 * addressed back to the sender: the question is kept, other sections dropped,
 * IP and UDP checksums recomputed. Returns the new frame length, or 0 when the
 * frame cannot be answered in place. */
size_t sp_build_dns_answer(uint8_t *frame, size_t len, const struct sp_packet *p,
			   const struct dns_question *q, uint8_t rcode);

/* The in-stream answer to a DNS query over TCP (DESIGN14B): the query's segment rewritten into
 * the server's, seq = its ack, ack = its seq + payload (+1 for its FIN), ACK|PSH|FIN, options in
 * place as NOPs but timestamps (swapped), window kept, payload = 2-byte length + msg's first
 * question_end bytes (header and question) with the flags of the UDP answer; full checksums.
 * msg must not overlap the frame's payload. cap: the frame's buffer size (the answer may be
 * longer than the segment). Returns the answer's length, or 0 (IP options, IPv6 extension
 * headers, a non-unicast destination, no ACK, SYN or RST, too long): not answerable, drop. */
size_t sp_build_dns_tcp_answer(uint8_t *frame, size_t cap, const struct sp_packet *p, const uint8_t *msg,
			       size_t question_end, uint8_t rcode);

enum sp_csum_result {
	SP_CSUM_NOT_CHECKED, /* not UDP/TCP, or a fragment: left to the stack */
	SP_CSUM_VALID,
	SP_CSUM_ABSENT,      /* UDP over IPv4 without a checksum (0) */
	SP_CSUM_COMPLETED,   /* was partial (pseudo-header sum only); now complete */
	SP_CSUM_BAD,         /* neither valid nor partial: left as it is */
};

/* Completes an offloading sender's partial UDP/TCP checksum in place, before
 * delivery to a stack that verifies it (AF_XDP loses the skb's "partial" mark).
 * Any other checksum is left unchanged. p must come from sp_parse_frame. */
enum sp_csum_result sp_complete_checksum(uint8_t *frame, const struct sp_packet *p);

#endif
