/*
 * slimwheel guard: a one-line explanation when a process runs code that
 * `slimwheel slim --cpu` removed.
 *
 * Loaded with LD_PRELOAD (slimwheel doctor, or an environment's guard), it
 * installs SIGSEGV and SIGBUS handlers that chain to the program's own: the
 * ones installed before, and the ones the program installs later through
 * sigaction() or signal(), which the guard interposes so that its handler
 * stays first (Python's faulthandler re-raises with raise(), which no longer
 * says where the fault was). On a fault, the handler looks the faulting address up in
 * /proc/self/maps; when it lies in a mapping of a file that carries a
 * `.slimwheel.host` section (written by slimming) and inside one of the
 * ranges that section lists, it prints
 *
 *   slimwheel: LIBRARY: FUNCTION (host code at 0x...) was removed by --cpu
 *   (profile DIGEST); ...what to do...
 *
 * on stderr, and lets the fault take its course (the previous handler, or
 * the default action: the process dies of the signal). Everything in the
 * handler is a system call on stack or static memory.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NOTE_SECTION ".slimwheel.host"

static struct sigaction previous[2]; /* what the program installed, as it believes */
static const int signals[2] = {SIGSEGV, SIGBUS};
static int installed;

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction_fn;

static int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction_fn) real_sigaction_fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (!real_sigaction_fn) {
        errno = ENOSYS;
        return -1;
    }
    return real_sigaction_fn(sig, act, old);
}

static int guarded(int sig) { return !installed ? -1 : sig == SIGSEGV ? 0 : sig == SIGBUS ? 1 : -1; }

static void say(const char *s, size_t n) {
    while (n) {
        ssize_t k = write(2, s, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return;
        s += k;
        n -= (size_t)k;
    }
}

static void says(const char *s) { say(s, strlen(s)); }

static void say_hex(uint64_t v) {
    char b[19] = "0x";
    int n = 2;
    int started = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        unsigned d = (unsigned)(v >> shift) & 15;
        if (d || started || shift == 0) {
            b[n++] = "0123456789abcdef"[d];
            started = 1;
        }
    }
    say(b, (size_t)n);
}

static unsigned long long hex(const char **p) {
    unsigned long long v = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9') v = v * 16 + (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (unsigned)(c - 'a' + 10);
        else return v;
    }
}

