/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Hyperion's kernel/user ABI: the one place where verdicts, reasons, map
 * capacities and the layouts of map keys and values are defined.
 *
 * User space never copies these by hand: the Python control plane reads the
 * enums and struct layouts from the BTF of the compiled object (see
 * hyperion/abi.py), so the two sides cannot drift. Enumerator names are the
 * Prometheus label values once the prefix is stripped and lower-cased.
 * Struct fields named reserved* or pad* are padding: user space writes zeros.
 */
#ifndef HYPERION_ABI_H
#define HYPERION_ABI_H

#include <linux/types.h>

/* What the fast path did with a packet. Monitor mode uses the WOULD_* verdicts:
 * the packet passed, but enforce mode would have dropped/redirected it. */
enum hyp_verdict {
	HYP_VERDICT_PASS = 0,
	HYP_VERDICT_DROP = 1,
	HYP_VERDICT_REDIRECT = 2,
	HYP_VERDICT_WOULD_DROP = 3,
	HYP_VERDICT_WOULD_REDIRECT = 4,
	HYP_VERDICT_ANSWER = 5,       /* answered in place (XDP_TX): a DNS rule's nxdomain/refuse */
	HYP_VERDICT_WOULD_ANSWER = 6,
	HYP_VERDICT__MAX,
};

/* Why. One reason per exit of the program; malformed-packet reasons first. */
enum hyp_reason {
	HYP_REASON_NO_MATCH = 0,         /* IP packet no stage claimed: pass */
	HYP_REASON_NON_IP = 1,           /* ARP, LLDP, ...: pass */
	HYP_REASON_TRUNCATED_ETH = 2,
	HYP_REASON_TRUNCATED_VLAN = 3,
	HYP_REASON_TOO_MANY_VLANS = 4,
	HYP_REASON_TRUNCATED_IPV4 = 5,
	HYP_REASON_BAD_IP_VERSION = 6,
	HYP_REASON_BAD_IHL = 7,
	HYP_REASON_BAD_IP_LENGTH = 8,
	HYP_REASON_TRUNCATED_IPV6 = 9,
	HYP_REASON_TRUNCATED_EXTHDR = 10,
	HYP_REASON_TOO_MANY_EXTHDRS = 11,
	HYP_REASON_TRUNCATED_TCP = 12,
	HYP_REASON_BAD_TCP_OFFSET = 13,
	HYP_REASON_TRUNCATED_UDP = 14,
	HYP_REASON_BAD_UDP_LENGTH = 15,
	HYP_REASON_TRUNCATED_ICMP = 16,
	HYP_REASON_ALLOWLIST = 17,       /* allow_cidrs: pass, later stages skipped */
	HYP_REASON_BLOCKLIST_CIDR = 18,  /* drop_cidrs */
	HYP_REASON_BLOCKLIST_IP = 19,    /* drop_ips */
	HYP_REASON_BLOCKLIST_DYNAMIC = 20, /* runtime blocks with expiry */
	HYP_REASON_FRAGMENT = 21,        /* non-first fragment: no L4 header to classify */
	HYP_REASON_REDIRECT_CLASS = 22,  /* sent to the AF_XDP socket of the rx queue */
	HYP_REASON_REDIRECT_FAILED = 23, /* no socket for the queue: class fallback taken */
	HYP_REASON_NO_CONFIG = 24,       /* policy not applied yet: pass */
	HYP_REASON_QUEUE_FENCED = 25,    /* queue fenced by the watchdog: class fallback taken */
	HYP_REASON_REDIRECT_OVERSIZE = 26, /* longer than a UMEM frame takes: class fallback taken */
	HYP_REASON_QUEUE_OVER_CAPACITY = 27, /* rx queue >= HYP_CAP_QUEUES: class fallback taken */
	/* The DNS stage (a class with HYP_CLASS_F_DNS, UDP). rule_id: the dns_rules position. */
	HYP_REASON_DNS_NO_MATCH = 28,     /* no name rule, nothing for the slow path: pass */
	HYP_REASON_DNS_DROP = 29,         /* name rule: drop */
	HYP_REASON_DNS_NXDOMAIN = 30,     /* name rule: answered NXDOMAIN */
	HYP_REASON_DNS_REFUSED = 31,      /* name rule: answered REFUSED */
	HYP_REASON_DNS_UNANSWERABLE = 32, /* nxdomain/refuse, but not answerable here (IP options,
					   * extension headers, non-unicast destination): dropped */
	HYP_REASON_DNS_ALLOW = 33,        /* name rule: allow (pass), nothing later applies */
	HYP_REASON_DNS_ALERT = 34,        /* name rule: alert, an event, and the packet passes */
	HYP_REASON_DNS_MALFORMED = 35,    /* malformed query: hyp_settings.dns_malformed decides */
	HYP_REASON_DNS_QDCOUNT = 36,      /* QDCOUNT != 1 (RFC 9619): as malformed */
	HYP_REASON_DNS_NOT_QUERY = 37,    /* a response or an opcode other than QUERY: not judged */
	/* DNS over TCP (a DNS class on TCP; hyp_dns_tcp tracks each connection). */
	HYP_REASON_DNS_TCP_NO_DATA = 38,  /* a segment without payload (handshake, ACK, FIN, RST): pass */
	HYP_REASON_DNS_TCP_MIDSTREAM = 39, /* payload on a connection whose SYN was not seen (opened before
					    * the program, or evicted): where queries start is unknown, dropped */
	HYP_REASON_DNS_TCP_ENDED = 40,    /* payload after the program answered in-stream and ended the
					   * stream (FIN): the server never saw that query, dropped */
	HYP_REASON_DNS_FRAGMENT = 41,     /* a first fragment to a DNS class, hyp_settings.dns_fragments
					   * HYP_DNS_FRAG_DROP: dropped */
	HYP_REASON__MAX,
};

