/* SPDX-License-Identifier: BSD-2-Clause */
#include "packet.h"

#include <string.h>

/* The XDP program's limits and wire constants: the two parsers agree by construction. */
#include "hyperion_parser.h"

#define ETH_HLEN 14
#define VLAN_HLEN 4

const unsigned int sp_vlan_max_depth = HYP_VLAN_MAX_DEPTH;
const unsigned int sp_ipv6_ext_max = HYP_IPV6_EXT_MAX;

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

int sp_parse_frame(const uint8_t *frame, size_t len, struct sp_packet *p)
{
	size_t off = ETH_HLEN;
	uint16_t proto;
	uint8_t next;

	memset(p, 0, sizeof(*p));
	if (len < ETH_HLEN)
		return -1;
	proto = rd16(frame + 12);
	for (int i = 0; i < HYP_VLAN_MAX_DEPTH && (proto == HYP_ETH_P_8021Q || proto == HYP_ETH_P_8021AD); i++) {
		if (off + VLAN_HLEN > len)
			return -1;
		proto = rd16(frame + off + 2);
		off += VLAN_HLEN;
	}
	p->l3_offset = off;
	if (proto == HYP_ETH_P_IP) {
		const uint8_t *ip = frame + off;
		size_t ihl;

		if (off + 20 > len || (ip[0] >> 4) != 4)
			return -1;
		ihl = (size_t)(ip[0] & 0x0F) * 4;
		p->l3_len = rd16(ip + 2);
		if (ihl < 20 || p->l3_len < ihl || off + p->l3_len > len)
			return -1;
		if (rd16(ip + 6) & HYP_IP_OFFSET)
			return -1; /* non-first fragment: no L4 header */
		p->first_fragment = (rd16(ip + 6) & HYP_IP_MF) != 0; /* MF, offset 0 */
		p->ip_version = 4;
		p->protocol = ip[9];
		memcpy(p->saddr, ip + 12, 4);
		memcpy(p->daddr, ip + 16, 4);
		off += ihl;
	} else if (proto == HYP_ETH_P_IPV6) {
		const uint8_t *ip = frame + off;

		if (off + 40 > len || (ip[0] >> 4) != 6)
			return -1;
		p->l3_len = 40 + (size_t)rd16(ip + 4);
		if (off + p->l3_len > len)
			return -1;
		p->ip_version = 6;
		memcpy(p->saddr, ip + 8, 16);
		memcpy(p->daddr, ip + 24, 16);
		next = ip[6];
		off += 40;
		for (int i = 0; i < HYP_IPV6_EXT_MAX; i++) {
			if (next != HYP_IPPROTO_HOPOPTS && next != HYP_IPPROTO_ROUTING && next != HYP_IPPROTO_DSTOPTS &&
			    next != HYP_IPPROTO_FRAGMENT && next != HYP_IPPROTO_AH)
				break;
			if (off + 8 > len)
				return -1;
			p->has_ext_headers = 1;
			if (next == HYP_IPPROTO_FRAGMENT && (rd16(frame + off + 2) & HYP_IP6_FRAG_OFFSET))
				return -1; /* non-first fragment */
			if (next == HYP_IPPROTO_FRAGMENT && (rd16(frame + off + 2) & HYP_IP6_FRAG_MF))
				p->first_fragment = 1; /* M set; M clear is an atomic fragment, a whole datagram */
			/* As the XDP parser: AH counts 4-byte units minus 2 (RFC 4302), the others 8-byte
			 * units minus 1, the fragment header is 8 bytes. */
			size_t ext = next == HYP_IPPROTO_FRAGMENT ? 8
				     : next == HYP_IPPROTO_AH  ? ((size_t)frame[off + 1] + 2) * 4
								 : ((size_t)frame[off + 1] + 1) * 8;

			next = frame[off];
			off += ext;
		}
		p->protocol = next;
	} else {
		return -1;
	}
	p->l4_offset = off;
	size_t l3_end = p->l3_offset + p->l3_len;

	if (p->protocol == HYP_IPPROTO_UDP) {
		size_t udp_len;

		if (off + 8 > l3_end)
			return -1;
		udp_len = rd16(frame + off + 4);
		if (udp_len == 0 && p->ip_version == 6)
			udp_len = l3_end - off; /* RFC 2675: the rest of the datagram, as Linux takes it */
		if (udp_len < 8)
			return -1;
		/* A first fragment's UDP length is the reassembled datagram's: only the part
		 * in this fragment can be inspected (a DNS question normally is). */
		if (off + udp_len > l3_end) {
			if (!p->first_fragment)
				return -1;
			udp_len = l3_end - off;
		}
		p->payload_offset = off + 8;
		p->payload_len = udp_len - 8;
	} else if (p->protocol == HYP_IPPROTO_TCP) {
		size_t doff;

		if (off + 20 > l3_end)
			return -1;
		doff = (size_t)(frame[off + 12] >> 4) * 4;
		if (doff < 20 || off + doff > l3_end)
			return -1;
		p->payload_offset = off + doff;
		p->payload_len = l3_end - p->payload_offset;
	} else {
		return -1;
	}
	p->src_port = rd16(frame + off);
	p->dst_port = rd16(frame + off + 2);
	return 0;
}

