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
 *
 * Built with -DSLIMWHEEL_GUARD_CUDA (and CUPTI), it is also a CUPTI
 * injection library (CUDA_INJECTION64_PATH): when a kernel lookup
 * (cuLibraryGetKernel, cuModuleGetFunction) or a launch fails in a library
 * whose note says a profile removed device code, and the kernel is one the
 * profile removed (its name's hash is in the note), it prints the same kind
 * of line naming the kernel.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <ucontext.h>
#include <unistd.h>

#define NOTE_SECTION ".slimwheel.host"
#define GUARD_FILE "libslimwheel_guard.so" /* guard.GUARD_NAME */

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

struct note_header { /* slimwheel/note.py */
    char magic[8];
    uint32_t version, nranges, nunits, nkernels, flags, reserved;
    uint64_t kernels, body, body_size, body_raw;
    char digest[64];
};
struct note_unit {
    uint64_t start, end;
    uint32_t name, flags;
};
#define DEVICE_REMOVED 2u

/* A library file mapped read-only, and its note. */
struct note_view {
    const unsigned char *map;
    size_t size;
    const unsigned char *nb; /* the note section */
    size_t nsize;
    const struct note_header *h;
    uint64_t first_vaddr; /* of the lowest PT_LOAD */
};

static void close_note(struct note_view *v) {
    if (v->map) munmap((void *)v->map, v->size);
    v->map = NULL;
}

/* Maps path and finds its .slimwheel.host section; 0 when it has none (or is not ELF). */
static int open_note(const char *path, struct note_view *v) {
    memset(v, 0, sizeof *v);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(Elf64_Ehdr)) {
        close(fd);
        return 0;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return 0;
    v->map = m;
    v->size = size;
    const Elf64_Ehdr *eh = (const void *)m;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) goto no;
    if (eh->e_shoff == 0 || eh->e_shoff > size || eh->e_phoff > size) goto no;
    uint64_t shnum = eh->e_shnum;
    const Elf64_Shdr *sh = (const void *)(m + eh->e_shoff);
    if (shnum == 0 && eh->e_shoff + sizeof *sh <= size) shnum = sh[0].sh_size;
    if (shnum > (size - eh->e_shoff) / sizeof *sh) goto no;
    uint32_t strndx = eh->e_shstrndx == SHN_XINDEX ? sh[0].sh_link : eh->e_shstrndx;
    if (strndx >= shnum) goto no;
    const Elf64_Shdr *names = &sh[strndx];
    if (names->sh_offset > size || names->sh_size > size - names->sh_offset) goto no;
    const Elf64_Shdr *note = NULL;
    for (uint64_t i = shnum; i-- > 0;) { /* slimming appends it: look from the end */
        if (sh[i].sh_name >= names->sh_size) continue;
        const char *n = (const char *)m + names->sh_offset + sh[i].sh_name;
        size_t room = names->sh_size - sh[i].sh_name;
        if (room >= sizeof NOTE_SECTION && memcmp(n, NOTE_SECTION, sizeof NOTE_SECTION) == 0) {
            note = &sh[i];
            break;
        }
    }
    if (!note || note->sh_offset > size || note->sh_size > size - note->sh_offset) goto no;
    v->nb = m + note->sh_offset;
    v->nsize = note->sh_size;
    v->h = (const void *)v->nb;
    const struct note_header *h = v->h;
    if (v->nsize < sizeof *h || memcmp(h->magic, "SLIMHOST", 8) != 0 || h->version != 1) goto no;
    if (h->kernels != sizeof *h + (uint64_t)h->nranges * 16) goto no;
    if (h->body != h->kernels + (uint64_t)h->nkernels * 8 || h->body > v->nsize) goto no;
    if (h->body_size != v->nsize - h->body || h->body_raw > (1ULL << 30)) goto no;
    if ((uint64_t)h->nunits * sizeof(struct note_unit) > h->body_raw) goto no;
    const Elf64_Phdr *ph = (const void *)(m + eh->e_phoff);
    if (eh->e_phnum > (size - eh->e_phoff) / sizeof *ph) goto no;
    v->first_vaddr = UINT64_MAX;
    for (int i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD && ph[i].p_vaddr < v->first_vaddr) v->first_vaddr = ph[i].p_vaddr;
    if (v->first_vaddr == UINT64_MAX) goto no;
    return 1;
no:
    close_note(v);
    return 0;
}

