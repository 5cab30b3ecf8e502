/*
 * slimwheel usage recorder: a CUPTI injection library.
 *
 * Loaded by the CUDA driver during cuInit when CUDA_INJECTION64_PATH names
 * it; the driver calls InitializeInjection(). It subscribes to the driver-API
 * callbacks that load code (cuLibraryLoadData/FromFile, cuModuleLoad*),
 * resolve kernels (cuLibraryGetKernel, cuKernelGetFunction,
 * cuModuleGetFunction), access device variables (cuLibraryGetGlobal/Managed,
 * cuModuleGetGlobal) and launch (cuLaunchKernel, cuLaunchKernelEx,
 * cuLaunchCooperativeKernel, and their _ptsz forms), plus the resource
 * callback that hands over each loaded module image.
 *
 * Handles are mapped to origins, not names: an origin is the library file a
 * code image lies in (dladdr) and the image's address inside it (the fatbin
 * region's vaddr); images on the heap (Triton, NVRTC, ...) are origins marked
 * "jit" and never drive removal. Each kernel is recorded once, at its first
 * launch. Records go, one JSON object per line, line-buffered, to one file
 * per process in $SLIMWHEEL_PROFILE_DIR, so spawned workers and crashes lose
 * nothing; a forked child switches to a file of its own.
 */
#define _GNU_SOURCE
#include <cupti.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WRAPPER_MAGIC 0x466243B1u

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *out = NULL;
static CUpti_SubscriberHandle subscriber;
static int devices_written = 0;
static void *libcuda = NULL; /* the driver, opened without loading it again */

static void *driver_fn(const char *name) {
    if (!libcuda) libcuda = dlopen("libcuda.so.1", RTLD_NOLOAD | RTLD_LAZY);
    return libcuda ? dlsym(libcuda, name) : NULL;
}

/* ---- SHA-256 (FIPS 180-4), for module images -------------------------- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a, b, c, d, e, f, g, hh;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

static void sha256_hex(const unsigned char *data, size_t len, char hex[65]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t i = 0;
    for (; i + 64 <= len; i += 64) sha256_block(h, data + i);
    unsigned char tail[128] = {0};
    size_t rest = len - i;
    memcpy(tail, data + i, rest);
    tail[rest] = 0x80;
    size_t n = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int k = 0; k < 8; k++) tail[n - 1 - k] = (unsigned char)(bits >> (8 * k));
    sha256_block(h, tail);
    if (n == 128) sha256_block(h, tail + 64);
    for (int k = 0; k < 8; k++) sprintf(hex + 8 * k, "%08x", h[k]);
    hex[64] = 0;
}

/* ---- a pointer-keyed hash map ------------------------------------------ */

typedef struct {
    const void *key;
    int origin;
    char *name;
    int launched;
} Slot;

typedef struct {
    Slot *slots;
    size_t cap, used;
} Map;

static Map libs, mods, kernels, funcs;

static size_t hash_ptr(const void *p) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33, x *= 0xff51afd7ed558ccdULL, x ^= x >> 33;
    return (size_t)x;
}

static Slot *map_find(Map *m, const void *key, int create) {
    if (create && (m->used + 1) * 2 > m->cap) {
        Map bigger = {calloc(m->cap ? m->cap * 2 : 1024, sizeof(Slot)), m->cap ? m->cap * 2 : 1024, 0};
        if (!bigger.slots) return NULL;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].key) {
                Slot *s = map_find(&bigger, m->slots[i].key, 1);
                *s = m->slots[i];
            }
        free(m->slots);
        *m = bigger;
    }
    if (!m->cap) return NULL;
    for (size_t i = hash_ptr(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].key == key) return &m->slots[i];
        if (!m->slots[i].key) {
            if (!create) return NULL;
            m->slots[i].key = key;
            m->slots[i].origin = -1;
            m->used++;
            return &m->slots[i];
        }
    }
}

/* ---- origins and output ------------------------------------------------ */