/* One's-complement sum of big-endian 16-bit words, folded later. The bulk is
 * summed as native 64-bit words with end-around carry (it runs over every
 * delivered packet; 2^64 = 1 modulo 0xFFFF): one's-complement sums do not
 * depend on byte order (RFC 1071 2(B)), so the folded bulk is swapped to
 * network order once. */
static uint32_t csum_add(uint32_t sum, const uint8_t *data, size_t len)
{
	uint64_t acc = 0, w;
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		memcpy(&w, data + i, 8);
		acc += w;
		acc += acc < w;
	}
	acc = (acc & 0xFFFFFFFF) + (acc >> 32);
	while (acc >> 16)
		acc = (acc & 0xFFFF) + (acc >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	acc = __builtin_bswap16((uint16_t)acc);
#endif
	sum += (uint32_t)acc;
	for (; i + 1 < len; i += 2)
		sum += (uint32_t)(data[i] << 8 | data[i + 1]);
	if (len & 1)
		sum += (uint32_t)data[len - 1] << 8;
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
	return (uint16_t)~sum;
}

static void swap_bytes(uint8_t *a, uint8_t *b, size_t len)
{
	uint8_t tmp[16];

	memcpy(tmp, a, len);
	memcpy(a, b, len);
	memcpy(b, tmp, len);
}

size_t sp_build_dns_answer(uint8_t *frame, size_t len, const struct sp_packet *p,
			   const struct dns_question *q, uint8_t rcode)
{
	uint8_t *ip = frame + p->l3_offset, *udp = frame + p->l4_offset, *dns = frame + p->payload_offset;
	size_t dns_len = q->question_end, udp_len = 8 + dns_len, ip_hlen = p->l4_offset - p->l3_offset;
	uint32_t sum;

	if (p->protocol != HYP_IPPROTO_UDP || p->has_ext_headers || p->payload_offset + dns_len > len)
		return 0;
	swap_bytes(frame, frame + 6, 6);
	/* DNS: a response with the question only; RD copied, RA set. */
	dns[2] = (uint8_t)(0x80 | (dns[2] & 0x79)); /* QR, opcode kept, AA/TC cleared, RD kept */
	dns[3] = (uint8_t)(0x80 | (rcode & 0x0F));
	wr16(dns + 4, 1);
	memset(dns + 6, 0, 6);
	/* UDP */
	swap_bytes(udp, udp + 2, 2);
	wr16(udp + 4, (uint16_t)udp_len);
	wr16(udp + 6, 0);
	if (p->ip_version == 4) {
		swap_bytes(ip + 12, ip + 16, 4);
		wr16(ip + 2, (uint16_t)(ip_hlen + udp_len));
		wr16(ip + 6, 0x4000); /* DF, no fragment offset */
		ip[8] = 64;
		wr16(ip + 10, 0);
		wr16(ip + 10, csum_fold(csum_add(0, ip, ip_hlen)));
		sum = csum_add(0, ip + 12, 8) + 17 + (uint32_t)udp_len;
	} else {
		swap_bytes(ip + 8, ip + 24, 16);
		wr16(ip + 4, (uint16_t)udp_len);
		ip[7] = 64;
		sum = csum_add(0, ip + 8, 32) + 17 + (uint32_t)udp_len;
	}
	uint16_t check = csum_fold(csum_add(sum, udp, udp_len));

	wr16(udp + 6, check ? check : 0xFFFF); /* 0 means "no checksum" in UDP */
	return p->payload_offset + dns_len;
}