enum hyp_mode {
	HYP_MODE_ENFORCE = 0,
	HYP_MODE_MONITOR = 1,
};

/* What a redirect class does when its queue has no AF_XDP socket. */
enum hyp_fallback {
	HYP_FALLBACK_PASS = 0, /* fail-open */
	HYP_FALLBACK_DROP = 1, /* fail-closed */
};

/* Lifecycle state of one RX queue's AF_XDP worker (hyp_queue_state), set by
 * the control plane's watchdog. The program redirects only when the state is
 * below HYP_QSTATE_FENCED; fenced queues take their class's fallback at once,
 * whatever the socket's state. UNMANAGED: no slow path owns the queue, the
 * xsk_map entry alone decides. */
enum hyp_queue_state_id {
	HYP_QSTATE_UNMANAGED = 0,
	HYP_QSTATE_ACTIVE = 1,
	HYP_QSTATE_PRESSURED = 2,  /* rings under pressure: still served */
	HYP_QSTATE_DEGRADED = 3,   /* pressure sustained past the deadline: still served */
	HYP_QSTATE_FENCED = 4,     /* not redirected: fallback */
	HYP_QSTATE_RECOVERING = 5, /* fenced while a fresh worker and socket come up */
	HYP_QSTATE_FAILED = 6,     /* fenced, recovery given up */
	HYP_QSTATE__MAX,
};

/* Why a queue entered its state (the watchdog's detection, or the operator). */
enum hyp_queue_reason {
	HYP_QREASON_NONE = 0,
	HYP_QREASON_STARTING = 1,
	HYP_QREASON_READY = 2,
	HYP_QREASON_WORKER_EXITED = 3,
	HYP_QREASON_HEARTBEAT_STALE = 4,
	HYP_QREASON_FILL_RING_STARVED = 5,
	HYP_QREASON_RX_RING_OVERFLOW = 6,
	HYP_QREASON_SATURATED = 7,
	HYP_QREASON_XSK_MAP_ENTRY_MISSING = 8,
	HYP_QREASON_NOT_STEERED = 9,
	HYP_QREASON_OPERATOR = 10,
	HYP_QREASON_SHUTDOWN = 11,
	HYP_QREASON_PRESSURE_CLEARED = 12,
	HYP_QREASON_RECOVERY_FAILED = 13,
	HYP_QREASON_RULES_NOT_APPLIED = 14, /* a reload's rules not acknowledged within the deadline */
	HYP_QREASON__MAX,
};

/* What a DNS name rule does in the program (hyp_dns_rule.action). */
enum hyp_dns_action {
	HYP_DNS_NONE = 0,      /* placeholder: only qtype-specific rules on this name */
	HYP_DNS_DROP = 1,
	HYP_DNS_NXDOMAIN = 2,
	HYP_DNS_REFUSE = 3,
	HYP_DNS_ALLOW = 4,
	HYP_DNS_ALERT = 5,
	HYP_DNS_SLOWPATH = 6,  /* the rule runs in the slow path (block_source): redirect */
};

