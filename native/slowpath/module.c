/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * hyperion._slowpath: the per-packet AF_XDP loop, in C because line rate needs
 * it. Python builds the rule sets (Rules), opens one Queue per RX queue and
 * calls Queue.run() from a thread of its own: run() releases the GIL and
 * processes batches until stop(). Statistics and events are read back from
 * Python. Rules.inspect() runs the same decision on a frame without any
 * socket, for tests and offline replay.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <linux/if_xdp.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <xdp/xsk.h>

#include "hyperion_abi.h"
#include "hyperion_parser.h"
#include "control.h"
#include "dns.h"
#include "packet.h"
#include "rules.h"
#include "tcp_stream.h"

#define BATCH 64
/* Per-packet inspection latency buckets (ns), upper bounds; a batch's time is
 * divided evenly among its packets. The last bucket is +Inf. */
static const uint64_t latency_bounds_ns[] = {250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};
#define LATENCY_BUCKETS (sizeof(latency_bounds_ns) / sizeof(latency_bounds_ns[0]) + 1)
_Static_assert(LATENCY_BUCKETS == SP_LATENCY_BUCKETS, "control.h's latency buckets");
#define EVENT_RING 1024
/* Idle wake-up period: bounds how stale the heartbeat gets on an idle queue. */
#define POLL_MS 20

/* At most this many TX descriptors per kick: copy mode sends up to 32 per sendto (the
 * kernel's TX batch), so a kick repeats until the ring is empty or the kernel stops taking. */
#define TX_KICK_BATCH 32

/* ------------------------------------------------------------------ decision */

enum sp_outcome_flags {
	SP_INSPECTED_DNS = 1,
	SP_MALFORMED_DNS = 2,
	SP_NOT_PARSED = 4,
	SP_TCP_DNS = 8,        /* a TCP segment of a DNS class: for the stream engine (tcp_stream.c) */
};

struct sp_decision {
	uint8_t action;
	uint8_t flags;
	uint32_t rule;
	struct sp_packet pkt;
	struct dns_question q;
};

/* One message (a UDP payload, or a whole DNS message of a TCP stream): parsed as DNS when dns,
 * then the name rules, the regexes, and the class's signatures over it. */
static void judge_message(const struct sp_rules *r, hs_scratch_t *scratch, uint8_t protocol, uint16_t port,
			  const uint8_t *msg, size_t len, int dns, struct sp_decision *d)
{
	if (dns) {
		enum dns_parse_result res = dns_parse_query(msg, len, &d->q);

		if (res == DNS_MALFORMED) {
			d->flags |= SP_MALFORMED_DNS;
			d->action = r->malformed_action;
			return;
		}
		if (res == DNS_OK) {
			d->flags |= SP_INSPECTED_DNS;
			d->rule = sp_match_dns(r, scratch, &d->q);
		}
	}
	if (d->rule == SP_NO_RULE)  /* SP_NO_RULE too when the class has no signatures */
		d->rule = sp_match_payload(r, scratch, protocol, port, msg, len);
	if (d->rule != SP_NO_RULE) {
		d->action = r->rules[d->rule].action;
		__atomic_fetch_add(&r->hits[d->rule], 1, __ATOMIC_RELAXED);
	}
}

static void reset_decision(struct sp_decision *d)
{
	d->action = SP_PASS;
	d->flags &= SP_NOT_PARSED | SP_TCP_DNS;
	d->rule = SP_NO_RULE;
	d->q.name[0] = '\0';
	d->q.name_len = 0;
	d->q.qtype = 0;
}

/* streams: TCP segments of a DNS class are left to the stream engine (flag SP_TCP_DNS), whose
 * messages are judged one by one (tcp_judge_message); without it (Rules.inspect) the segment's
 * payload meets the class's signatures, as before. */
static void decide(const struct sp_rules *r, hs_scratch_t *scratch, const uint8_t *frame, size_t len, int streams,
		   struct sp_decision *d)
{
	d->flags = 0;
	reset_decision(d);
	if (sp_parse_frame(frame, len, &d->pkt) != 0) {
		d->flags |= SP_NOT_PARSED;
		return;
	}
	int dns_class = sp_is_dns_class(r, d->pkt.protocol, d->pkt.dst_port);

	/* As the XDP program: a first fragment to a DNS class, by the policy's dns_fragments. */
	if (d->pkt.first_fragment && dns_class && r->dns_fragments == HYP_DNS_FRAG_DROP) {
		d->action = SP_DROP;
		return;
	}
	if (streams && dns_class && d->pkt.protocol == HYP_IPPROTO_TCP) {
		d->flags |= SP_TCP_DNS;
		return;
	}
	judge_message(r, scratch, d->pkt.protocol, d->pkt.dst_port, frame + d->pkt.payload_offset, d->pkt.payload_len,
		      dns_class && d->pkt.protocol == HYP_IPPROTO_UDP, d);
}

/* ----------------------------------------------------------------------- Rules */

typedef struct {
	PyObject_HEAD
	struct sp_rules *rules;
	hs_scratch_t *scratch; /* for inspect(), under the GIL */
} RulesObject;

static void Rules_dealloc(RulesObject *self)
{
	hs_free_scratch(self->scratch);
	sp_rules_free(self->rules);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Collects (index, pattern) pairs into parallel arrays. *snapshot (a tuple of the pairs, released by
 * the caller after the compile) keeps the patterns alive while the GIL is released: the caller's
 * list could change meanwhile, the tuple and its (immutable) pairs cannot. */
static int pattern_arrays(PyObject *pairs, const char ***patterns, uint32_t **ids, uint32_t *count,
			  uint32_t rule_count, PyObject **snapshot)
{
	Py_ssize_t n;

	*snapshot = PySequence_Tuple(pairs);
	if (!*snapshot)
		return -1;
	n = PyTuple_GET_SIZE(*snapshot);
	*count = (uint32_t)n;
	*patterns = calloc(n ? n : 1, sizeof(**patterns));
	*ids = calloc(n ? n : 1, sizeof(**ids));
	if (!*patterns || !*ids) {
		PyErr_NoMemory();
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		unsigned int index;
		const char *pattern;
		PyObject *pair = PyTuple_GET_ITEM(*snapshot, i);

		if (!PyTuple_Check(pair)) {
			PyErr_SetString(PyExc_TypeError, "patterns must be (index, pattern) tuples");
			return -1;
		}
		if (!PyArg_ParseTuple(pair, "Is", &index, &pattern))
			return -1;
		if (index >= rule_count) {
			PyErr_Format(PyExc_ValueError, "rule index %u out of range", index);
			return -1;
		}
		(*patterns)[i] = pattern;
		(*ids)[i] = index;
	}
	return 0;
}

static int hex_address(const char *hex, uint8_t *out, size_t width)
{
	if (strlen(hex) != 2 * width)
		return -1;
	for (size_t i = 0; i < width; i++) {
		unsigned int byte;

		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			return -1;
		out[i] = (uint8_t)byte;
	}
	return 0;
}

/* never_block: [(version, lo_hex, hi_hex)], each family sorted and disjoint (binary search needs it). */
static int never_block_ranges(struct sp_rules *r, PyObject *list)
{
	Py_ssize_t n = PyList_Size(list);

	r->never4 = calloc(n ? n : 1, sizeof(*r->never4));
	r->never6 = calloc(n ? n : 1, sizeof(*r->never6));
	if (!r->never4 || !r->never6) {
		PyErr_NoMemory();
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		int version;
		const char *lo, *hi;

		if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "iss", &version, &lo, &hi))
			return -1;
		if (version != 4 && version != 6) {
			PyErr_Format(PyExc_ValueError, "never_block[%zd]: IP version %d", i, version);
			return -1;
		}
		size_t width = version == 4 ? 4 : 16;
		struct sp_range *ranges = version == 4 ? r->never4 : r->never6;
		uint32_t *count = version == 4 ? &r->never4_count : &r->never6_count;
		struct sp_range *range = &ranges[*count];

		if (hex_address(lo, range->lo, width) || hex_address(hi, range->hi, width) ||
		    memcmp(range->lo, range->hi, width) > 0) {
			PyErr_Format(PyExc_ValueError, "never_block[%zd]: bad range %s-%s", i, lo, hi);
			return -1;
		}
		if (*count && memcmp(ranges[*count - 1].hi, range->lo, width) >= 0) {
			PyErr_Format(PyExc_ValueError, "never_block[%zd]: ranges must be sorted and disjoint", i);
			return -1;
		}
		(*count)++;
	}
	return 0;
}

/* dns_classes: [(protocol, port)], UDP or TCP, ports 1..65535. */
static int add_dns_classes(struct sp_rules *r, PyObject *list)
{
	for (Py_ssize_t i = 0; i < PyList_Size(list); i++) {
		int protocol, port;

		if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "ii", &protocol, &port))
			return -1;
		if (protocol != HYP_IPPROTO_UDP && protocol != HYP_IPPROTO_TCP) {
			PyErr_Format(PyExc_ValueError, "dns_classes[%zd]: protocol %d (expected %d UDP or %d TCP)", i,
				     protocol, HYP_IPPROTO_UDP, HYP_IPPROTO_TCP);
			return -1;
		}
		if (port < 1 || port > 65535) {
			PyErr_Format(PyExc_ValueError, "dns_classes[%zd]: port %d (expected 1..65535)", i, port);
			return -1;
		}
		sp_rules_add_dns_class(r, (uint8_t)protocol, (uint16_t)port);
	}
	return 0;
}

/* One serialized database of `databases`: bytes, or None where the set has no patterns. */
static int serialized_db(PyObject *item, const char **bytes, Py_ssize_t *len, uint32_t count, const char *what)
{
	if (item == Py_None && !count) {
		*bytes = NULL, *len = 0;
		return 0;
	}
	if (!PyBytes_Check(item)) {
		PyErr_Format(PyExc_ValueError, "%s: %s", what,
			     count ? "serialized database missing" : "serialized database for no patterns");
		return -1;
	}
	return PyBytes_AsStringAndSize(item, (char **)bytes, len);
}