static int next_origin = 0;
static Map origin_ids; /* key: image pointer -> origin id */

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void open_output(void) {
    const char *dir = getenv("SLIMWHEEL_PROFILE_DIR");
    if (!dir || !*dir) return;
    char path[PATH_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(path, sizeof path, "%s/rec-%d-%ld%09ld.jsonl", dir, (int)getpid(), (long)ts.tv_sec,
             (long)ts.tv_nsec);
    out = fopen(path, "w");
    if (!out) {
        fprintf(stderr, "slimwheel: cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    setvbuf(out, NULL, _IOLBF, 0);
    fprintf(out, "{\"t\":\"process\",\"pid\":%d,\"ppid\":%d}\n", (int)getpid(), (int)getppid());
}

static void after_fork_child(void) {
    pthread_mutex_init(&lock, NULL);
    out = NULL;
    open_output();
}

static void write_devices(void) {
    typedef int (*get_count_t)(int *);
    typedef int (*get_t)(int *, int);
    typedef int (*get_name_t)(char *, int, int);
    typedef int (*get_attr_t)(int *, int, int);
    typedef int (*drv_version_t)(int *);
    get_count_t get_count = (get_count_t)driver_fn("cuDeviceGetCount");
    get_t get = (get_t)driver_fn("cuDeviceGet");
    get_name_t get_name = (get_name_t)driver_fn("cuDeviceGetName");
    get_attr_t get_attr = (get_attr_t)driver_fn("cuDeviceGetAttribute");
    drv_version_t drv = (drv_version_t)driver_fn("cuDriverGetVersion");
    int count = 0, version = 0;
    uint32_t cupti = 0;
    if (drv) drv(&version);
    cuptiGetVersion(&cupti);
    fprintf(out, "{\"t\":\"versions\",\"driver\":%d,\"cupti_api\":%u}\n", version, cupti);
    if (!get_count || !get || !get_name || !get_attr || get_count(&count)) return;
    for (int i = 0; i < count; i++) {
        int dev = 0, major = 0, minor = 0;
        char name[256] = {0};
        if (get(&dev, i)) continue;
        get_name(name, sizeof name - 1, dev);
        get_attr(&major, 75, dev); /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
        get_attr(&minor, 76, dev);
        fprintf(out, "{\"t\":\"gpu\",\"index\":%d,\"name\":", i);
        json_string(out, name);
        fprintf(out, ",\"cc\":\"%d.%d\"}\n", major, minor);
    }
}

/* ---- CUDA runtimes loaded in the process ------------------------------ */

#define MAX_RUNTIMES 8
static char runtimes[MAX_RUNTIMES][PATH_MAX];
static int runtime_count = 0;
static unsigned long long runtime_adds = 0; /* dlpi_adds when last scanned */

static int runtime_scan(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    const char *slash = strrchr(info->dlpi_name, '/');
    const char *base = slash ? slash + 1 : info->dlpi_name;
    if (strncmp(base, "libcudart.so", 12) != 0 || runtime_count >= MAX_RUNTIMES) return 0;
    for (int i = 0; i < runtime_count; i++)
        if (strcmp(runtimes[i], info->dlpi_name) == 0) return 0;
    snprintf(runtimes[runtime_count++], PATH_MAX, "%s", info->dlpi_name);
    typedef int (*version_t)(int *);
    int version = 0;
    void *h = dlopen(info->dlpi_name, RTLD_NOLOAD | RTLD_LAZY);
    version_t get = h ? (version_t)dlsym(h, "cudaRuntimeGetVersion") : NULL;
    if (get) get(&version); /* the runtime's own constant; no driver call */
    if (h) dlclose(h);
    char real[PATH_MAX];
    fputs("{\"t\":\"runtime\",\"lib\":", out);
    json_string(out, realpath(info->dlpi_name, real) ? real : info->dlpi_name);
    fprintf(out, ",\"version\":%d}\n", version);
    return 0;
}

static int loaded_count(struct dl_phdr_info *info, size_t size, void *data) {
    if (size >= offsetof(struct dl_phdr_info, dlpi_adds) + sizeof info->dlpi_adds)
        *(unsigned long long *)data = info->dlpi_adds;
    return 1; /* the first object is enough */
}

/* Record each CUDA runtime (libcudart) the process has loaded, once. Cheap
 * when no library was loaded since the last look (glibc's dlpi_adds). */
static void write_runtimes(void) {
    unsigned long long adds = 0;
    dl_iterate_phdr(loaded_count, &adds);
    if (adds && adds == runtime_adds) return;
    runtime_adds = adds;
    dl_iterate_phdr(runtime_scan, NULL);
}

/* The origin of a code image passed to a load call. */
static int origin_of(const void *image, const char *api, const char *file) {
    if (!devices_written && out) {
        devices_written = 1;
        write_devices();
    }
    if (image && *(const uint32_t *)image == WRAPPER_MAGIC)
        image = ((const void *const *)image)[1]; /* __fatBinC_Wrapper_t.data */
    const void *key = image ? image : (const void *)file;
    Slot *s = map_find(&origin_ids, key, 1);
    if (!s) return -1;
    if (s->origin >= 0) return s->origin;
    s->origin = next_origin++;
    if (!out) return s->origin;
    write_runtimes();
    Dl_info info;
    if (image && dladdr(image, &info) && info.dli_fname && info.dli_fname[0]) {
        char real[PATH_MAX];
        const char *path = realpath(info.dli_fname, real) ? real : info.dli_fname;
        fprintf(out, "{\"t\":\"origin\",\"id\":%d,\"api\":\"%s\",\"lib\":", s->origin, api);
        json_string(out, path);
        fprintf(out, ",\"vaddr\":%llu}\n",
                (unsigned long long)((uintptr_t)image - (uintptr_t)info.dli_fbase));
    } else if (file) {
        fprintf(out, "{\"t\":\"origin\",\"id\":%d,\"api\":\"%s\",\"file\":", s->origin, api);
        json_string(out, file);
        fputs("}\n", out);
    } else {
        fprintf(out, "{\"t\":\"origin\",\"id\":%d,\"api\":\"%s\",\"jit\":true}\n", s->origin, api);
    }
    return s->origin;
}

static void record_name(const char *type, int origin, const char *name) {
    if (!out || !name) return;
    fprintf(out, "{\"t\":\"%s\",\"o\":%d,\"name\":", type, origin);
    json_string(out, name);
    fputs("}\n", out);
}

/* Remember a resolved handle; record the resolution once per handle. A
 * kernel a library resolves (and may query attributes of) without launching
 * it must keep its element, or that query fails. */
static void remember(Map *m, const void *handle, int origin, const char *name) {
    Slot *s = map_find(m, handle, 1);
    if (!s) return;
    if (s->origin < 0) s->origin = origin;
    if (name && !s->name) {
        s->name = strdup(name);
        if (m == &kernels || m == &funcs) record_name("resolve", s->origin, name);
    }
}

typedef int (*get_name_fn)(const char **, const void *);
typedef int (*get_parent_fn)(const void **, const void *);

/* Name and origin of a handle first seen at launch (enumerated, or obtained
 * before we saw its library): asked of the driver. */
static void resolve_unknown(Slot *s, const void *f) {
    const char *name = NULL;
    const void *parent = NULL;
    get_name_fn fname = (get_name_fn)driver_fn("cuFuncGetName");
    get_name_fn kname = (get_name_fn)driver_fn("cuKernelGetName");
    get_parent_fn fmod = (get_parent_fn)driver_fn("cuFuncGetModule");
    get_parent_fn klib = (get_parent_fn)driver_fn("cuKernelGetLibrary");
    if (!s->name && ((fname && !fname(&name, f) && name) || (kname && !kname(&name, f) && name)))
        s->name = strdup(name);
    if (s->origin < 0 && fmod && !fmod(&parent, f) && parent) {
        Slot *m = map_find(&mods, parent, 0);
        if (m) s->origin = m->origin;
    }
    if (s->origin < 0 && klib && !klib(&parent, f) && parent) {
        Slot *l = map_find(&libs, parent, 0);
        if (l) s->origin = l->origin;
    }
}

static void launched(const void *f) {
    Slot *s = map_find(&funcs, f, 0);
    if (!s) s = map_find(&kernels, f, 0); /* a CUkernel passed as a CUfunction */
    if (!s) s = map_find(&funcs, f, 1);
    if (!s || s->launched) return;
    s->launched = 1;
    if (s->origin < 0 || !s->name) resolve_unknown(s, f);
    record_name("launch", s->origin, s->name);
}

static Map globals_seen; /* key: interned "origin:name" pointer not needed; use dptr */

static void global_accessed(int origin, const char *name, const void *dptr) {
    Slot *s = map_find(&globals_seen, dptr ? dptr : (const void *)name, 1);
    if (!s || s->launched) return;
    s->launched = 1;
    record_name("global", origin, name);
}

/* ---- the callback ------------------------------------------------------ */

static int ok(const CUpti_CallbackData *cb) {
    return cb->callbackSite == CUPTI_API_EXIT && cb->functionReturnValue &&
           *(const CUresult *)cb->functionReturnValue == CUDA_SUCCESS;
}

static void CUPTIAPI on_event(void *user, CUpti_CallbackDomain domain, CUpti_CallbackId cbid,
                              const void *data) {
    (void)user;
    pthread_mutex_lock(&lock);
    if (domain == CUPTI_CB_DOMAIN_RESOURCE && cbid == CUPTI_CBID_RESOURCE_MODULE_LOADED) {
        const CUpti_ResourceData *rd = (const CUpti_ResourceData *)data;
        const CUpti_ModuleResourceData *md = (const CUpti_ModuleResourceData *)rd->resourceDescriptor;
        if (out && md && md->pCubin && md->cubinSize) {
            char hex[65];
            sha256_hex((const unsigned char *)md->pCubin, md->cubinSize, hex);
            fprintf(out, "{\"t\":\"image\",\"sha256\":\"%s\",\"size\":%zu}\n", hex, md->cubinSize);
        }
        pthread_mutex_unlock(&lock);
        return;
    }
    if (domain != CUPTI_CB_DOMAIN_DRIVER_API) {
        pthread_mutex_unlock(&lock);
        return;
    }
    const CUpti_CallbackData *cb = (const CUpti_CallbackData *)data;
    const void *p = cb->functionParams;
    switch (cbid) {
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryLoadData:
        if (ok(cb)) {
            const cuLibraryLoadData_params *a = p;
            remember(&libs, *a->library, origin_of(a->code, "cuLibraryLoadData", NULL), NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryLoadFromFile:
        if (ok(cb)) {
            const cuLibraryLoadFromFile_params *a = p;
            remember(&libs, *a->library, origin_of(NULL, "cuLibraryLoadFromFile", a->fileName), NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleLoadData:
        if (ok(cb)) {
            const cuModuleLoadData_params *a = p;
            remember(&mods, *a->module, origin_of(a->image, "cuModuleLoadData", NULL), NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleLoadDataEx:
        if (ok(cb)) {
            const cuModuleLoadDataEx_params *a = p;
            remember(&mods, *a->module, origin_of(a->image, "cuModuleLoadDataEx", NULL), NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleLoadFatBinary:
        if (ok(cb)) {
            const cuModuleLoadFatBinary_params *a = p;
            remember(&mods, *a->module, origin_of(a->fatCubin, "cuModuleLoadFatBinary", NULL), NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleLoad:
        if (ok(cb)) {
            const cuModuleLoad_params *a = p;
            remember(&mods, *a->module, origin_of(NULL, "cuModuleLoad", a->fname), NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryGetModule:
        if (ok(cb)) {
            const cuLibraryGetModule_params *a = p;
            Slot *s = map_find(&libs, a->library, 0);
            remember(&mods, *a->pMod, s ? s->origin : -1, NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryGetKernel:
        if (ok(cb)) {
            const cuLibraryGetKernel_params *a = p;
            Slot *s = map_find(&libs, a->library, 0);
            remember(&kernels, *a->pKernel, s ? s->origin : -1, a->name);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuKernelGetFunction:
        if (ok(cb)) {
            const cuKernelGetFunction_params *a = p;
            Slot *s = map_find(&kernels, a->kernel, 0);
            remember(&funcs, *a->pFunc, s ? s->origin : -1, s ? s->name : NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleGetFunction:
        if (ok(cb)) {
            const cuModuleGetFunction_params *a = p;
            Slot *s = map_find(&mods, a->hmod, 0);
            remember(&funcs, *a->hfunc, s ? s->origin : -1, a->name);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleEnumerateFunctions:
        if (ok(cb)) {
            const cuModuleEnumerateFunctions_params *a = p;
            Slot *m = map_find(&mods, a->mod, 0);
            for (unsigned int i = 0; a->functions && i < a->numFunctions; i++) {
                Slot *s = map_find(&funcs, a->functions[i], 1);
                if (!s) break;
                if (s->origin < 0 && m) s->origin = m->origin;
                if (!s->name) {
                    resolve_unknown(s, a->functions[i]);
                    record_name("resolve", s->origin, s->name);
                }
            }
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryEnumerateKernels:
        if (ok(cb)) {
            const cuLibraryEnumerateKernels_params *a = p;
            Slot *l = map_find(&libs, a->lib, 0);
            for (unsigned int i = 0; a->kernels && i < a->numKernels; i++) {
                Slot *s = map_find(&kernels, a->kernels[i], 1);
                if (!s) break;
                if (s->origin < 0 && l) s->origin = l->origin;
                if (!s->name) {
                    resolve_unknown(s, a->kernels[i]);
                    record_name("resolve", s->origin, s->name);
                }
            }
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryGetGlobal:
    case CUPTI_DRIVER_TRACE_CBID_cuLibraryGetManaged:
        if (ok(cb)) {
            const cuLibraryGetGlobal_params *a = p; /* same layout for GetManaged */
            Slot *s = map_find(&libs, a->library, 0);
            global_accessed(s ? s->origin : -1, a->name, a->dptr ? (const void *)*a->dptr : NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuModuleGetGlobal_v2:
        if (ok(cb)) {
            const cuModuleGetGlobal_v2_params *a = p;
            Slot *s = map_find(&mods, a->hmod, 0);
            global_accessed(s ? s->origin : -1, a->name, a->dptr ? (const void *)*a->dptr : NULL);
        }
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel:
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel_ptsz:
        if (cb->callbackSite == CUPTI_API_ENTER) launched(((const cuLaunchKernel_params *)p)->f);
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel:
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel_ptsz:
        if (cb->callbackSite == CUPTI_API_ENTER)
            launched(((const cuLaunchCooperativeKernel_params *)p)->f);
        break;
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx:
    case CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx_ptsz:
        if (cb->callbackSite == CUPTI_API_ENTER) launched(((const cuLaunchKernelEx_params *)p)->f);
        break;
    default:
        break;
    }
    pthread_mutex_unlock(&lock);
}

static const CUpti_CallbackId DRIVER_IDS[] = {
    CUPTI_DRIVER_TRACE_CBID_cuLibraryLoadData,
    CUPTI_DRIVER_TRACE_CBID_cuLibraryLoadFromFile,
    CUPTI_DRIVER_TRACE_CBID_cuModuleLoad,
    CUPTI_DRIVER_TRACE_CBID_cuModuleLoadData,
    CUPTI_DRIVER_TRACE_CBID_cuModuleLoadDataEx,
    CUPTI_DRIVER_TRACE_CBID_cuModuleLoadFatBinary,
    CUPTI_DRIVER_TRACE_CBID_cuLibraryGetModule,
    CUPTI_DRIVER_TRACE_CBID_cuLibraryGetKernel,
    CUPTI_DRIVER_TRACE_CBID_cuKernelGetFunction,
    CUPTI_DRIVER_TRACE_CBID_cuModuleGetFunction,
    CUPTI_DRIVER_TRACE_CBID_cuModuleEnumerateFunctions,
    CUPTI_DRIVER_TRACE_CBID_cuLibraryEnumerateKernels,
    CUPTI_DRIVER_TRACE_CBID_cuLibraryGetGlobal,
    CUPTI_DRIVER_TRACE_CBID_cuLibraryGetManaged,
    CUPTI_DRIVER_TRACE_CBID_cuModuleGetGlobal_v2,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel_ptsz,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx,
    CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx_ptsz,
};

int InitializeInjection(void) {
    pthread_mutex_lock(&lock);
    open_output();
    pthread_atfork(NULL, NULL, after_fork_child);
    CUptiResult r = cuptiSubscribe(&subscriber, (CUpti_CallbackFunc)on_event, NULL);
    if (r != CUPTI_SUCCESS) {
        const char *msg = NULL;
        cuptiGetResultString(r, &msg);
        fprintf(stderr,
                "slimwheel: not recording kernel usage: CUPTI subscription refused (%s); "
                "another CUPTI client (nsys, ncu, torch.profiler) may hold it\n",
                msg ? msg : "unknown error");
        if (out) fprintf(out, "{\"t\":\"error\",\"msg\":\"cuptiSubscribe failed\"}\n");
        pthread_mutex_unlock(&lock);
        return 1; /* let the workload run */
    }
    for (size_t i = 0; i < sizeof DRIVER_IDS / sizeof DRIVER_IDS[0]; i++)
        cuptiEnableCallback(1, subscriber, CUPTI_CB_DOMAIN_DRIVER_API, DRIVER_IDS[i]);
    cuptiEnableCallback(1, subscriber, CUPTI_CB_DOMAIN_RESOURCE, CUPTI_CBID_RESOURCE_MODULE_LOADED);
    pthread_mutex_unlock(&lock);
    return 1;
}
