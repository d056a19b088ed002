/* API calls decided in the kernel. A sandbox's TCP sockets join `api_socks`
 * when they connect (a SOCK_OPS program on the sandbox cgroup); an SK_MSG
 * program then sees every send on them before it leaves. On a destination
 * with API rules:
 *   - plain HTTP/1.x: the request line and Host header are parsed and matched
 *     against the rules; a request none allows is dropped (the send fails
 *     with EACCES and the server receives nothing);
 *   - TLS: uprobes on the TLS libraries' write functions parse the request
 *     in clear and kill the caller before the library encrypts it; the
 *     SK_MSG program passes TLS bytes only while the sending thread is inside
 *     a watched TLS library call for that destination, so a client Bastion
 *     cannot read (its own TLS code, HTTP/2) gets nothing out.
 * A send made to wait for its socket's connection is killed (sched_switch, below).
 * Every request is sent to user space as EV_API. */
#include <uapi/linux/ptrace.h>  /* the uprobes' registers: their arguments */
#include <asm/unistd.h>
#include "maps.bpf.h"

#define SIGKILL_ 9
#define CLONE_THREAD_ 0x00010000
#define E2BIG_ 7
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define SIGSTOP_ 19
#define TLS_HANDSHAKE 0x16
#define TLS_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define EXT_ECH 0xfe0d         /* encrypted_client_hello: the name inside is encrypted */
#define EXT_ESNI 0xffce        /* its draft, encrypted_server_name */
#define HELLO_EXTS 64          /* extensions a ClientHello may have to be read */
#define ID_SEGMENT 1           /* what an id segment adds to an endpoint hash */
#define ID_MIN_HEX 8           /* shorter hex words are names ("cafe", "add") */

#ifndef API_SOCKS
#define API_SOCKS 65535
#endif
BPF_SOCKHASH(api_socks, u64, API_SOCKS);
BPF_HASH(api_hosts, struct api_host_key, u32, 4096);
BPF_HASH(api_dests, struct api_dest_key, struct api_dest, 1024);
/* Destinations whose calls the agent's profile learned, and the endpoints it
 * learned there: an allowed call to any other endpoint is held for the guard.
 * Each known endpoint's value is its budget: the calls a run may make to it
 * before the guard hears of the next (0: no budget). The guard alone writes
 * budgets; the kernel alone counts, in a map of its own. */
BPF_HASH(api_learned, struct api_dest_key, u8, 1024);
BPF_HASH(api_known, struct api_known_key, u32, 16384);
BPF_HASH(api_made, struct api_known_key, u32, 16384);

/* Per socket: its peer's destinations once known, the bytes still owed to
 * the body of the last allowed plain request, and whether a TLS request
 * went out on it (a body may follow only there). */
#define SOCK_UNKNOWN 0
#define SOCK_FREE 1            /* no API rules: today's IP:port meaning */
#define SOCK_HTTP 2
#define SOCK_TLS 3
struct api_sock {
    u64 cgroup_id;             /* its sandbox's, kept at connect: the handshake ends in softirq */
    u32 dests;                 /* a bit per destination id */
    u32 body_left;
    u8 mode;
    u8 requested;
    u8 named;                  /* TLS: the destination its server name (SNI) names, 0: none */
    u8 _pad;
    u32 pid;                   /* who connected it, for the same reason */
    u32 tid;
    char comm[TASK_COMM_LEN];
};
BPF_SK_STORAGE(api_sock_state, struct api_sock);
/* Programs entered by tail call: each parser loop is verified on its own. */
#define PROG_HTTP 0
#define PROG_HTTP_HEADERS 1
#define PROG_HELLO 2
#define PROG_TLS_HEADERS 0
#define PROG_TLS_RETRY 1
#define PROG_TLS_WRITE 2
#define PROG_TLS_FAILED 3
BPF_PROG_ARRAY(api_progs, 3);  /* SK_MSG: api_http, api_http_headers, api_hello */
BPF_PROG_ARRAY(tls_progs, 4);  /* uprobes: tls_headers, tls_retry, tls_write, tls_failed */

/* Per TLS connection (process, library object): body bytes still owed to
 * the last allowed request and its destination, so a body written in later
 * calls passes. */
struct tls_conn_key {
    u64 obj;
    u32 pid;
    u32 _pad;
};
struct tls_body {
    u32 left;
    u32 dest;
};
BPF_TABLE("lru_hash", struct tls_conn_key, struct tls_body, tls_bodies, 16384);

struct api_req {
    u64 segs[API_SEGS];
    u64 host;
    u64 endpoint;              /* method and path, ids generalised (ebpf/api.py endpoint_hash) */
    u32 body;
    u32 head_len;              /* 0: the blank line after the headers was not seen */
    u32 nsegs;                 /* may exceed API_SEGS */
    u16 host_port;
    u8 method;
    u8 bad;                    /* not in normal form */
    u8 unreadable;
};

static __always_inline u64 fnv(u64 h, u8 c)
{
    return (h ^ c) * FNV_PRIME;
}

static __always_inline u8 lower(u8 c)
{
    return c >= 'A' && c <= 'Z' ? c | 0x20 : c;
}

static __always_inline u8 method_of(u64 word, u32 len)
{
    /* the method's bytes, first byte highest */
    if (len == 3 && word == 0x474554) return API_GET;
    if (len == 4 && word == 0x48454144) return API_HEAD;
    if (len == 4 && word == 0x504f5354) return API_POST;
    if (len == 3 && word == 0x505554) return API_PUT;
    if (len == 6 && word == 0x44454c455445) return API_DELETE;
    if (len == 5 && word == 0x5041544348) return API_PATCH;
    if (len == 7 && word == 0x4f5054494f4e53) return API_OPTIONS;
    return 0;
}

/* The versions read, their bytes first byte highest */
#define HTTP_1_0 0x485454502f312e30ULL
#define HTTP_1_1 0x485454502f312e31ULL

/* Parser states */
#define P_METHOD 0
#define P_TARGET 1
#define P_SEGMENT 2
#define P_QUERY 3
#define P_VERSION 4
#define P_LINE 5
#define P_NAME 6
#define P_HOST 7
#define P_PORT 8
#define P_LENGTH 9
#define P_SKIP 10
#define P_END 11
#define P_NUMBER_END 12        /* after a port's or a Content-Length's last digit */

/* FNV-1a of the lowercased header names (tests/test_api_calls.py checks them) */
#define H_HOST 0x4077f8cc7eaf4d6fULL
#define H_CONTENT_LENGTH 0x2d69a1e6ee916e7dULL
#define H_TRANSFER_ENCODING 0x8640bd735e9d802cULL
/* headers that ask a framework to act as another method than the request line's */
#define H_X_HTTP_METHOD_OVERRIDE 0xf2cba41c3a26e7f3ULL
#define H_X_HTTP_METHOD 0x1ae58cab02ab95e4ULL
#define H_X_METHOD_OVERRIDE 0xc9e35bdb06d5b112ULL

/* The parser's variables live in map memory, not registers: the verifier
 * then sees every iteration of a byte loop alike and prunes, where precise
 * counters in registers would make it walk each path of each byte. The
 * request line and the headers are parsed by two programs, joined by a tail
 * call, so that each is verified on its own. */
struct parse_state {
    u64 word, seg, name;
    u32 state, n, seglen, tlen, hlen, dots, digits, hexish, seen_host, seen_length;
    u32 pos;                   /* where the headers start */
    u32 size;                  /* bytes in the send or write */
    u8 prev1, prev2;
    u8 digit;                  /* a digit of the port or Content-Length read */
};