static int Rules_init(RulesObject *self, PyObject *args, PyObject *kwds)
{
	/* control.h's SP_RULE_SPEC_FIELDS, in order: the format string below takes them positionally. */
	static char *kwlist[] = {
#define SP_RULE_SPEC_KEYWORD(name) #name,
		SP_RULE_SPEC_FIELDS(SP_RULE_SPEC_KEYWORD)
#undef SP_RULE_SPEC_KEYWORD
		"databases", NULL};
	PyObject *rules, *names, *dns_regex, *classes, *never_block = NULL, *block_limits = NULL, *dns_classes = NULL;
	PyObject *databases = Py_None, *class_dbs = NULL;
	PyObject *snapshot = NULL;
	int malformed_action = SP_DROP, dns_fragments = HYP_DNS_FRAG_DROP, rc;
	char err[256] = "";
	const char **patterns = NULL;
	uint32_t *ids = NULL, count = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!|iO!O!O!iO", kwlist, &PyList_Type, &rules, &PyList_Type,
					 &names, &PyList_Type, &dns_regex, &PyList_Type, &classes,
					 &malformed_action, &PyList_Type, &never_block, &PyList_Type, &block_limits,
					 &PyList_Type, &dns_classes, &dns_fragments, &databases))
		return -1;
	if (databases != Py_None) {
		/* (dns_regex database, [database per class, in the order of classes]) from serialize() */
		if (!PyTuple_Check(databases) || PyTuple_GET_SIZE(databases) != 2 ||
		    !PyList_Check(PyTuple_GET_ITEM(databases, 1)) ||
		    PyList_GET_SIZE(PyTuple_GET_ITEM(databases, 1)) != PyList_Size(classes)) {
			PyErr_SetString(PyExc_ValueError, "databases: expected (dns_regex, [one per class]) as serialize() "
					"returns it");
			return -1;
		}
		class_dbs = PyTuple_GET_ITEM(databases, 1);
	}
	uint32_t rule_count = (uint32_t)PyList_Size(rules);

	if (self->rules) {  /* __init__ called again: start over */
		hs_free_scratch(self->scratch);
		self->scratch = NULL;
		sp_rules_free(self->rules);
	}
	self->rules = sp_rules_new(rule_count, (uint32_t)PyList_Size(names));
	if (!self->rules) {
		PyErr_NoMemory();
		return -1;
	}
	self->rules->malformed_action = (uint8_t)malformed_action;
	if (dns_fragments != HYP_DNS_FRAG_DROP && dns_fragments != HYP_DNS_FRAG_JUDGE) {
		PyErr_Format(PyExc_ValueError, "dns_fragments: %d (expected %d drop or %d judge)", dns_fragments,
			     HYP_DNS_FRAG_DROP, HYP_DNS_FRAG_JUDGE);
		return -1;
	}
	self->rules->dns_fragments = (uint8_t)dns_fragments;
	for (uint32_t i = 0; i < rule_count; i++) {
		int action, qtype;
		double ttl;

		if (!PyArg_ParseTuple(PyList_GET_ITEM(rules, i), "iid", &action, &qtype, &ttl))
			return -1;
		if (action < 0 || action >= SP_ACTION_COUNT) {
			PyErr_Format(PyExc_ValueError, "rule %u: unknown action %d", i, action);
			return -1;
		}
		self->rules->rules[i].action = (uint8_t)action;
		self->rules->rules[i].qtype = (uint16_t)qtype;
		self->rules->rules[i].ttl_ns = (uint64_t)(ttl * 1e9);
	}
	if (block_limits && PyList_Size(block_limits) && (uint32_t)PyList_Size(block_limits) != rule_count) {
		PyErr_Format(PyExc_ValueError, "block_limits has %zd entries for %u rules", PyList_Size(block_limits),
			     rule_count);
		return -1;
	}
	for (Py_ssize_t i = 0; block_limits && i < PyList_Size(block_limits); i++) {
		unsigned long limit = PyLong_AsUnsignedLong(PyList_GET_ITEM(block_limits, i));

		if (PyErr_Occurred() || limit > UINT32_MAX) {
			PyErr_Format(PyExc_ValueError, "block_limits[%zd]: expected an integer 0..2^32-1", i);
			return -1;
		}
		self->rules->rules[i].max_blocks_per_sec = (uint32_t)limit;
	}
	if (never_block && never_block_ranges(self->rules, never_block))
		return -1;
	if (dns_classes && add_dns_classes(self->rules, dns_classes))
		return -1;
	for (Py_ssize_t i = 0; i < PyList_Size(names); i++) {
		unsigned int index;
		int kind;
		const char *name;

		if (!PyArg_ParseTuple(PyList_GET_ITEM(names, i), "Iis", &index, &kind, &name))
			return -1;
		if (sp_rules_add_name(self->rules, index, (uint8_t)kind, name)) {
			PyErr_Format(PyExc_ValueError, "name rule %u (%s) could not be added", index, name);
			return -1;
		}
	}
	if (pattern_arrays(dns_regex, &patterns, &ids, &count, rule_count, &snapshot))
		goto fail;
	if (class_dbs) {
		const char *bytes;
		Py_ssize_t len;

		if (serialized_db(PyTuple_GET_ITEM(databases, 0), &bytes, &len, count, "DNS regex"))
			goto fail;
		rc = sp_rules_load_dns_regex(self->rules, bytes, (size_t)len, ids, count, err, sizeof(err));
	} else {
		/* Hyperscan compiles can take seconds: the daemon's other threads keep running meanwhile. */
		Py_BEGIN_ALLOW_THREADS
		rc = sp_rules_compile_dns_regex(self->rules, patterns, ids, count, err, sizeof(err));
		Py_END_ALLOW_THREADS
	}
	if (rc) {
		PyErr_Format(PyExc_ValueError, "DNS regex: %s", err);
		goto fail;
	}
	free(patterns), free(ids);
	patterns = NULL, ids = NULL;
	Py_CLEAR(snapshot);
	for (Py_ssize_t i = 0; i < PyList_Size(classes); i++) {
		int protocol, port;
		PyObject *pairs;

		if (!PyArg_ParseTuple(PyList_GET_ITEM(classes, i), "iiO!", &protocol, &port, &PyList_Type, &pairs))
			goto fail;
		if (pattern_arrays(pairs, &patterns, &ids, &count, rule_count, &snapshot))
			goto fail;
		if (class_dbs) {
			const char *bytes;
			Py_ssize_t len;
			char what[48];

			snprintf(what, sizeof(what), "signatures of %d/%d", protocol, port);
			if (serialized_db(PyList_GET_ITEM(class_dbs, i), &bytes, &len, count, what))
				goto fail;
			rc = sp_rules_load_class(self->rules, (uint8_t)protocol, (uint16_t)port, bytes, (size_t)len, ids,
						 count, err, sizeof(err));
		} else {
			Py_BEGIN_ALLOW_THREADS
			rc = sp_rules_add_class(self->rules, (uint8_t)protocol, (uint16_t)port, patterns, ids, count, err,
						sizeof(err));
			Py_END_ALLOW_THREADS
		}
		if (rc) {
			PyErr_Format(PyExc_ValueError, "signatures of %d/%d: %s", protocol, port, err);
			goto fail;
		}
		free(patterns), free(ids);
		patterns = NULL, ids = NULL;
		Py_CLEAR(snapshot);
	}
	if (sp_rules_finish(self->rules, err, sizeof(err))) {
		PyErr_SetString(PyExc_MemoryError, err);
		goto fail;
	}
	if (self->rules->scratch_proto && hs_clone_scratch(self->rules->scratch_proto, &self->scratch) != HS_SUCCESS) {
		PyErr_NoMemory();
		goto fail;
	}
	return 0;
fail:
	Py_XDECREF(snapshot);
	free(patterns);
	free(ids);
	return -1;
}

/* One database as bytes (hs_serialize_database), or None. */
static PyObject *serialize_db(const hs_database_t *db)
{
	char *bytes = NULL;
	size_t len = 0;
	PyObject *out;

	if (!db)
		Py_RETURN_NONE;
	if (hs_serialize_database(db, &bytes, &len) != HS_SUCCESS) {
		PyErr_SetString(PyExc_MemoryError, "Hyperscan could not serialize a database");
		return NULL;
	}
	out = PyBytes_FromStringAndSize(bytes, (Py_ssize_t)len);
	free(bytes);  /* hs's default allocator is malloc */
	return out;
}

static PyObject *Rules_serialize(RulesObject *self, PyObject *unused)
{
	PyObject *classes = PyList_New(self->rules->class_count), *dns;

	if (!classes)
		return NULL;
	for (uint32_t i = 0; i < self->rules->class_count; i++) {
		PyObject *db = serialize_db(self->rules->classes[i].db);

		if (!db) {
			Py_DECREF(classes);
			return NULL;
		}
		PyList_SET_ITEM(classes, i, db);
	}
	dns = serialize_db(self->rules->dns_regex);
	if (!dns) {
		Py_DECREF(classes);
		return NULL;
	}
	return Py_BuildValue("(NN)", dns, classes);
}

/* Names are bytes off the wire: Latin-1 maps each to one character, so decoding never fails. */
static PyObject *qname_str(const char *name, size_t len)
{
	return PyUnicode_DecodeLatin1(name, (Py_ssize_t)len, NULL);
}

static PyObject *Rules_inspect(RulesObject *self, PyObject *arg)
{
	Py_buffer frame;
	struct sp_decision d;

	if (PyObject_GetBuffer(arg, &frame, PyBUF_SIMPLE))
		return NULL;
	decide(self->rules, self->scratch, frame.buf, (size_t)frame.len, 0, &d);
	PyBuffer_Release(&frame);
	PyObject *rule = d.rule == SP_NO_RULE ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(d.rule);

	return Py_BuildValue("{s:i,s:N,s:O,s:O,s:O,s:N,s:i}", "action", d.action, "rule", rule, "dns",
			     (d.flags & SP_INSPECTED_DNS) ? Py_True : Py_False, "malformed_dns",
			     (d.flags & SP_MALFORMED_DNS) ? Py_True : Py_False, "parsed",
			     (d.flags & SP_NOT_PARSED) ? Py_False : Py_True, "qname", qname_str(d.q.name, d.q.name_len),
			     "qtype", d.q.qtype);
}

