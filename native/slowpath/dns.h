/* SPDX-License-Identifier: BSD-2-Clause */
/* Strict DNS query parsing: header and first question, bounded in every loop. */
#ifndef HYP_SLOWPATH_DNS_H
#define HYP_SLOWPATH_DNS_H

#include <stddef.h>
#include <stdint.h>

#define DNS_HEADER_LEN 12
#define DNS_MAX_NAME 255       /* wire length, RFC 1035 */
#define DNS_MAX_LABEL 63
#define DNS_MAX_LABELS 127
#define DNS_MAX_POINTERS 16    /* compression jumps followed before giving up */

enum dns_parse_result {
	DNS_OK = 0,
	DNS_NOT_QUERY,          /* a response, or an opcode other than QUERY: not inspected */
	DNS_MALFORMED,
};

struct dns_question {
	char name[DNS_MAX_NAME + 1]; /* lower-case, dotted, no trailing dot; "" for the root */
	size_t name_len;
	uint16_t qtype;
	uint16_t qclass;
	size_t question_end;         /* offset just past QCLASS, from the start of the DNS message */
	const char *error;           /* why it is malformed */
};

/* Parses the header and first question of a DNS message of `len` bytes. */
enum dns_parse_result dns_parse_query(const uint8_t *msg, size_t len, struct dns_question *q);

#endif
