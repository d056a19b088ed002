/* File opens: path, flags and the resulting fd or error. */
#include "maps.bpf.h"

static __always_inline void open_enter(const char *filename, int flags)
{
    u64 cg;
    if (!watched_cgroup(&cg))
        return;
    union event_buf *e = begin(EV_OPEN, cg);
    if (!e)
        return;
    e->open.flags = flags;
    bpf_probe_read_user_str(e->open.path, sizeof(e->open.path), filename);
    park(e);
}

static __always_inline void open_exit(long ret)
{
    u64 cg;
    if (watched_cgroup(&cg))
        finish(EV_OPEN, ret, sizeof(struct ev_open));
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    open_enter(args->filename, args->flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    open_exit(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    open_enter(args->filename, args->flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    open_exit(args->ret);
    return 0;
}

/* openat2 keeps its flags in a user struct: the first u64 of struct open_how. */
TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), args->how);
    open_enter(args->filename, (int)flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    open_exit(args->ret);
    return 0;
}