static PyObject *Rules_hits(RulesObject *self, PyObject *unused)
{
	PyObject *list = PyList_New(self->rules->rule_count);

	for (uint32_t i = 0; list && i < self->rules->rule_count; i++)
		PyList_SET_ITEM(list, i, PyLong_FromUnsignedLongLong(__atomic_load_n(&self->rules->hits[i],
										     __ATOMIC_RELAXED)));
	return list;
}

/* Only the rules that matched: a worker reports these every REPORT_INTERVAL, and a policy may hold
 * a million rules of which a handful match. */
static PyObject *Rules_matched(RulesObject *self, PyObject *unused)
{
	PyObject *list = PyList_New(0);

	for (uint32_t i = 0; list && i < self->rules->rule_count; i++) {
		uint64_t n = __atomic_load_n(&self->rules->hits[i], __ATOMIC_RELAXED);
		PyObject *pair;

		if (!n)
			continue;
		pair = Py_BuildValue("(IK)", i, (unsigned long long)n);
		if (!pair || PyList_Append(list, pair)) {
			Py_XDECREF(pair);
			Py_CLEAR(list);
			break;
		}
		Py_DECREF(pair);
	}
	return list;
}

static PyObject *Rules_never_blocked(RulesObject *self, PyObject *arg)
{
	Py_buffer addr;
	int found;

	if (PyObject_GetBuffer(arg, &addr, PyBUF_SIMPLE))
		return NULL;
	if (addr.len != 4 && addr.len != 16) {
		PyBuffer_Release(&addr);
		PyErr_SetString(PyExc_ValueError, "an address is 4 or 16 bytes");
		return NULL;
	}
	found = sp_never_blocked(self->rules, addr.len == 4 ? 4 : 6, addr.buf);
	PyBuffer_Release(&addr);
	return PyBool_FromLong(found);
}

static PyObject *Rules_block_limits(RulesObject *self, PyObject *unused)
{
	PyObject *list = PyList_New(self->rules->rule_count);

	for (uint32_t i = 0; list && i < self->rules->rule_count; i++)
		PyList_SET_ITEM(list, i, PyLong_FromUnsignedLong(self->rules->rules[i].max_blocks_per_sec));
	return list;
}

static PyMethodDef Rules_methods[] = {
	{"never_blocked", (PyCFunction)Rules_never_blocked, METH_O,
	 "never_blocked(address bytes) -> bool: block_source would refuse to insert this source."},
	{"block_limits", (PyCFunction)Rules_block_limits, METH_NOARGS,
	 "block_limits() -> list: max blocks per second per rule index (0: uncapped)."},
	{"inspect", (PyCFunction)Rules_inspect, METH_O,
	 "inspect(frame) -> dict: the decision the workers would take for an Ethernet frame."},
	{"hits", (PyCFunction)Rules_hits, METH_NOARGS, "hits() -> list: matches per rule index."},
	{"matched", (PyCFunction)Rules_matched, METH_NOARGS,
	 "matched() -> [(rule index, matches)] of the rules with matches, by index."},
	{"serialize", (PyCFunction)Rules_serialize, METH_NOARGS,
	 "serialize() -> (dns_regex db | None, [db | None per class]): the compiled Hyperscan databases, for "
	 "Rules(..., databases=) in another process."},
	{NULL},
};

static PyTypeObject RulesType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hyperion._slowpath.Rules",
	.tp_basicsize = sizeof(RulesObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Rules_init,
	.tp_dealloc = (destructor)Rules_dealloc,
	.tp_methods = Rules_methods,
	.tp_doc = "Compiled slow-path rules (DNS names, regexes, payload signatures).",
};

/* ----------------------------------------------------------------------- Queue */

/* The counters' names, from control.h's one list. */
static const char *const stat_names[ST_COUNT] = {
#define SP_STAT_NAME(id, name) [ST_##id] = name,
	SP_STATS(SP_STAT_NAME)
#undef SP_STAT_NAME
};

typedef struct {
	PyObject_HEAD
	struct xsk_umem *umem;
	struct xsk_socket *xsk;
	struct xsk_ring_prod fill, tx;
	struct xsk_ring_cons comp, rx;
	void *buffer;
	size_t buffer_size;
	uint32_t frame_size, frame_count, ring_size;
	uint64_t *free_frames;
	uint32_t free_count;
	uint32_t tx_outstanding;
	int queue_id, xsk_map_fd, dyn4_fd, dyn6_fd, deliver_fd;
	int deliver_frames;          /* deliver_fd takes whole frames (the re-entry veth), sent in batches */
	/* The batch's frames to deliver (deliver_frames): sent with one sendmmsg, then freed. */
	struct mmsghdr out_msgs[BATCH];
	struct iovec out_iov[BATCH];
	uint64_t out_addr[BATCH];
	uint32_t out_count;
	int dns_tcp_fd;              /* hyp_dns_tcp: XDP's hand-off of TCP DNS connections (-1: none) */
	struct sp_tcp_streams *streams; /* this queue's TCP DNS connections (under lock) */
	int diag_fd;                 /* NETLINK_SOCK_DIAG: is a TCP flow established? (-1: cannot tell) */
	uint32_t diag_seq;
	pthread_mutex_t lock;        /* held while a batch runs; guards rules and events */
	RulesObject *rules;
	hs_scratch_t *scratch;
	int inspect;                 /* 0: the minimal receive-and-drop loop, a benchmark baseline */
	volatile int stop;
	int running;
	uint64_t local_stats[ST_COUNT];
	uint64_t local_latency[LATENCY_BUCKETS];
	/* In the control block when there is one (the supervisor reads them there at scrape
	 * time), else local_stats/local_latency. */
	uint64_t *stats;
	uint64_t *latency;
	uint32_t rx_ring_level;      /* RX descriptors waiting after the last batch */
	struct sp_event events[EVENT_RING];
	uint32_t event_head, event_count;
	int events_enabled;
	Py_buffer control;           /* optional shared control block (control.h) */
	struct sp_control *ctl;
} QueueObject;

static void free_frame(QueueObject *q, uint64_t addr)
{
	q->free_frames[q->free_count++] = addr - (addr % q->frame_size);
}

static void refill(QueueObject *q)
{
	uint32_t idx, n = xsk_prod_nb_free(&q->fill, q->free_count);

	if (n > q->free_count)
		n = q->free_count;
	if (!n || xsk_ring_prod__reserve(&q->fill, n, &idx) != n)
		return;
	for (uint32_t i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&q->fill, idx + i) = q->free_frames[--q->free_count];
	xsk_ring_prod__submit(&q->fill, n);
}

static void reap_completions(QueueObject *q)
{
	uint32_t idx, n = xsk_ring_cons__peek(&q->comp, q->ring_size, &idx);

	for (uint32_t i = 0; i < n; i++)
		free_frame(q, *xsk_ring_cons__comp_addr(&q->comp, idx + i));
	if (n) {
		xsk_ring_cons__release(&q->comp, n);
		q->tx_outstanding -= n;
	}
}

/* Descriptors in the TX ring the kernel has not taken yet. */
static uint32_t tx_pending(QueueObject *q)
{
	return *q->tx.producer - __atomic_load_n(q->tx.consumer, __ATOMIC_ACQUIRE);
}

/* Copy mode transmits only when kicked, and one sendto sends at most TX_KICK_BATCH
 * descriptors: kick until the ring is empty (bounded by the ring), so that no answer waits
 * in the ring for the next packet. Called after every batch and on idle iterations. */