/* A ClientHello's extensions as they are read (map memory, as parse_state). */
struct hello_state {
    u32 off, end;              /* the next extension, and where they end */
    u32 name_at, name_len;     /* the server_name extension's data */
    u32 names, hidden;         /* server_name extensions; encrypted ones (ECH) */
};

struct api_scratch {
    u8 buf[API_SCAN + 8];      /* the bytes read, then NULs */
    struct api_req req;
    struct parse_state ps;
    struct hello_state hs;
    struct ev_api ev;
};
BPF_PERCPU_ARRAY(api_scratch, struct api_scratch, 1);

/* Byte i of the bytes read, at an index the verifier sees bounded. */
static __always_inline u8 byte_at(struct api_scratch *s, u32 i)
{
    asm volatile("%0 &= %1" : "+r"(i) : "i"(API_SCAN - 1));
    return s->buf[i];
}

/* Ends one path segment: checks its form, keeps its hash, and folds it
 * (or, for an id, the id marker) into the endpoint hash. */
static __always_inline void end_segment(volatile struct api_req *r, volatile struct parse_state *p, u8 c)
{
    u32 seglen = p->seglen;
    /* empty (`//`, a trailing `/`) or dots only is not normal form */
    if (seglen == 0 && (c == '/' || r->nsegs > 0))
        r->bad = 1;
    if (seglen && p->dots == seglen && seglen <= 2)
        r->bad = 1;
    if (seglen) {
        u32 k = r->nsegs;
        if (k < API_SEGS)
            r->segs[k & (API_SEGS - 1)] = p->seg;
        r->nsegs = k + 1;
        /* a number, or a long hex id, is any one of its kind */
        u32 digits = p->digits;
        int id = digits == seglen || (seglen >= ID_MIN_HEX && p->hexish == seglen && digits);
        r->endpoint = (r->endpoint ^ (id ? ID_SEGMENT : p->seg)) * FNV_PRIME;
    }
    p->seg = FNV_OFFSET;
    p->seglen = p->dots = p->digits = p->hexish = 0;
}

/* The target ends at i: the version follows, from p->n on. */
static __always_inline void to_version(volatile struct parse_state *p, u32 i)
{
    p->n = i + 1;
    p->state = P_VERSION;
}

/* Whether the version from start to the line's end at i is HTTP/1.0 or
 * HTTP/1.1: anything else behind the target (`GET /records/POST
 * /patients/export HTTP/1.1`) is not read, nor the request with it. */
static __always_inline int version_read(struct api_scratch *s, u32 start, u32 end)
{
    if (byte_at(s, end - 1) == '\r')
        end--;
    if (end - start != 8)
        return 0;
    u64 version = 0;
#pragma unroll
    for (u32 k = 0; k < 8; k++)
        version = (version << 8) | byte_at(s, start + k);
    return version == HTTP_1_0 || version == HTTP_1_1;
}

/* Parse the request line at the start of s->buf (len bytes read) into
 * s->req and the event's target; p->pos is where the headers start, 0 if
 * the line is not one Bastion reads. */
static __always_inline void parse_line(struct api_scratch *s, u32 len)
{
    volatile struct api_req *r = &s->req;
    volatile struct parse_state *p = &s->ps;
    __builtin_memset(&s->req, 0, sizeof(s->req));
    __builtin_memset(&s->ps, 0, sizeof(s->ps));
    /* The loops end at a NUL rather than at len, which would become a
     * precise bound the verifier tracks through every iteration; a NUL
     * cannot be part of a request line or header. */
    s->buf[len] = 0;
    p->state = P_METHOD;
    for (u32 i = 0; i < API_WINDOW; i++) {
        u8 c = s->buf[i];
        if (!c || p->state == P_END)
            break;
        u32 state = p->state;
        if (state == P_METHOD) {
            if (c == ' ') {
                r->method = method_of(p->word, p->n);
                r->endpoint = fnv(FNV_OFFSET, r->method);
                p->state = r->method ? P_TARGET : P_END;
            } else if (++p->n > 7) {
                p->state = P_END;
            } else {
                p->word = (p->word << 8) | c;
            }
        } else if (state == P_TARGET) {
            /* origin form only: an absolute URL or `*` (HTTP/2's preface) is not read */
            if (c != '/') {
                p->state = P_END;
            } else {
                p->state = P_SEGMENT;
                p->seg = FNV_OFFSET;
                s->ev.target[0] = c;
                p->tlen = 1;
            }
        } else if (state == P_VERSION) {
            if (c == '\n') {
                p->pos = version_read(s, p->n, i) ? i + 1 : 0;
                p->state = P_END;
            }
        } else {
            u32 t = p->tlen;
            if (t < API_TARGET_LEN - 1 && c != ' ') {
                s->ev.target[t & (API_TARGET_LEN - 1)] = c;
                p->tlen = t + 1;
            }
            if (state == P_SEGMENT && (c == '/' || c == '?' || c == ' ')) {
                end_segment(r, p, c);
                if (c == '?')
                    p->state = P_QUERY;
                else if (c == ' ')
                    to_version(p, i);
            } else if (state == P_SEGMENT) {
                /* encoded slashes, backslashes and encoded dots are not normal form;
                 * nor a control byte (URL parsers drop a tab or a newline, which
                 * can join two dots), nor a byte outside ASCII (one that must be
                 * percent-encoded: a server that folds Unicode reads a fullwidth
                 * dot as a dot), nor dots before a `;` (a server that takes path
                 * parameters off a segment reads `..;` as `..`), nor a `#`: a
                 * client sends no fragment, and a server that splits the target
                 * as a URL (uvicorn with httptools) ends the path there. Nor
                 * escapes that a lenient decoder turns into a dot or a slash:
                 * `%25` (a server that decodes twice reads `%252e` as `.`),
                 * `%u` (IIS and ASP.NET read `%u002e` as `.`) and `%c0`,
                 * `%c1` (overlong UTF-8: `%c0%ae` is a dot to an old decoder) */
                u8 p1 = p->prev1, p2 = p->prev2;
                if (c == '\\' || c == '#' || c < 0x20 || c >= 0x7f || (c == ';' && p->seglen && p->seglen <= 2 && p->dots == p->seglen)
                    || (p1 == '%' && lower(c) == 'u')
                    || (p2 == '%' && ((p1 == '2' && (lower(c) == 'f' || lower(c) == 'e' || c == '5'))
                                      || (p1 == '5' && lower(c) == 'c')
                                      || (lower(p1) == 'c' && (c == '0' || c == '1')))))
                    r->bad = 1;
                p->seg = fnv(p->seg, c);
                p->seglen++;
                if (c == '.')
                    p->dots++;
                if (c >= '0' && c <= '9')
                    p->digits++;
                if ((c >= '0' && c <= '9') || (lower(c) >= 'a' && lower(c) <= 'f') || c == '-')
                    p->hexish++;
            } else if (c == ' ') {
                to_version(p, i);
            }
        }
        p->prev2 = p->prev1;
        p->prev1 = c;
        /* nothing may stay in a register from one byte to the next */
        asm volatile("" ::: "memory");
    }
    asm volatile("" ::: "memory");
    if (!r->method || p->state != P_END)
        p->pos = 0;
    else
        p->state = P_LINE;  /* for parse_headers */
}

/* Parse a window of the headers from p->pos on: Host, Content-Length,
 * Transfer-Encoding, and where they end. Returns 1 where the next window
 * is to be read (the caller tail-calls itself: p->pos is where it starts);
 * at the end, marks the request unreadable where reading it failed. */