/* hyp_dns_key.kind: an exact name, or "*.name" (strict subdomains; the apex does not match). */
enum hyp_dns_kind {
	HYP_DNS_EXACT = 0,
	HYP_DNS_SUFFIX = 1,
};

/* hyp_dns_rule.flags */
enum hyp_dns_rule_flag {
	HYP_DNS_F_QTYPES = 1, /* rules with a qtype exist for this (kind, name): look up (kind, name, qtype) */
};

/* hyp_class_value.flags */
enum hyp_class_flag {
	HYP_CLASS_F_SLOWPATH = 1, /* redirect what the program did not decide to AF_XDP */
	HYP_CLASS_F_DNS = 2,      /* a DNS class: judge its queries (UDP, and TCP per hyp_dns_tcp) by the name rules first */
};

/* hyp_settings.dns_fragments: what a first fragment to a DNS class gets. Non-first fragments
 * carry no port; without their first one the kernel's reassembly discards them. */
enum hyp_dns_fragment_policy {
	HYP_DNS_FRAG_DROP = 0,  /* dropped, HYP_REASON_DNS_FRAGMENT (resolvers do not fragment queries) */
	HYP_DNS_FRAG_JUDGE = 1, /* judged by the question it holds, which must be whole in it */
};

/* hyp_dns_tcp_flow.state */
enum hyp_dns_tcp_state {
	HYP_DNS_TCP_XDP = 1,      /* each payload segment starting at `next` and holding one whole
				   * query is judged in XDP */
	HYP_DNS_TCP_SLOWPATH = 2, /* the slow path reassembles the stream from `next` on: every
				   * payload segment is redirected */
	HYP_DNS_TCP_ENDED = 3,    /* answered in-stream with FIN: payload dropped */
};

/* Map capacities; the policy compiler refuses a policy that does not fit
 * before anything changes. Overridable at build time. */
enum hyp_capacity {
#ifndef HYP_ALLOW_CAPACITY
	HYP_CAP_ALLOW = 16384,
#else
	HYP_CAP_ALLOW = HYP_ALLOW_CAPACITY,
#endif
#ifndef HYP_BLOCK_CIDR_CAPACITY
	HYP_CAP_BLOCK_CIDR = 262144,
#else
	HYP_CAP_BLOCK_CIDR = HYP_BLOCK_CIDR_CAPACITY,
#endif
#ifndef HYP_BLOCK_IP_CAPACITY
	HYP_CAP_BLOCK_IP = 2097152,
#else
	HYP_CAP_BLOCK_IP = HYP_BLOCK_IP_CAPACITY,
#endif
#ifndef HYP_DYN_BLOCK_CAPACITY
	HYP_CAP_DYN_BLOCK = 65536,
#else
	HYP_CAP_DYN_BLOCK = HYP_DYN_BLOCK_CAPACITY,
#endif
	HYP_CAP_CLASSES = 256,
	/* Class counters outlive policies: room for classes since removed. */
	HYP_CAP_CLASS_STATS = 1024,
	HYP_CAP_EVENT_RING_BYTES = 262144,
	/* RX queues with an AF_XDP socket, state and counters (xsk_map, hyp_queue_state,
	 * hyp_queue_stats): 256 covers today's NICs at a few KB per CPU; redirect-class packets
	 * on queues beyond it take their class's fallback (HYP_REASON_QUEUE_OVER_CAPACITY). */
#ifndef HYP_QUEUES_CAPACITY
	HYP_CAP_QUEUES = 256,
#else
	HYP_CAP_QUEUES = HYP_QUEUES_CAPACITY,
#endif
	/* Bytes per AF_XDP UMEM frame (the workers' UMEM, native/slowpath/module.c). The kernel
	 * keeps XDP_PACKET_HEADROOM of it, so the program redirects no frame longer than
	 * HYP_CAP_UMEM_FRAME_BYTES - XDP_PACKET_HEADROOM (HYP_REASON_REDIRECT_OVERSIZE). A power
	 * of two from 2048 to the page size. */
#ifndef HYP_UMEM_FRAME_SIZE
	HYP_CAP_UMEM_FRAME_BYTES = 4096,
#else
	HYP_CAP_UMEM_FRAME_BYTES = HYP_UMEM_FRAME_SIZE,
#endif
	/* Policy generations held at once: the active one and the one being built. */
	HYP_CAP_GENERATIONS = 2,
	/* DNS name-rule entries per map (hyp_dns_short, hyp_dns_long), placeholders included. */
#ifndef HYP_DNS_CAPACITY
	HYP_CAP_DNS_NAMES = 2097152,
#else
	HYP_CAP_DNS_NAMES = HYP_DNS_CAPACITY,
#endif
	/* Name bytes of the two DNS key shapes: names up to 32 wire bytes (labels with their
	 * length bytes, no root) use the short key, whose hash the kernel computes over 36
	 * bytes; the rest, up to 254, the long one. */
	HYP_CAP_DNS_SHORT_NAME = 32,
	HYP_CAP_DNS_NAME = 256,
	/* TCP connections to DNS classes tracked at once (hyp_dns_tcp, LRU). */
#ifndef HYP_DNS_TCP_CAPACITY
	HYP_CAP_DNS_TCP_FLOWS = 65536,
#else
	HYP_CAP_DNS_TCP_FLOWS = HYP_DNS_TCP_CAPACITY,
#endif
};

