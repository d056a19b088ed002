/* Egress decided in the kernel: cgroup connect and sendmsg hooks allow a
 * destination only if the sandbox's allowlist has it and the sandbox is not
 * quarantined. Anything else fails with EPERM and is reported as EV_DENY.
 * A quarantined sandbox's packets are dropped whatever socket sends them.
 * Unix sockets (pathname and abstract) go through the same decision with
 * their own allowlist. Attached per sandbox cgroup by the sandbox, never
 * auto-attached. */
#include "maps.bpf.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

BPF_LPM_TRIE(egress_rules, struct egress_key, struct egress_rule, 16384);
BPF_HASH(unix_allow, struct unix_key, u8, 4096);

static __always_inline int port_allowed(struct egress_rule *r, u8 proto, u16 port)
{
    if (!(r->protos & proto))
        return 0;
    int udp = proto == PROTO_UDP;
    u8 n = udp ? r->nudp : r->ntcp;
    if (n == 0)
        return 1;
#pragma unroll
    for (int i = 0; i < EGRESS_PORTS; i++)
        if (i < n && (udp ? r->udp_ports[i] : r->tcp_ports[i]) == port)
            return 1;
    return 0;
}

/* Whether the current thread is inside connect(): net.bpf.c parked its
 * EV_CONNECT at sys_enter. A TCP connect hook reached any other way is TCP
 * Fast Open (sendto or sendmsg with MSG_FASTOPEN), whose data would leave in
 * the SYN, before the socket joins the API checks. */
static __always_inline int in_connect(void)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    union event_buf *p = pending.lookup(&tid);
    return p && p->h.type == EV_CONNECT;
}

/* Whether the cgroup's API rules name this address and port. A policy may
 * allow UDP there through another entry (a network's), and UDP to an API
 * peer would carry HTTP/3, which the API checks cannot read. */
static __always_inline int api_peer(u64 cg, struct egress_key *k, u16 port)
{
    struct api_peer_key pk = {.cgroup_id = cg, .port = port};
    __builtin_memcpy(pk.addr, k->addr, sizeof(pk.addr));
    return api_peers.lookup(&pk) != NULL;
}

static __always_inline int decide(struct bpf_sock_addr *ctx, struct egress_key *k, u16 port, u32 hook)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    /* A sandbox cgroup that is not watched must not talk: fail closed. */
    if (w && !(w->flags & WATCH_QUARANTINE)) {
        k->prefixlen = 64 + 128;
        __builtin_memcpy(k->cgroup, &cg, sizeof(cg));
        struct egress_rule *r = egress_rules.lookup(k);
        u8 proto = ctx->protocol == IPPROTO_TCP_ ? PROTO_TCP
                 : ctx->protocol == IPPROTO_UDP_ ? PROTO_UDP : 0;
        if (proto == PROTO_TCP && !in_connect())
            hook = DENY_FASTOPEN;
        else if (proto == PROTO_UDP && api_peer(cg, k, port))
            hook = DENY_API_UDP;
        else if (r && port_allowed(r, proto, port))
            return 1;
    }
    struct ev_net e = {};
    fill_hdr(&e.h, EV_DENY, cg);
    e.h.ret = -1;  /* EPERM */
    e.family = hook == DENY_CONNECT6 || hook == DENY_SENDMSG6 ? 10 : 2;
    e.port = port;
    e.arg = hook;
    __builtin_memcpy(e.addr, k->addr, sizeof(e.addr));
    if (e.family == 2)  /* report IPv4 in the first four bytes, as other events do */
        __builtin_memcpy(e.addr, &k->addr[12], 4);
    emit(&e, sizeof(e), cg);
    return 0;
}

static __always_inline int decide4(struct bpf_sock_addr *ctx, u32 hook)
{
    struct egress_key k = {};
    u32 ip = ctx->user_ip4;
    k.addr[10] = 0xff;
    k.addr[11] = 0xff;
    __builtin_memcpy(&k.addr[12], &ip, 4);
    return decide(ctx, &k, __builtin_bswap16((u16)ctx->user_port), hook);
}

static __always_inline int decide6(struct bpf_sock_addr *ctx, u32 hook)
{
    struct egress_key k = {};
    u32 ip[4];
    ip[0] = ctx->user_ip6[0];
    ip[1] = ctx->user_ip6[1];
    ip[2] = ctx->user_ip6[2];
    ip[3] = ctx->user_ip6[3];
    __builtin_memcpy(k.addr, ip, 16);
    return decide(ctx, &k, __builtin_bswap16((u16)ctx->user_port), hook);
}

int egress_connect4(struct bpf_sock_addr *ctx)
{
    return decide4(ctx, DENY_CONNECT4);
}

int egress_connect6(struct bpf_sock_addr *ctx)
{
    return decide6(ctx, DENY_CONNECT6);
}

int egress_sendmsg4(struct bpf_sock_addr *ctx)
{
    return decide4(ctx, DENY_SENDMSG4);
}

int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
    return decide6(ctx, DENY_SENDMSG6);
}

/* Every packet the cgroup's sockets send, from any socket: none while it is
 * quarantined or no longer watched. The hooks above decide each new
 * destination; this stops what a socket opened before the quarantine
 * would still send (TCP, connected UDP, an accepted connection). A
 * quarantined sandbox's drops are counted for its result, not sent as
 * events: a flood would fill the ring. */
int egress_packet(struct __sk_buff *skb)
{
    u64 cg = bpf_skb_cgroup_id(skb);
    struct watch_info *w = watched.lookup(&cg);
    if (w && !(w->flags & WATCH_QUARANTINE))
        return 1;
    struct cg_stats *st = w ? stats.lookup(&cg) : NULL;
    if (st)
        st->packets_dropped++;
    return 0;
}

/* The unix hooks cannot read the destination path without kernel structs,
 * so the path is the one net.bpf.c read from the same thread's syscall
 * arguments at sys_enter and parked in `pending`. */
static __always_inline int decide_unix(u32 hook)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    union event_buf *p = pending.lookup(&tid);
    struct unix_key k = {};
    k.cgroup_id = cg;
    if (p && (p->h.type == EV_CONNECT || p->h.type == EV_SENDTO) && p->net.family == 1)
        __builtin_memcpy(k.path, p->net.unix_path, sizeof(k.path));
    u8 *verdict = unix_allow.lookup(&k);
    if (w && verdict && *verdict == UNIX_QUIET)
        return 0;
    if (w && verdict && !(w->flags & WATCH_QUARANTINE))
        return 1;
    struct ev_net e = {};
    fill_hdr(&e.h, EV_DENY, cg);
    e.h.ret = -1;  /* EPERM */
    e.family = 1;  /* AF_UNIX */
    e.arg = hook;
    __builtin_memcpy(e.unix_path, k.path, sizeof(e.unix_path));
    emit(&e, sizeof(e), cg);
    return 0;
}

int egress_unix_connect(struct bpf_sock_addr *ctx)
{
    return decide_unix(DENY_UNIX_CONNECT);
}

int egress_unix_sendmsg(struct bpf_sock_addr *ctx)
{
    return decide_unix(DENY_UNIX_SENDMSG);
}
