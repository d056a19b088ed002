/* File opens: path, flags and the resulting fd or error. A sandbox's
 * repeated opens of one path with the same flags and outcome are counted
 * instead of sent again, so a busy benign tool cannot fill the ring with
 * what the guard has already judged. */
#include "maps.bpf.h"

struct open_key {
    u64 cgroup_id;
    u32 tag;  /* of this watch: a cgroup watched again starts afresh */
    s32 flags;
    s32 outcome;  /* 0 when it opened, else the error */
    u32 _pad;
    char path[PATH_LEN];
};

/* LRU: a sandbox with many distinct paths evicts old ones, which are then
 * sent again (never lost); a watch's entries age out after it ends. */
BPF_TABLE("lru_hash", struct open_key, u8, opens_seen, 16384);
BPF_PERCPU_ARRAY(open_key_scratch, struct open_key, 1);

static __always_inline void open_enter(u64 cg, const char *filename, int flags)
{
    union event_buf *e = begin(EV_OPEN, cg);
    if (!e)
        return;
    e->open.flags = flags;
    /* zeroed past the name: the path is part of the repeat key */
    __builtin_memset(e->open.path, 0, sizeof(e->open.path));
    long len = bpf_probe_read_user_str(e->open.path, sizeof(e->open.path), filename);
    e->open.path_len = len > 0 ? len : 0;
    park(e);
}

/* The open already sent by this sandbox, with these flags and outcome? */
static __always_inline int seen_before(union event_buf *e, long ret, u32 tag)
{
    u32 zero = 0;
    struct open_key *k = open_key_scratch.lookup(&zero);
    if (!k)
        return 0;
    k->cgroup_id = e->h.cgroup_id;
    k->tag = tag;
    k->_pad = 0;
    k->flags = e->open.flags;
    k->outcome = ret < 0 ? (s32)ret : 0;
    __builtin_memcpy(k->path, e->open.path, sizeof(k->path));
    if (opens_seen.lookup(k)) {
        struct cg_stats *st = stats.lookup(&k->cgroup_id);
        if (st)
            st->opens_repeated++;
        return 1;
    }
    u8 one = 1;
    opens_seen.update(k, &one);
    return 0;
}

static __always_inline void open_exit(long ret)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    if (!w)
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    union event_buf *e = pending.lookup(&tid);
    if (e && e->h.type == EV_OPEN && !seen_before(e, ret, w->tag)) {
        e->h.ret = ret;
        u32 len = e->open.path_len;
        if (len > PATH_LEN)
            len = PATH_LEN;
        emit(e, offsetof(struct ev_open, path) + len, e->h.cgroup_id);
    }
    if (e)
        pending.delete(&tid);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    open_exit(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    open_exit(args->ret);
    return 0;
}

/* openat2 keeps its flags in a user struct: the first u64 of struct open_how. */
static __always_inline void openat2_enter(u64 cg, const char *filename, const void *how)
{
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), how);
    open_enter(cg, filename, (int)flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    open_exit(args->ret);
    return 0;
}