/* The file mapped at addr, and the lowest address any mapping of it starts at. */
static int find_mapping(uintptr_t addr, char *path, size_t path_size, uintptr_t *lowest) {
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    static char chunk[8192];
    static char line[PATH_MAX + 256];
    static char want[PATH_MAX];
    size_t used = 0;
    int found = 0;
    *lowest = UINTPTR_MAX;
    want[0] = 0;
    /* Two passes: the first finds the file, the second its lowest mapping. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            if (!found) break;
            lseek(fd, 0, SEEK_SET);
        }
        used = 0;
        for (;;) {
            ssize_t n = read(fd, chunk, sizeof chunk);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            for (ssize_t i = 0; i < n; i++) {
                if (chunk[i] != '\n') {
                    if (used + 1 < sizeof line) line[used++] = chunk[i];
                    continue;
                }
                line[used] = 0;
                used = 0;
                const char *p = line;
                uintptr_t start = (uintptr_t)hex(&p);
                if (*p++ != '-') continue;
                uintptr_t end = (uintptr_t)hex(&p);
                const char *name = strchr(p, '/');
                if (!name) continue;
                if (pass == 0 && start <= addr && addr < end) {
                    size_t len = strlen(name);
                    if (len + 1 > path_size) break;
                    memcpy(want, name, len + 1);
                    found = 1;
                } else if (pass == 1 && strcmp(name, want) == 0 && start < *lowest) {
                    *lowest = start;
                }
            }
        }
    }
    close(fd);
    if (found) memcpy(path, want, strlen(want) + 1);
    return found && *lowest != UINTPTR_MAX;
}

struct note_header {
    char magic[8];
    uint32_t version, nranges, nunits, reserved;
    uint64_t strings;
    char digest[64];
};
struct note_unit {
    uint64_t start, end;
    uint32_t name, flags;
};

/* Explain a fault at addr, if it lies in removed host code. */
static void explain(uintptr_t addr) {
    static char path[PATH_MAX];
    uintptr_t lowest;
    if (!find_mapping(addr, path, sizeof path, &lowest)) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
        close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return;
    const Elf64_Ehdr *eh = (const void *)m;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) goto out;
    if (eh->e_shoff == 0 || eh->e_shoff > size || eh->e_phoff > size) goto out;
    uint64_t shnum = eh->e_shnum;
    const Elf64_Shdr *sh = (const void *)(m + eh->e_shoff);
    if (shnum == 0 && eh->e_shoff + sizeof *sh <= size) shnum = sh[0].sh_size;
    if (shnum > (size - eh->e_shoff) / sizeof *sh) goto out;
    uint32_t strndx = eh->e_shstrndx == SHN_XINDEX ? sh[0].sh_link : eh->e_shstrndx;
    if (strndx >= shnum) goto out;
    const Elf64_Shdr *names = &sh[strndx];
    if (names->sh_offset > size || names->sh_size > size - names->sh_offset) goto out;
    const Elf64_Shdr *note = NULL;
    for (uint64_t i = 0; i < shnum; i++) {
        if (sh[i].sh_name >= names->sh_size) continue;
        const char *n = (const char *)m + names->sh_offset + sh[i].sh_name;
        size_t room = names->sh_size - sh[i].sh_name;
        if (room >= sizeof NOTE_SECTION && memcmp(n, NOTE_SECTION, sizeof NOTE_SECTION) == 0) {
            note = &sh[i];
            break;
        }
    }
    if (!note || note->sh_offset > size || note->sh_size > size - note->sh_offset) goto out;
    const unsigned char *nb = m + note->sh_offset;
    size_t nsize = note->sh_size;
    const struct note_header *h = (const void *)nb;
    if (nsize < sizeof *h || memcmp(h->magic, "SLIMHOST", 8) != 0 || h->version != 1) goto out;
    uint64_t need = sizeof *h + (uint64_t)h->nranges * 16 + (uint64_t)h->nunits * sizeof(struct note_unit);
    if (need > nsize || h->strings != need) goto out;

    /* The load base: the lowest mapping of the file holds its first PT_LOAD. */
    const Elf64_Phdr *ph = (const void *)(m + eh->e_phoff);
    if (eh->e_phnum > (size - eh->e_phoff) / sizeof *ph) goto out;
    uint64_t first = UINT64_MAX;
    for (int i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD && ph[i].p_vaddr < first) first = ph[i].p_vaddr;
    if (first == UINT64_MAX) goto out;
    uint64_t vaddr = (uint64_t)addr - ((uint64_t)lowest - (first & ~(uint64_t)0xfff));

    const uint64_t *ranges = (const void *)(nb + sizeof *h);
    int inside = 0;
    for (uint32_t i = 0; i < h->nranges; i++)
        if (ranges[2 * i] <= vaddr && vaddr < ranges[2 * i + 1]) inside = 1;
    if (!inside) goto out;
    const struct note_unit *u = (const void *)(nb + sizeof *h + (size_t)h->nranges * 16);
    const char *fname = NULL;
    const char *before = NULL;
    for (uint32_t i = 0; i < h->nunits; i++) {
        const char *n = NULL;
        if (u[i].name != 0xffffffffu && h->strings + u[i].name < nsize)
            n = (const char *)nb + h->strings + u[i].name;
        if (u[i].start <= vaddr && vaddr < u[i].end) {
            fname = n;
            break;
        }
        if (u[i].end <= vaddr && n) before = n;
    }
    says("slimwheel: ");
    says(path);
    says(": ");
    if (fname) {
        size_t len = strnlen(fname, nsize - (size_t)((const unsigned char *)fname - nb));
        say(fname, len);
        says(" (host code at ");
    } else {
        says("unnamed host code at ");
    }
    say_hex(vaddr);
    if (fname) says(")");
    else if (before) {
        says(", after ");
        say(before, strnlen(before, nsize - (size_t)((const unsigned char *)before - nb)));
    }
    says(" was removed by slimwheel --cpu (profile ");
    say(h->digest, 12);
    says("): the profile never saw it run. Record this workload too and merge the "
         "profiles (slimwheel profile merge), then slim again; or run slimwheel restore.\n");
out:
    munmap((void *)m, size);
}

static void on_fault(int sig, siginfo_t *info, void *ctx) {
    static volatile sig_atomic_t busy = 0;
    int idx = sig == SIGBUS;
    if (!busy) {
        busy = 1;
        explain((uintptr_t)info->si_addr);
    }
    /* Chain: the handler before ours, or the default action (the fault repeats). */
    struct sigaction *prev = &previous[idx];
    if (prev->sa_flags & SA_SIGINFO) {
        if (prev->sa_sigaction) {
            prev->sa_sigaction(sig, info, ctx);
            return;
        }
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    int idx = guarded(sig);
    if (idx < 0) return real_sigaction(sig, act, old);
    if (old) *old = previous[idx];
    if (act) previous[idx] = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    int idx = guarded(sig);
    if (idx < 0) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = handler;
        sa.sa_flags = SA_RESTART;
        if (real_sigaction(sig, &sa, &old) != 0) return SIG_ERR;
        return old.sa_handler;
    }
    sighandler_t was = (previous[idx].sa_flags & SA_SIGINFO) ? SIG_DFL : previous[idx].sa_handler;
    memset(&previous[idx], 0, sizeof previous[idx]);
    previous[idx].sa_handler = handler;
    previous[idx].sa_flags = SA_RESTART;
    return was;
}

__attribute__((constructor)) static void install(void) {
    for (int i = 0; i < 2; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        real_sigaction(signals[i], &sa, &previous[i]);
    }
    installed = 1;
}
