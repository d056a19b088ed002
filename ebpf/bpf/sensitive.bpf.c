/* Sensitive syscalls: attempts of what a sandbox's policy denies, and
 * refused sockets. seccomp refuses a syscall before the sys_enter tracepoint
 * runs, but its sys_exit tracepoint still fires with the error: so the
 * sensor attaches `sensitive_exit` to sys_exit_<name> of each denied syscall,
 * and the watched map's bitmap says which cgroup cares about which.
 * After seq.bpf.c: each attempt also joins the thread's syscall sequence. */
#include "maps.bpf.h"

static __always_inline void report(u64 cg, u32 nr, long ret, u32 trapped)
{
    struct ev_syscall e = {};
    fill_hdr(&e.h, EV_SYSCALL, cg);
    e.h.ret = ret;
    e.nr = nr;
    e.trapped = trapped;
    emit(&e, sizeof(e), cg);
}

static __always_inline int is_sensitive(struct watch_info *w, u32 nr)
{
    return nr < SENSITIVE_WORDS * 64 && (w->sensitive[(nr >> 6) & (SENSITIVE_WORDS - 1)] >> (nr & 63)) & 1;
}

/* Attached by the sensor to syscalls:sys_exit_<name> for each denied syscall. */
int sensitive_exit(struct sys_exit_args *args)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    if (!w || !is_sensitive(w, args->nr))
        return 0;
    report(cg, args->nr, args->ret, 0);
    /* Never seen at sys_enter, where the thread's sequence is kept: the
     * anomaly detectors see the attempt there too, not only the rules. */
    u32 slot = w->slot;
    struct slot_info *s = slots.lookup(&slot);
    if (s)
        sequence(s, slot, cg, args->nr);
    return 0;
}

/* Denied syscalls without a tracepoint (not built into this kernel) are
 * trapped by seccomp instead: SIGSYS with si_code SYS_SECCOMP. libseccomp
 * cannot put the syscall number into the trap, so it is reported as 0. */
TRACEPOINT_PROBE(signal, signal_generate)
{
    u64 cg;
    if (args->sig == 31 && args->code == 1 && watched_cgroup(&cg))
        report(cg, 0, -1, 1);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    u64 cg;
    if (watched_cgroup(&cg) && args->ret < 0)
        report(cg, args->__syscall_nr, args->ret, 0);
    return 0;
}
