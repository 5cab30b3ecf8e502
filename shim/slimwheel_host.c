/*
 * slimwheel host-code recorder: which pages of each library's executable
 * mappings a process ran. One source, two libraries:
 *
 *  - built with -DSLIMWHEEL_AUDIT, an rtld-audit module (LD_AUDIT). The
 *    loader calls la_objopen() for every object right after mapping it and
 *    before its relocations (IFUNC resolvers) and constructors run. The
 *    module drops the file's unmapped page-cache pages
 *    (POSIX_FADV_DONTNEED), marks its mappings MADV_RANDOM and registers its
 *    executable mappings with a userfaultfd in asynchronous write-protect
 *    mode, which does nothing but turn the kernel's fault-around off for
 *    them, so a fault maps only the page it needs. (Linux 6.16 and later
 *    read ahead on faults in executable mappings whatever the advice, and
 *    fault-around would map the pages read ahead; userfaultfd WP_ASYNC needs
 *    Linux 6.7. Without it, a snapshot says "exact": false: the record then
 *    holds up to a fault-around window, 64 KiB by default, around each page
 *    that ran.) la_objclose(), called at exit after the
 *    finalizers ran, writes a snapshot.
 *  - built without it, a preloaded library (LD_PRELOAD). A thread (all
 *    signals blocked, only system calls, no locks shared with the program)
 *    writes a snapshot every SLIMWHEEL_HOST_FLUSH_MS milliseconds (default
 *    1000; 0: never), so workers killed with SIGKILL keep what they ran up
 *    to the last snapshot; _exit() (os._exit, multiprocessing workers),
 *    execve() and the library's destructor write one too. A forked child
 *    starts its own table and thread, and registers its executable mappings
 *    again (a child's mappings leave the parent's userfaultfd).
 *
 * A snapshot reads /proc/self/maps and, for every file-backed executable
 * mapping, the present bits of /proc/self/pagemap; the pages seen are kept
 * (a page the kernel evicts later stays recorded) per file (device, inode).
 * It is written to $SLIMWHEEL_PROFILE_DIR/<pid>-<tag>.hostpages, through a
 * temporary file and a rename, as JSON lines:
 *   {"t":"host-mode","exact":true}
 *   {"t":"host","path":P,"dev":"fd:01","ino":N,"page":4096,"runs":[[first,count],...]}
 * where pages are numbered by file offset / page size.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#ifdef SLIMWHEEL_AUDIT
#include <link.h>
#else
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#endif

#ifndef UFFD_FEATURE_WP_ASYNC /* older kernel headers */
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

#define MAX_FILES 8192
#define ARENA_BYTES (1 << 20)
#define MAX_PAGES (1UL << 28) /* 1 TiB of 4 KiB pages per file: a cap on input */

struct file_rec {
    unsigned int major, minor;
    unsigned long ino;
    unsigned int path_off;
    uint8_t *bits;     /* one bit per file page, mmap'd */
    size_t bits_bytes; /* mapped size */
};

static struct file_rec files[MAX_FILES];
static unsigned int nfiles;
static char arena[ARENA_BYTES];
static unsigned int arena_used;
static long page_size;
static char tag[64];

/* ---- no fault-around: userfaultfd, asynchronous write-protect ------------ */

static int uffd = -1;
static pid_t uffd_pid; /* a userfaultfd belongs to the process that made it */
static int exact = 1;  /* every executable mapping seen was registered */

static int uffd_ready(void) {
    pid_t me = getpid();
    if (uffd >= 0 && uffd_pid == me) return 1;
    if (uffd >= 0) close(uffd); /* inherited across fork: the parent's */
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    uffd_pid = me;
    if (uffd < 0) {
        exact = 0;
        return 0;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
    if (ioctl(uffd, UFFDIO_API, &api) != 0) {
        close(uffd);
        uffd = -1;
        exact = 0;
        return 0;
    }
    return 1;
}

static void no_fault_around(unsigned long start, unsigned long end) {
    if (!uffd_ready()) return;
    struct uffdio_register reg = {.range = {start, end - start}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) exact = 0;
}

/* ---- small helpers using system calls only ------------------------------ */

static size_t u64_to_dec(char *dst, unsigned long long v) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) dst[i] = tmp[n - 1 - i];
    return n;
}

static unsigned long long parse_hex(const char **p) {
    unsigned long long v = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9') v = v * 16 + (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (unsigned)(c - 'a' + 10);
        else break;
    }
    return v;
}