enum sp_csum_result sp_complete_checksum(uint8_t *frame, const struct sp_packet *p)
{
	const uint8_t *ip = frame + p->l3_offset;
	uint8_t *l4 = frame + p->l4_offset;
	size_t alen = p->ip_version == 4 ? 4 : 16, l4_len, field;
	uint32_t pseudo, data;
	uint16_t stored, partial, complete;

	/* A fragment's checksum covers the whole datagram, which only the stack
	 * reassembles; senders never offload it (the stack checksums before it
	 * fragments). */
	if (p->first_fragment) /* the parser refuses later fragments */
		return SP_CSUM_NOT_CHECKED;
	if (p->protocol == HYP_IPPROTO_UDP) {
		l4_len = rd16(l4 + 4);
		field = 6;
	} else if (p->protocol == HYP_IPPROTO_TCP) {
		l4_len = p->l3_offset + p->l3_len - p->l4_offset;
		field = 16;
	} else {
		return SP_CSUM_NOT_CHECKED;
	}
	if (l4_len < field + 2 || p->l4_offset + l4_len > p->l3_offset + p->l3_len)
		return SP_CSUM_NOT_CHECKED; /* the stack drops such a length itself */
	stored = rd16(l4 + field);
	if (p->protocol == HYP_IPPROTO_UDP && stored == 0) /* no checksum: allowed over IPv4 only (RFC 8200 8.1) */
		return p->ip_version == 4 ? SP_CSUM_ABSENT : SP_CSUM_BAD;
	/* Pseudo-header (RFC 768, RFC 9293, RFC 8200 8.1). At the receiver, the IPv6
	 * destination is the final one even with a routing header. */
	pseudo = csum_add(csum_add(0, ip + (alen == 4 ? 12 : 8), alen), ip + (alen == 4 ? 16 : 24), alen) +
		 p->protocol + (uint32_t)l4_len;
	data = csum_add(0, l4, l4_len);
	if (csum_fold(pseudo + data) == 0)
		return SP_CSUM_VALID;
	/* What an offloading sender leaves: the folded pseudo-header sum, not
	 * complemented (Linux: ~csum_tcpudp_magic(..., 0), ~csum_ipv6_magic(..., 0)).
	 * It is never 0; compared in one's complement, where 0 and 0xFFFF are one. */
	partial = (uint16_t)~csum_fold(pseudo);
	if (stored != partial && !(p->protocol == HYP_IPPROTO_TCP && stored == 0 && partial == 0xFFFF))
		return SP_CSUM_BAD;
	/* The data sum without the field, then the checksum in its place. */
	complete = csum_fold(pseudo + data + (uint16_t)~stored);
	if (p->protocol == HYP_IPPROTO_UDP && complete == 0)
		complete = 0xFFFF; /* 0 means "no checksum" in UDP */
	wr16(l4 + field, complete);
	return SP_CSUM_COMPLETED;
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr32(uint8_t *p, uint32_t v)
{
	wr16(p, (uint16_t)(v >> 16));
	wr16(p + 2, (uint16_t)v);
}

/* The query's TCP options, in place: every option a NOP but timestamps, whose values swap (the
 * answer stands for the server's segment: its TSval echoes what the client last saw from the
 * server, its TSecr the client's TSval, RFC 7323 3.2). A malformed list becomes NOPs from there. */
static void answer_options(uint8_t *opt, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint8_t kind = opt[i];

		if (kind == 1) { /* NOP */
			i++;
			continue;
		}
		if (kind == 0 || i + 1 >= len || opt[i + 1] < 2 || i + opt[i + 1] > len) { /* EOL, or malformed */
			memset(opt + i, 1, len - i);
			return;
		}
		size_t olen = opt[i + 1];

		if (kind == 8 && olen == 10)
			swap_bytes(opt + i + 2, opt + i + 6, 4);
		else
			memset(opt + i, 1, olen);
		i += olen;
	}
}