static __always_inline int parse_headers(struct api_scratch *s)
{
    volatile struct api_req *r = &s->req;
    volatile struct parse_state *p = &s->ps;
    u32 start = p->pos;
    for (u32 j = 0; j < API_WINDOW; j++) {
        u32 i = start + j;
        if (!start || i >= API_SCAN)
            break;
        asm volatile("%0 &= %1" : "+r"(i) : "i"(API_SCAN - 1));  /* a bound the verifier sees */
        u8 c = s->buf[i];
        if (!c)
            p->state = P_END;  /* the bytes read end here */
        if (p->state == P_END)
            break;
        /* a bare CR: a server may end the line there (Python's http.server
         * does), and read a header that Bastion took for part of a value.
         * The byte after it is in the buffer (NUL past the bytes read). */
        if (c == '\r' && s->buf[i + 1] != '\n')
            r->bad = 1;
        u32 state = p->state;
        if (state == P_SKIP) {
            if (c == '\n')
                p->state = P_LINE;
        } else if (state == P_LINE) {
            if (c == '\n') {
                r->head_len = i + 1;
                p->state = P_END;
            } else if (c == ' ' || c == '\t') {
                r->bad = 1;  /* a folded line: the server may join it to the header above */
                p->state = P_SKIP;
            } else if (c != '\r') {
                p->name = fnv(FNV_OFFSET, lower(c));
                p->state = P_NAME;
            }
        } else if (state == P_NAME) {
            if (c == ':') {
                u64 name = p->name;
                if (name == H_HOST) {
                    r->bad |= p->seen_host;  /* two Host headers: which one would the server use? */
                    p->seen_host = 1;
                    p->state = P_HOST;
                } else if (name == H_CONTENT_LENGTH) {
                    r->bad |= p->seen_length;
                    p->seen_length = 1;
                    p->digit = 0;
                    p->state = P_LENGTH;
                } else {
                    if (name == H_TRANSFER_ENCODING)
                        r->unreadable = 1;  /* a chunked body's end is not counted */
                    if (name == H_X_HTTP_METHOD_OVERRIDE || name == H_X_HTTP_METHOD || name == H_X_METHOD_OVERRIDE)
                        r->bad = 1;  /* the method a server would act on is not the one read */
                    p->state = P_SKIP;
                }
            } else if (c == '\n') {
                p->state = P_END;
            } else if (c == ' ' || c == '\t') {
                r->bad = 1;  /* space before the colon: a lenient server may still read the header */
                p->state = P_SKIP;
            } else {
                p->name = fnv(p->name, lower(c));
            }
        } else if (state == P_HOST) {
            u32 h = p->hlen;
            if (c == ' ' || c == '\t') {
                if (h)
                    p->state = P_SKIP;
            } else if (c == ':') {
                p->digit = 0;
                p->state = P_PORT;
            } else if (c == '\r') {
                p->state = P_SKIP;
            } else if (c == '\n') {
                p->state = P_LINE;
            } else {
                r->host = fnv(h ? r->host : FNV_OFFSET, lower(c));
                if (h < API_HOST_LEN - 1)
                    s->ev.host[h & (API_HOST_LEN - 1)] = lower(c);
                p->hlen = h + 1;
            }
        } else {  /* P_PORT, P_LENGTH, P_NUMBER_END */
            if (c >= '0' && c <= '9' && state != P_NUMBER_END) {
                if (state == P_PORT)
                    r->host_port = r->host_port * 10 + (c - '0');
                else if (r->body < 100000000)
                    r->body = r->body * 10 + (c - '0');
                p->digit = 1;
            } else if (c == '\n') {
                p->state = P_LINE;
            } else if (c == ' ' || c == '\r') {
                /* the number ends: a digit after a space (`1 000`) is one
                 * number to Bastion and another to a server that stops at
                 * the space */
                if (p->digit)
                    p->state = P_NUMBER_END;
            } else {
                r->bad = 1;
                p->state = P_SKIP;
            }
        }
        asm volatile("" ::: "memory");
    }
    asm volatile("" ::: "memory");
    if (start && p->state != P_END && start + API_WINDOW < API_SCAN) {
        p->pos = start + API_WINDOW;
        return 1;
    }
    if (!r->head_len || !r->method)
        r->unreadable = 1;
    else if (p->size - r->head_len > r->body)
        r->unreadable = 1;  /* a second request behind the first in one send */
    return 0;
}

/* Which rule of d allows the request: its index, or -reason. */
static __always_inline int match(struct api_dest *d, struct api_req *r)
{
    int reason = API_NO_RULE;
    if (r->bad)
        return -API_NOT_NORMAL;
    if (r->host != d->host)
        return -API_WRONG_HOST;
    /* GET, HEAD, DELETE and OPTIONS carry no body unless the rule asks
     * for one: a server may read none there and take it for the next
     * request, which the kernel read as body */
    int unasked = r->body && (r->method == API_GET || r->method == API_HEAD || r->method == API_DELETE
                              || r->method == API_OPTIONS);
    for (u32 i = 0; i < API_RULES; i++) {
        if (i >= d->nrules)
            break;
        struct api_rule *rule = &d->rules[i];
        if (!(rule->methods & (1 << r->method)))
            continue;
        if (rule->tail ? r->nsegs < rule->nsegs : r->nsegs != rule->nsegs)
            continue;
        int same = 1;
#pragma unroll
        for (u32 j = 0; j < API_SEGS; j++)
            if (j < rule->nsegs && rule->segs[j] != API_ANY_SEGMENT && rule->segs[j] != r->segs[j])
                same = 0;
        if (!same)
            continue;
        if (unasked && rule->max_body == API_NO_LIMIT) {
            reason = API_BODY_UNASKED;
            continue;
        }
        if (r->body > rule->max_body) {
            reason = API_TOO_BIG;
            continue;
        }
        return i;
    }
    return -reason;
}

/* How many bytes of a send to parse, in a form the verifier can bound. */
static __always_inline u32 scan_len(u32 size)
{
    u32 len = size;
    asm volatile("if %0 <= %1 goto +1\n%0 = %1" : "+r"(len) : "i"(API_SCAN));
    return len;
}

static __always_inline struct api_scratch *scratch_for(u64 cg)
{
    u32 zero = 0;
    struct api_scratch *s = api_scratch.lookup(&zero);
    if (!s)
        return NULL;
    __builtin_memset(&s->ev, 0, sizeof(s->ev));
    fill_hdr(&s->ev.h, EV_API, cg);
    return s;
}

/* Send the stop of bytes the kernel refused without a request to name:
 * where they went (dest, port; 0 when not known) and why; in the name of
 * the process that connected st, where the caller may be another (a
 * handshake ends in softirq, on whatever task the CPU was running). */
static __always_inline void stop_event(struct api_scratch *s, u64 cg, u32 dest, u8 tls, u8 reason, u16 port)
{
    s->ev.dest = dest;
    s->ev.tls = tls;
    s->ev.verdict = API_STOP;
    s->ev.reason = reason;
    s->ev.rule = 0xff;
    s->ev.port = port;
    emit(&s->ev, sizeof(s->ev), cg);
}

static __always_inline void emit_stop_by(u64 cg, u32 dest, u8 tls, u8 reason, u16 port, struct api_sock *st)
{
    struct api_scratch *s = scratch_for(cg);
    if (!s)
        return;
    if (st) {
        s->ev.h.pid = st->pid;
        s->ev.h.tid = st->tid;
        __builtin_memcpy(s->ev.h.comm, st->comm, TASK_COMM_LEN);
    }
    stop_event(s, cg, dest, tls, reason, port);
}