static unsigned long long parse_dec(const char **p) {
    unsigned long long v = 0;
    while (**p >= '0' && **p <= '9') v = v * 10 + (unsigned)(*(*p)++ - '0');
    return v;
}

/* A buffered writer over a file descriptor. */
struct out {
    int fd;
    int failed;
    size_t used;
    char buf[1 << 16];
};
static struct out ob;

static void out_flush(struct out *o) {
    size_t done = 0;
    while (done < o->used && !o->failed) {
        ssize_t n = write(o->fd, o->buf + done, o->used - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) o->failed = 1;
        else done += (size_t)n;
    }
    o->used = 0;
}

static void out_bytes(struct out *o, const char *s, size_t n) {
    while (n) {
        if (o->used == sizeof o->buf) out_flush(o);
        size_t k = sizeof o->buf - o->used;
        if (k > n) k = n;
        memcpy(o->buf + o->used, s, k);
        o->used += k;
        s += k;
        n -= k;
    }
}

static void out_str(struct out *o, const char *s) { out_bytes(o, s, strlen(s)); }

static void out_num(struct out *o, unsigned long long v) {
    char d[24];
    out_bytes(o, d, u64_to_dec(d, v));
}

static void out_json_string(struct out *o, const char *s) {
    static const char hex[] = "0123456789abcdef";
    out_bytes(o, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            out_bytes(o, e, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            /* bytes, not characters: the reader takes \u00XX as byte XX */
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            out_bytes(o, e, 6);
        } else {
            out_bytes(o, (const char *)&c, 1);
        }
    }
    out_bytes(o, "\"", 1);
}

/* ---- the table of files and their pages -------------------------------- */

static struct file_rec *file_for(unsigned int major, unsigned int minor, unsigned long ino,
                                 const char *path) {
    for (unsigned int i = 0; i < nfiles; i++)
        if (files[i].ino == ino && files[i].major == major && files[i].minor == minor)
            return &files[i];
    size_t len = strlen(path) + 1;
    if (nfiles == MAX_FILES || arena_used + len > ARENA_BYTES) return NULL;
    struct file_rec *f = &files[nfiles++];
    f->major = major;
    f->minor = minor;
    f->ino = ino;
    f->path_off = arena_used;
    memcpy(arena + arena_used, path, len);
    arena_used += (unsigned int)len;
    f->bits = NULL;
    f->bits_bytes = 0;
    return f;
}

static int ensure_bits(struct file_rec *f, unsigned long last_page) {
    size_t need = last_page / 8 + 1;
    if (need <= f->bits_bytes) return 1;
    size_t size = (need + (size_t)page_size - 1) / (size_t)page_size * (size_t)page_size;
    void *p = f->bits ? mremap(f->bits, f->bits_bytes, size, MREMAP_MAYMOVE)
                      : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
    f->bits = p;
    f->bits_bytes = size;
    return 1;
}

/* Pages of [start, end) present now, set in f's bits (file page = offset / page). */
static void read_present(int pagemap, struct file_rec *f, unsigned long start, unsigned long end,
                         unsigned long long offset) {
    uint64_t entries[512];
    unsigned long npages = (end - start) / (unsigned long)page_size;
    unsigned long first = (unsigned long)(offset / (unsigned long long)page_size);
    if (npages == 0 || first + npages > MAX_PAGES || !ensure_bits(f, first + npages - 1)) return;
    for (unsigned long done = 0; done < npages;) {
        unsigned long n = npages - done;
        if (n > 512) n = 512;
        off_t at = (off_t)((start / (unsigned long)page_size + done) * 8);
        ssize_t got = pread(pagemap, entries, n * 8, at);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return;
        n = (unsigned long)got / 8;
        for (unsigned long i = 0; i < n; i++)
            if (entries[i] >> 63) {
                unsigned long pg = first + done + i;
                f->bits[pg / 8] |= (uint8_t)(1u << (pg % 8));
            }
        done += n;
    }
}

/* One line of /proc/self/maps: "start-end perms offset major:minor inode   path". */
struct mapping {
    unsigned long start, end;
    unsigned long long offset;
    unsigned int major, minor;
    unsigned long ino;
    int exec;
    const char *path;
};

