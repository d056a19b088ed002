/* Maps and helpers shared by the sensor's programs. The sensor compiles all
 * of its .bpf.c files as one module, so these maps exist once. */
#ifndef BASTION_MAPS_BPF_H
#define BASTION_MAPS_BPF_H

#include "bastion.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif

#ifndef PID_MAX
#define PID_MAX 4194304
#endif

BPF_HASH(watched, u64, struct watch_info, 4096);
BPF_ARRAY(slots, struct slot_info, WATCH_SLOTS);
/* Per-process hint for the every-syscall program: its cgroup's slot + 1 if
 * the process was in a watched cgroup at its last fork or exec, else 0. An
 * array lookup is inlined by the JIT, so unwatched processes skip the
 * cgroup lookup. The event programs do not use it: they check the cgroup
 * itself every time. */
BPF_ARRAY(watched_pids, u16, PID_MAX);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* The records of API calls the kernel allowed: they ask user space only for
 * their log, so a ring of their own keeps them out of the way of records
 * that need a verdict (and lets them be read at another priority). */
BPF_RINGBUF_OUTPUT(calls, RINGBUF_PAGES);
BPF_PERCPU_HASH(stats, u64, struct cg_stats, 4096);
/* Events lost by any cgroup, in one cell user space reads through a
 * mapping: the pump looks at it every turn, and at each cgroup's `stats`
 * (a syscall per cgroup) only when it has moved. */
BPF_F_TABLE("array", u32, u64, lost_any, 1, BPF_F_MMAPABLE);

union event_buf {
    struct ev_hdr h;
    struct ev_exec exec;
    struct ev_open open;
    struct ev_net net;
};

/* Events that need the syscall's result are built at sys_enter in a per-CPU
 * scratch slot (too big for the BPF stack), parked per thread, and sent at
 * sys_exit. LRU so a thread killed inside a syscall cannot leak an entry. */
BPF_PERCPU_ARRAY(scratch, union event_buf, 1);
BPF_TABLE("lru_hash", u32, union event_buf, pending, 8192);

#ifndef NGRAM_N
#define NGRAM_N 6
#endif

/* Sliding syscall window of each watched thread, its unsent batch of
 * syscall ids and which of its last syscalls ended a novel n-gram (bit
 * pos % novelty.window), deleted at thread exit. */
struct seq_state {
    u16 win[NGRAM_MAX];
    u32 count;  /* syscalls of this thread so far: the position of the newest */
    struct ev_seq batch;
    u16 in_window;  /* bits set in `novel` */
    u16 in_frame;   /* of those, the last novelty.frame positions' */
    u32 _pad;
    u64 novel[NOVELTY_WINDOW_MAX / 64];
};
BPF_HASH(windows, u32, struct seq_state, 16384);

/* Per thread while it runs a watched TLS library function (ebpf/bpf/api.bpf.c):
 * how deep, and for which destination its write was allowed. A function
 * that writes the library's own records (handshake, alert) may run inside a
 * write: the write's depth is kept, so that its destination still holds
 * after. The entry stays between calls at depth 0 (an insert and a delete
 * per call cost more than the call's parse) and goes at thread exit, so a
 * thread killed inside a call leaves nothing to a later one of its id. */
struct tls_call {
    u32 depth;                 /* 0: in no watched call */
    u32 dest;
    u32 writing;               /* the write's depth (0: no write, only records of the library's own) */
    u16 held;                  /* stopped until the guard releases it: nothing passes */
    u16 body;                  /* the write is the body of the connection's last request */
    u64 obj;                   /* the write's library object, buffer and size, */
    u64 buf;                   /* kept in case it fails (ebpf/bpf/api.bpf.c tls_failed) */
    u32 size;
    u32 head;                  /* the request's judged head is in tls_heads, to compare with buf */
};
BPF_TABLE("lru_hash", u32, struct tls_call, tls_calls, 16384);

/* Per thread, the head (request line and headers) of its last TLS write
 * that the kernel judged for an API destination, as the probe read it. The
 * library copies the buffer after the probe: another thread, or a process
 * sharing the memory, may rewrite it in between (while a held call is
 * stopped, at leisure). So the buffer is compared with this at each send
 * of the write and at its failure (ebpf/bpf/api.bpf.c head_changed). An
 * LRU: a thread keeps its entry between writes, and only a write in
 * progress needs one; goes at thread exit, like the thread's tls_call. */