/* The note's body (units, then names), inflated with the zlib the system has into
   memory mapped for it; NULL when there is no zlib or the body is damaged. */
static unsigned char *inflate_body(const struct note_view *v) {
    typedef int (*uncompress_fn)(unsigned char *, unsigned long *, const unsigned char *,
                                 unsigned long);
    void *z = dlopen("libz.so.1", RTLD_LAZY | RTLD_LOCAL);
    uncompress_fn unz = z ? (uncompress_fn)dlsym(z, "uncompress") : NULL;
    if (!unz || !v->h->body_raw) return NULL;
    unsigned char *out = mmap(NULL, v->h->body_raw, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (out == MAP_FAILED) return NULL;
    unsigned long got = v->h->body_raw;
    if (unz(out, &got, v->nb + v->h->body, v->h->body_size) != 0 || got != v->h->body_raw) {
        munmap(out, v->h->body_raw);
        return NULL;
    }
    return out;
}

static const char *body_string(const struct note_view *v, const unsigned char *body, uint32_t at,
                               size_t *len) {
    uint64_t names = (uint64_t)v->h->nunits * sizeof(struct note_unit);
    if (at == 0xffffffffu || names + at >= v->h->body_raw) return NULL;
    const char *s = (const char *)body + names + at;
    *len = strnlen(s, v->h->body_raw - (size_t)(names + at));
    return s;
}

/* A library the process loaded (by file name part), opened again without loading it. */
struct find_arg {
    const char *part;
    void *handle;
};

static int find_one(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    struct find_arg *a = arg;
    if (info->dlpi_name && strstr(info->dlpi_name, a->part)) {
        a->handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
        return a->handle != NULL;
    }
    return 0;
}

static void *loaded(const char *part) {
    struct find_arg a = {part, NULL};
    dl_iterate_phdr(find_one, &a);
    return a.handle;
}

/* A symbol name as people read it: the C++ runtime's demangler when the process has one. */
static void say_symbol(const char *name, size_t len) {
    static char copy[4096];
    if (len >= sizeof copy) len = sizeof copy - 1;
    memcpy(copy, name, len);
    copy[len] = 0;
    typedef char *(*demangle_fn)(const char *, char *, size_t *, int *);
    demangle_fn demangle = (demangle_fn)dlsym(RTLD_DEFAULT, "__cxa_demangle");
    if (!demangle && copy[0] == '_' && copy[1] == 'Z') {
        void *cxx = loaded("libstdc++.so"); /* loaded locally, by a C++ library */
        if (cxx) demangle = (demangle_fn)dlsym(cxx, "__cxa_demangle");
    }
    int status = -1;
    char *nice = demangle && copy[0] == '_' && copy[1] == 'Z' ? demangle(copy, NULL, NULL, &status)
                                                               : NULL;
    says(status == 0 && nice ? nice : copy);
    free(nice);
}

static void say_profile(const struct note_view *v) {
    says(" (profile ");
    say(v->h->digest, 12);
    says(")");
}

static const char *ADVICE =
    ": the profile never saw it run. Record this workload too and merge the profiles "
    "(slimwheel profile merge), then slim again; or run slimwheel restore.\n";

/* Where the removed code was entered from: the return address on the stack
 * (the call's; after a tail call, its caller's), as LIBRARY+0xOFFSET (SYMBOL). */
static void say_caller(uintptr_t ret) {
    Dl_info info;
    if (!ret || !dladdr((void *)ret, &info) || !info.dli_fname) return;
    const char *base = strrchr(info.dli_fname, '/');
    says(", called from ");
    says(base ? base + 1 : info.dli_fname);
    says("+");
    say_hex((uint64_t)(ret - (uintptr_t)info.dli_fbase));
    if (info.dli_sname && info.dli_saddr) {
        says(" (");
        say_symbol(info.dli_sname, strlen(info.dli_sname));
        says("+");
        say_hex((uint64_t)(ret - (uintptr_t)info.dli_saddr));
        says(")");
    }
}

/* The return address of the frame that faulted, 0 when unknown. */
static uintptr_t return_address(void *ctx) {
    if (!ctx) return 0;
    const ucontext_t *uc = ctx;
#if defined(__x86_64__)
    const uintptr_t *sp = (const uintptr_t *)uc->uc_mcontext.gregs[REG_RSP];
    return sp ? *sp : 0; /* the stack is mapped: the fault was on the jump's target */
#elif defined(__aarch64__)
    return (uintptr_t)uc->uc_mcontext.regs[30]; /* the link register */
#else
    (void)uc;
    return 0;
#endif
}

/* Explain a fault at addr, if it lies in removed host code (entered from ret). */
static void explain(uintptr_t addr, uintptr_t ret) {
    static char path[PATH_MAX];
    uintptr_t lowest;
    if (!find_mapping(addr, path, sizeof path, &lowest)) return;
    struct note_view v;
    if (!open_note(path, &v)) return;
    const struct note_header *h = v.h;
    /* The load base: the lowest mapping of the file holds its first PT_LOAD. */
    uint64_t vaddr = (uint64_t)addr - ((uint64_t)lowest - (v.first_vaddr & ~(uint64_t)0xfff));
    const uint64_t *ranges = (const void *)(v.nb + sizeof *h);
    int inside = 0;
    for (uint32_t i = 0; i < h->nranges; i++)
        if (ranges[2 * i] <= vaddr && vaddr < ranges[2 * i + 1]) inside = 1;
    if (!inside) {
        close_note(&v);
        return;
    }
    unsigned char *body = inflate_body(&v);
    const struct note_unit *u = (const void *)body;
    const char *fname = NULL, *before = NULL;
    size_t flen = 0, blen = 0;
    for (uint32_t i = 0; body && i < h->nunits; i++) {
        size_t len = 0;
        const char *n = body_string(&v, body, u[i].name, &len);
        if (u[i].start <= vaddr && vaddr < u[i].end) {
            fname = n;
            flen = len;
            break;
        }
        if (u[i].end <= vaddr && n) {
            before = n;
            blen = len;
        }
    }
    says("slimwheel: ");
    says(path);
    says(": ");
    if (fname) {
        say_symbol(fname, flen);
        says(" (host code at ");
    } else {
        says("unnamed host code at ");
    }
    say_hex(vaddr);
    if (fname) says(")");
    else if (before) {
        says(", after ");
        say_symbol(before, blen);
    }
    says(" was removed by slimwheel --cpu");
    say_profile(&v);
    say_caller(ret);
    says(ADVICE);
    if (body) munmap(body, h->body_raw);
    close_note(&v);
}

#ifdef SLIMWHEEL_GUARD_CUDA
/* ---- device code: a kernel a profile removed ------------------------------ */
#include <cuda_runtime_api.h>
#include <cupti.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

/* Handles (CUlibrary, CUmodule) -> the library file their image lies in. */
#define MAX_HANDLES 8192
static struct {
    const void *handle;
    char path[PATH_MAX];
} handles[MAX_HANDLES];
static unsigned int nhandles;
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;

static void remember(const void *handle, const void *image) {
    Dl_info info;
    if (!handle || !image || !dladdr(image, &info) || !info.dli_fname || info.dli_fname[0] != '/')
        return;
    pthread_mutex_lock(&handles_lock);
    unsigned int slot = nhandles < MAX_HANDLES ? nhandles++ : (unsigned int)((uintptr_t)handle % MAX_HANDLES);
    handles[slot].handle = handle;
    strncpy(handles[slot].path, info.dli_fname, PATH_MAX - 1);
    handles[slot].path[PATH_MAX - 1] = 0;
    pthread_mutex_unlock(&handles_lock);
}

static int library_of(const void *handle, char *path) {
    int found = 0;
    pthread_mutex_lock(&handles_lock);
    for (unsigned int i = 0; i < nhandles && !found; i++)
        if (handles[i].handle == handle) {
            memcpy(path, handles[i].path, PATH_MAX);
            found = 1;
        }
    pthread_mutex_unlock(&handles_lock);
    return found;
}

/* Whether this thread explained a failure since its current runtime call began
   (the driver's lookup fails inside the runtime's launch: one line, not two). */
static __thread int explained;

/* Libraries a named kernel was explained for: a later launch without a name says nothing
   more (under EAGER loading the lookups fail at start-up, the launch later). */
#define MAX_NAMED 64
static char named[MAX_NAMED][PATH_MAX];
static unsigned int nnamed;

static int was_named(const char *path) {
    for (unsigned int i = 0; i < nnamed && i < MAX_NAMED; i++)
        if (strcmp(named[i], path) == 0) return 1;
    return 0;
}

/* A kernel lookup or launch failed in library path: was it a profile's doing? */
static void explain_kernel(const char *path, const char *name) {
    struct note_view v;
    if (!open_note(path, &v)) return;
    if (!(v.h->flags & DEVICE_REMOVED) || (!name && was_named(path))) {
        close_note(&v);
        return;
    }
    const uint64_t *hashes = (const void *)(v.nb + v.h->kernels);
    int known = 0;
    if (name) {
        uint64_t want = fnv1a(name);
        for (uint32_t i = 0; i < v.h->nkernels && !known; i++) known = hashes[i] == want;
        if (!known) {
            close_note(&v);
            return; /* not one the profile removed: a genuine error */
        }
    }
    says("slimwheel: ");
    says(path);
    says(": ");
    if (name) {
        says("kernel ");
        say_symbol(name, strlen(name));
    } else {
        says("a kernel launched from this library");
    }
    says(known ? " was removed by a slimwheel profile" : " has no code: the library was slimmed with a profile");
    say_profile(&v);
    says(ADVICE);
    explained = 1;
    if (name && !was_named(path) && nnamed < MAX_NAMED) {
        strncpy(named[nnamed], path, PATH_MAX - 1);
        nnamed++;
    }
    close_note(&v);
}

/* The device name the runtime registered for a host stub (cudaFuncGetName, CUDA 12.3+),
   from the CUDA runtime the process loaded. */
static void *cudart;

static const char *registered_name(const void *func) {
    if (!cudart) cudart = loaded("libcudart.so");
    if (!cudart) return NULL;
    typedef int (*get_name_fn)(const char **, const void *);
    get_name_fn get = (get_name_fn)dlsym(cudart, "cudaFuncGetName");
    const char *name = NULL;
    if (!get || get(&name, func) != 0) return NULL;
    return name;
}

static int failed(const CUpti_CallbackData *cb) {
    return cb->callbackSite == CUPTI_API_EXIT && cb->functionReturnValue &&
           *(const int *)cb->functionReturnValue != 0;
}

static void CUPTIAPI on_api(void *user, CUpti_CallbackDomain domain, CUpti_CallbackId cbid,
                            const void *data) {
    (void)user;
    const CUpti_CallbackData *cb = data;
    const void *p = cb->functionParams;
    char path[PATH_MAX];
    if (domain == CUPTI_CB_DOMAIN_DRIVER_API) {
        if (cb->callbackSite != CUPTI_API_EXIT) return;
        int ok = cb->functionReturnValue && *(const CUresult *)cb->functionReturnValue == CUDA_SUCCESS;
        switch (cbid) {
        case CUPTI_DRIVER_TRACE_CBID_cuLibraryLoadData: {
            const cuLibraryLoadData_params *a = p;
            if (ok) remember(*a->library, a->code);
            break;
        }
        case CUPTI_DRIVER_TRACE_CBID_cuModuleLoadData: {
            const cuModuleLoadData_params *a = p;
            if (ok) remember(*a->module, a->image);
            break;
        }
        case CUPTI_DRIVER_TRACE_CBID_cuModuleLoadDataEx: {
            const cuModuleLoadDataEx_params *a = p;
            if (ok) remember(*a->module, a->image);
            break;
        }
        case CUPTI_DRIVER_TRACE_CBID_cuModuleLoadFatBinary: {
            const cuModuleLoadFatBinary_params *a = p;
            if (ok) remember(*a->module, a->fatCubin);
            break;
        }
        case CUPTI_DRIVER_TRACE_CBID_cuLibraryGetKernel: {
            const cuLibraryGetKernel_params *a = p;
            if (!ok && a->name && library_of(a->library, path)) explain_kernel(path, a->name);
            break;
        }
        case CUPTI_DRIVER_TRACE_CBID_cuModuleGetFunction: {
            const cuModuleGetFunction_params *a = p;
            if (!ok && a->name && library_of(a->hmod, path)) explain_kernel(path, a->name);
            break;
        }
        default:
            break;
        }
        return;
    }
    if (domain != CUPTI_CB_DOMAIN_RUNTIME_API) return;
    if (cb->callbackSite == CUPTI_API_ENTER) {
        explained = 0;
        return;
    }
    if (!failed(cb) || explained) return;
    int rc = *(const int *)cb->functionReturnValue;
    if (rc != cudaErrorNoKernelImageForDevice && rc != cudaErrorInvalidDeviceFunction) return;
    const void *func = NULL;
    if (cbid == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_v11060 ||
        cbid == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_ptsz_v11060)
        func = ((const cudaLaunchKernelExC_v11060_params *)p)->func;
    else /* every other launch takes the host stub first */
        func = *(const void *const *)p;
    Dl_info info;
    if (!func || !dladdr(func, &info) || !info.dli_fname || info.dli_fname[0] != '/') return;
    const char *name = info.dli_sname && info.dli_saddr == func ? info.dli_sname : NULL;
    if (!name) name = registered_name(func);
    explain_kernel(info.dli_fname, name);
}

int InitializeInjection(void) {
    CUpti_SubscriberHandle sub;
    if (cuptiSubscribe(&sub, on_api, NULL) != CUPTI_SUCCESS) return 0;
    static const CUpti_CallbackId driver[] = {
        CUPTI_DRIVER_TRACE_CBID_cuLibraryLoadData,     CUPTI_DRIVER_TRACE_CBID_cuModuleLoadData,
        CUPTI_DRIVER_TRACE_CBID_cuModuleLoadDataEx,    CUPTI_DRIVER_TRACE_CBID_cuModuleLoadFatBinary,
        CUPTI_DRIVER_TRACE_CBID_cuLibraryGetKernel,    CUPTI_DRIVER_TRACE_CBID_cuModuleGetFunction,
    };
    static const CUpti_CallbackId runtime[] = {
        CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_v7000,
        CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_ptsz_v7000,
        CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_v11060,
        CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_ptsz_v11060,
        CUPTI_RUNTIME_TRACE_CBID_cudaLaunchCooperativeKernel_v9000,
        CUPTI_RUNTIME_TRACE_CBID_cudaLaunchCooperativeKernel_ptsz_v9000,
        CUPTI_RUNTIME_TRACE_CBID___cudaLaunchKernel_v13000,
        CUPTI_RUNTIME_TRACE_CBID___cudaLaunchKernel_ptsz_v13000,
    };
    for (size_t i = 0; i < sizeof driver / sizeof *driver; i++)
        cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_DRIVER_API, driver[i]);
    for (size_t i = 0; i < sizeof runtime / sizeof *runtime; i++)
        cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API, runtime[i]);
    return 1;
}
#endif

