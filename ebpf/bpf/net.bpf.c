/* Network: connect, UDP destinations of sendto/sendmsg, bind, listen, accept. */
#include "maps.bpf.h"

#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10

/* Copy family, port and address of a user-space sockaddr into the event. */
static __always_inline void read_sockaddr(struct ev_net *n, const void *uaddr, u32 len)
{
    u16 family = 0;
    n->family = 0;
    n->port = 0;
    /* zeroed whole: the unix egress hook compares the path as a map key */
    __builtin_memset(n->unix_path, 0, sizeof(n->unix_path));
    __builtin_memset(n->addr, 0, sizeof(n->addr));
    if (!uaddr || bpf_probe_read_user(&family, sizeof(family), uaddr))
        return;
    n->family = family;
    if (family == AF_INET_ || family == AF_INET6_) {
        u16 port = 0;
        bpf_probe_read_user(&port, sizeof(port), uaddr + 2);
        n->port = __builtin_bswap16(port);
        if (family == AF_INET_)
            bpf_probe_read_user(n->addr, 4, uaddr + 4);
        else
            bpf_probe_read_user(n->addr, 16, uaddr + 8);
    } else if (family == AF_UNIX_) {
        /* an abstract name starts with a NUL byte and ends where the
         * address length says: shown as @name */
        if (bpf_probe_read_user_str(n->unix_path, sizeof(n->unix_path), uaddr + 2) == 1 && len > 3) {
            u32 l = len - 3;
            if (l > sizeof(n->unix_path) - 2)
                l = sizeof(n->unix_path) - 2;
            n->unix_path[0] = '@';
            asm volatile("%0 &= 127" : "+r"(l));  /* a bound the verifier sees */
            bpf_probe_read_user(n->unix_path + 1, l, uaddr + 3);
        }
    }
}

/* Park a network event; the address is read now, or at exit for accept. */
static __always_inline void net_enter(u64 cg, u16 type, const void *uaddr, u32 len, u32 arg)
{
    union event_buf *e = begin(type, cg);
    if (!e)
        return;
    read_sockaddr(&e->net, uaddr, len);
    e->net.arg = arg;
    park(e);
}

static __always_inline void net_exit(u16 type, long ret)
{
    u64 cg;
    if (watched_cgroup(&cg))
        finish(type, ret, sizeof(struct ev_net));
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    net_exit(EV_CONNECT, args->ret);
    return 0;
}

/* Only sends that name a destination: a connected socket's were seen at connect. */
static __always_inline void sendto_enter(u64 cg, const void *addr, u32 len)
{
    if (addr)
        net_enter(cg, EV_SENDTO, addr, len, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendto)
{
    net_exit(EV_SENDTO, args->ret);
    return 0;
}

static __always_inline void sendmsg_enter(u64 cg, const void *msg)
{
    struct { void *name; u32 namelen; } hdr = {};
    bpf_probe_read_user(&hdr, sizeof(hdr), msg);  /* msg_name, msg_namelen come first */
    if (hdr.name)
        net_enter(cg, EV_SENDTO, hdr.name, hdr.namelen, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg)
{
    net_exit(EV_SENDTO, args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_bind)
{
    net_exit(EV_BIND, args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_listen)
{
    net_exit(EV_LISTEN, args->ret);
    return 0;
}

/* The peer address exists only once accept returns: park the user pointer. */
BPF_TABLE("lru_hash", u32, u64, accept_addr, 4096);

static __always_inline void accept_enter(u64 cg, const void *upeer)
{
    union event_buf *e = begin(EV_ACCEPT, cg);
    if (!e)
        return;
    read_sockaddr(&e->net, 0, 0);
    e->net.arg = 0;
    park(e);
    u32 tid = e->h.tid;
    u64 ptr = (u64)upeer;
    accept_addr.update(&tid, &ptr);
}

static __always_inline void accept_exit(long ret)
{
    u64 cg;
    if (!watched_cgroup(&cg))
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *ptr = accept_addr.lookup(&tid);
    union event_buf *e = pending.lookup(&tid);
    if (ptr && e && e->h.type == EV_ACCEPT && ret >= 0)
        read_sockaddr(&e->net, (const void *)*ptr, 0);
    accept_addr.delete(&tid);
    finish(EV_ACCEPT, ret, sizeof(struct ev_net));
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    accept_exit(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    accept_exit(args->ret);
    return 0;
}
