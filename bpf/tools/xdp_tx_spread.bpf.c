// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Traffic generator with spread sources: under BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES, rewrites the source address of every injected
 * frame with the next of gen_sources (round robin), updates the IPv4 header
 * and the TCP/UDP checksums incrementally, and transmits it (XDP_TX).
 *
 * One test run repeats one buffer; live frames are recycled with whatever the
 * program last wrote, so the address is always written whole and the checksums
 * are updated from the frame's current contents. User space (hyperion.generator)
 * fills gen_sources and gen_layout from the template frame. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define GEN_MAX_SOURCES 65536
#define GEN_MAX_OFFSET 256

struct gen_layout {
	__u32 sources;      /* entries of gen_sources in use */
	__u32 addr_off;     /* offset of the source address in the frame */
	__u32 addr_len;     /* 4 or 16 */
	__u32 ip_csum_off;  /* IPv4 header checksum, 0: none (IPv6) */
	__u32 l4_csum_off;  /* TCP/UDP checksum, 0: none */
	__u32 l4_udp;       /* the L4 checksum is UDP's: 0 on the wire means "none", a computed 0 is sent as 0xffff */
};

struct gen_addr {
	__u32 words[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_layout);
} gen_layout SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GEN_MAX_SOURCES);
	__type(key, __u32);
	__type(value, struct gen_addr);
} gen_sources SEC(".maps");

/* One run is one CPU: a plain counter is enough. */
__u32 gen_next = 0;

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u64 s = (__u64)sum;

	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Replaces a 16-bit one's-complement checksum at off after the 4 or 16 bytes
 * old -> new changed inside what it covers. */
static __always_inline int update_csum(void *data, void *data_end, __u32 off, struct gen_addr *old,
				       struct gen_addr *new, __u32 len, int udp)
{
	__u16 *csum;
	__s64 diff;

	if (off > GEN_MAX_OFFSET)
		return -1;
	csum = data + off;
	if ((void *)(csum + 1) > data_end)
		return -1;
	if (udp && len == 4 && *csum == 0)
		return 0; /* UDP over IPv4 without a checksum */
	if (len == 4)
		diff = bpf_csum_diff(old->words, 4, new->words, 4, ~((__u32)*csum) & 0xffff);
	else
		diff = bpf_csum_diff(old->words, 16, new->words, 16, ~((__u32)*csum) & 0xffff);
	if (diff < 0)
		return -1;
	*csum = csum_fold(diff);
	if (udp && *csum == 0)
		*csum = 0xffff; /* for UDP, 0 means "no checksum" */
	return 0;
}

SEC("xdp")
int hyperion_gen_spread(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct gen_addr old = {}, *new;
	struct gen_layout *layout;
	__u32 zero = 0, index, off;
	__u8 *addr;

	layout = bpf_map_lookup_elem(&gen_layout, &zero);
	if (!layout || layout->sources == 0 || layout->sources > GEN_MAX_SOURCES)
		return XDP_ABORTED;
	index = gen_next;
	gen_next = index + 1 >= layout->sources ? 0 : index + 1;
	new = bpf_map_lookup_elem(&gen_sources, &index);
	if (!new)
		return XDP_ABORTED;
	off = layout->addr_off;
	if (off > GEN_MAX_OFFSET)
		return XDP_ABORTED;
	addr = data + off;
	if (layout->addr_len == 4) {
		if ((void *)(addr + 4) > data_end)
			return XDP_ABORTED;
		__builtin_memcpy(old.words, addr, 4);
		__builtin_memcpy(addr, new->words, 4);
		if (layout->ip_csum_off && update_csum(data, data_end, layout->ip_csum_off, &old, new, 4, 0))
			return XDP_ABORTED;
		if (layout->l4_csum_off &&
		    update_csum(data, data_end, layout->l4_csum_off, &old, new, 4, layout->l4_udp))
			return XDP_ABORTED;
	} else {
		if ((void *)(addr + 16) > data_end)
			return XDP_ABORTED;
		__builtin_memcpy(old.words, addr, 16);
		__builtin_memcpy(addr, new->words, 16);
		if (layout->l4_csum_off &&
		    update_csum(data, data_end, layout->l4_csum_off, &old, new, 16, layout->l4_udp))
			return XDP_ABORTED;
	}
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