static __always_inline void emit_stop(u64 cg, u32 dest, u8 tls, u8 reason, u16 port)
{
    emit_stop_by(cg, dest, tls, reason, port, NULL);
}

#define ENDPOINT_UNSEEN 0
#define ENDPOINT_KNOWN 1
#define ENDPOINT_OVER 2        /* known, and called more often than its budget */

/* What the agent's profile knows of the request's endpoint, where it learned any. */
static __always_inline int learned_or_known(u64 cg, struct api_dest *d, struct api_req *r)
{
    struct api_dest_key dk = {.cgroup_id = cg, .id = d->id};
    if (!api_learned.lookup(&dk))
        return ENDPOINT_KNOWN;
    struct api_known_key kk = {.cgroup_id = cg, .endpoint = r->endpoint, .dest = d->id};
    u32 *budget = api_known.lookup(&kk);
    if (!budget)
        return ENDPOINT_UNSEEN;
    if (!*budget)
        return ENDPOINT_KNOWN;
    u32 zero = 0, *made = api_made.lookup_or_try_init(&kk, &zero);
    if (!made)
        return ENDPOINT_OVER;  /* cannot count: the guard decides */
    __sync_fetch_and_add(made, 1);  /* its result unused: BCC's LLVM targets BPF without fetch */
    return *made > *budget ? ENDPOINT_OVER : ENDPOINT_KNOWN;
}

/* Decide the request in s and send its event: API_ALLOW, API_STOP or API_HOLD. */
static __always_inline int judge(struct api_scratch *s, struct api_dest *d, u64 cg, u8 tls, u16 port,
                                 int quarantined)
{
    struct api_req *r = &s->req;
    struct ev_api *e = &s->ev;
    int m = r->unreadable ? -API_UNREADABLE : d ? match(d, r) : -API_WRONG_HOST;
    int verdict = m >= 0 ? API_ALLOW : API_STOP;
    if (verdict == API_ALLOW && quarantined) {
        verdict = API_STOP;
        m = -API_QUARANTINED;
    }
    int known = verdict == API_ALLOW ? learned_or_known(cg, d, r) : ENDPOINT_KNOWN;
    if (known == ENDPOINT_UNSEEN) {
        verdict = API_HOLD;
        m = -API_UNSEEN;
    }
    e->dest = d ? d->id : 0;
    e->endpoint = r->endpoint;
    e->body = r->body;
    e->port = port;
    e->method = r->method;
    e->tls = tls;
    e->verdict = verdict;
    e->reason = m < 0 ? -m : known == ENDPOINT_OVER ? API_OVER_BUDGET : API_OK;
    e->rule = m >= 0 ? m : 0xff;
    /* An allowed call's event can wait for the pump's next read of its
     * ring; waking it costs the caller an interrupt. A stopped or held one
     * cannot wait, nor one over its budget: it passes, and the guard judges
     * the run's count at once. */
    if (verdict == API_ALLOW && known != ENDPOINT_OVER)
        counted(calls.ringbuf_output(e, sizeof(*e), BPF_RB_NO_WAKEUP), cg);
    else
        emit_with(e, sizeof(*e), cg, BPF_RB_FORCE_WAKEUP);
    return verdict;
}

static __always_inline struct api_dest *dest_by_id(u64 cg, u32 id)
{
    struct api_dest_key k = {.cgroup_id = cg, .id = id};
    return api_dests.lookup(&k);
}

/* The id of the destination a Host header names on this port, 0 if none. */
static __always_inline u32 host_dest(u64 cg, u64 host, u16 port)
{
    struct api_host_key k = {.cgroup_id = cg, .host = host, .port = port};
    u32 *id = api_hosts.lookup(&k);
    return id ? *id : 0;
}

/* The peer's port: sk_msg_md and bpf_sock_ops keep it in network order in
 * the upper half. */
static __always_inline u16 port_of(u32 remote_port)
{
    return __builtin_bswap16((u16)(remote_port >> 16));
}

static __always_inline u16 peer_port(struct sk_msg_md *msg)
{
    return port_of(msg->remote_port);
}

/* The destinations the cgroup's rules give a peer (a bit per id, 0: none). */
static __always_inline u32 dests_of(u64 cg, u32 family, u32 ip4, u32 ip6_0, u32 ip6_1, u32 ip6_2, u32 ip6_3,
                                    u32 remote_port)
{
    struct api_peer_key k = {.cgroup_id = cg};
    if (family == 2) {
        k.addr[10] = 0xff;
        k.addr[11] = 0xff;
        __builtin_memcpy(&k.addr[12], &ip4, 4);
    } else {
        u32 ip[4] = {ip6_0, ip6_1, ip6_2, ip6_3};
        __builtin_memcpy(k.addr, ip, 16);
    }
    k.port = port_of(remote_port);
    u32 *dests = api_peers.lookup(&k);
    return dests ? *dests : 0;
}

/* sk_msg_md and bpf_sock_ops name the peer alike (BCC's rewriter cannot
 * take a macro over either). */
static __always_inline u32 msg_dests(struct sk_msg_md *msg, u64 cg)
{
    return dests_of(cg, msg->family, msg->remote_ip4, msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2],
                    msg->remote_ip6[3], msg->remote_port);
}

static __always_inline u32 sockops_dests(struct bpf_sock_ops *skops, u64 cg)
{
    return dests_of(cg, skops->family, skops->remote_ip4, skops->remote_ip6[0], skops->remote_ip6[1],
                    skops->remote_ip6[2], skops->remote_ip6[3], skops->remote_port);
}

/* Quarantine a sandbox that something the checks rest on could not follow. */
static __always_inline void quarantine_sandbox(u64 cg)
{
    struct watch_info *w = watched.lookup(&cg);
    u32 at = w ? w->slot : 0;
    struct slot_info *slot = w ? slots.lookup(&at) : NULL;
    if (slot)
        quarantine(slot, cg);
}

/* Quarantine the cgroup of a socket the checks could not take, and say why. */
static __always_inline void outside_the_checks(u64 cg, struct bpf_sock_ops *skops, struct api_sock *st)
{
    quarantine_sandbox(cg);
    emit_stop_by(cg, 0, 0, API_NOT_CHECKED, port_of(skops->remote_port), st);
}

/* A sandbox's socket to a peer with API rules joins the sockhash when its
 * handshake ends; one to any other keeps the IP:port meaning and stays out,
 * sparing its sends and reads the sockhash's slower path. What api_msg
 * learned of a socket belongs to one connection: a socket connected again
 * (after connect with AF_UNSPEC) is judged afresh, or it would carry a
 * destination without rules, or a body owed, to its new connection. A
 * socket that cannot join (the map is full: thousands of connections held
 * open) would send past every check, so its sandbox is quarantined before
 * the handshake's end wakes anyone to send. */
int api_sockops(struct bpf_sock_ops *skops)
{
    u32 op = skops->op;
    if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    struct bpf_sock *sk = skops->sk;
    struct api_sock *st = sk ? api_sock_state.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : NULL;
    u64 cg = 0;  /* 0: not known (no storage at connect), and then the socket joins */
    if (st && op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        __builtin_memset(st, 0, sizeof(*st));
        cg = st->cgroup_id = bpf_get_current_cgroup_id();
        u64 id = bpf_get_current_pid_tgid();
        st->pid = id >> 32;
        st->tid = (u32)id;
        bpf_get_current_comm(st->comm, sizeof(st->comm));
    } else if (st) {
        cg = st->cgroup_id;
        st->dests = st->body_left = st->mode = st->requested = st->named = 0;
    }
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && (!cg || sockops_dests(skops, cg))) {
        u64 cookie = bpf_get_socket_cookie(skops);
        long err = api_socks.sock_hash_update(skops, &cookie, BPF_ANY);
        if (err == -E2BIG_)  /* full; a socket connected again may still be held by its old link (EBUSY) */
            outside_the_checks(cg, skops, st);
    }
    return 1;
}

