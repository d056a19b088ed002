/* Process lifecycle: exec (with result), fork/clone, exit (code or signal). */
#include "maps.bpf.h"

/* exit_group() code and fatal signal of a dying process, keyed by pid. */
struct exit_note {
    s32 code;
    s32 signal;
};
BPF_TABLE("lru_hash", u32, struct exit_note, exit_notes, 4096);

/* Also called for processes not marked yet: their first exec in a watched
 * cgroup marks them. */
static __always_inline void exec_enter(const char *filename, const char *const *argv)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    if (!w)
        return;
    union event_buf *e = begin(EV_EXEC, cg);
    if (!e)
        return;
    mark_pid(e->h.pid, w);
    bpf_probe_read_user_str(e->exec.filename, sizeof(e->exec.filename), filename);
#pragma unroll
    for (int i = 0; i < ARGV_N; i++) {
        const char *arg = 0;
        e->exec.argv[i][0] = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
            break;
        bpf_probe_read_user_str(e->exec.argv[i], ARG_LEN, arg);
    }
    park(e);
}

/* The syscall ids gathered before an exec go out before its event, so the
 * batches after it hold only the new program's syscalls. */
static __always_inline void exec_exit(long ret)
{
    u64 cg;
    if (!watched_cgroup(&cg))
        return;
    flush_thread(cg);
    finish(EV_EXEC, ret, sizeof(struct ev_exec));
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    exec_exit(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    exec_exit(args->ret);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    if (!w)
        return 0;
    struct ev_fork e = {};
    fill_hdr(&e.h, EV_FORK, cg);
    e.child_pid = args->child_pid;
    mark_pid(e.child_pid, w);
    emit(&e, sizeof(e), cg);
    return 0;
}

static __always_inline void exit_group_enter(int code)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct exit_note n = {.code = code, .signal = 0};
    exit_notes.update(&pid, &n);
}

/* A signal whose default action is to terminate, delivered with no handler. */
TRACEPOINT_PROBE(signal, signal_deliver)
{
    u64 cg;
    if (!watched_cgroup(&cg) || args->sa_handler != 0)
        return 0;
    int sig = args->sig;
    /* SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH do not kill. */
    if (sig == 17 || sig == 18 || sig == 19 || sig == 20 || sig == 21 || sig == 22 ||
        sig == 23 || sig == 28)
        return 0;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct exit_note n = {.code = -1, .signal = sig};
    exit_notes.update(&pid, &n);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    /* whether or not its cgroup is still watched: a later thread of its id must not inherit its TLS call */
    tls_calls.delete(&tid);
    tls_heads.delete(&tid);
    if (args->group_dead) {
        u32 pid = bpf_get_current_pid_tgid() >> 32;
        tls_retries.delete(&pid);
    }
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    pending.delete(&tid);
    if (flush_thread(cg))
        windows.delete(&tid);
    if (!args->group_dead)
        return 0;
    struct ev_exit e = {};
    fill_hdr(&e.h, EV_EXIT, cg);
    struct exit_note *n = exit_notes.lookup(&e.h.pid);
    e.code = n ? n->code : -1;
    e.signal = n ? n->signal : 0;
    exit_notes.delete(&e.h.pid);
    mark_pid(e.h.pid, 0);
    emit(&e, sizeof(e), cg);
    return 0;
}