#define TLS_HEADS 2048
struct tls_head {
    u32 len;
    u32 _pad;
    u8 bytes[API_SCAN];
};
BPF_TABLE("lru_hash", u32, struct tls_head, tls_heads, TLS_HEADS);
BPF_ARRAY(tls_head_blank, struct tls_head, 1);  /* the zeroed value a new entry starts from */

/* Per process with TLS writes that failed (ebpf/bpf/api.bpf.c tls_retry):
 * the library object of each, its size and a hash of its first bytes. A
 * plain hash, not an LRU: an entry pushed out would let the records such a
 * write left go out with any later write. Copied to a forked child, which
 * has the objects too; gone at exec and exit. */
#define RETRY_SLOTS 8
struct tls_retries {
    u64 obj[RETRY_SLOTS];      /* 0: a free slot */
    u64 hash[RETRY_SLOTS];     /* of the write's first API_SCAN bytes; 0: they could not be read */
    u32 size[RETRY_SLOTS];
    u32 body[RETRY_SLOTS];     /* it was a body: its size went off the owed count */
    u32 refs;                  /* the process took a reference to an object: SSL_free may not free it */
    u32 _pad;
};
BPF_HASH(tls_retries, u32, struct tls_retries, 16384);

/* Each API peer's destinations, a bit per id (API_DESTS_MAX): several API
 * hosts may share an address and port (virtual hosts behind one gateway),
 * and the Host header tells them apart (api.bpf.c). egress.bpf.c refuses
 * UDP to these peers. */
BPF_HASH(api_peers, struct api_peer_key, u32, 4096);

/* Mark a process as in the watched cgroup w, or, with w NULL, as unwatched. */
static __always_inline void mark_pid(u32 pid, struct watch_info *w)
{
    u16 *hint = watched_pids.lookup(&pid);
    if (hint)
        *hint = w ? w->slot + 1 : 0;
}

/* The cgroup of the current task if it is watched, else NULL. */
static __always_inline struct watch_info *watched_cgroup(u64 *cg)
{
    *cg = bpf_get_current_cgroup_id();
    return watched.lookup(cg);
}

static __always_inline void fill_hdr(struct ev_hdr *h, u16 type, u64 cg)
{
    u64 id = bpf_get_current_pid_tgid();
    h->ts_ns = bpf_ktime_get_ns();
    h->cgroup_id = cg;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->type = type;
    h->ret = 0;
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* Count a record sent to either ring (output's result rc) as sent or lost
 * for its cgroup. */
static __always_inline void counted(long rc, u64 cg)
{
    struct cg_stats *st = stats.lookup(&cg);
    if (rc == 0) {
        if (st)
            st->events++;
        return;
    }
    if (st)
        st->lost++;
    u32 zero = 0;
    u64 *any = lost_any.lookup(&zero);
    if (any)
        __sync_fetch_and_add(any, 1);
}

/* Send one event and count it as sent or lost for its cgroup. */
static __always_inline void emit_with(void *data, u32 size, u64 cg, u64 flags)
{
    counted(events.ringbuf_output(data, size, flags), cg);
}

static __always_inline void emit(void *data, u32 size, u64 cg)
{
    emit_with(data, size, cg, 0);
}

static __always_inline union event_buf *begin(u16 type, u64 cg)
{
    u32 zero = 0;
    union event_buf *e = scratch.lookup(&zero);
    if (e)
        fill_hdr(&e->h, type, cg);
    return e;
}

static __always_inline void park(union event_buf *e)
{
    u32 tid = e->h.tid;
    pending.update(&tid, e);
}

/* At sys_exit: send the parked event of this thread with the result. */
static __always_inline void finish(u16 type, long ret, u32 size)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    union event_buf *e = pending.lookup(&tid);
    if (!e)
        return;
    if (e->h.type == type) {
        e->h.ret = ret;
        emit(e, size, e->h.cgroup_id);
    }
    pending.delete(&tid);
}

/* Send a thread's gathered syscall ids, if any. */
static __always_inline void flush_batch(struct seq_state *s, u64 cg)
{
    if (!s->batch.n)
        return;
    fill_hdr(&s->batch.h, EV_SEQ, cg);
    emit(&s->batch, sizeof(s->batch), cg);
    s->batch.n = 0;
}

/* Flush the current thread's batch; returns its state, or NULL if it has none. */
static __always_inline struct seq_state *flush_thread(u64 cg)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct seq_state *s = windows.lookup(&tid);
    if (s)
        flush_batch(s, cg);
    return s;
}

#endif