static __always_inline int reaches(struct api_sock *st, u32 dest)
{
    return dest && dest < 32 && (st->dests & (1u << dest));
}

/* The storage of the socket a send is on; flags: BPF_SK_STORAGE_GET_F_CREATE
 * at its first send (api_msg), 0 after. */
static __always_inline struct api_sock *msg_sock(struct sk_msg_md *msg, u64 flags)
{
    struct bpf_sock *sk = msg->sk;
    return sk ? api_sock_state.sk_storage_get(sk, 0, flags) : NULL;
}

/* Copy the send's first bytes (up to API_SCAN) into s->buf: how many, 0
 * where they cannot be read. */
static __always_inline u32 read_send(struct sk_msg_md *msg, struct api_scratch *s)
{
    u32 len = scan_len(msg->size);
    bpf_msg_pull_data(msg, 0, len, 0);
    void *data = msg->data, *end = msg->data_end;
    if (data + len > end || bpf_probe_read_kernel(s->buf, len, data))
        return 0;
    return len;
}

/* A send on a plain HTTP socket of an API destination: the body still
 * owed to the last allowed request, or a new request, whose line is parsed
 * here and whose headers in api_http_headers. */
int api_http(struct sk_msg_md *msg)
{
    struct api_sock *st = msg_sock(msg, 0);
    if (!st)
        return SK_DROP;
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    u32 size = msg->size;
    if (!w || (w->flags & WATCH_QUARANTINE))
        st->body_left = 0;  /* judged afresh: the request it belongs to is stopped */
    if (st->body_left >= size) {
        st->body_left -= size;
        return SK_PASS;
    }
    struct api_scratch *s = scratch_for(cg);
    if (!s)
        return SK_DROP;
    /* bytes owed to a body, then a new request in the same send: not read */
    u32 len = st->body_left ? 0 : read_send(msg, s);
    parse_line(s, len);
    s->ps.size = size;
    api_progs.call(msg, PROG_HTTP_HEADERS);
    return SK_DROP;  /* the tail call failed: nothing unjudged leaves */
}

int api_http_headers(struct sk_msg_md *msg)
{
    u32 zero = 0;
    struct api_scratch *s = api_scratch.lookup(&zero);
    if (!s)
        return SK_DROP;
    if (parse_headers(s)) {
        api_progs.call(msg, PROG_HTTP_HEADERS);  /* the next window */
        return SK_DROP;
    }
    struct api_sock *st = msg_sock(msg, 0);
    if (!st)
        return SK_DROP;
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    struct api_req *r = &s->req;
    /* the destination the Host header names, if the socket's peer is one of its */
    u16 port = peer_port(msg);
    u32 dest = host_dest(cg, r->host, port);
    struct api_dest *d = reaches(st, dest) ? dest_by_id(cg, dest) : NULL;
    /* a held plain request is dropped: the guard's verdict decides the next one */
    if (judge(s, d, cg, 0, port, !w || (w->flags & WATCH_QUARANTINE)) != API_ALLOW)
        return SK_DROP;
    st->body_left = r->body - (s->ps.size - r->head_len);
    return SK_PASS;
}

/* The sandboxes whose programs gave their TLS library a function of their
 * own to call from inside its calls (any callback whose setter
 * ebpf/tls_libraries.py names). What such a callback sends is sent inside the
 * library's call, where it would be taken for the library's own records or
 * a judged request's, so none of their TLS records leave on an API socket. */
BPF_HASH(tls_callbacks, u64, u8, WATCH_SLOTS);

/* Whether a write for dest goes on a connection that named another server. */
static __always_inline int named_otherwise(struct api_sock *st, u32 dest)
{
    return st->named && dest != st->named;
}

/* Whether a thread inside a watched TLS call may send on this API socket.
 * The library's own records (handshake, alerts) may go anywhere; a write's
 * only to its destination, and, on a connection that named its server
 * (SNI), only to that one; a body's only to a connection that carried
 * a request: the library object that owes it may have been set up again
 * for a new connection since (SSL_clear), whose first write is a request. */
static __always_inline int tls_may_send(struct tls_call *call, struct api_sock *st)
{
    if (!call->writing)
        return 1;
    if (!reaches(st, call->dest) || named_otherwise(st, call->dest))
        return 0;
    if (call->body)
        return st->requested;
    st->requested = 1;
    return 1;
}

/* Keep the head (len bytes of s->buf) judged for the thread's write, to
 * compare with its buffer later (maps.bpf.h tls_heads). 0 where it cannot. */
static __always_inline int keep_head(struct api_scratch *s, u32 tid, u32 len)
{
    u32 zero = 0;
    struct tls_head *blank = tls_head_blank.lookup(&zero);
    struct tls_head *h = blank ? tls_heads.lookup_or_try_init(&tid, blank) : NULL;
    if (!h || len > API_SCAN)
        return 0;
    h->len = len;
    return !bpf_probe_read_kernel(h->bytes, len, s->buf);
}

/* Why the buffer of the thread's write no longer holds the head judged
 * for it, compared a word at a time; 0 where it does. */
static __always_inline u8 head_changed(u32 tid, struct tls_call *call)
{
    u32 zero = 0;
    struct tls_head *h = tls_heads.lookup(&tid);
    struct api_scratch *s = api_scratch.lookup(&zero);
    if (!h || !s)
        return API_HEAD_NOT_KEPT;  /* pushed out by 2,048 later writes */
    u32 len = h->len;
    if (len > API_SCAN || bpf_probe_read_user(s->buf, len, (const void *)call->buf))
        return API_REWRITTEN;  /* unmapped since */
    for (u32 i = 0; i < API_SCAN / 8; i++) {
        u32 at = i * 8;
        if (at >= len)
            break;
        u32 k = i & (API_SCAN / 8 - 1);
        u64 diff = ((u64 *)s->buf)[k] ^ ((u64 *)h->bytes)[k];
        if (len - at < 8)
            diff &= (1ULL << ((len - at) * 8)) - 1;  /* the bytes past the head are neither's */
        if (diff)
            return API_REWRITTEN;
    }
    return 0;
}

/* A send on a TLS socket of an API destination: it passes only inside a
 * watched library call that may send there, and, in a request's write,
 * while its buffer still holds the head that was judged: the library
 * copied it after the probe read it, so bytes rewritten in between (by
 * another thread, or a process sharing the page) would go out judged for
 * others. A rewrite and a restore around the library's copy is still a
 * race, whose lost tries are stopped. */
static __always_inline int tls_send(struct sk_msg_md *msg, struct api_sock *st, struct watch_info *w, u64 cg)
{
    /* an API socket of a sandbox no longer watched, or quarantined, sends nothing */
    int quarantined = !w || (w->flags & WATCH_QUARANTINE);
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tls_call *call = tls_calls.lookup(&tid);
    u8 reason = quarantined ? API_QUARANTINED
                : call && call->writing && call->body ? API_BODY_ELSEWHERE
                : call && call->writing && named_otherwise(st, call->dest) ? API_NOT_NAMED
                : API_NO_REQUEST;
    if (!quarantined && call && call->depth && !call->held && tls_may_send(call, st)) {
        u8 changed;
        if (tls_callbacks.lookup(&cg)) {
            reason = API_CALLED_BACK;
        } else if (call->writing && call->head && (changed = head_changed(tid, call))) {
            reason = changed;
            call->head = 0;  /* stopped here: the write's failure is not stopped again */
        } else {
            return SK_PASS;
        }
    }
    emit_stop(cg, call ? call->dest : 0, 1, reason, peer_port(msg));
    return SK_DROP;
}

