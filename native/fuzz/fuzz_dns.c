/* SPDX-License-Identifier: BSD-2-Clause */
/* libFuzzer harness for the slow path's parsers: hostile bytes as a DNS message,
 * and as a whole frame (parse, match, complete the checksum, and build an
 * in-place answer). Built with AddressSanitizer and UBSan by `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"
#include "hyperion_parser.h"
#include "packet.h"
#include "rules.h"
#include "tcp_stream.h"
#include "control.h"

static struct sp_rules *rules;
static struct sp_tcp_streams *streams;
static uint64_t stream_stats[ST_COUNT];

/* The workers' judge of a whole TCP message, reduced: name rules over a parsed query. */
static uint8_t judge_tcp(void *ctx, const uint8_t *msg, size_t len, int oversized)
{
	struct dns_question *q = ctx;

	if (oversized || dns_parse_query(msg, len, q) != DNS_OK) {
		q->question_end = 0;
		return oversized ? SP_DROP : SP_PASS;
	}
	uint32_t rule = sp_match_dns(rules, rules->scratch_proto, q);

	return rule == SP_NO_RULE ? SP_PASS : rules->rules[rule].action;
}

static void build_rules(void)
{
	static const char *regex[] = {"^[a-z0-9]{30,}\\."};
	static const uint32_t regex_ids[] = {3};
	static const char *sigs[] = {"root", "(?i)union\\s+select"};
	static const uint32_t sig_ids[] = {4, 5};
	char err[256];

	rules = sp_rules_new(9, 16);
	for (uint32_t i = 0; i < 9; i++)
		rules->rules[i].action = (uint8_t)(i % SP_ACTION_COUNT);
	rules->rules[2].qtype = 28; /* AAAA: a qtype-specific rule beside an any-qtype one */
	rules->rules[7].qtype = 1;
	sp_rules_add_name(rules, 0, SP_EXACT, "evil.com");
	sp_rules_add_name(rules, 1, SP_SUFFIX, "tracker.test");
	sp_rules_add_name(rules, 2, SP_EXACT, "evil.com");
	sp_rules_add_name(rules, 6, SP_SUFFIX, "test");
	sp_rules_add_name(rules, 7, SP_SUFFIX, "tracker.test");
	sp_rules_add_name(rules, 8, SP_SUFFIX, "a.tracker.test");
	if (sp_rules_add_dns_class(rules, HYP_IPPROTO_UDP, 53) || sp_rules_add_dns_class(rules, HYP_IPPROTO_TCP, 53) ||
	    !sp_is_dns_class(rules, HYP_IPPROTO_UDP, 53) || sp_is_dns_class(rules, HYP_IPPROTO_UDP, 54))
		abort();
	if (sp_rules_compile_dns_regex(rules, regex, regex_ids, 1, err, sizeof(err)) ||
	    sp_rules_add_class(rules, HYP_IPPROTO_UDP, 53, sigs, sig_ids, 2, err, sizeof(err)) ||
	    sp_rules_finish(rules, err, sizeof(err)))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dns_question q;
	struct sp_packet p;
	uint8_t *frame;

	if (!rules)
		build_rules();
	/* As a DNS message. */
	if (dns_parse_query(data, size, &q) == DNS_OK) {
		if (q.name_len > DNS_MAX_NAME || strlen(q.name) != q.name_len || q.question_end > size)
			abort();
		uint32_t rule = sp_match_dns(rules, rules->scratch_proto, &q);

		if (rule != SP_NO_RULE && rule >= rules->rule_count)
			abort();
	}
	/* As a frame: a private copy, since answers are written in place. */
	frame = malloc(size ? size : 1);
	if (!frame)
		return 0;
	memcpy(frame, data, size);
	if (sp_parse_frame(frame, size, &p) == 0) {
		if (p.payload_offset + p.payload_len > size)
			abort();
		sp_match_payload(rules, rules->scratch_proto, p.protocol, p.dst_port, frame + p.payload_offset,
				 p.payload_len);
		/* The delivery step: a completed checksum must verify. */
		if (sp_complete_checksum(frame, &p) == SP_CSUM_COMPLETED &&
		    sp_complete_checksum(frame, &p) != SP_CSUM_VALID)
			abort();
		/* TCP: the stream engine (every frame on a few connections of a small table), and the
		 * in-stream answer in a buffer with room to grow, as a UMEM frame has. */
		if (p.protocol == HYP_IPPROTO_TCP) {
			struct sp_tcp_result res;
			static uint64_t clock_ns;

			if (!streams && !(streams = sp_tcp_streams_new(16, 1000, 512, stream_stats)))
				abort();
			sp_tcp_segment(streams, frame, &p, clock_ns += 100, judge_tcp, NULL, &q, &res);
			if (res.cause == SP_TCP_RULE && (res.action == SP_NXDOMAIN || res.action == SP_REFUSE) &&
			    q.question_end && q.question_end <= res.head_len) {
				uint8_t *big = calloc(1, size + 4096);

				if (!big)
					abort();
				memcpy(big, frame, size);
				size_t answer = sp_build_dns_tcp_answer(big, size + 4096, &p, res.head, q.question_end, 3);

				if (answer > size + 4096 || (answer && answer != p.payload_offset + 2 + q.question_end))
					abort();
				if (answer)
					sp_tcp_end(streams, &res);
				free(big);
			}
			if (sp_tcp_count(streams) > 16)
				abort();
		}
		/* Any UDP frame, not only a DNS class's: the answer builder must survive every one. */
		if (p.protocol == HYP_IPPROTO_UDP && dns_parse_query(frame + p.payload_offset, p.payload_len, &q) == DNS_OK) {
			size_t answer = sp_build_dns_answer(frame, size, &p, &q, 3);

			if (answer > size)
				abort();
		}
	}
	free(frame);
	return 0;
}