static void kick_tx(QueueObject *q)
{
	for (uint32_t i = 0; i <= q->ring_size / TX_KICK_BATCH && tx_pending(q); i++) {
		if (sendto(xsk_socket__fd(q->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN &&
		    errno != EBUSY && errno != ENOBUFS)
			break;
		reap_completions(q); /* room in the completion ring for the next round */
	}
}

static void record_event(QueueObject *q, const struct sp_decision *d)
{
	struct sp_event *e;

	if (!q->events_enabled)
		return;
	if (q->event_count == EVENT_RING) {
		q->stats[ST_EVENTS_LOST]++;
		return;
	}
	e = &q->events[(q->event_head + q->event_count++) % EVENT_RING];
	e->rule = d->rule;
	e->action = d->action;
	e->malformed = !!(d->flags & SP_MALFORMED_DNS);
	e->ip_version = d->pkt.ip_version;
	e->protocol = d->pkt.protocol;
	e->src_port = d->pkt.src_port;
	e->dst_port = d->pkt.dst_port;
	e->qtype = d->q.qtype;
	memcpy(e->saddr, d->pkt.saddr, 16);
	memcpy(e->daddr, d->pkt.daddr, 16);
	memcpy(e->qname, d->q.name, d->q.name_len + 1);
}

static uint64_t now_ns(void);

/* TCP states in which the three-way handshake has completed. */
static int handshake_done(uint8_t state)
{
	switch (state) {
	case 1: /* ESTABLISHED */
	case 4: /* FIN_WAIT1 */
	case 5: /* FIN_WAIT2 */
	case 8: /* CLOSE_WAIT */
	case 9: /* LAST_ACK */
	case 11: /* CLOSING */
		return 1;
	default:
		return 0;
	}
}

/*
 * Is there a local TCP socket for this segment's 4-tuple whose handshake completed? One exact
 * INET_DIAG lookup (no dump): the kernel answers in the sendto() call, a few microseconds. A single
 * spoofed segment has no such socket (its SYN-ACK went to the real owner of the address), and the
 * lookup's listener fallback or a half-open request socket is refused by its state. Forwarded flows
 * (a gateway) have no local socket either: they are never verified, so never blocked.
 */
static int tcp_established(QueueObject *q, const struct sp_packet *p)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 req;
	} msg = {0};
	union {
		struct nlmsghdr nlh;
		uint8_t buf[1024];
	} reply;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	size_t width = p->ip_version == 4 ? 4 : 16;
	uint32_t seq = ++q->diag_seq;
	ssize_t n;

	if (q->diag_fd < 0)
		return 0;
	/* A late answer to an earlier lookup must not be read as this one's. */
	while (recv(q->diag_fd, reply.buf, sizeof(reply.buf), MSG_DONTWAIT) > 0)
		;
	msg.nlh.nlmsg_len = sizeof(msg);
	msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	msg.nlh.nlmsg_flags = NLM_F_REQUEST;
	msg.nlh.nlmsg_seq = seq;
	msg.req.sdiag_family = p->ip_version == 4 ? AF_INET : AF_INET6;
	msg.req.sdiag_protocol = IPPROTO_TCP;
	msg.req.idiag_states = ~0U;
	/* The socket's view: local = the packet's destination, remote = its source. */
	msg.req.id.idiag_sport = htons(p->dst_port);
	msg.req.id.idiag_dport = htons(p->src_port);
	memcpy(msg.req.id.idiag_src, p->daddr, width);
	memcpy(msg.req.id.idiag_dst, p->saddr, width);
	msg.req.id.idiag_cookie[0] = msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
	if (sendto(q->diag_fd, &msg, sizeof(msg), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return 0;
	for (int attempt = 0; attempt < 4; attempt++) {
		struct pollfd pfd = {.fd = q->diag_fd, .events = POLLIN};

		if (poll(&pfd, 1, 5) <= 0)
			return 0;
		n = recv(q->diag_fd, reply.buf, sizeof(reply.buf), MSG_DONTWAIT);
		if (n < (ssize_t)sizeof(struct nlmsghdr) || !NLMSG_OK(&reply.nlh, (size_t)n))
			return 0;
		if (reply.nlh.nlmsg_seq != seq)
			continue;
		if (reply.nlh.nlmsg_type != SOCK_DIAG_BY_FAMILY ||
		    reply.nlh.nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
			return 0; /* NLMSG_ERROR: -ENOENT, no socket for this 4-tuple */
		return handshake_done(((struct inet_diag_msg *)NLMSG_DATA(&reply.nlh))->idiag_state);
	}
	return 0;
}

/*
 * block_source's insert, behind its guards, cheapest first: never_block, then (TCP only) an
 * established flow, then the rule's blocks-per-second cap. The packet is dropped in every case.
 */
static void block_source(QueueObject *q, const struct sp_decision *d)
{
	struct hyp_dyn_block value = {0};
	struct timespec now;
	struct sp_rules *rules = q->rules->rules;
	int fd = d->pkt.ip_version == 4 ? q->dyn4_fd : q->dyn6_fd;

	if (sp_never_blocked(rules, d->pkt.ip_version, d->pkt.saddr)) {
		q->stats[ST_BLOCK_NEVER]++;
		return;
	}
	if (d->pkt.protocol == HYP_IPPROTO_TCP && !tcp_established(q, &d->pkt)) {
		q->stats[ST_BLOCK_NOT_ESTABLISHED]++;
		return;
	}
	if (!sp_take_block_token(rules, d->rule, now_ns())) {
		q->stats[ST_BLOCK_RATE_LIMITED]++;
		return;
	}
	clock_gettime(CLOCK_BOOTTIME, &now);
	value.expires_ns = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec +
			   rules->rules[d->rule].ttl_ns;
	value.rule_id = d->rule + 1; /* 1-based, as in the fast path's events */
	if (fd < 0 || bpf_map_update_elem(fd, d->pkt.saddr, &value, BPF_ANY))
		q->stats[ST_BLOCK_ERRORS]++;
	else
		q->stats[ST_BLOCKED_SOURCES]++;
}

/* Hands a passing packet to the local stack, which verifies its checksum, so an offloading
 * sender's partial one is completed first; a wrong one is left for the stack to drop and count.
 * Re-entry (deliver_frames): the whole frame, as it came off the wire, queued for the batch's one
 * sendmmsg on the helper veth (flush_deliveries frees it). TUN: the IP datagram, written now, and
 * the frame freed. */
static void deliver(QueueObject *q, uint8_t *frame, uint64_t addr, uint32_t len, const struct sp_decision *d)
{
	if (!(d->flags & SP_NOT_PARSED)) {
		enum sp_csum_result csum = sp_complete_checksum(frame, &d->pkt);

		q->stats[ST_CSUM_COMPLETED] += csum == SP_CSUM_COMPLETED;
		q->stats[ST_CSUM_BAD] += csum == SP_CSUM_BAD;
	}
	if (q->deliver_frames && q->deliver_fd >= 0 && q->out_count < BATCH) {
		uint32_t i = q->out_count++;

		q->out_iov[i] = (struct iovec){.iov_base = frame, .iov_len = len};
		q->out_msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &q->out_iov[i], .msg_iovlen = 1}};
		q->out_addr[i] = addr;
		return;
	}
	if (q->deliver_fd < 0 || q->deliver_frames ||
	    write(q->deliver_fd, frame + d->pkt.l3_offset, d->pkt.l3_len) < 0)
		q->stats[ST_DELIVER_ERRORS]++;
	else
		q->stats[ST_PASSED]++;
	free_frame(q, addr);
}

/* Sends the batch's queued frames (re-entry), then frees them. A frame the socket refuses (its
 * buffer full: ENOBUFS/EAGAIN) is counted as a delivery error, as a failed TUN write is. */
static void flush_deliveries(QueueObject *q)
{
	uint32_t sent = 0;

	while (sent < q->out_count) {
		int n = sendmmsg(q->deliver_fd, &q->out_msgs[sent], q->out_count - sent, MSG_DONTWAIT);

		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			q->stats[ST_DELIVER_ERRORS]++; /* this one is dropped; try the rest */
			sent++;
			continue;
		}
		q->stats[ST_PASSED] += (uint32_t)n;
		sent += (uint32_t)n;
	}
	for (uint32_t i = 0; i < q->out_count; i++)
		free_frame(q, q->out_addr[i]);
	q->out_count = 0;
}

/* ------------------------------------------------------------ DNS over TCP */

/* What the stream engine's judge needs: the rule set, the segment's decision (pkt set; per message
 * q, flags, rule, action), counters, and the queue for events and block_source (NULL: the
 * DnsTcpStreams object, which has neither). */
struct tcp_judge {
	const struct sp_rules *r;
	hs_scratch_t *scratch;
	struct sp_decision *d;
	uint64_t *stats;
	QueueObject *q;
	PyObject *established;  /* DnsTcpStreams: callable() -> bool standing for the socket lookup, or NULL */
};

static uint8_t tcp_judge_message(void *ctx, const uint8_t *msg, size_t len, int oversized)
{
	struct tcp_judge *j = ctx;
	struct sp_decision *d = j->d;

	reset_decision(d);
	j->stats[ST_DNS_TCP_MESSAGES]++;
	if (oversized) {  /* a declared length over the cap: malformed, unread */
		d->flags |= SP_MALFORMED_DNS;
		d->action = j->r->malformed_action;
	} else {
		judge_message(j->r, j->scratch, HYP_IPPROTO_TCP, d->pkt.dst_port, msg, len, 1, d);
	}
	j->stats[ST_DNS_INSPECTED] += !!(d->flags & SP_INSPECTED_DNS);
	j->stats[ST_MALFORMED_DNS] += !!(d->flags & SP_MALFORMED_DNS);
	j->stats[ST_ALERTED] += d->action == SP_ALERT;
	if (d->action != SP_PASS && j->q)
		record_event(j->q, d);
	return d->action;
}

static int tcp_syn_established(void *ctx)
{
	struct tcp_judge *j = ctx;

	if (j->q)
		return tcp_established(j->q, &j->d->pkt);
	if (!j->established || PyErr_Occurred())
		return 0;
	PyObject *got = PyObject_CallNoArgs(j->established);
	int yes = got ? PyObject_IsTrue(got) : 0;

	Py_XDECREF(got);
	return yes > 0;
}

enum tcp_outcome {
	TCP_DELIVER,
	TCP_DROP,
	TCP_ANSWER,  /* the frame is now the in-stream answer, *answer_len bytes */
};

/* One TCP segment of a DNS class, start to end, for the queue's loop and DnsTcpStreams alike.
 * cap: the frame buffer's size (an answer can be longer than the segment). */
static enum tcp_outcome tcp_dns_segment(struct sp_tcp_streams *t, struct tcp_judge *j, uint8_t *frame, size_t cap,
					uint64_t now, struct sp_tcp_result *res, size_t *answer_len)
{
	struct sp_decision *d = j->d;

	*answer_len = 0;
	sp_tcp_segment(t, frame, &d->pkt, now, tcp_judge_message, j->q || j->established ? tcp_syn_established : NULL, j,
		       res);
	if (res->cause == SP_TCP_NO_DATA || res->cause == SP_TCP_DATA)
		return TCP_DELIVER;
	if (res->cause != SP_TCP_RULE)
		return TCP_DROP;
	switch (res->action) {
	case SP_NXDOMAIN:
	case SP_REFUSE:
		/* Answered only when the deciding message is a query: a signature on anything else drops. */
		if (d->flags & SP_INSPECTED_DNS)
			*answer_len = sp_build_dns_tcp_answer(frame, cap, &d->pkt, res->head, d->q.question_end,
							      res->action == SP_NXDOMAIN ? 3 : 5);
		if (!*answer_len)
			return TCP_DROP;  /* unanswerable: as a drop, the connection as it was */
		j->stats[res->action == SP_NXDOMAIN ? ST_NXDOMAIN : ST_REFUSED]++;
		j->stats[ST_DNS_TCP_ANSWERED]++;
		sp_tcp_end(t, res);
		return TCP_ANSWER;
	case SP_BLOCK_SOURCE:
		if (j->q)
			block_source(j->q, d);
		sp_tcp_end(t, res);
		return TCP_DROP;
	default:
		return TCP_DROP;
	}
}

/* hyp_dns_tcp through its fd (the owner points at it). */
static int map_lookup(void *owner, const struct hyp_dns_tcp_key *key, struct hyp_dns_tcp_flow *flow)
{
	int fd = *(int *)owner;

	return fd >= 0 && !bpf_map_lookup_elem(fd, key, flow) ? 0 : -1;
}

