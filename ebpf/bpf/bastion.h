/* Event structs shared by every Bastion BPF program and by ebpf/events.py.
 *
 * Each event starts with struct ev_hdr; `type` says which struct follows.
 * Keep the layouts in step with the ctypes mirror in ebpf/events.py: the
 * test suite compares sizeof() of each struct against it.
 */
#ifndef BASTION_H
#define BASTION_H

#define TASK_COMM_LEN 16
#define PATH_LEN 256
#define ARGV_N 4
#define ARG_LEN 64
#define UNIX_PATH_LEN 108  /* sizeof(sun_path): a path is read whole or not trusted */
#define NGRAM_MAX 8
#define SEQ_BATCH 32  /* syscall ids per EV_SEQ record; a power of two */

enum ev_type {
    EV_EXEC = 1,
    EV_FORK = 2,
    EV_EXIT = 3,
    EV_OPEN = 4,
    EV_CONNECT = 5,
    EV_SENDTO = 6,
    EV_BIND = 7,
    EV_LISTEN = 8,
    EV_ACCEPT = 9,
    EV_NGRAM = 10,
    EV_DENY = 11,
    EV_SYSCALL = 12,
    EV_SEQ = 13,
    EV_API = 14,
};

struct ev_hdr {
    u64 ts_ns;            /* bpf_ktime_get_ns() */
    u64 cgroup_id;
    u32 pid;              /* thread group id */
    u32 tid;
    u16 type;             /* enum ev_type */
    u16 _pad;
    s32 ret;              /* syscall result, where there is one */
    char comm[TASK_COMM_LEN];
};

struct ev_exec {
    struct ev_hdr h;
    char filename[PATH_LEN];
    char argv[ARGV_N][ARG_LEN];
};

struct ev_fork {
    struct ev_hdr h;
    u32 child_pid;
    u32 _pad;
};

struct ev_exit {
    struct ev_hdr h;
    s32 code;             /* exit_group() argument, -1 if none was seen */
    s32 signal;           /* fatal default-action signal delivered, 0 if none */
};

/* Sent only up to the path's NUL: the record is as long as its path. */
struct ev_open {
    struct ev_hdr h;
    s32 flags;
    u32 path_len;  /* bytes of path, its NUL included */
    char path[PATH_LEN];
};

/* connect, sendto/sendmsg with a destination, bind, listen, accept, deny */
struct ev_net {
    struct ev_hdr h;
    u16 family;
    u16 port;             /* host byte order */
    u32 arg;              /* listen backlog; for EV_DENY the denied hook */
    u8 addr[16];          /* IPv4 in the first 4 bytes, or IPv6 */
    char unix_path[UNIX_PATH_LEN];
};

/* A sensitive syscall was attempted; h.ret holds its result. `trapped` is 1
 * when seccomp trapped it (SIGSYS) instead of failing it. */
struct ev_syscall {
    struct ev_hdr h;
    u32 nr;
    u32 trapped;
};

/* The arguments of every syscalls:sys_exit_* tracepoint (its format file). */
struct sys_exit_args {
    u64 common;
    s32 nr;
    u32 _pad;
    s64 ret;
};

/* A syscall n-gram: syscall numbers, oldest first; unused slots 0. */
struct ngram {
    u16 seq[NGRAM_MAX];
};

struct ev_ngram {
    struct ev_hdr h;
    struct ngram gram;
    u32 pos;        /* the thread's syscall index of the gram's last syscall */
    u16 in_window;  /* the thread's novel n-grams in its last novelty.window syscalls, this one included */
    u16 in_frame;   /* and in its last novelty.frame */
    u32 quarantined;  /* 1 when this n-gram passed novelty.quarantine_at and quarantined the cgroup */
    u32 _pad;
};

/* A thread's syscall ids in order, for the sequence model: sent when
 * SEQ_BATCH have gathered, when the thread makes a novel n-gram, and when it
 * exits, so the model sees every syscall at one event per batch. */
struct ev_seq {
    struct ev_hdr h;
    u32 pos;  /* the thread's syscall index of calls[0] */
    u16 n;    /* calls used */
    u16 _pad;
    u16 calls[SEQ_BATCH];
};

/* Values of the `watched` map. */
#define WATCH_DETECT_NOVEL 1   /* send n-grams missing from `known` as events */
#define WATCH_QUARANTINE 2     /* egress programs deny everything */
#define WATCH_SEQUENCE 4       /* send every syscall id, in EV_SEQ batches */

