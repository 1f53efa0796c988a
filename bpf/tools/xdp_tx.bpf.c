// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Traffic generator: under BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES,
 * XDP_TX transmits each injected frame out of the ingress interface. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int hyperion_gen_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