static void map_forget(void *owner, const struct hyp_dns_tcp_key *key)
{
	int fd = *(int *)owner;

	if (fd >= 0)
		bpf_map_delete_elem(fd, key);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* One batch of RX descriptors; returns how many were processed. */
static uint32_t process_batch(QueueObject *q)
{
	uint32_t idx_rx, idx_tx, rcvd = xsk_ring_cons__peek(&q->rx, BATCH, &idx_rx), ntx = 0;
	uint64_t tx_addr[BATCH];
	uint32_t tx_len[BATCH];
	struct sp_decision d;
	uint64_t start = now_ns();

	if (!rcvd)
		return 0;
	pthread_mutex_lock(&q->lock);
	if (!q->inspect) {
		for (uint32_t i = 0; i < rcvd; i++)
			free_frame(q, xsk_ring_cons__rx_desc(&q->rx, idx_rx + i)->addr);
		q->stats[ST_RX] += rcvd;
		q->stats[ST_DROPPED] += rcvd;
		goto done;
	}
	for (uint32_t i = 0; i < rcvd; i++) {
		const struct xdp_desc *desc = xsk_ring_cons__rx_desc(&q->rx, idx_rx + i);
		uint8_t *frame = xsk_umem__get_data(q->buffer, desc->addr);
		size_t answer;

		q->stats[ST_RX]++;
		decide(q->rules->rules, q->scratch, frame, desc->len, 1, &d);
		if (d.flags & SP_TCP_DNS) {
			struct tcp_judge j = {q->rules->rules, q->scratch, &d, q->stats, q, NULL};
			struct sp_tcp_result res;

			switch (tcp_dns_segment(q->streams, &j, frame, q->frame_size - desc->addr % q->frame_size, start,
						&res, &answer)) {
			case TCP_DELIVER:
				deliver(q, frame, desc->addr, desc->len, &d);
				break;
			case TCP_ANSWER:
				tx_addr[ntx] = desc->addr;
				tx_len[ntx++] = (uint32_t)answer;
				break;
			default:
				q->stats[ST_DROPPED]++;
				free_frame(q, desc->addr);
			}
			continue;
		}
		if (d.flags & SP_NOT_PARSED)
			q->stats[ST_NOT_PARSED]++;
		if (d.flags & SP_INSPECTED_DNS)
			q->stats[ST_DNS_INSPECTED]++;
		if (d.flags & SP_MALFORMED_DNS)
			q->stats[ST_MALFORMED_DNS]++;
		if (d.action != SP_PASS)
			record_event(q, &d);
		switch (d.action) {
		case SP_ALERT:
			q->stats[ST_ALERTED]++;
			/* fall through: an alert passes */
		case SP_PASS:
			deliver(q, frame, desc->addr, desc->len, &d);
			break;
		case SP_NXDOMAIN:
		case SP_REFUSE:
			answer = (d.flags & SP_INSPECTED_DNS)
					 ? sp_build_dns_answer(frame, desc->len, &d.pkt, &d.q,
							       d.action == SP_NXDOMAIN ? 3 : 5)
					 : 0;
			if (answer) {
				q->stats[d.action == SP_NXDOMAIN ? ST_NXDOMAIN : ST_REFUSED]++;
				tx_addr[ntx] = desc->addr;
				tx_len[ntx++] = (uint32_t)answer;
			} else {
				q->stats[ST_DROPPED]++;
				free_frame(q, desc->addr);
			}
			break;
		case SP_BLOCK_SOURCE:
			block_source(q, &d);
			/* fall through: and drop this one */
		default:
			q->stats[ST_DROPPED]++;
			free_frame(q, desc->addr);
		}
	}
done:
	if (q->out_count)
		flush_deliveries(q);
	xsk_ring_cons__release(&q->rx, rcvd);
	pthread_mutex_unlock(&q->lock);

	if (ntx) {
		uint32_t got = xsk_ring_prod__reserve(&q->tx, ntx, &idx_tx);

		for (uint32_t i = 0; i < got; i++) {
			struct xdp_desc *desc = xsk_ring_prod__tx_desc(&q->tx, idx_tx + i);

			desc->addr = tx_addr[i];
			desc->len = tx_len[i];
		}
		xsk_ring_prod__submit(&q->tx, got);
		q->tx_outstanding += got;
		q->stats[ST_TX_SENT] += got;
		for (uint32_t i = got; i < ntx; i++) { /* TX ring full: these answers are lost */
			q->stats[ST_TX_FAILED]++;
			free_frame(q, tx_addr[i]);
		}
	}
	kick_tx(q);
	q->rx_ring_level = xsk_cons_nb_avail(&q->rx, q->ring_size);
	uint64_t elapsed = now_ns() - start, per_packet = elapsed / rcvd;
	size_t bucket = 0;

	while (bucket < LATENCY_BUCKETS - 1 && per_packet > latency_bounds_ns[bucket])
		bucket++;
	q->latency[bucket] += rcvd;
	q->stats[ST_BATCHES]++;
	q->stats[ST_BUSY_NS] += elapsed;
	return rcvd;
}

static void Queue_close_socket(QueueObject *q)
{
	if (q->xsk) {
		xsk_socket__delete(q->xsk);
		q->xsk = NULL;
	}
	if (q->umem) {
		xsk_umem__delete(q->umem);
		q->umem = NULL;
	}
	if (q->buffer) {
		munmap(q->buffer, q->buffer_size);
		q->buffer = NULL;
	}
}

static void Queue_dealloc(QueueObject *self)
{
	Queue_close_socket(self);
	if (self->diag_fd >= 0)
		close(self->diag_fd);
	if (self->ctl)
		PyBuffer_Release(&self->control);
	free(self->free_frames);
	sp_tcp_streams_free(self->streams);
	hs_free_scratch(self->scratch);
	Py_XDECREF(self->rules);
	pthread_mutex_destroy(&self->lock);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Queue_init(QueueObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"ifname", "queue_id", "xsk_map_fd", "rules", "dyn4_fd", "dyn6_fd", "deliver_fd",
				 "frames", "ring_size", "zerocopy", "events", "inspect", "control", "dns_tcp_fd",
				 "deliver_frames", NULL};
	const char *ifname;
	PyObject *control = Py_None;
	int frames = 4096, ring = 2048, zerocopy = 0, events = 1, inspect = 1, err;
	RulesObject *rules;
	struct xsk_umem_config ucfg;
	struct xsk_socket_config scfg;

	self->dyn4_fd = self->dyn6_fd = self->deliver_fd = self->diag_fd = self->dns_tcp_fd = -1;
	pthread_mutex_init(&self->lock, NULL);
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "siiO!|iiiiipppOip", kwlist, &ifname, &self->queue_id,
					 &self->xsk_map_fd, &RulesType, &rules, &self->dyn4_fd, &self->dyn6_fd,
					 &self->deliver_fd, &frames, &ring, &zerocopy, &events, &inspect, &control,
					 &self->dns_tcp_fd, &self->deliver_frames))
		return -1;
	if (control != Py_None) {
		if (PyObject_GetBuffer(control, &self->control, PyBUF_WRITABLE))
			return -1;
		if (self->control.len < (Py_ssize_t)sizeof(struct sp_control)) {
			PyBuffer_Release(&self->control);
			PyErr_SetString(PyExc_ValueError, "control block too small");
			return -1;
		}
		self->ctl = self->control.buf;
		self->ctl->stat_count = ST_COUNT;
	}
	self->stats = self->ctl ? self->ctl->stats : self->local_stats;
	self->latency = self->ctl ? self->ctl->latency : self->local_latency;
	self->inspect = inspect;
	self->streams = sp_tcp_streams_new(SP_TCP_DEFAULT_CAPACITY, SP_TCP_DEFAULT_IDLE_NS, SP_TCP_DEFAULT_MAX_MESSAGE,
					   self->stats);
	if (!self->streams) {
		PyErr_NoMemory();
		return -1;
	}
	self->streams->lookup = map_lookup;
	self->streams->forget = map_forget;
	self->streams->owner = &self->dns_tcp_fd;
	if (frames < 2 * ring || (ring & (ring - 1))) {
		PyErr_SetString(PyExc_ValueError, "ring_size must be a power of two and frames >= 2 * ring_size");
		return -1;
	}
	self->events_enabled = events;
	self->rules = (RulesObject *)Py_NewRef(rules);
	if (rules->rules->scratch_proto && hs_clone_scratch(rules->rules->scratch_proto, &self->scratch)) {
		PyErr_NoMemory();
		return -1;
	}
	self->frame_size = HYP_CAP_UMEM_FRAME_BYTES; /* the size the XDP program checks redirects against */
	self->frame_count = (uint32_t)frames;
	self->ring_size = (uint32_t)ring;
	self->buffer_size = (size_t)self->frame_size * self->frame_count;
	self->buffer = mmap(NULL, self->buffer_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (self->buffer == MAP_FAILED) {
		self->buffer = NULL;
		PyErr_SetFromErrno(PyExc_OSError);
		return -1;
	}
	self->free_frames = calloc(self->frame_count, sizeof(*self->free_frames));
	if (!self->free_frames) {
		PyErr_NoMemory();
		return -1;
	}
	ucfg = (struct xsk_umem_config){
		.fill_size = (uint32_t)ring, .comp_size = (uint32_t)ring,
		.frame_size = self->frame_size, .frame_headroom = 0, .flags = 0,
	};
	err = xsk_umem__create(&self->umem, self->buffer, self->buffer_size, &self->fill, &self->comp, &ucfg);
	if (err) {
		errno = -err;
		PyErr_Format(PyExc_OSError, "UMEM for %s queue %d: %s", ifname, self->queue_id, strerror(-err));
		return -1;
	}
	scfg = (struct xsk_socket_config){
		.rx_size = (uint32_t)ring, .tx_size = (uint32_t)ring,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD, /* the fast path is ours */
		.xdp_flags = 0,
		.bind_flags = XDP_USE_NEED_WAKEUP | (zerocopy ? XDP_ZEROCOPY : XDP_COPY),
	};
	/* The kernel releases a closed socket's hold on the queue asynchronously, so a
	 * socket re-bound right after another closed can see EBUSY for a moment: retry
	 * for up to a second rather than fail a queue-local restart. */
	for (int attempt = 0; attempt < 20; attempt++) {
		err = xsk_socket__create(&self->xsk, ifname, (uint32_t)self->queue_id, self->umem, &self->rx,
					 &self->tx, &scfg);
		if (err != -EBUSY)
			break;
		Py_BEGIN_ALLOW_THREADS
		usleep(50000);
		Py_END_ALLOW_THREADS
	}
	if (err) {
		PyErr_Format(PyExc_OSError, "AF_XDP socket on %s queue %d (%s mode): %s", ifname, self->queue_id,
			     zerocopy ? "zero-copy" : "copy", strerror(-err));
		return -1;
	}
	/* Opened now, while the process may still open sockets; no privilege is needed to use it. */
	self->diag_fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	for (uint32_t i = 0; i < self->frame_count; i++)
		self->free_frames[self->free_count++] = (uint64_t)i * self->frame_size;
	refill(self);
	/* Registered last: from here on, the fast path redirects into this socket. */
	err = xsk_socket__update_xskmap(self->xsk, self->xsk_map_fd);
	if (err) {
		PyErr_Format(PyExc_OSError, "registering queue %d in xsk_map: %s", self->queue_id, strerror(-err));
		return -1;
	}
	return 0;
}

