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
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>

#include "hyperion_abi.h"
#include "dns.h"
#include "packet.h"
#include "rules.h"

#define BATCH 64
/* Per-packet inspection latency buckets (ns), upper bounds; a batch's time is
 * divided evenly among its packets. The last bucket is +Inf. */
static const uint64_t latency_bounds_ns[] = {250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};
#define LATENCY_BUCKETS (sizeof(latency_bounds_ns) / sizeof(latency_bounds_ns[0]) + 1)
#define EVENT_RING 1024
/* Idle wake-up period: bounds how stale the heartbeat gets on an idle queue. */
#define POLL_MS 20

/* The control block a supervisor may share with the worker (u64 words). */
enum sp_control_word {
	CTL_HEARTBEAT_NS, /* CLOCK_MONOTONIC, written every loop iteration */
	CTL_FLAGS,        /* fault injection, set by the supervisor */
	CTL_LOOPS,
	CTL_WORDS,
};
#define CTL_FLAG_STARVE_FILL 1ULL /* stop refilling the fill ring */

/* ------------------------------------------------------------------ decision */

enum sp_outcome_flags {
	SP_INSPECTED_DNS = 1,
	SP_MALFORMED_DNS = 2,
	SP_NOT_PARSED = 4,
};

struct sp_decision {
	uint8_t action;
	uint8_t flags;
	uint32_t rule;
	struct sp_packet pkt;
	struct dns_question q;
};

static void decide(const struct sp_rules *r, hs_scratch_t *scratch, const uint8_t *frame, size_t len,
		   struct sp_decision *d)
{
	d->action = SP_PASS;
	d->flags = 0;
	d->rule = SP_NO_RULE;
	d->q.name[0] = '\0';
	d->q.name_len = 0;
	d->q.qtype = 0;
	if (sp_parse_frame(frame, len, &d->pkt) != 0) {
		d->flags |= SP_NOT_PARSED;
		return;
	}
	const uint8_t *payload = frame + d->pkt.payload_offset;

	if (d->pkt.protocol == 17 && d->pkt.dst_port == 53) {
		enum dns_parse_result res = dns_parse_query(payload, d->pkt.payload_len, &d->q);

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
		d->rule = sp_match_payload(r, scratch, d->pkt.protocol, d->pkt.dst_port, payload, d->pkt.payload_len);
	if (d->rule != SP_NO_RULE) {
		d->action = r->rules[d->rule].action;
		__atomic_fetch_add(&r->hits[d->rule], 1, __ATOMIC_RELAXED);
	}
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

/* Collects (index, pattern) pairs into parallel arrays; patterns stay owned by the list. */
static int pattern_arrays(PyObject *pairs, const char ***patterns, uint32_t **ids, uint32_t *count,
			  uint32_t rule_count)
{
	Py_ssize_t n = PyList_Size(pairs);

	if (n < 0)
		return -1;
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

		if (!PyArg_ParseTuple(PyList_GET_ITEM(pairs, i), "Is", &index, &pattern))
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

static int Rules_init(RulesObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"rules", "names", "dns_regex", "classes", "malformed_action", NULL};
	PyObject *rules, *names, *dns_regex, *classes;
	int malformed_action = SP_DROP;
	char err[256] = "";
	const char **patterns = NULL;
	uint32_t *ids = NULL, count = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!|i", kwlist, &PyList_Type, &rules, &PyList_Type,
					 &names, &PyList_Type, &dns_regex, &PyList_Type, &classes,
					 &malformed_action))
		return -1;
	uint32_t rule_count = (uint32_t)PyList_Size(rules);

