/* Capability probes for `bastion doctor`: the smallest program of each kind
 * Bastion relies on. They do nothing but prove they can be loaded. */

BPF_RINGBUF_OUTPUT(probe_events, 1);

RAW_TRACEPOINT_PROBE(sys_enter)
{
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    return 0;
}

int probe_connect4(struct bpf_sock_addr *ctx)
{
    return 1;
}

BPF_SOCKHASH(probe_socks, u64, 4);

int probe_sockops(struct bpf_sock_ops *skops)
{
    return 1;
}

int probe_msg(struct sk_msg_md *msg)
{
    return SK_PASS;
}

int probe_uprobe(void *ctx)
{
    return 0;
}