/* hyp_counters is a per-CPU array indexed by verdict * HYP_REASON__MAX + reason. */
struct hyp_counter {
	__u64 packets;
	__u64 bytes;
};

/* The policy maps held per generation slot; the lower-cased name after the
 * prefix is the map's name after "hyp_" (HYP_PMAP_ALLOW4 -> hyp_allow4). */
enum hyp_policy_map {
	HYP_PMAP_ALLOW4 = 0,
	HYP_PMAP_ALLOW6 = 1,
	HYP_PMAP_BCIDR4 = 2,
	HYP_PMAP_BCIDR6 = 3,
	HYP_PMAP_BIP4 = 4,
	HYP_PMAP_BIP6 = 5,
	HYP_PMAP_CLASSES = 6,
	HYP_PMAP_DNS_SHORT = 7,
	HYP_PMAP_DNS_LONG = 8,
	HYP_PMAP__MAX,
};

/* Single-entry array selecting the active generation slot. The program reads
 * it once per packet, so a packet is judged by one whole policy; the control
 * plane switches policies with one aligned 4-byte write. */
struct hyp_config {
	__u32 active_slot;    /* index into the generation (outer) maps */
	__u32 events_per_sec; /* drop-event budget per CPU per second; 0 = no events */
};

/* Per-slot settings (array of HYP_CAP_GENERATIONS), written before the slot
 * becomes active. */
struct hyp_settings {
	__u32 mode;                       /* enum hyp_mode */
	__u32 reserved;
	__u64 generation;                 /* policy generation number, 0 = none */
	__u64 applied_at_ns;              /* CLOCK_REALTIME when applied */
	__u32 entries[HYP_PMAP__MAX];     /* entries in each policy map */
	__u32 reserved2;
	/* Label counts the name rules have: bit n for n labels (bit 63: 63 or more). The DNS
	 * stage looks up only the suffixes (and the whole name) some rule can match. */
	__u64 dns_exact_labels;           /* exact rules: the name's labels */
	__u64 dns_suffix_labels;          /* "*.x" rules: the labels of x */
	__u32 dns_malformed;              /* enum hyp_dns_action for malformed queries: DROP, ALLOW or ALERT */
	__u32 dns_fragments;              /* enum hyp_dns_fragment_policy */
};

/* LPM trie keys: prefix length in bits, then the address in network order. */
struct hyp_lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct hyp_lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct hyp_ip_v4_key {
	__u8 addr[4];
};

struct hyp_ip_v6_key {
	__u8 addr[16];
};

/* Value of allow/block entries: the policy rule that installed it. */
struct hyp_rule_value {
	__u32 rule_id;
};

/* Dynamic blocklist value. Expiry on CLOCK_BOOTTIME (bpf_ktime_get_boot_ns),
 * 0 = never. Expired entries are ignored by the program and may be evicted. */
struct hyp_dyn_block {
	__u64 expires_ns;
	__u32 rule_id;
	__u32 reserved;
};

/* Redirect class key: IP protocol and destination port in host order. */
struct hyp_class_key {
	__u16 port;
	__u8 protocol;
	__u8 pad;
};