#define SENSITIVE_WORDS 8      /* bitmap of syscall numbers 0..511 */

/* How a watched cgroup's novel n-grams are counted: per thread, over its
 * last `window` syscalls and its last `frame` (frame <= window <=
 * NOVELTY_WINDOW_MAX; window 0: not counted). A novel n-gram whose counts
 * give in_window * frame + in_frame * window above `quarantine_at` (0: never)
 * quarantines the cgroup there and then: the guard's n-gram threshold in
 * integers, so that no egress of an anomalous sandbox waits on user space. */
#define NOVELTY_WINDOW_MAX 1024
struct novelty {
    u16 window;
    u16 frame;
    u32 quarantine_at;
};

/* Each watched cgroup counts its syscalls by number in its own row of the
 * `syscall_counts` array, which user space reads through a mapping: an array
 * cell costs every watched syscall less than a hash update would. */
#define WATCH_SLOTS 1024       /* cgroups watched at once */
#define NR_COUNTED 512         /* syscall numbers a row counts; the last cell takes any above */

struct watch_info {
    u32 tag;
    u32 flags;
    u64 sensitive[SENSITIVE_WORDS];  /* syscalls whose attempts are reported */
    u32 slot;                        /* the cgroup's row of syscall_counts */
    u32 _pad;
    struct novelty novelty;
};

/* What the every-syscall program needs of a watched cgroup, by its slot:
 * an array cell the JIT inlines, where a lookup in `watched` hashes. */
struct slot_info {
    u64 cgroup_id;  /* 0 while the slot is free */
    u32 flags;      /* the cgroup's watch_info.flags */
    u32 _pad;
    struct novelty novelty;  /* the cgroup's watch_info.novelty */
};

/* Per-cgroup counters, one copy per CPU, summed by user space. */
struct cg_stats {
    u64 events;
    u64 lost;
    u64 opens_repeated;  /* opens counted in the kernel instead of sent again */
    u64 packets_dropped; /* while quarantined: counted, not sent (a flood would fill the ring) */
};

/* Egress allowlist: an LPM trie over (cgroup id, address). IPv4 addresses
 * are stored IPv4-mapped (::ffff:a.b.c.d) so both families share one trie;
 * prefixlen counts the 64 cgroup bits too. */
struct egress_key {
    u32 prefixlen;
    u8 cgroup[8];
    u8 addr[16];
};

#define EGRESS_PORTS 8
#define PROTO_TCP 1
#define PROTO_UDP 2

/* A network's ports for each protocol in protos: a list per protocol,
 * since an entry for one does not open its ports to the other. Host byte
 * order; a count of 0 means any port. */
struct egress_rule {
    u16 tcp_ports[EGRESS_PORTS];
    u16 udp_ports[EGRESS_PORTS];
    u8 ntcp, nudp;
    u8 protos;                /* PROTO_TCP | PROTO_UDP */
    u8 _pad[5];
};

/* Deny hooks, in ev_net.arg of EV_DENY. */
#define DENY_CONNECT4 1
#define DENY_CONNECT6 2
#define DENY_SENDMSG4 3
#define DENY_SENDMSG6 4
#define DENY_UNIX_CONNECT 5
#define DENY_UNIX_SENDMSG 6
#define DENY_FASTOPEN 7        /* a TCP connect made by a send (TCP Fast Open) */
#define DENY_API_UDP 8         /* UDP to an API peer's address and port: HTTP/3, which cannot be read */

/* Unix sockets a sandbox may reach: (cgroup id, path as the thread passed
 * it, zero-padded). Values: UNIX_ALLOW, or UNIX_QUIET for libc's probes
 * (refused without an event: glibc falls back on any error). */
struct unix_key {
    u64 cgroup_id;
    char path[UNIX_PATH_LEN];
};

#define UNIX_ALLOW 1
#define UNIX_QUIET 2

/* API calls (api.bpf.c). A request's method, Host header and path are
 * parsed from its first API_SCAN bytes (a bearer token or cookies easily
 * take a kilobyte), the request line from the first API_WINDOW of them and
 * the headers a window at a time, each window one pass of one program (the
 * verifier walks each byte of a loop: 512 is what it takes). Path segments
 * are compared as FNV-1a hashes, so rules need no strings in the kernel. */
#define API_SCAN 4096
#define API_WINDOW 512
#define API_SEGS 8             /* path segments a rule can name */
#define API_RULES 16           /* rules per destination */
#define API_HOST_LEN 64
#define API_TARGET_LEN 128
#define API_ANY_SEGMENT 0      /* a rule segment that matches any one segment */
#define API_NO_LIMIT 0xffffffff