size_t sp_build_dns_tcp_answer(uint8_t *frame, size_t cap, const struct sp_packet *p, const uint8_t *msg,
			       size_t question_end, uint8_t rcode)
{
	uint8_t *ip = frame + p->l3_offset, *tcp = frame + p->l4_offset, *pay = frame + p->payload_offset;
	size_t ip_hlen = p->l4_offset - p->l3_offset, doff = p->payload_offset - p->l4_offset;
	size_t tcp_len = doff + 2 + question_end, total = p->payload_offset + 2 + question_end;
	uint8_t flags = tcp[13];
	uint32_t sum;

	if (p->protocol != HYP_IPPROTO_TCP || p->has_ext_headers || p->first_fragment || total > cap ||
	    question_end < DNS_HEADER_LEN || question_end > 0xFFFF)
		return 0;
	/* No answer without the connection's other sequence number, nor to a non-unicast address. */
	if (!(flags & 0x10) || (flags & 0x06) || (frame[0] & 1))
		return 0;
	if (p->ip_version == 4 && (ip_hlen != 20 || (ip[16] & 0xF0) == 0xE0 || rd32(ip + 16) == 0xFFFFFFFF))
		return 0; /* IP options are never echoed */
	if (p->ip_version == 6 && ip[24] == 0xFF)
		return 0;
	uint32_t seq = rd32(tcp + 4), ack = rd32(tcp + 8);

	swap_bytes(frame, frame + 6, 6);
	/* TCP: from the server's side of the stream, everything the client sent acknowledged; FIN. */
	swap_bytes(tcp, tcp + 2, 2);
	wr32(tcp + 4, ack);
	wr32(tcp + 8, seq + (uint32_t)p->payload_len + ((flags & 0x01) ? 1 : 0));
	tcp[12] = (uint8_t)(doff / 4) << 4;
	tcp[13] = 0x19; /* FIN, PSH, ACK */
	wr16(tcp + 16, 0);
	wr16(tcp + 18, 0);
	answer_options(tcp + 20, doff - 20);
	/* The message: length, then the question only, flags as the UDP answer's. */
	wr16(pay, (uint16_t)question_end);
	memmove(pay + 2, msg, question_end);
	uint8_t *dns = pay + 2;

	dns[2] = (uint8_t)(0x80 | (dns[2] & 0x79));
	dns[3] = (uint8_t)(0x80 | (rcode & 0x0F));
	wr16(dns + 4, 1);
	memset(dns + 6, 0, 6);
	if (p->ip_version == 4) {
		swap_bytes(ip + 12, ip + 16, 4);
		wr16(ip + 2, (uint16_t)(ip_hlen + tcp_len));
		wr16(ip + 6, 0x4000);
		ip[8] = 64;
		wr16(ip + 10, 0);
		wr16(ip + 10, csum_fold(csum_add(0, ip, ip_hlen)));
		sum = csum_add(0, ip + 12, 8) + HYP_IPPROTO_TCP + (uint32_t)tcp_len;
	} else {
		swap_bytes(ip + 8, ip + 24, 16);
		wr16(ip + 4, (uint16_t)tcp_len);
		ip[7] = 64;
		sum = csum_add(0, ip + 8, 32) + HYP_IPPROTO_TCP + (uint32_t)tcp_len;
	}
	wr16(tcp + 16, csum_fold(csum_add(sum, tcp, tcp_len)));
	return total;
}
