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