/* Methods: bit (1 << API_x) in api_rule.methods; ev_api.method holds x. */
#define API_GET 1
#define API_HEAD 2
#define API_POST 3
#define API_PUT 4
#define API_DELETE 5
#define API_PATCH 6
#define API_OPTIONS 7

/* ev_api.verdict */
#define API_ALLOW 1
#define API_STOP 2
#define API_HOLD 3             /* plain: dropped; TLS: the caller stopped (SIGSTOP) */

/* ev_api.reason */
#define API_OK 0
#define API_NO_RULE 1          /* no rule of the destination names it */
#define API_TOO_BIG 2          /* a rule names it, with a smaller max_body_bytes */
#define API_NOT_NORMAL 3       /* dot segments, encoded or doubled slashes */
#define API_WRONG_HOST 4       /* the Host header names another destination */
#define API_UNREADABLE 5       /* not an HTTP/1.x request Bastion can read */
#define API_NO_REQUEST 6       /* TLS bytes on an API socket that no allowed request wrote */
#define API_UNSEEN 7           /* allowed by the policy, but an endpoint the profile never saw */
#define API_QUARANTINED 8      /* the sandbox is quarantined: no egress at all */
#define API_OVER_BUDGET 9      /* allowed, but more calls to a learned endpoint than its budget */
#define API_BODY_ELSEWHERE 10  /* TLS: a write taken for the body of a request made on another connection */
#define API_BEFORE_CHECKS 11   /* a send that waited for its connection to be made: the caller is killed */
#define API_NOT_CHECKED 12     /* a connection that could not join the checks: the sandbox is quarantined */
#define API_CALLED_BACK 13     /* TLS from a sandbox whose program gave its TLS library a callback */
#define API_NOT_A_RETRY 14     /* TLS: a write after one that failed on its object, not that write again */
#define API_NOT_KEPT 15        /* TLS: a failed write the kernel could not keep to check its retry */
#define API_BODY_UNASKED 16    /* a body on a GET, HEAD, DELETE or OPTIONS whose rule sets no max_body_bytes */
#define API_NO_HELLO 17        /* TLS: a ClientHello the kernel cannot read, or one whose name is encrypted */
#define API_WRONG_NAME 18      /* TLS: the server name (SNI) names no API destination at the peer */
#define API_NOT_NAMED 19       /* TLS: a request for another destination than its connection's server name */
#define API_REWRITTEN 20       /* TLS: a request whose bytes changed in memory after they were judged */
#define API_HEAD_NOT_KEPT 21   /* TLS: a request the kernel could not keep to compare with what is sent */

struct api_rule {
    u32 methods;
    u32 max_body;              /* API_NO_LIMIT, or the largest Content-Length */
    u8 nsegs;
    u8 tail;                   /* 1: a trailing wildcard segment matches the rest */
    u8 _pad[6];
    u64 segs[API_SEGS];
};

struct api_dest {
    u64 host;                  /* hash of the lowercased name the Host header must give */
    u32 id;                    /* 1.., per sandbox */
    u32 nrules;
    struct api_rule rules[API_RULES];
};

/* A destination is found by the socket's peer (plain and TLS) and, for a
 * TLS library call, by its Host header; both lead to the same id. */
struct api_peer_key {
    u64 cgroup_id;
    u8 addr[16];               /* IPv4-mapped for IPv4, as in egress_key */
    u32 port;
    u32 _pad;
};

struct api_host_key {
    u64 cgroup_id;
    u64 host;
    u32 port;
    u32 _pad;
};

struct api_dest_key {
    u64 cgroup_id;
    u32 id;
    u32 _pad;
};

struct api_known_key {
    u64 cgroup_id;
    u64 endpoint;
    u32 dest;
    u32 _pad;
};

struct ev_api {
    struct ev_hdr h;
    u64 endpoint;              /* hash of the method and path, ids generalised */
    u32 dest;                  /* destination id, 0 when none was found */
    u32 body;                  /* Content-Length */
    u16 port;                  /* the socket's peer port (plain) or the Host header's */
    u8 method;
    u8 verdict;
    u8 reason;
    u8 tls;
    u8 rule;                   /* index of the rule that allowed it */
    u8 _pad;
    char host[API_HOST_LEN];
    char target[API_TARGET_LEN];
};

#endif
