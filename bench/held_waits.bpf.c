/* Where a held call's time goes, for the processes the kernel stops: from
 * the SIGSTOP to the guard's SIGCONT (the guard's hold), and from the
 * SIGCONT to the caller's next switch-in (its wait for a CPU). The floor:
 * the same processes' other wakeups (a reply arriving), each one's wait
 * for a CPU. Reads only the tracepoints' arguments. */

#define SIGCONT_ 18
#define SIGSTOP_ 19
/* SAMPLES per kind: set by bench/api_calls.py, which reads them */

enum { HOLD, AFTER_CONT, OTHER_WAKEUP, KINDS };

BPF_HASH(stopped, u32, u64, 1024);    /* pid -> its SIGSTOP's time */
BPF_HASH(continued, u32, u64, 1024);  /* pid -> its SIGCONT's time */
BPF_HASH(woken, u32, u64, 1024);      /* pid -> an ordinary wakeup's time */
BPF_HASH(running, u32, u8, 1024);     /* the held processes on a CPU now */
BPF_HASH(held, u32, u8, 1024);        /* every process stopped so far */
BPF_ARRAY(counts, u64, KINDS);
BPF_ARRAY(samples, u64, KINDS * SAMPLES);

static __always_inline void sample(u32 kind, u64 ns)
{
    u64 *n = counts.lookup(&kind);
    if (!n)
        return;
    u64 i = __sync_fetch_and_add(n, 1);
    if (i >= SAMPLES)
        return;
    u32 at = kind * SAMPLES + (u32)i;
    u64 *slot = samples.lookup(&at);
    if (slot)
        *slot = ns;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
    u32 pid = args->pid;
    u64 now = bpf_ktime_get_ns();
    if (args->sig == SIGSTOP_) {
        u8 one = 1;
        held.update(&pid, &one);
        stopped.update(&pid, &now);
    } else if (args->sig == SIGCONT_) {
        u64 *since = stopped.lookup(&pid);
        if (!since)
            return 0;
        sample(HOLD, now - *since);
        stopped.delete(&pid);
        if (running.lookup(&pid))
            sample(AFTER_CONT, 0);  /* it had not stopped yet */
        else
            continued.update(&pid, &now);
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    u32 pid = args->pid;
    if (!held.lookup(&pid) || running.lookup(&pid))  /* woken before it left its CPU: no wait */
        return 0;
    u64 now = bpf_ktime_get_ns();
    woken.update(&pid, &now);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 prev = args->prev_pid, next = args->next_pid;
    u8 one = 1;
    running.delete(&prev);
    if (!held.lookup(&next))
        return 0;
    running.update(&next, &one);
    u64 now = bpf_ktime_get_ns();
    u64 *since = continued.lookup(&next);
    if (since) {
        sample(AFTER_CONT, now - *since);
        continued.delete(&next);
        woken.delete(&next);  /* the SIGCONT's own wakeup */
        return 0;
    }
    since = woken.lookup(&next);
    if (since) {
        sample(OTHER_WAKEUP, now - *since);
        woken.delete(&next);
    }
    return 0;
}
