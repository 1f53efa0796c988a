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

static struct sp_rules *rules;

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