static PyObject *Queue_run(QueueObject *self, PyObject *unused)
{
	if (!self->xsk) {
		PyErr_SetString(PyExc_RuntimeError, "queue is closed");
		return NULL;
	}
	self->running = 1;
	Py_BEGIN_ALLOW_THREADS
	struct pollfd pfd = {.fd = xsk_socket__fd(self->xsk), .events = POLLIN};

	while (!self->stop) {
		if (self->ctl) {
			__atomic_store_n(&self->ctl->heartbeat_ns, now_ns(), __ATOMIC_RELAXED);
			self->ctl->loops++;
		}
		reap_completions(self);
#ifdef HYP_FAULT_INJECTION
		/* The lab's fault hook (hyperion.lab.faultworker): a flag stops the refilling. */
		if (!self->ctl || !(__atomic_load_n(&self->ctl->flags, __ATOMIC_RELAXED) & CTL_FLAG_STARVE_FILL))
			refill(self);
#else
		refill(self);
#endif
		if (process_batch(self))
			continue;
		kick_tx(self); /* idle: answers of an earlier burst may still be in the ring */
		if (xsk_ring_prod__needs_wakeup(&self->fill))
			recvfrom(pfd.fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
		poll(&pfd, 1, POLL_MS);
	}
	/* Drain: the queue is fenced before a worker is stopped, so nothing new arrives and
	 * what is already in the RX ring is finished rather than lost (bounded by the ring). */
	for (uint32_t i = 0; i <= self->ring_size / BATCH && process_batch(self); i++)
		;
	kick_tx(self);
	reap_completions(self);
	Py_END_ALLOW_THREADS
	self->running = 0;
	Py_RETURN_NONE;
}

static PyObject *Queue_stop(QueueObject *self, PyObject *unused)
{
	self->stop = 1;
	Py_RETURN_NONE;
}

static PyObject *Queue_close(QueueObject *self, PyObject *unused)
{
	if (self->running) {
		PyErr_SetString(PyExc_RuntimeError, "stop the queue and wait for run() to return first");
		return NULL;
	}
	Queue_close_socket(self);
	Py_RETURN_NONE;
}

static PyObject *Queue_set_rules(QueueObject *self, PyObject *arg)
{
	hs_scratch_t *scratch = NULL, *old_scratch;
	RulesObject *old;

	if (!PyObject_TypeCheck(arg, &RulesType)) {
		PyErr_SetString(PyExc_TypeError, "set_rules takes a Rules object");
		return NULL;
	}
	RulesObject *rules = (RulesObject *)arg;

	if (rules->rules->scratch_proto && hs_clone_scratch(rules->rules->scratch_proto, &scratch)) {
		PyErr_NoMemory();
		return NULL;
	}
	Py_INCREF(rules);
	/* Between batches: a batch sees one rule set from start to end. */
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->lock);
	Py_END_ALLOW_THREADS
	old = self->rules;
	old_scratch = self->scratch;
	self->rules = rules;
	self->scratch = scratch;
	pthread_mutex_unlock(&self->lock);
	hs_free_scratch(old_scratch);
	Py_DECREF(old);
	Py_RETURN_NONE;
}

static PyObject *Queue_stats(QueueObject *self, PyObject *unused)
{
	PyObject *d = PyDict_New();
	struct xdp_statistics xs = {0};
	socklen_t optlen = sizeof(xs);

	if (!d)
		return NULL;
	for (int i = 0; i < ST_COUNT; i++)
		PyDict_SetItemString(d, stat_names[i], PyLong_FromUnsignedLongLong(self->stats[i]));
	if (self->xsk && !getsockopt(xsk_socket__fd(self->xsk), SOL_XDP, XDP_STATISTICS, &xs, &optlen)) {
		PyDict_SetItemString(d, "xdp_rx_dropped", PyLong_FromUnsignedLongLong(xs.rx_dropped));
		PyDict_SetItemString(d, "xdp_rx_invalid_descs", PyLong_FromUnsignedLongLong(xs.rx_invalid_descs));
		PyDict_SetItemString(d, "xdp_tx_invalid_descs", PyLong_FromUnsignedLongLong(xs.tx_invalid_descs));
		PyDict_SetItemString(d, "xdp_rx_ring_full", PyLong_FromUnsignedLongLong(xs.rx_ring_full));
		PyDict_SetItemString(d, "xdp_rx_fill_ring_empty_descs",
				     PyLong_FromUnsignedLongLong(xs.rx_fill_ring_empty_descs));
		PyDict_SetItemString(d, "xdp_tx_ring_empty_descs",
				     PyLong_FromUnsignedLongLong(xs.tx_ring_empty_descs));
	}
	PyObject *buckets = PyList_New(LATENCY_BUCKETS);

	for (size_t i = 0; buckets && i < LATENCY_BUCKETS; i++)
		PyList_SET_ITEM(buckets, i, Py_BuildValue("(dK)", i < LATENCY_BUCKETS - 1 ?
					  (double)latency_bounds_ns[i] / 1e9 : Py_HUGE_VAL,
					  (unsigned long long)self->latency[i]));
	PyDict_SetItemString(d, "latency_buckets", buckets);
	PyDict_SetItemString(d, "rx_ring_level", PyLong_FromUnsignedLong(self->rx_ring_level));
	PyDict_SetItemString(d, "ring_size", PyLong_FromUnsignedLong(self->ring_size));
	PyDict_SetItemString(d, "free_frames", PyLong_FromUnsignedLong(self->free_count));
	PyDict_SetItemString(d, "fill_ring_level", PyLong_FromUnsignedLong(
		/* Read-only on the ring words: stats() runs beside the loop. */
		self->xsk ? *self->fill.producer - __atomic_load_n(self->fill.consumer, __ATOMIC_ACQUIRE) : 0));
	PyDict_SetItemString(d, "tx_outstanding", PyLong_FromUnsignedLong(self->tx_outstanding));
	/* The dict holds its own references. */
	PyObject *key, *value;
	Py_ssize_t pos = 0;

	while (PyDict_Next(d, &pos, &key, &value))
		Py_DECREF(value);
	return d;
}

/* One converter per field of control.h's SP_EVENT_FIELDS: the record is built from that list, so
 * its order is defined once. */
static PyObject *event_rule(const struct sp_event *e)
{
	return e->rule == SP_NO_RULE ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(e->rule);
}

#define SP_EVENT_INT(field)                                         \
	static PyObject *event_##field(const struct sp_event *e)    \
	{                                                           \
		return PyLong_FromUnsignedLong(e->field);           \
	}
SP_EVENT_INT(action)
SP_EVENT_INT(malformed)
SP_EVENT_INT(ip_version)
SP_EVENT_INT(protocol)
SP_EVENT_INT(src_port)
SP_EVENT_INT(dst_port)
SP_EVENT_INT(qtype)
#undef SP_EVENT_INT

static PyObject *event_saddr(const struct sp_event *e)
{
	return PyBytes_FromStringAndSize((const char *)e->saddr, e->ip_version == 6 ? 16 : 4);
}

static PyObject *event_daddr(const struct sp_event *e)
{
	return PyBytes_FromStringAndSize((const char *)e->daddr, e->ip_version == 6 ? 16 : 4);
}

static PyObject *event_qname(const struct sp_event *e)
{
	return qname_str(e->qname, strlen(e->qname));
}

static PyObject *(*const event_fields[])(const struct sp_event *) = {
#define SP_EVENT_CONVERTER(field) event_##field,
	SP_EVENT_FIELDS(SP_EVENT_CONVERTER)
#undef SP_EVENT_CONVERTER
};
#define EVENT_FIELD_COUNT (sizeof(event_fields) / sizeof(event_fields[0]))

static PyObject *event_record(const struct sp_event *e)
{
	PyObject *record = PyTuple_New(EVENT_FIELD_COUNT);

	for (size_t i = 0; record && i < EVENT_FIELD_COUNT; i++) {
		PyObject *value = event_fields[i](e);

		if (!value) {
			Py_CLEAR(record);
			break;
		}
		PyTuple_SET_ITEM(record, i, value);
	}
	return record;
}

static PyObject *Queue_drain_events(QueueObject *self, PyObject *unused)
{
	struct sp_event *copy;
	uint32_t n;

	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->lock);
	Py_END_ALLOW_THREADS
	n = self->event_count;
	copy = malloc((n ? n : 1) * sizeof(*copy));
	for (uint32_t i = 0; copy && i < n; i++)
		copy[i] = self->events[(self->event_head + i) % EVENT_RING];
	if (copy) {
		self->event_head = (self->event_head + n) % EVENT_RING;
		self->event_count = 0;
	}
	pthread_mutex_unlock(&self->lock);
	if (!copy)
		return PyErr_NoMemory();
	PyObject *list = PyList_New(n);

	for (uint32_t i = 0; list && i < n; i++) {
		PyObject *record = event_record(&copy[i]);

		if (!record) {
			Py_CLEAR(list);
			break;
		}
		PyList_SET_ITEM(list, i, record);
	}
	free(copy);
	return list;
}