/* Big-endian 16 bits at i of the bytes read (i < API_SCAN). */
static __always_inline u32 be16_at(struct api_scratch *s, u32 i)
{
    return ((u32)byte_at(s, i) << 8) | byte_at(s, i + 1);
}

/* Read the ClientHello in the first len bytes of s->buf up to its
 * extensions, and walk them into s->hs. Returns 0 where it cannot be read:
 * not a ClientHello, or its extensions do not end where it says. */
static __always_inline int read_hello(struct api_scratch *s, u32 len)
{
    volatile struct hello_state *h = &s->hs;
    __builtin_memset(&s->hs, 0, sizeof(s->hs));
    /* record header (5), handshake header (4), version (2), random (32) */
    if (len < 44 || s->buf[0] != TLS_HANDSHAKE || s->buf[5] != TLS_CLIENT_HELLO)
        return 0;
    u32 off = 44 + s->buf[43];       /* the session id */
    if (off + 2 > len)
        return 0;
    off += 2 + be16_at(s, off);      /* the cipher suites */
    if (off + 1 > len)
        return 0;
    off += 1 + byte_at(s, off);      /* the compression methods */
    if (off + 2 > len)
        return 0;
    h->end = off + 2 + be16_at(s, off);
    h->off = off + 2;
    if (h->end > len)
        return 0;
    for (u32 i = 0; i < HELLO_EXTS; i++) {
        u32 o = h->off;
        if (o + 4 > h->end)
            break;
        u32 type = be16_at(s, o), n = be16_at(s, o + 2);
        if (type == EXT_SERVER_NAME) {
            h->names++;
            h->name_at = o + 4;
            h->name_len = n;
        } else if (type == EXT_ECH || type == EXT_ESNI) {
            h->hidden = 1;
        }
        h->off = o + 4 + n;
        asm volatile("" ::: "memory");
    }
    return h->off == h->end;
}

/* The hash of the ClientHello's one host name (FNV-1a, lowercased, as a
 * Host header's), copied into the event; 0 where the extension is not one
 * host name. */
static __always_inline u64 hello_name(struct api_scratch *s)
{
    u32 at = s->hs.name_at, n = s->hs.name_len;
    /* list length (2), name type (1: 0 for a host name), name length (2) */
    if (n < 6 || be16_at(s, at) != n - 2 || byte_at(s, at + 2) != 0 || be16_at(s, at + 3) != n - 5)
        return 0;
    u64 hash = FNV_OFFSET;
    for (u32 i = 0; i < 255; i++) {
        if (i >= n - 5)
            break;
        u8 c = lower(byte_at(s, at + 5 + i));
        hash = fnv(hash, c);
        if (i < API_HOST_LEN - 1)
            s->ev.host[i & (API_HOST_LEN - 1)] = c;
    }
    return n - 5 <= 255 ? hash : 0;
}

/* The first send on a TLS socket of an API destination: the ClientHello.
 * A gateway may route the connection by its server name (SNI), whatever
 * the Host headers inside say: so the name must be one of the API
 * destinations at the socket's peer, and the connection's requests must
 * then name it too; a ClientHello with no name (an address) leaves the
 * Host headers to say. One that cannot be read, or whose name is
 * encrypted (ECH), is stopped. */
int api_hello(struct sk_msg_md *msg)
{
    struct api_sock *st = msg_sock(msg, 0);
    if (!st)
        return SK_DROP;
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    struct api_scratch *s = scratch_for(cg);
    if (!s)
        return SK_DROP;
    u32 len = read_send(msg, s);
    u16 port = peer_port(msg);
    u8 reason = 0;
    if (!read_hello(s, len) || s->hs.hidden || s->hs.names > 1) {
        reason = API_NO_HELLO;
    } else if (s->hs.names) {
        u64 name = hello_name(s);
        u32 dest = name ? host_dest(cg, name, port) : 0;
        if (reaches(st, dest))
            st->named = dest;
        else
            reason = name ? API_WRONG_NAME : API_NO_HELLO;
    }
    if (!reason)
        return tls_send(msg, st, w, cg);
    stop_event(s, cg, 0, 1, reason, port);
    return SK_DROP;
}

int api_msg(struct sk_msg_md *msg)
{
    struct api_sock *st = msg_sock(msg, BPF_SK_STORAGE_GET_F_CREATE);
    if (!st)
        return SK_DROP;
    if (st->mode == SOCK_FREE)
        return SK_PASS;
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    if (st->mode == SOCK_UNKNOWN) {
        st->dests = w ? msg_dests(msg, cg) : 0;
        if (!st->dests) {
            st->mode = SOCK_FREE;
            return SK_PASS;
        }
        u8 first = 0;
        bpf_msg_pull_data(msg, 0, 1, 0);
        if (msg->data + 1 <= msg->data_end)
            first = *(u8 *)msg->data;
        st->mode = first == TLS_HANDSHAKE ? SOCK_TLS : SOCK_HTTP;
        if (st->mode == SOCK_TLS) {
            api_progs.call(msg, PROG_HELLO);
            return SK_DROP;
        }
    }
    if (st->mode == SOCK_HTTP) {
        api_progs.call(msg, PROG_HTTP);
        return SK_DROP;  /* the tail call failed: nothing unjudged leaves */
    }
    return tls_send(msg, st, w, cg);
}

static __always_inline void stop_caller(void)
{
    bpf_send_signal(SIGKILL_);
}

/* The calling thread's entry, made at its first watched call; NULL only
 * where the map is full of calls in progress, and then nothing it sends
 * on an API socket passes. */
static __always_inline struct tls_call *thread_call(u32 tid)
{
    struct tls_call none = {};
    return tls_calls.lookup_or_try_init(&tid, &none);
}

/* TLS library functions that write no request but may send records of the
 * library's own (ebpf/tls_libraries.py): the handshake, alerts. */
int tls_enter(struct pt_regs *ctx)
{
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    struct tls_call *call = thread_call((u32)bpf_get_current_pid_tgid());
    if (call)
        call->depth++;
    return 0;
}

/* FNV-1a of the first n bytes of a write, read into s->buf; 0 where they
 * could not be read (no write's bytes hash to it in practice). */
static __always_inline u64 hash_write(struct api_scratch *s, u64 buf, u32 n)
{
    if (n && bpf_probe_read_user(s->buf, n, (const void *)buf))
        return 0;
    u64 h = FNV_OFFSET;
    for (u32 i = 0; i < API_SCAN; i++) {
        if (i >= n)
            break;
        h = fnv(h, byte_at(s, i));
    }
    return h;
}

/* The slot of obj in r, or RETRY_SLOTS where it has none. */
static __always_inline u32 retry_slot(struct tls_retries *r, u64 obj)
{
#pragma unroll
    for (u32 i = 0; i < RETRY_SLOTS; i++)
        if (r->obj[i] == obj)
            return i;
    return RETRY_SLOTS;
}

/* A write that failed (the socket full, say) may leave its records in the
 * library, which sends them at the start of the next write on the object,
 * whatever that one's bytes: its own judgement must hold for them too. */
