/* How long the node's threads keep other tasks from a CPU: from each wakeup
 * of a task that is not the node's to its switch-in, counted when a thread
 * of the node ran just before it and the wait exceeded WAIT_NS. Reads only
 * the sched tracepoints' arguments. */

struct waits_key {
    u32 tid;   /* the node's thread that ran */
    s32 prio;  /* its priority then: 98 real time, 120 nice 0, 139 nice 19 */
};

struct waits_val {
    u64 count;
    u64 ns;
};

BPF_HASH(node_tids, u32, u8, 256);
BPF_HASH(woken, u32, u64, 65536);
BPF_HASH(waits, struct waits_key, struct waits_val, 256);

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    u32 pid = args->pid;
    if (node_tids.lookup(&pid))
        return 0;
    u64 now = bpf_ktime_get_ns();
    woken.update(&pid, &now);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 next = args->next_pid;
    u64 *since = woken.lookup(&next);
    if (!since)
        return 0;
    u64 waited = bpf_ktime_get_ns() - *since;
    woken.delete(&next);
    u32 prev = args->prev_pid;
    if (waited < WAIT_NS || !node_tids.lookup(&prev))
        return 0;
    struct waits_key k = {.tid = prev, .prio = args->prev_prio};
    struct waits_val zero = {}, *v = waits.lookup_or_try_init(&k, &zero);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->ns, waited);
    }
    return 0;
}
