/* SPDX-License-Identifier: BSD-2-Clause */
#include "dns.h"

static uint16_t read16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static enum dns_parse_result malformed(struct dns_question *q, const char *why)
{
	q->name[0] = '\0'; /* never leave a half-copied name behind */
	q->name_len = 0;
	q->error = why;
	return DNS_MALFORMED;
}

enum dns_parse_result dns_parse_query(const uint8_t *msg, size_t len, struct dns_question *q)
{
	size_t pos = DNS_HEADER_LEN, resume = 0, wire_len = 0, out = 0, floor = DNS_HEADER_LEN;
	unsigned labels = 0, jumps = 0;

	q->name[0] = '\0';
	q->name_len = 0;
	q->error = NULL;
	if (len < DNS_HEADER_LEN)
		return malformed(q, "shorter than a DNS header");
	if (msg[2] & 0x80)
		return DNS_NOT_QUERY; /* QR set: a response */
	if ((msg[2] >> 3) & 0x0F)
		return DNS_NOT_QUERY; /* opcode other than QUERY */
	if (read16(msg + 4) == 0)
		return malformed(q, "no question");

	for (;;) {
		if (pos >= len)
			return malformed(q, "name runs past the message");
		uint8_t c = msg[pos];

		if ((c & 0xC0) == 0xC0) {
			/* Compression pointer: unusual in a query. Each jump must land before
			 * everything read so far (strictly decreasing), so no loop is possible,
			 * and jumps are counted as well. In the first question this rejects
			 * every pointer, which is what a well-formed query never needs. */
			if (pos + 1 >= len)
				return malformed(q, "truncated compression pointer");
			size_t target = (size_t)(c & 0x3F) << 8 | msg[pos + 1];

			if (++jumps > DNS_MAX_POINTERS)
				return malformed(q, "too many compression pointers");
			if (target >= floor || target < DNS_HEADER_LEN)
				return malformed(q, "compression pointer not backwards");
			if (!resume)
				resume = pos + 2;
			pos = floor = target;
			continue;
		}
		if (c & 0xC0)
			return malformed(q, "reserved label type");
		if (c == 0) {
			pos++;
			break;
		}
		if (++labels > DNS_MAX_LABELS)
			return malformed(q, "too many labels");
		wire_len += 1 + c;
		if (wire_len + 1 > DNS_MAX_NAME)
			return malformed(q, "name longer than 255 bytes");
		if (pos + 1 + c > len)
			return malformed(q, "label runs past the message");
		if (out)
			q->name[out++] = '.';
		for (unsigned i = 0; i < c; i++) {
			uint8_t ch = msg[pos + 1 + i];

			/* Legal on the wire, but they would make the dotted name ambiguous
			 * (a label "evil.com", or a NUL cutting the name short). */
			if (ch == '.' || ch == '\0')
				return malformed(q, "dot or NUL inside a label");
			q->name[out++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : (char)ch;
		}
		pos += 1 + c;
	}
	q->name[out] = '\0';
	q->name_len = out;
	if (resume)
		pos = resume;
	if (pos + 4 > len)
		return malformed(q, "question runs past the message");
	q->qtype = read16(msg + pos);
	q->qclass = read16(msg + pos + 2);
	q->question_end = pos + 4;
	return DNS_OK;
}