static PyObject *Queue_register(QueueObject *self, PyObject *unused)
{
	int err;

	if (!self->xsk) {
		PyErr_SetString(PyExc_RuntimeError, "queue is closed");
		return NULL;
	}
	err = xsk_socket__update_xskmap(self->xsk, self->xsk_map_fd);
	if (err) {
		errno = -err;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	Py_RETURN_NONE;
}

static PyObject *Queue_fileno(QueueObject *self, PyObject *unused)
{
	return PyLong_FromLong(self->xsk ? xsk_socket__fd(self->xsk) : -1);
}

static PyMethodDef Queue_methods[] = {
	{"run", (PyCFunction)Queue_run, METH_NOARGS, "Process packets, GIL released, until stop()."},
	{"stop", (PyCFunction)Queue_stop, METH_NOARGS,
	 "Ask run() to return (within 20 ms, after draining the RX ring)."},
	{"close", (PyCFunction)Queue_close, METH_NOARGS, "Close the socket and release the UMEM."},
	{"set_rules", (PyCFunction)Queue_set_rules, METH_O, "Swap the rule set between two batches."},
	{"stats", (PyCFunction)Queue_stats, METH_NOARGS, "Counters, ring levels and XDP_STATISTICS."},
	{"drain_events", (PyCFunction)Queue_drain_events, METH_NOARGS, "Take the pending events."},
	{"register", (PyCFunction)Queue_register, METH_NOARGS, "(Re)write this socket's xsk_map entry."},
	{"fileno", (PyCFunction)Queue_fileno, METH_NOARGS, "The AF_XDP socket's fd."},
	{NULL},
};

static PyTypeObject QueueType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hyperion._slowpath.Queue",
	.tp_basicsize = sizeof(QueueObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Queue_init,
	.tp_dealloc = (destructor)Queue_dealloc,
	.tp_methods = Queue_methods,
	.tp_doc = "One AF_XDP socket and UMEM on one RX queue, with its worker loop.",
};

/* ------------------------------------------------------------ DnsTcpStreams */

/* The queue loop's DNS-over-TCP engine without a socket: a frame in, the decision and any answer
 * frame out, with the clock given (tests, replay). */
typedef struct {
	PyObject_HEAD
	struct sp_tcp_streams *t;
	RulesObject *rules;
	hs_scratch_t *scratch;
	int map_fd;
	PyObject *handoff;  /* callable(key bytes) -> (next, state) | None, when there is no map fd */
	PyObject *established; /* callable() -> bool: the server still has the segment's connection */
	uint64_t stats[ST_COUNT];
} StreamsObject;

static int streams_lookup(void *owner, const struct hyp_dns_tcp_key *key, struct hyp_dns_tcp_flow *flow)
{
	StreamsObject *self = owner;
	PyObject *got;
	unsigned int next, state;

	if (self->map_fd >= 0)
		return map_lookup(&self->map_fd, key, flow);
	if (!self->handoff || PyErr_Occurred())
		return -1;
	got = PyObject_CallFunction(self->handoff, "y#", (const char *)key, (Py_ssize_t)sizeof(*key));
	if (!got)
		return -1;
	if (got == Py_None) {
		Py_DECREF(got);
		return -1;
	}
	if (!PyArg_ParseTuple(got, "II", &next, &state)) {
		Py_DECREF(got);
		return -1;
	}
	Py_DECREF(got);
	flow->next = next;
	flow->state = state;
	return 0;
}

static void streams_forget(void *owner, const struct hyp_dns_tcp_key *key)
{
	StreamsObject *self = owner;

	if (self->map_fd >= 0)
		map_forget(&self->map_fd, key);
}

static int set_streams_rules(StreamsObject *self, PyObject *arg)
{
	hs_scratch_t *scratch = NULL;

	if (!PyObject_TypeCheck(arg, &RulesType)) {
		PyErr_SetString(PyExc_TypeError, "expected a Rules object");
		return -1;
	}
	RulesObject *rules = (RulesObject *)arg;

	if (rules->rules->scratch_proto && hs_clone_scratch(rules->rules->scratch_proto, &scratch)) {
		PyErr_NoMemory();
		return -1;
	}
	hs_free_scratch(self->scratch);
	Py_XSETREF(self->rules, (RulesObject *)Py_NewRef(rules));
	self->scratch = scratch;
	return 0;
}

static int Streams_init(StreamsObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"rules", "capacity", "idle_timeout", "max_message", "dns_tcp_fd", "handoff",
				 "established", NULL};
	PyObject *rules, *handoff = Py_None, *established = Py_None;
	unsigned int capacity = SP_TCP_DEFAULT_CAPACITY, max_message = SP_TCP_DEFAULT_MAX_MESSAGE;
	double idle = (double)SP_TCP_DEFAULT_IDLE_NS / 1e9;
	int fd = -1;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$IdIiOO", kwlist, &rules, &capacity, &idle, &max_message, &fd,
					 &handoff, &established))
		return -1;
	if (capacity < 1 || capacity > (1U << 24)) {
		PyErr_Format(PyExc_ValueError, "capacity: %u connections (expected 1..%u)", capacity, 1U << 24);
		return -1;
	}
	if (max_message < DNS_HEADER_LEN || max_message > SP_TCP_MAX_MESSAGE_LIMIT) {
		PyErr_Format(PyExc_ValueError, "max_message: %u bytes (expected %d..%d)", max_message, DNS_HEADER_LEN,
			     SP_TCP_MAX_MESSAGE_LIMIT);
		return -1;
	}
	if (!(idle > 0)) {
		PyErr_SetString(PyExc_ValueError, "idle_timeout: expected seconds > 0");
		return -1;
	}
	if ((handoff != Py_None && !PyCallable_Check(handoff)) ||
	    (established != Py_None && !PyCallable_Check(established))) {
		PyErr_SetString(PyExc_TypeError, "handoff, established: expected a callable or None");
		return -1;
	}
	if (set_streams_rules(self, rules))
		return -1;
	sp_tcp_streams_free(self->t);
	self->t = sp_tcp_streams_new(capacity, (uint64_t)(idle * 1e9), max_message, self->stats);
	if (!self->t) {
		PyErr_NoMemory();
		return -1;
	}
	memset(self->stats, 0, sizeof(self->stats));
	self->map_fd = fd;
	Py_XSETREF(self->handoff, handoff == Py_None ? NULL : Py_NewRef(handoff));
	Py_XSETREF(self->established, established == Py_None ? NULL : Py_NewRef(established));
	self->t->lookup = streams_lookup;
	self->t->forget = streams_forget;
	self->t->owner = self;
	return 0;
}

static void Streams_dealloc(StreamsObject *self)
{
	sp_tcp_streams_free(self->t);
	hs_free_scratch(self->scratch);
	Py_XDECREF(self->rules);
	Py_XDECREF(self->handoff);
	Py_XDECREF(self->established);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static const char *const tcp_cause_names[SP_TCP_CAUSE_COUNT] = {
	[SP_TCP_NO_DATA] = "no_data", [SP_TCP_DATA] = "data", [SP_TCP_MIDSTREAM] = "midstream",
	[SP_TCP_OUT_OF_ORDER] = "out_of_order", [SP_TCP_ENDED] = "ended", [SP_TCP_RULE] = "rule",
};

static PyObject *Streams_segment(StreamsObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"frame", "now", NULL};
	static const char *verdicts[] = {[TCP_DELIVER] = "deliver", [TCP_DROP] = "drop", [TCP_ANSWER] = "answer"};
	Py_buffer in;
	PyObject *now_obj = Py_None, *answer, *rule;
	struct sp_decision d;
	struct sp_tcp_result res;
	uint64_t now;
	size_t cap, answer_len = 0;
	uint8_t *frame;
	enum tcp_outcome outcome;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|O", kwlist, &in, &now_obj))
		return NULL;
	if (now_obj == Py_None) {
		now = now_ns();
	} else {
		double seconds = PyFloat_AsDouble(now_obj);

		if (PyErr_Occurred() || !(seconds >= 0)) {
			PyBuffer_Release(&in);
			PyErr_SetString(PyExc_ValueError, "now: expected seconds >= 0");
			return NULL;
		}
		now = (uint64_t)(seconds * 1e9);
	}
	/* Room for an answer longer than the segment, as a UMEM frame has. */
	cap = (size_t)in.len > HYP_CAP_UMEM_FRAME_BYTES ? (size_t)in.len : HYP_CAP_UMEM_FRAME_BYTES;
	frame = calloc(1, cap);
	if (!frame) {
		PyBuffer_Release(&in);
		return PyErr_NoMemory();
	}
	memcpy(frame, in.buf, in.len);
	decide(self->rules->rules, self->scratch, frame, (size_t)in.len, 1, &d);
	PyBuffer_Release(&in);
	if (!(d.flags & SP_TCP_DNS)) {
		free(frame);
		PyErr_SetString(PyExc_ValueError, "not a TCP segment of a DNS class of these rules");
		return NULL;
	}
	struct tcp_judge j = {self->rules->rules, self->scratch, &d, self->stats, NULL, self->established};

	outcome = tcp_dns_segment(self->t, &j, frame, cap, now, &res, &answer_len);
	if (PyErr_Occurred()) {  /* the handoff callable raised */
		free(frame);
		return NULL;
	}
	answer = outcome == TCP_ANSWER ? PyBytes_FromStringAndSize((const char *)frame, (Py_ssize_t)answer_len)
				       : Py_NewRef(Py_None);
	free(frame);
	if (!answer)
		return NULL;
	int ruled = res.cause == SP_TCP_RULE;

	rule = ruled && d.rule != SP_NO_RULE ? PyLong_FromUnsignedLong(d.rule) : Py_NewRef(Py_None);
	return Py_BuildValue("{s:s,s:s,s:N,s:N,s:O,s:I,s:N,s:N}", "verdict", verdicts[outcome], "cause",
			     tcp_cause_names[res.cause], "action",
			     ruled ? PyLong_FromLong(res.action) : Py_NewRef(Py_None), "rule", rule, "malformed",
			     ruled && (d.flags & SP_MALFORMED_DNS) ? Py_True : Py_False, "messages", res.messages,
			     "qname", ruled ? qname_str(d.q.name, d.q.name_len) : Py_NewRef(Py_None), "answer", answer);
}

