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

/* A zeroed thread state to copy in: too big for the BPF stack. */
BPF_PERCPU_ARRAY(fresh_state, struct seq_state, 1);

/* Slide the thread's novelty bits on to its newest syscall, which ended a
 * novel n-gram or not: the position one frame back leaves the frame, the
 * one a window back leaves the window (its bit is the newest's). */
static __always_inline void count_novel(struct seq_state *s, u32 window, u32 frame, int novel)
{
    u32 pos = s->count - 1;
    if (pos >= frame) {
        u32 out = (pos - frame) % window;
        if (s->novel[(out / 64) & (NOVELTY_WINDOW_MAX / 64 - 1)] & (1ULL << (out % 64)))
            s->in_frame--;
    }
    u32 at = pos % window;
    u64 *word = &s->novel[(at / 64) & (NOVELTY_WINDOW_MAX / 64 - 1)];
    u64 bit = 1ULL << (at % 64);
    if (*word & bit) {
        s->in_window--;
        *word &= ~bit;
    }
    if (novel) {
        *word |= bit;
        s->in_window++;
        s->in_frame++;
    }
}

/* Deny the cgroup's egress from now on, as Sensor.quarantine does; 1 if it
 * is still watched. Not atomic (BCC's clang has no 32-bit atomic or):
 * while a sandbox runs, user space stores its flags only to quarantine it
 * or, once it has, to stop its n-grams. */
static __always_inline u32 quarantine(struct slot_info *slot, u64 cg)
{
    struct watch_info *w = watched.lookup(&cg);
    if (!w)
        return 0;
    w->flags |= WATCH_QUARANTINE;
    slot->flags |= WATCH_QUARANTINE;
    return 1;
}

/* One more syscall: the cgroup's count of its number, the thread's window
 * and batch, and the n-gram it ends, sent if the profile lacks it with the
 * thread's count of such n-grams; the count may quarantine the cgroup. */
static __always_inline void sequence(struct slot_info *slot, u32 slot_nr, u64 cg, u32 nr)
{
    u32 flags = slot->flags;
    u32 cell = slot_nr * NR_COUNTED + (nr < NR_COUNTED ? nr : NR_COUNTED - 1);
    u64 *count = syscall_counts.lookup(&cell);
    if (count)
        __sync_fetch_and_add(count, 1);

    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct seq_state *s = windows.lookup(&tid);
    if (!s) {
        u32 zero = 0;
        struct seq_state *fresh = fresh_state.lookup(&zero);
        if (!fresh)
            return;
        windows.update(&tid, fresh);
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
    if (!(flags & WATCH_DETECT_NOVEL))
        return;
    struct ngram gram = {};
    int novel = 0;
    if (s->count >= NGRAM_N) {
#pragma unroll
        for (int i = 0; i < NGRAM_N; i++)
            gram.seq[i] = s->win[i];
        novel = !known.lookup(&gram);
    }
    struct novelty rule = slot->novelty;
    if (rule.window)
        count_novel(s, rule.window, rule.frame, novel);
    if (!novel)
        return;
    flush_batch(s, cg);  /* the model judges the novel n-gram with what led to it */
    struct ev_ngram e = {};
    fill_hdr(&e.h, EV_NGRAM, cg);
    e.gram = gram;
    e.pos = s->count - 1;
    e.in_window = s->in_window;
    e.in_frame = s->in_frame;
    if (rule.quarantine_at && !(flags & WATCH_QUARANTINE) &&
        (u32)s->in_window * rule.frame + (u32)s->in_frame * rule.window > rule.quarantine_at)
        e.quarantined = quarantine(slot, cg);
    emit(&e, sizeof(e), cg);
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
    sequence(s, slot, cg, nr);
    syscall_enter((struct pt_regs *)ctx->args[0], nr, cg);
    return 0;
}