static int parse_mapping(const char *line, struct mapping *m) {
    const char *p = line;
    m->start = (unsigned long)parse_hex(&p);
    if (*p++ != '-') return 0;
    m->end = (unsigned long)parse_hex(&p);
    if (*p++ != ' ' || strlen(p) < 5) return 0;
    m->exec = p[2] == 'x';
    p += 4;
    if (*p++ != ' ') return 0;
    m->offset = parse_hex(&p);
    if (*p++ != ' ') return 0;
    m->major = (unsigned int)parse_hex(&p);
    if (*p++ != ':') return 0;
    m->minor = (unsigned int)parse_hex(&p);
    if (*p++ != ' ') return 0;
    m->ino = (unsigned long)parse_dec(&p);
    while (*p == ' ') p++;
    m->path = p;
    return 1;
}

/* Calls fn for every line of /proc/self/maps (streamed; over-long lines skipped). */
static void each_mapping(void (*fn)(const struct mapping *, void *), void *arg) {
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    static char chunk[1 << 16];
    char line[PATH_MAX + 256];
    size_t used = 0;
    int skipping = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t i = 0; i < n; i++) {
            char c = chunk[i];
            if (c != '\n') {
                if (used + 1 < sizeof line) line[used++] = c;
                else skipping = 1;
                continue;
            }
            line[used] = 0;
            struct mapping m;
            if (!skipping && parse_mapping(line, &m)) fn(&m, arg);
            used = 0;
            skipping = 0;
        }
    }
    close(fd);
}

static void take_mapping(const struct mapping *m, void *arg) {
    int pagemap = *(int *)arg;
    if (!m->exec || m->ino == 0 || m->path[0] != '/') return;
    struct file_rec *f = file_for(m->major, m->minor, m->ino, m->path);
    if (f) read_present(pagemap, f, m->start, m->end, m->offset);
}

static void snapshot(void) {
    const char *dir = getenv("SLIMWHEEL_PROFILE_DIR");
    if (!dir || !*dir || !page_size) return;
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0) return;
    each_mapping(take_mapping, &pagemap);
    close(pagemap);

    char final[PATH_MAX], tmp[PATH_MAX + 8];
    size_t dl = strlen(dir);
    if (dl + 100 > sizeof final) return;
    char *p = final;
    memcpy(p, dir, dl);
    p += dl;
    *p++ = '/';
    p += u64_to_dec(p, (unsigned long long)getpid());
    *p++ = '-';
    size_t tl = strlen(tag);
    memcpy(p, tag, tl);
    p += tl;
    memcpy(p, ".hostpages", 11);
    memcpy(tmp, final, strlen(final));
    memcpy(tmp + strlen(final), ".tmp", 5);

    ob.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (ob.fd < 0) return;
    ob.failed = 0;
    ob.used = 0;
    out_str(&ob, exact ? "{\"t\":\"host-mode\",\"exact\":true}\n"
                       : "{\"t\":\"host-mode\",\"exact\":false}\n");
    for (unsigned int i = 0; i < nfiles; i++) {
        struct file_rec *f = &files[i];
        int any = 0;
        unsigned long npages = f->bits_bytes * 8;
        for (unsigned long pg = 0; pg < npages;) {
            if (!(f->bits[pg / 8] >> (pg % 8) & 1)) {
                pg++;
                continue;
            }
            unsigned long run = pg;
            while (pg < npages && (f->bits[pg / 8] >> (pg % 8) & 1)) pg++;
            if (!any) {
                out_str(&ob, "{\"t\":\"host\",\"path\":");
                out_json_string(&ob, arena + f->path_off);
                out_str(&ob, ",\"dev\":\"");
                char dev[40];
                size_t n = 0;
                static const char hex[] = "0123456789abcdef";
                char h[16];
                size_t k = 0;
                unsigned int v = f->major;
                do { h[k++] = hex[v & 15]; v >>= 4; } while (v);
                while (k < 2) h[k++] = '0';
                while (k) dev[n++] = h[--k];
                dev[n++] = ':';
                v = f->minor;
                do { h[k++] = hex[v & 15]; v >>= 4; } while (v);
                while (k < 2) h[k++] = '0';
                while (k) dev[n++] = h[--k];
                out_bytes(&ob, dev, n);
                out_str(&ob, "\",\"ino\":");
                out_num(&ob, f->ino);
                out_str(&ob, ",\"page\":");
                out_num(&ob, (unsigned long long)page_size);
                out_str(&ob, ",\"runs\":[");
                any = 1;
            } else {
                out_str(&ob, ",");
            }
            out_str(&ob, "[");
            out_num(&ob, run);
            out_str(&ob, ",");
            out_num(&ob, pg - run);
            out_str(&ob, "]");
        }
        if (any) out_str(&ob, "]}\n");
    }
    out_flush(&ob);
    int failed = ob.failed || fsync(ob.fd) != 0;
    close(ob.fd);
    if (failed || rename(tmp, final) != 0) unlink(tmp);
}