static PyObject *Streams_set_rules(StreamsObject *self, PyObject *arg)
{
	if (set_streams_rules(self, arg))
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *Streams_stats(StreamsObject *self, PyObject *unused)
{
	PyObject *d = PyDict_New();

	for (int i = 0; d && i < ST_COUNT; i++) {
		PyObject *v = PyLong_FromUnsignedLongLong(self->stats[i]);

		if (!v || PyDict_SetItemString(d, stat_names[i], v)) {
			Py_XDECREF(v);
			Py_CLEAR(d);
			break;
		}
		Py_DECREF(v);
	}
	return d;
}

static Py_ssize_t Streams_len(StreamsObject *self)
{
	return (Py_ssize_t)sp_tcp_count(self->t);
}

static PyMethodDef Streams_methods[] = {
	{"segment", (PyCFunction)(void (*)(void))Streams_segment, METH_VARARGS | METH_KEYWORDS,
	 "segment(frame, now=None) -> dict: a TCP segment of a DNS class through the workers' stream engine "
	 "(now: CLOCK_MONOTONIC seconds)."},
	{"set_rules", (PyCFunction)Streams_set_rules, METH_O, "Judge later messages with another rule set."},
	{"stats", (PyCFunction)Streams_stats, METH_NOARGS, "The counters the engine moved (STAT_NAMES)."},
	{NULL},
};

static PySequenceMethods Streams_sequence = {.sq_length = (lenfunc)Streams_len};

static PyTypeObject StreamsType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hyperion._slowpath.DnsTcpStreams",
	.tp_basicsize = sizeof(StreamsObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Streams_init,
	.tp_dealloc = (destructor)Streams_dealloc,
	.tp_methods = Streams_methods,
	.tp_as_sequence = &Streams_sequence,
	.tp_doc = "DNS over TCP as the workers follow it: per-connection reassembly and judging (tcp_stream.c).",
};

/* ------------------------------------------------------------------ module */

static PyObject *parse_dns(PyObject *module, PyObject *arg)
{
	Py_buffer msg;
	struct dns_question q;
	enum dns_parse_result res;

	if (PyObject_GetBuffer(arg, &msg, PyBUF_SIMPLE))
		return NULL;
	res = dns_parse_query(msg.buf, (size_t)msg.len, &q);
	PyBuffer_Release(&msg);
	if (res == DNS_MALFORMED) {
		PyErr_SetString(PyExc_ValueError, q.error);
		return NULL;
	}
	if (res == DNS_NOT_QUERY)
		Py_RETURN_NONE;
	return Py_BuildValue("(NH)", qname_str(q.name, q.name_len), q.qtype);
}

static PyObject *compile_count(PyObject *self, PyObject *unused)
{
	return PyLong_FromUnsignedLong(sp_compile_count());
}

/* The workers' checksum step on one frame, for tests against independent checksums. */
static PyObject *complete_checksum(PyObject *module, PyObject *arg)
{
	static const char *names[] = {
		[SP_CSUM_NOT_CHECKED] = "not_checked", [SP_CSUM_VALID] = "valid", [SP_CSUM_ABSENT] = "absent",
		[SP_CSUM_COMPLETED] = "completed", [SP_CSUM_BAD] = "bad",
	};
	Py_buffer in;
	struct sp_packet p;
	PyObject *out;

	if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE))
		return NULL;
	out = PyBytes_FromStringAndSize(in.buf, in.len);
	PyBuffer_Release(&in);
	if (!out)
		return NULL;
	uint8_t *frame = (uint8_t *)PyBytes_AS_STRING(out);

	if (sp_parse_frame(frame, (size_t)PyBytes_GET_SIZE(out), &p) != 0)
		return Py_BuildValue("(sN)", "not_parsed", out);
	return Py_BuildValue("(sN)", names[sp_complete_checksum(frame, &p)], out);
}

static PyMethodDef module_methods[] = {
	{"compile_count", compile_count, METH_NOARGS, "compile_count() -> int: Hyperscan compiles in this process."},
	{"parse_dns", parse_dns, METH_O,
	 "parse_dns(message) -> (qname, qtype) | None (not a query); ValueError if malformed."},
	{"complete_checksum", complete_checksum, METH_O,
	 "complete_checksum(frame) -> (outcome, frame): the workers' checksum step before delivery."},
	{NULL},
};

/* The lab builds this file a second time, with its fault hook, as another module
 * (native/lab/slowpath_faults.c): the product's build has no fault code. */
#ifdef HYP_FAULT_INJECTION
#define SP_MODULE_NAME "hyperion.lab._slowpath_faults"
#define SP_MODULE_INIT PyInit__slowpath_faults
#else
#define SP_MODULE_NAME "hyperion._slowpath"
#define SP_MODULE_INIT PyInit__slowpath
#endif

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT, SP_MODULE_NAME, "AF_XDP slow path: packet loop and rule matching.", -1,
	module_methods,
};

/* A tuple of C strings, for the exported lists of names. */
static PyObject *names_tuple(const char *const *names, size_t count)
{
	PyObject *tuple = PyTuple_New((Py_ssize_t)count);

	for (size_t i = 0; tuple && i < count; i++) {
		PyObject *name = PyUnicode_FromString(names[i]);

		if (!name) {
			Py_CLEAR(tuple);
			break;
		}
		PyTuple_SET_ITEM(tuple, i, name);
	}
	return tuple;
}

PyMODINIT_FUNC SP_MODULE_INIT(void)
{
	PyObject *m;

	if (PyType_Ready(&RulesType) < 0 || PyType_Ready(&QueueType) < 0 || PyType_Ready(&StreamsType) < 0)
		return NULL;
	m = PyModule_Create(&module_def);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "Rules", (PyObject *)&RulesType) < 0 ||
	    PyModule_AddObjectRef(m, "Queue", (PyObject *)&QueueType) < 0 ||
	    PyModule_AddObjectRef(m, "DnsTcpStreams", (PyObject *)&StreamsType) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	PyModule_AddIntConstant(m, "DROP", SP_DROP);
	PyModule_AddIntConstant(m, "FRAG_DROP", HYP_DNS_FRAG_DROP);
	PyModule_AddIntConstant(m, "FRAG_JUDGE", HYP_DNS_FRAG_JUDGE);
	PyModule_AddIntConstant(m, "PASS", SP_PASS);
	PyModule_AddIntConstant(m, "ALLOW", SP_PASS); /* the policy's other name for pass */
	PyModule_AddIntConstant(m, "ALERT", SP_ALERT);
	PyModule_AddIntConstant(m, "NXDOMAIN", SP_NXDOMAIN);
	PyModule_AddIntConstant(m, "REFUSE", SP_REFUSE);
	PyModule_AddIntConstant(m, "BLOCK_SOURCE", SP_BLOCK_SOURCE);
	PyModule_AddIntConstant(m, "EXACT", SP_EXACT);
	PyModule_AddIntConstant(m, "UMEM_FRAME_SIZE", HYP_CAP_UMEM_FRAME_BYTES);
	PyModule_AddIntConstant(m, "VLAN_MAX_DEPTH", sp_vlan_max_depth);
	PyModule_AddIntConstant(m, "IPV6_EXT_MAX", sp_ipv6_ext_max);
	PyModule_AddIntConstant(m, "DNS_TCP_XDP", HYP_DNS_TCP_XDP);
	PyModule_AddIntConstant(m, "DNS_TCP_SLOWPATH", HYP_DNS_TCP_SLOWPATH);
	PyModule_AddIntConstant(m, "DNS_TCP_ENDED", HYP_DNS_TCP_ENDED);
	PyObject *names = names_tuple(stat_names, ST_COUNT);
	PyObject *bounds = PyTuple_New(LATENCY_BUCKETS);

	for (size_t i = 0; bounds && i < LATENCY_BUCKETS; i++)
		PyTuple_SET_ITEM(bounds, i, PyFloat_FromDouble(i < LATENCY_BUCKETS - 1 ?
							       (double)latency_bounds_ns[i] / 1e9 : Py_HUGE_VAL));
	PyObject *layout = Py_BuildValue(
		"{s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "heartbeat_ns", (Py_ssize_t)offsetof(struct sp_control, heartbeat_ns),
		"flags", (Py_ssize_t)offsetof(struct sp_control, flags), "loops",
		(Py_ssize_t)offsetof(struct sp_control, loops), "stat_count",
		(Py_ssize_t)offsetof(struct sp_control, stat_count), "stats",
		(Py_ssize_t)offsetof(struct sp_control, stats), "latency", (Py_ssize_t)offsetof(struct sp_control, latency),
		"size", (Py_ssize_t)sizeof(struct sp_control));

	if (!names || !bounds || !layout || PyModule_AddObject(m, "STAT_NAMES", names) < 0 ||
	    PyModule_AddObject(m, "LATENCY_BOUNDS", bounds) < 0 || PyModule_AddObject(m, "CONTROL_LAYOUT", layout) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	PyModule_AddIntConstant(m, "SUFFIX", SP_SUFFIX);
#ifdef HYP_FAULT_INJECTION
	PyModule_AddIntConstant(m, "FLAG_STARVE_FILL", CTL_FLAG_STARVE_FILL);
#endif
	/* control.h's lists, for tests/unit/test_worker_protocol.py to compare with Python's. */
	static const char *const event_names[] = {
#define SP_EVENT_NAME(field) #field,
		SP_EVENT_FIELDS(SP_EVENT_NAME)
#undef SP_EVENT_NAME
	};
	static const char *const spec_names[] = {
#define SP_RULE_SPEC_NAME(name) #name,
		SP_RULE_SPEC_FIELDS(SP_RULE_SPEC_NAME)
#undef SP_RULE_SPEC_NAME
	};
	PyObject *events = names_tuple(event_names, EVENT_FIELD_COUNT);
	PyObject *spec = names_tuple(spec_names, sizeof(spec_names) / sizeof(spec_names[0]));

	if (!events || !spec || PyModule_AddObject(m, "EVENT_FIELDS", events) < 0 ||
	    PyModule_AddObject(m, "RULE_SPEC_FIELDS", spec) < 0) {
		Py_XDECREF(events);
		Py_XDECREF(spec);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