static __always_inline void write_failed(struct tls_call *call)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32, zero = 0;
    struct api_scratch *s = api_scratch.lookup(&zero);
    /* hashed first: the verifier then walks its loop once, not once per slot */
    u64 hash = s ? hash_write(s, call->buf, scan_len(call->size)) : 0;
    struct tls_retries none = {};
    struct tls_retries *r = tls_retries.lookup_or_try_init(&pid, &none);
    u32 i = r ? retry_slot(r, call->obj) : RETRY_SLOTS;
    if (r && i >= RETRY_SLOTS)
        i = retry_slot(r, 0);
    u64 cg;
    if (!r || !s || i >= RETRY_SLOTS) {
        if (watched_cgroup(&cg))
            emit_stop(cg, 0, 1, API_NOT_KEPT, 0);
        stop_caller();  /* not kept: the next write could send its records unjudged */
        return;
    }
    i &= RETRY_SLOTS - 1;
    r->obj[i] = call->obj;
    r->hash[i] = hash;
    r->size[i] = call->size;
    r->body[i] = call->body;
}

/* The thread leaves a probed function. */
static __always_inline void leave(struct tls_call *call)
{
    if (call->depth == 1) {
        __builtin_memset(call, 0, sizeof(*call));
        return;
    }
    if (call->writing == call->depth)
        call->writing = call->head = 0;
    call->depth--;
}

int tls_leave(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tls_call *call = tls_calls.lookup(&tid);
    if (!call || !call->depth)
        return 0;
    /* every probed write returns a count or 1 when done, and 0 or less when
     * not; one of nothing leaves nothing (what waits is an earlier write's) */
    if (call->writing == call->depth && (int)PT_REGS_RC(ctx) <= 0 && call->size) {
        tls_progs.call(ctx, PROG_TLS_FAILED);
        stop_caller();  /* the tail call failed: the next write could send its records unjudged */
        return 0;
    }
    leave(call);
    return 0;
}

int tls_failed(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct tls_call *call = tls_calls.lookup(&tid);
    if (!call || !call->depth)
        return 0;
    u8 changed = call->head ? head_changed(tid, call) : 0;
    if (changed) {
        /* the records it left may be made from other bytes than those judged */
        u64 cg;
        if (watched_cgroup(&cg))
            emit_stop(cg, call->dest, 1, changed, 0);
        stop_caller();
    } else {
        write_failed(call);
    }
    leave(call);
    return 0;
}

/* The thread enters a write whose records may go to dest (0: only to a
 * socket without API rules): a request, or the body of one. */
static __always_inline void enter_write(struct pt_regs *ctx, u32 tid, u32 dest, u16 held, u16 body, u32 size,
                                        u32 head)
{
    struct tls_call *call = thread_call(tid);
    if (!call)
        return;
    u32 depth = call->depth + 1;
    call->depth = depth;
    call->writing = depth;
    call->dest = dest;
    call->held = held;
    call->body = body;
    call->head = head;
    call->obj = PT_REGS_PARM1(ctx);
    call->buf = PT_REGS_PARM2(ctx);
    call->size = size;
}

/* A forked child has its parent's TLS library objects as they were at the
 * fork, and with them the records a failed write left in them. Where the
 * copy cannot be made, the sandbox is quarantined: the child would go
 * unchecked. */
TRACEPOINT_PROBE(task, task_newtask)
{
    u64 cg;
    if (!watched_cgroup(&cg) || (args->clone_flags & CLONE_THREAD_))
        return 0;
    u32 parent = bpf_get_current_pid_tgid() >> 32, child = args->pid;
    struct tls_retries *r = tls_retries.lookup(&parent);
    if (r && tls_retries.update(&child, r)) {
        quarantine_sandbox(cg);
        emit_stop(cg, 0, 1, API_NOT_KEPT, 0);
    }
    return 0;
}

/* An exec replaces the memory, and the objects in it. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    tls_retries.delete(&pid);
    return 0;
}

/* SSL_free, SSL_clear, gnutls_deinit: the object's connection is over,
 * and with it what the library kept for it; the address may be a new
 * object's next. Where the process took a reference to an object
 * (SSL_up_ref), an SSL_free may free nothing: its failed writes stay. */
int tls_forget(struct pt_regs *ctx)
{
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    struct tls_conn_key ck = {.obj = PT_REGS_PARM1(ctx), .pid = bpf_get_current_pid_tgid() >> 32};
    tls_bodies.delete(&ck);
    struct tls_retries *r = tls_retries.lookup(&ck.pid);
    u32 i = r ? retry_slot(r, ck.obj) : RETRY_SLOTS;
    if (r && !r->refs && i < RETRY_SLOTS)
        r->obj[i & (RETRY_SLOTS - 1)] = 0;
    return 0;
}

/* SSL_up_ref */
int tls_ref(struct pt_regs *ctx)
{
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct tls_retries none = {};
    struct tls_retries *r = tls_retries.lookup_or_try_init(&pid, &none);
    if (r) {
        r->refs = 1;
        return 0;
    }
    emit_stop(cg, 0, 1, API_NOT_KEPT, 0);
    stop_caller();  /* not kept: an SSL_free that frees nothing would end a failed write's check */
    return 0;
}

/* A callback given to the library, in its setter's second or third argument. */
static __always_inline void callback_given(u64 fn)
{
    u64 cg;
    if (!fn || !watched_cgroup(&cg))
        return;
    u8 one = 1;
    if (tls_callbacks.update(&cg, &one))
        stop_caller();  /* not kept: the callback would be trusted */
}

int tls_callback2(struct pt_regs *ctx)
{
    callback_given(PT_REGS_PARM2(ctx));
    return 0;
}

int tls_callback3(struct pt_regs *ctx)
{
    callback_given(PT_REGS_PARM3(ctx));
    return 0;
}

/* The size_t size of a write: past 4 GiB, its low half alone would pass
 * for a whole request and the rest leave unread; saturated, the write
 * cannot be read. */
static __always_inline u32 write_size(struct pt_regs *ctx)
{
    u64 whole = PT_REGS_PARM3(ctx);
    return whole > 0xffffffff ? 0xffffffff : (u32)whole;
}

/* A write on an object whose last write failed. The library sends the
 * failed one's records first, whatever the new write holds: OpenSSL lets
 * that be another buffer (Python's ssl asks it to) and goes on with its
 * bytes past the failed one's length, GnuTLS drops them. So the new write
 * must be the failed one again, its size and its first API_SCAN bytes, and
 * is judged again. Anything else is stopped: the records waiting were
 * judged for other bytes, or (a Host without rules) for no API at all. */
int tls_retry(struct pt_regs *ctx)
{
    u64 cg;
    u32 zero = 0, pid = bpf_get_current_pid_tgid() >> 32;
    u64 obj = PT_REGS_PARM1(ctx);
    u32 size = write_size(ctx);
    struct api_scratch *s = api_scratch.lookup(&zero);
    u64 hash = s ? hash_write(s, PT_REGS_PARM2(ctx), scan_len(size)) : 0;
    struct tls_retries *r = tls_retries.lookup(&pid);
    u32 i = r ? retry_slot(r, obj) : RETRY_SLOTS;
    if (!r || i >= RETRY_SLOTS || !watched_cgroup(&cg)) {
        stop_caller();
        return 0;
    }
    i &= RETRY_SLOTS - 1;
    u32 failed = r->size[i];
    if (size != failed || !hash || hash != r->hash[i]) {
        emit_stop(cg, 0, 1, API_NOT_A_RETRY, 0);
        stop_caller();
        return 0;
    }
    /* undo the failed write's count: this one is judged in its place */
    struct tls_conn_key ck = {.obj = obj, .pid = pid};
    struct tls_body *owed = tls_bodies.lookup(&ck);
    if (owed)
        owed->left = r->body[i] ? owed->left + failed : 0;
    r->obj[i] = 0;
    tls_progs.call(ctx, PROG_TLS_WRITE);
    stop_caller();
    return 0;
}