struct hyp_class_value {
	__u32 class_id;
	__u32 on_failure; /* enum hyp_fallback */
	__u32 flags;      /* enum hyp_class_flag */
	__u32 reserved;
};

/* DNS name-rule keys. name: the name's labels in reverse order (top-level label
 * first), each as on the wire (length byte, then the bytes, ASCII lower-cased),
 * no root label, zero-padded. "www.Evil.com" -> 03 'com' 04 'evil' 03 'www'. The
 * key of a suffix is then a prefix of the name's key. The kernel compares whole
 * keys, so a hit is always the stored name: no false positives. */
struct hyp_dns_key_short {
	__u16 qtype;      /* 0 = any */
	__u8 kind;        /* enum hyp_dns_kind */
	__u8 pad;
	__u8 name[HYP_CAP_DNS_SHORT_NAME];
};

struct hyp_dns_key {
	__u16 qtype;
	__u8 kind;
	__u8 pad;
	__u8 name[HYP_CAP_DNS_NAME];
};

/* hyp_dns_tcp: a TCP connection to a DNS class, in the client's direction; created by the
 * client's SYN. The slow path reads `next` when a connection is handed to it. */
struct hyp_dns_tcp_key {
	__u8 saddr[16];   /* IPv4 in the first 4 bytes, the rest zero */
	__u8 daddr[16];
	__u16 sport;      /* host order */
	__u16 dport;
	__u8 family;      /* 4 or 6 */
	__u8 pad[3];
};

struct hyp_dns_tcp_flow {
	__u32 next;       /* sequence number (host order) where the next unjudged query starts */
	__u32 state;      /* enum hyp_dns_tcp_state */
};

struct hyp_dns_rule {
	__u32 rule_id;    /* 1-based position in slow_path.dns_rules */
	__u8 action;      /* enum hyp_dns_action */
	__u8 flags;       /* enum hyp_dns_rule_flag */
	__u16 reserved;
	__u64 hits;       /* queries this rule decided (atomic add; per generation) */
};

/* Per-CPU counters of one rx queue (hyp_queue_stats, indexed by queue). */
struct hyp_queue_counter {
	__u64 packets;
	__u64 drops;
	__u64 redirects;
	__u64 redirect_failures; /* no socket in xsk_map: class fallback */
	__u64 fenced;            /* queue fenced by the watchdog: class fallback */
};

/* Per-CPU counters of one redirect class (hyp_class_stats, keyed by hyp_class_key).
 * Keyed by (protocol, port) rather than class id so counts survive reloads. */
struct hyp_class_counter {
	__u64 redirected;
	__u64 failed;
};

/* Per-CPU event limiter and its accounting (hyp_event_state, one entry). */
struct hyp_event_state {
	__u64 window_start_ns; /* CLOCK_MONOTONIC, coarse */
	__u64 window_used;
	__u64 emitted;
	__u64 suppressed;      /* over the per-second budget */
	__u64 ring_full;       /* budget allowed it, the ring buffer had no room */
};

/* The re-entry program's one setting (bpf/reentry.bpf.c, map hyp_reentry): the real
 * interface that the frames a worker passes enter. */
struct hyp_reentry_target {
	__u32 ifindex;    /* 0: not configured, frames dropped */
};

/* One RX queue's lifecycle state (hyp_queue_state, an array indexed by queue). */
struct hyp_queue_state {
	__u32 state;       /* enum hyp_queue_state_id */
	__u32 reason;      /* enum hyp_queue_reason */
	__u64 since_ns;    /* CLOCK_REALTIME of the transition */
	__u32 worker_pid;  /* 0 when no worker */
	__u32 restarts;    /* queue-local recoveries so far */
};

/* One sampled drop (or redirect failure), sent through the hyp_events ring buffer. */
struct hyp_event {
	__u64 timestamp_ns;    /* CLOCK_BOOTTIME */
	__u32 ifindex;
	__u32 rx_queue;
	__u32 rule_id;         /* 1-based position in the policy list; 0 = none / operator */
	__u32 pkt_len;
	__u8 verdict;          /* enum hyp_verdict */
	__u8 reason;           /* enum hyp_reason */
	__u8 ip_version;       /* 0 when the packet was rejected before its IP header */
	__u8 protocol;
	__u16 src_port;
	__u16 dst_port;
	__u8 saddr[16];        /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
};

#endif /* HYPERION_ABI_H */
