/* Run-time ISA choice from CPUID (x86) or the build target (ARM). LOCALSERVE_CPU_ISA
 * (scalar | avx2 | avx512 | neon) or ls_set_isa() forces a path the CPU supports. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ls_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

/* Highest ISA level usable here: the CPU must have the instructions and the OS must save
 * the registers (XCR0), or the first AVX instruction faults. */
static int detect_isa(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return LS_ISA_SCALAR;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(osxsave && avx && fma && f16c)) return LS_ISA_SCALAR;
    unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return LS_ISA_SCALAR;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return LS_ISA_SCALAR;
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1;
    int avx512vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    if (!avx2) return LS_ISA_SCALAR;
    /* Our AVX-512 path needs BW+VL (byte ops on ymm/zmm) and VNNI (vpdpbusd/vpdpwssd):
     * Cascade Lake, Ice Lake and later Intel, Zen 4 and later AMD. Skylake-X gets AVX2. */
    if (avx512f && avx512bw && avx512vl && vnni && (xcr0 & 0xe6) == 0xe6) return LS_ISA_AVX512;
    return LS_ISA_AVX2;
}
#elif defined(__aarch64__)
static int detect_isa(void) { return LS_ISA_NEON; }  /* NEON is baseline on AArch64 */
#else
static int detect_isa(void) { return LS_ISA_SCALAR; }
#endif

static const ls_kernels *table_for(int isa) {
    switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
    case LS_ISA_AVX2: return &ls_kernels_avx2;
    case LS_ISA_AVX512: return &ls_kernels_avx512;
#endif
#if defined(__aarch64__)
    case LS_ISA_NEON: return &ls_kernels_neon;
#endif
    default: return &ls_kernels_scalar;
    }
}

static int isa_from_name(const char *s) {
    if (!strcmp(s, "scalar")) return LS_ISA_SCALAR;
    if (!strcmp(s, "avx2")) return LS_ISA_AVX2;
    if (!strcmp(s, "avx512")) return LS_ISA_AVX512;
    if (!strcmp(s, "neon")) return LS_ISA_NEON;
    return -1;
}

static atomic_int g_isa = -1;
static _Atomic(const ls_kernels *) g_table = NULL;

/* x86 levels nest (avx512 > avx2 > scalar); NEON is only ever the ARM level. */
static int supported(int isa, int best) {
    if (isa == LS_ISA_SCALAR) return 1;
    if (best == LS_ISA_NEON) return isa == LS_ISA_NEON;
    return isa != LS_ISA_NEON && isa <= best;
}

/* Forces an ISA by id; -1 re-reads LOCALSERVE_CPU_ISA / CPUID. Returns the id in use, or -1
 * (and changes nothing) if the CPU lacks the requested one. */
LS_API int ls_set_isa(int isa) {
    int best = detect_isa();
    if (isa < 0) {
        const char *env = getenv("LOCALSERVE_CPU_ISA");
        isa = best;
        if (env && *env) {
            int want = isa_from_name(env);
            if (want >= 0 && supported(want, best)) isa = want;
        }
    } else if (!supported(isa, best)) {
        return -1;
    }
    atomic_store(&g_table, table_for(isa));
    atomic_store(&g_isa, isa);
    return isa;
}

LS_API int ls_get_isa(void) {
    if (atomic_load(&g_isa) < 0) ls_set_isa(-1);
    return atomic_load(&g_isa);
}

LS_API int ls_best_isa(void) { return detect_isa(); }

const ls_kernels *ls_active_kernels(void) {
    const ls_kernels *t = atomic_load(&g_table);
    if (!t) {
        ls_set_isa(-1);
        t = atomic_load(&g_table);
    }
    return t;
}

#ifndef LS_BUILD_ID
#define LS_BUILD_ID "dev"
#endif
/* Hash of the sources this library was built from: the loader rebuilds on a mismatch. */
LS_API const char *ls_build_id(void) { return LS_BUILD_ID; }