static void on_fault(int sig, siginfo_t *info, void *ctx) {
    static volatile sig_atomic_t busy = 0;
    int idx = sig == SIGBUS;
    if (!busy) {
        busy = 1;
        explain((uintptr_t)info->si_addr, return_address(ctx));
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

/* Whether a copy of the guard was loaded before this one into this process image (doctor's
 * preloaded one and an environment's copy may meet): that one is installed, and a second would
 * say everything twice. The loaded objects are walked in load order up to this one; a mark in
 * the environment would survive exec(), which keeps the pid and drops the handlers. */
struct earlier_arg {
    uintptr_t self; /* an address inside this copy */
    int found;
};

static int earlier_guard(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    struct earlier_arg *a = arg;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = (uintptr_t)info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && start <= a->self && a->self < start + ph->p_memsz)
            return 1; /* reached this copy: none before it */
    }
    const char *name = info->dlpi_name;
    const char *base = name ? strrchr(name, '/') : NULL;
    if (base && strcmp(base + 1, GUARD_FILE) == 0) {
        a->found = 1;
        return 1;
    }
    return 0;
}

__attribute__((constructor)) static void install(void) {
    struct earlier_arg a = {(uintptr_t)&earlier_guard, 0};
    dl_iterate_phdr(earlier_guard, &a);
    if (a.found) return;
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