static void make_tag(const char *kind) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    size_t n = strlen(kind);
    memcpy(tag, kind, n);
    n += u64_to_dec(tag + n, (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec);
    tag[n] = 0;
}

#ifdef SLIMWHEEL_AUDIT
/* ---- the audit module ---------------------------------------------------- */

unsigned int la_version(unsigned int version) {
    page_size = sysconf(_SC_PAGESIZE);
    make_tag("a");
    return version < LAV_CURRENT ? version : LAV_CURRENT;
}

struct advise_arg {
    unsigned int major, minor;
    unsigned long ino;
};

static void advise(const struct mapping *m, void *arg) {
    const struct advise_arg *a = arg;
    if (m->ino != a->ino || m->major != a->major || m->minor != a->minor) return;
    madvise((void *)m->start, m->end - m->start, MADV_RANDOM);
    if (m->exec) no_fault_around(m->start, m->end);
}

unsigned int la_objopen(struct link_map *map, Lmid_t lmid, uintptr_t *cookie) {
    (void)lmid;
    (void)cookie;
    if (!map->l_name || map->l_name[0] != '/' || !getenv("SLIMWHEEL_PROFILE_DIR")) return 0;
    int fd = open(map->l_name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        /* Pages no process maps leave the page cache (dirty ones, of a library just
           written, once written): without fault-around control, fewer neighbours of
           a faulting page are cached to be mapped with it. */
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        struct advise_arg a = {major(st.st_dev), minor(st.st_dev), (unsigned long)st.st_ino};
        each_mapping(advise, &a);
    }
    close(fd);
    return 0;
}

unsigned int la_objclose(uintptr_t *cookie) {
    (void)cookie;
    /* At exit glibc reports the objects loaded at start-up here, after the
       finalizers of every object (dlopened ones included) ran; the last
       snapshot holds them all. */
    snapshot();
    return 0;
}

#else
/* ---- the preloaded library ---------------------------------------------- */

static void reset_table(void) {
    for (unsigned int i = 0; i < nfiles; i++)
        if (files[i].bits) munmap(files[i].bits, files[i].bits_bytes);
    nfiles = 0;
    arena_used = 0;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long flush_ms = 1000;

static void locked_snapshot(int wait_seconds) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_seconds;
    if (pthread_mutex_timedlock(&lock, &until) != 0) return; /* a snapshot is being written */
    snapshot();
    pthread_mutex_unlock(&lock);
}

static void *flusher(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {flush_ms / 1000, (flush_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        locked_snapshot(1);
    }
    return NULL;
}

static void start_flusher(void) {
    if (flush_ms <= 0) return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signal of the program */
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 << 10);
    if (pthread_create(&t, &attr, flusher, NULL) == 0) pthread_setname_np(t, "slimwheel-rec");
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void register_exec(const struct mapping *m, void *arg) {
    (void)arg;
    if (m->exec && m->ino != 0 && m->path[0] == '/') no_fault_around(m->start, m->end);
}

static void in_child(void) {
    pthread_mutex_init(&lock, NULL);
    reset_table();
    make_tag("p");
    exact = 1;
    each_mapping(register_exec, NULL); /* the child's mappings left the parent's registration */
    start_flusher();
}

__attribute__((constructor)) static void start(void) {
    if (!getenv("SLIMWHEEL_PROFILE_DIR")) return;
    page_size = sysconf(_SC_PAGESIZE);
    const char *ms = getenv("SLIMWHEEL_HOST_FLUSH_MS");
    if (ms && *ms) flush_ms = strtol(ms, NULL, 10);
    make_tag("p");
    pthread_atfork(NULL, NULL, in_child);
    start_flusher();
}

__attribute__((destructor)) static void stop(void) { locked_snapshot(5); }

typedef void (*exit_fn)(int);
typedef int (*execve_fn)(const char *, char *const[], char *const[]);

void _exit(int status) {
    locked_snapshot(5);
    exit_fn real = (exit_fn)dlsym(RTLD_NEXT, "_exit");
    if (real) real(status);
    for (;;) syscall(SYS_exit_group, status);
}

void _Exit(int status) { _exit(status); }

int execve(const char *path, char *const argv[], char *const envp[]) {
    locked_snapshot(5);
    execve_fn real = (execve_fn)dlsym(RTLD_NEXT, "execve");
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(path, argv, envp);
}
#endif