/* SSL_write(ssl, buf, num), SSL_write_ex(ssl, buf, num, written),
 * gnutls_record_send(session, data, size): the request in clear. Its line is
 * parsed here, its headers in tls_headers. */
int tls_write(struct pt_regs *ctx)
{
    u64 cg;
    struct watch_info *w = watched_cgroup(&cg);
    /* a quarantined sandbox's records are dropped by api_msg, with an event */
    if (!w || (w->flags & WATCH_QUARANTINE))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct tls_conn_key ck = {.obj = PT_REGS_PARM1(ctx), .pid = id >> 32};
    u32 size = write_size(ctx);
    struct tls_retries *retries = tls_retries.lookup(&ck.pid);
    if (retries && retry_slot(retries, ck.obj) < RETRY_SLOTS) {
        tls_progs.call(ctx, PROG_TLS_RETRY);
        stop_caller();
        return 0;
    }
    struct tls_body *owed = tls_bodies.lookup(&ck);
    if (owed && owed->left >= size) {
        /* the body of an allowed request */
        owed->left -= size;
        enter_write(ctx, tid, owed->dest, 0, 1, size, 0);
        return 0;
    }
    struct api_scratch *s = scratch_for(cg);
    if (!s) {
        stop_caller();
        return 0;
    }
    u32 len = scan_len(size);
    if (owed && owed->left)
        len = 0;  /* part body, part something else */
    if (len && bpf_probe_read_user(s->buf, len, (const void *)PT_REGS_PARM2(ctx)))
        len = 0;
    parse_line(s, len);
    s->ps.size = size;
    tls_progs.call(ctx, PROG_TLS_HEADERS);
    stop_caller();  /* the tail call failed: nothing unjudged goes out */
    return 0;
}

int tls_headers(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct api_scratch *s = api_scratch.lookup(&zero);
    if (!s) {
        stop_caller();
        return 0;
    }
    if (parse_headers(s)) {
        tls_progs.call(ctx, PROG_TLS_HEADERS);  /* the next window */
        stop_caller();
        return 0;
    }
    u64 cg;
    if (!watched_cgroup(&cg)) {
        stop_caller();
        return 0;
    }
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct tls_conn_key ck = {.obj = PT_REGS_PARM1(ctx), .pid = id >> 32};
    struct api_req *r = &s->req;
    u16 port = r->host_port ? r->host_port : 443;
    u32 named = host_dest(cg, r->host, port);
    struct api_dest *d = named ? dest_by_id(cg, named) : NULL;
    u32 dest = 0, held = 0;
    /* A request to a host without API rules, or one whose Host header
     * cannot be read, goes on with no destination: the SK_MSG program lets
     * its records out only on sockets without API rules. One to an API host
     * that cannot be read otherwise is judged, and stopped, here. */
    if (d) {
        int verdict = judge(s, d, cg, 1, port, 0);
        if (verdict == API_STOP) {
            stop_caller();
            return 0;
        }
        if (!keep_head(s, tid, r->head_len)) {
            emit_stop(cg, d->id, 1, API_HEAD_NOT_KEPT, port);
            stop_caller();
            return 0;
        }
        if (verdict == API_HOLD) {
            /* stopped before the library runs; the guard releases or kills it */
            held = 1;
            bpf_send_signal(SIGSTOP_);
        }
        struct tls_body left = {.left = r->body - (s->ps.size - r->head_len), .dest = d->id};
        struct tls_body *owed = tls_bodies.lookup(&ck);
        if (owed)
            *owed = left;  /* in place: an LRU insert costs more than the lookup */
        else
            tls_bodies.update(&ck, &left);
        dest = d->id;
    }
    enter_write(ctx, tid, dest, held, 0, s->ps.size, dest != 0);
    return 0;
}

/* A blocking send on a socket still connecting sleeps in the kernel until the
 * handshake is done, then goes on in the TCP code it began in: the socket
 * joins `api_socks` (and SK_MSG) at that moment, too late for a send already
 * under way, whose bytes would leave unjudged. No program type open here can
 * refuse it (BPF-LSM and fentry are refused on this kernel), so in a sandbox
 * with API rules a thread that goes to sleep inside a send, in
 * sk_stream_wait_connect, is killed: the signal ends the wait with an error
 * before anything is queued. What sleeps there is told by the kernel's own
 * stack (a helper's result); where that function lies, user space reads from
 * /proc/kallsyms. A client that waits for the connection before it sends
 * (blocking connect, or poll for writability: http.client, curl, asyncio)
 * never sleeps there. */
#define WAIT_FRAMES 16
struct wait_stack {
    u64 ip[WAIT_FRAMES];
};
BPF_PERCPU_ARRAY(wait_stacks, struct wait_stack, 1);
BPF_ARRAY(connect_wait, u64, 2);  /* sk_stream_wait_connect's start and end */

/* Syscalls that sleep without sending: reads, polls, futexes, sleeps,
 * waits, accepts and connect's own wait. The stack of any other is read
 * (a thread with no window yet included), so a send by a syscall not
 * named here (io_submit, pwritev2 with offset -1) is still seen. */
static __always_inline int sleeps_without_sending(u32 nr)
{
    switch (nr) {
    case __NR_read: case __NR_readv: case __NR_recvfrom: case __NR_recvmsg: case __NR_recvmmsg:
    case __NR_poll: case __NR_ppoll: case __NR_select: case __NR_pselect6:
    case __NR_epoll_wait: case __NR_epoll_pwait: case __NR_epoll_pwait2:
    case __NR_futex: case __NR_futex_waitv: case __NR_nanosleep: case __NR_clock_nanosleep:
    case __NR_wait4: case __NR_waitid: case __NR_pause: case __NR_rt_sigsuspend: case __NR_rt_sigtimedwait:
    case __NR_accept: case __NR_accept4: case __NR_connect:
        return 1;
    }
    return 0;
}

static __always_inline int waits_for_connect(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0, one = 1;
    u64 *start = connect_wait.lookup(&zero), *end = connect_wait.lookup(&one);
    struct wait_stack *st = wait_stacks.lookup(&zero);
    if (!start || !end || !st)
        return 0;
    long n = bpf_get_stack(ctx, st->ip, sizeof(st->ip), 0);
    for (u32 i = 0; i < WAIT_FRAMES; i++) {
        if ((long)(i * sizeof(u64)) >= n)
            break;
        if (st->ip[i] >= *start && st->ip[i] < *end)
            return 1;
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_switch)
{
    /* preempted, or still runnable (a client's write woke its server, which
     * runs first): not asleep. args: preempt, prev, next, prev_state. */
    if (ctx->args[0] || !ctx->args[3])
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32, tid = (u32)id;
    u16 *hint = watched_pids.lookup(&pid);
    if (!hint || !*hint)
        return 0;
    /* the syscall the thread is in: its newest, counted at sys_enter */
    struct seq_state *seq = windows.lookup(&tid);
    if (seq && sleeps_without_sending(seq->win[NGRAM_N - 1]))
        return 0;
    u64 cg;
    /* destination ids count from 1: a cgroup with API rules has the first */
    if (!watched_cgroup(&cg) || !dest_by_id(cg, 1) || !waits_for_connect(ctx))
        return 0;
    bpf_send_signal(SIGKILL_);
    emit_stop(cg, 0, 0, API_BEFORE_CHECKS, 0);
    return 0;
}
