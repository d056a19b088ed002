/* The one program on every syscall: syscalls counted by number per watched
 * cgroup, per-thread sliding n-grams checked against the profile's, then the
 * syscall's event, if it has one (enter.bpf.c).
 * Runs on every syscall of every task, so an unwatched task must cost as
 * little as possible: one inlined array lookup, and a compare for exec. */
#include "maps.bpf.h"

/* Mapped by user space, which reads a row for the syscall mix and zeroes it
 * for a new watch. */
BPF_F_TABLE("array", u32, u64, syscall_counts, WATCH_SLOTS * NR_COUNTED, BPF_F_MMAPABLE);
/* N-grams of the loaded profile; watched cgroups with WATCH_DETECT_NOVEL
 * send only n-grams missing from it. */
BPF_HASH(known, struct ngram, u8, 65536);

/* One more syscall: the cgroup's count of its number, the thread's window
 * and batch, and the n-gram it ends, sent if the profile lacks it. */
static __always_inline void sequence(u32 flags, u32 slot, u64 cg, u32 nr)
{
    u32 cell = slot * NR_COUNTED + (nr < NR_COUNTED ? nr : NR_COUNTED - 1);
    u64 *count = syscall_counts.lookup(&cell);
    if (count)
        __sync_fetch_and_add(count, 1);

    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct seq_state *s = windows.lookup(&tid);
    if (!s) {
        struct seq_state fresh = {};
        windows.update(&tid, &fresh);
        s = windows.lookup(&tid);
        if (!s)
            return;
    }
#pragma unroll
    for (int i = 0; i < NGRAM_N - 1; i++)
        s->win[i] = s->win[i + 1];
    s->win[NGRAM_N - 1] = (u16)nr;
    s->count++;
    if (flags & WATCH_SEQUENCE) {
        u16 i = s->batch.n;
        if (i == 0)
            s->batch.pos = s->count - 1;
        s->batch.calls[i & (SEQ_BATCH - 1)] = (u16)nr;
        s->batch.n = i + 1;
        if (s->batch.n >= SEQ_BATCH)
            flush_batch(s, cg);
    }
    if (s->count < NGRAM_N || !(flags & WATCH_DETECT_NOVEL))
        return;
    struct ngram gram = {};
#pragma unroll
    for (int i = 0; i < NGRAM_N; i++)
        gram.seq[i] = s->win[i];
    if (!known.lookup(&gram)) {
        flush_batch(s, cg);  /* the model judges the novel n-gram with what led to it */
        struct ev_ngram e = {};
        fill_hdr(&e.h, EV_NGRAM, cg);
        e.gram = gram;
        e.pos = s->count - 1;
        emit(&e, sizeof(e), cg);
    }
}

/* The watched cgroup of a marked process: its slot's, if the process is
 * still in it, else whatever watched cgroup it has moved into (marked anew)
 * or none (unmarked, so its later syscalls take the unwatched path). */
static __always_inline struct slot_info *marked_cgroup(u32 pid, u16 *hint, u32 *slot, u64 *cg)
{
    *slot = *hint - 1;
    *cg = bpf_get_current_cgroup_id();
    struct slot_info *s = slots.lookup(slot);
    if (s && s->cgroup_id == *cg)
        return s;
    struct watch_info *w = watched.lookup(cg);
    mark_pid(pid, w);
    if (!w)
        return 0;
    *slot = w->slot;
    return slots.lookup(slot);
}

/* A uretprobe's return trampoline enters the kernel by this syscall (x86-64,
 * since 6.11): on a TLS call it is the sensor's own probe, not the tool's,
 * so it would make the profile depend on whether the sandbox has API rules.
 * Called from anywhere else it kills the caller (SIGILL). The headers here
 * may predate it. */
#define NR_URETPROBE 335

RAW_TRACEPOINT_PROBE(sys_enter)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u32 nr = (u32)ctx->args[1];
    u16 *hint = watched_pids.lookup(&pid);
    if (!hint || !*hint) {
        if (is_exec(nr))
            exec_syscall((struct pt_regs *)ctx->args[0], nr);
        return 0;
    }
    if (nr == NR_URETPROBE)
        return 0;
    u32 slot;
    u64 cg;
    struct slot_info *s = marked_cgroup(pid, hint, &slot, &cg);
    if (!s)
        return 0;
    sequence(s->flags, slot, cg, nr);
    syscall_enter((struct pt_regs *)ctx->args[0], nr, cg);
    return 0;
}