	self->rules = sp_rules_new(rule_count, (uint32_t)PyList_Size(names));
	if (!self->rules) {
		PyErr_NoMemory();
		return -1;
	}
	self->rules->malformed_action = (uint8_t)malformed_action;
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
	if (pattern_arrays(dns_regex, &patterns, &ids, &count, rule_count))
		goto fail;
	if (sp_rules_compile_dns_regex(self->rules, patterns, ids, count, err, sizeof(err))) {
		PyErr_Format(PyExc_ValueError, "DNS regex: %s", err);
		goto fail;
	}
	free(patterns), free(ids);
	patterns = NULL, ids = NULL;
	for (Py_ssize_t i = 0; i < PyList_Size(classes); i++) {
		int protocol, port;
		PyObject *pairs;

		if (!PyArg_ParseTuple(PyList_GET_ITEM(classes, i), "iiO!", &protocol, &port, &PyList_Type, &pairs))
			goto fail;
		if (pattern_arrays(pairs, &patterns, &ids, &count, rule_count))
			goto fail;
		if (sp_rules_add_class(self->rules, (uint8_t)protocol, (uint16_t)port, patterns, ids, count, err,
				       sizeof(err))) {
			PyErr_Format(PyExc_ValueError, "signatures of %d/%d: %s", protocol, port, err);
			goto fail;
		}
		free(patterns), free(ids);
		patterns = NULL, ids = NULL;
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
	free(patterns);
	free(ids);
	return -1;
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
	decide(self->rules, self->scratch, frame.buf, (size_t)frame.len, &d);
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

static PyMethodDef Rules_methods[] = {
	{"inspect", (PyCFunction)Rules_inspect, METH_O,
	 "inspect(frame) -> dict: the decision the workers would take for an Ethernet frame."},
	{"hits", (PyCFunction)Rules_hits, METH_NOARGS, "hits() -> list: matches per rule index."},
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

struct sp_event {
	uint32_t rule;
	uint8_t action;
	uint8_t malformed;
	uint8_t ip_version;
	uint8_t protocol;
	uint16_t src_port;
	uint16_t dst_port;
	uint16_t qtype;
	uint8_t saddr[16];
	uint8_t daddr[16];
	char qname[DNS_MAX_NAME + 1];
};

enum sp_stat {
	ST_RX, ST_PASSED, ST_DROPPED, ST_ALERTED, ST_NXDOMAIN, ST_REFUSED, ST_BLOCKED_SOURCES,
	ST_MALFORMED_DNS, ST_DNS_INSPECTED, ST_NOT_PARSED, ST_TX_SENT, ST_TX_FAILED, ST_DELIVER_ERRORS,
	ST_BLOCK_ERRORS, ST_EVENTS_LOST, ST_BATCHES, ST_BUSY_NS,
	ST_CSUM_COMPLETED, ST_CSUM_BAD, ST_COUNT,
};
static const char *stat_names[ST_COUNT] = {
	"rx", "passed", "dropped", "alerted", "nxdomain", "refused", "blocked_sources", "malformed_dns",
	"dns_inspected", "not_parsed", "tx_sent", "tx_failed", "deliver_errors", "block_errors", "events_lost",
	"batches", "busy_ns",
	"csum_completed", "csum_bad",
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
	pthread_mutex_t lock;        /* held while a batch runs; guards rules and events */
	RulesObject *rules;
	hs_scratch_t *scratch;
	int inspect;                 /* 0: the minimal receive-and-drop loop, a benchmark baseline */
	volatile int stop;
	int running;
	uint64_t stats[ST_COUNT];
	uint32_t rx_ring_level;      /* RX descriptors waiting after the last batch */
	uint64_t latency[LATENCY_BUCKETS];
	struct sp_event events[EVENT_RING];
	uint32_t event_head, event_count;
	int events_enabled;
	Py_buffer control;           /* optional shared control block (enum sp_control_word) */
	volatile uint64_t *ctl;
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

static void block_source(QueueObject *q, const struct sp_decision *d)
{
	struct hyp_dyn_block value = {0};
	struct timespec now;
	int fd = d->pkt.ip_version == 4 ? q->dyn4_fd : q->dyn6_fd;

	clock_gettime(CLOCK_BOOTTIME, &now);
	value.expires_ns = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec +
			   q->rules->rules->rules[d->rule].ttl_ns;
	value.rule_id = d->rule + 1; /* 1-based, as in the fast path's events */
	if (fd < 0 || bpf_map_update_elem(fd, d->pkt.saddr, &value, BPF_ANY))
		q->stats[ST_BLOCK_ERRORS]++;
	else
		q->stats[ST_BLOCKED_SOURCES]++;
}

/* Hands a passing packet to the local stack (the TUN device): the IP datagram only.
 * The stack verifies its checksum, so an offloading sender's partial one is
 * completed first; a wrong one is left for the stack to drop and count. */
static void deliver(QueueObject *q, uint8_t *frame, const struct sp_decision *d)
{
	if (!(d->flags & SP_NOT_PARSED)) {
		enum sp_csum_result csum = sp_complete_checksum(frame, &d->pkt);

		q->stats[ST_CSUM_COMPLETED] += csum == SP_CSUM_COMPLETED;
		q->stats[ST_CSUM_BAD] += csum == SP_CSUM_BAD;
	}
	if (q->deliver_fd < 0 || write(q->deliver_fd, frame + d->pkt.l3_offset, d->pkt.l3_len) < 0)
		q->stats[ST_DELIVER_ERRORS]++;
	else
		q->stats[ST_PASSED]++;
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
		decide(q->rules->rules, q->scratch, frame, desc->len, &d);
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
			deliver(q, frame, &d);
			free_frame(q, desc->addr);
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
		/* Copy mode transmits only when kicked. */
		sendto(xsk_socket__fd(q->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0);
	}
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
	if (self->ctl)
		PyBuffer_Release(&self->control);
	free(self->free_frames);
	hs_free_scratch(self->scratch);
	Py_XDECREF(self->rules);
	pthread_mutex_destroy(&self->lock);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Queue_init(QueueObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"ifname", "queue_id", "xsk_map_fd", "rules", "dyn4_fd", "dyn6_fd", "deliver_fd",
				 "frames", "ring_size", "zerocopy", "events", "inspect", "control", NULL};
	const char *ifname;
	PyObject *control = Py_None;
	int frames = 4096, ring = 2048, zerocopy = 0, events = 1, inspect = 1, err;
	RulesObject *rules;
	struct xsk_umem_config ucfg;
	struct xsk_socket_config scfg;

	self->dyn4_fd = self->dyn6_fd = self->deliver_fd = -1;
	pthread_mutex_init(&self->lock, NULL);
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "siiO!|iiiiipppO", kwlist, &ifname, &self->queue_id,
					 &self->xsk_map_fd, &RulesType, &rules, &self->dyn4_fd, &self->dyn6_fd,
					 &self->deliver_fd, &frames, &ring, &zerocopy, &events, &inspect, &control))
		return -1;
	if (control != Py_None) {
		if (PyObject_GetBuffer(control, &self->control, PyBUF_WRITABLE))
			return -1;
		if (self->control.len < (Py_ssize_t)(CTL_WORDS * sizeof(uint64_t))) {
			PyBuffer_Release(&self->control);
			PyErr_SetString(PyExc_ValueError, "control block too small");
			return -1;
		}
		self->ctl = self->control.buf;
	}
	self->inspect = inspect;
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
	self->frame_size = XSK_UMEM__DEFAULT_FRAME_SIZE;
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
			__atomic_store_n(&self->ctl[CTL_HEARTBEAT_NS], now_ns(), __ATOMIC_RELAXED);
			self->ctl[CTL_LOOPS]++;
		}
		reap_completions(self);
		if (!self->ctl || !(__atomic_load_n(&self->ctl[CTL_FLAGS], __ATOMIC_RELAXED) & CTL_FLAG_STARVE_FILL))
			refill(self);
		if (process_batch(self))
			continue;
		if (xsk_ring_prod__needs_wakeup(&self->fill))
			recvfrom(pfd.fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
		poll(&pfd, 1, POLL_MS);
	}
	/* Drain: the queue is fenced before a worker is stopped, so nothing new arrives and
	 * what is already in the RX ring is finished rather than lost (bounded by the ring). */
	for (uint32_t i = 0; i <= self->ring_size / BATCH && process_batch(self); i++)
		;
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
		struct sp_event *e = &copy[i];
		size_t alen = e->ip_version == 6 ? 16 : 4;

		PyList_SET_ITEM(list, i, Py_BuildValue(
			"(NiiiiiiHy#y#N)",
			e->rule == SP_NO_RULE ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(e->rule),
			e->action, e->malformed, e->ip_version, e->protocol, e->src_port, e->dst_port, e->qtype,
			e->saddr, (Py_ssize_t)alen, e->daddr, (Py_ssize_t)alen, qname_str(e->qname, strlen(e->qname))));
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
	{"parse_dns", parse_dns, METH_O,
	 "parse_dns(message) -> (qname, qtype) | None (not a query); ValueError if malformed."},
	{"complete_checksum", complete_checksum, METH_O,
	 "complete_checksum(frame) -> (outcome, frame): the workers' checksum step before delivery."},
	{NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT, "hyperion._slowpath", "AF_XDP slow path: packet loop and rule matching.", -1,
	module_methods,
};

PyMODINIT_FUNC PyInit__slowpath(void)
{
	PyObject *m;

	if (PyType_Ready(&RulesType) < 0 || PyType_Ready(&QueueType) < 0)
		return NULL;
	m = PyModule_Create(&module_def);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "Rules", (PyObject *)&RulesType) < 0 ||
	    PyModule_AddObjectRef(m, "Queue", (PyObject *)&QueueType) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	PyModule_AddIntConstant(m, "DROP", SP_DROP);
	PyModule_AddIntConstant(m, "PASS", SP_PASS);
	PyModule_AddIntConstant(m, "ALERT", SP_ALERT);
	PyModule_AddIntConstant(m, "NXDOMAIN", SP_NXDOMAIN);
	PyModule_AddIntConstant(m, "REFUSE", SP_REFUSE);
	PyModule_AddIntConstant(m, "BLOCK_SOURCE", SP_BLOCK_SOURCE);
	PyModule_AddIntConstant(m, "EXACT", SP_EXACT);
	PyModule_AddIntConstant(m, "SUFFIX", SP_SUFFIX);
	return m;
}
