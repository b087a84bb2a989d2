/* Persistent pthread pool. Kernels run once per layer per decode step (tens of microseconds),
 * so workers spin briefly on an atomic job word before sleeping on a condvar: a
 * condvar wake-up alone costs about as much as a small matmul. The spin is bounded
 * (LOCALSERVE_CPU_SPIN_US, default 100) so idle workers do not steal a shared CPU. */
#define _POSIX_C_SOURCE 200809L
#include "ls_threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ls_common.h"

#define LS_MAX_THREADS 256

static struct {
    pthread_mutex_t submit;  /* one job at a time; a concurrent caller runs serially */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t tid[LS_MAX_THREADS];
    int nworkers;            /* pool threads besides the caller */
    /* (generation << 16) | nth, published once per job. One word so a worker reads both
     * consistently: workers with ith >= nth skip the job without touching anything else,
     * and the caller waits only for the nth - 1 participants (not for sleeping bystanders). */
    _Atomic uint64_t job;
    _Atomic uint64_t closed; /* generation of the last job whose caller has finished its share */
    atomic_int active;       /* workers inside fn right now */
    atomic_int sleepers;
    atomic_int quit;
    ls_task_fn fn;
    void *ctx;
    long spin_ns;
    uint64_t start_gen;
} P = {.submit = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER,
       .cv = PTHREAD_COND_INITIALIZER, .nworkers = -1};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *worker(void *arg) {
    const int ith = (int)(intptr_t)arg;
    uint64_t seen = P.start_gen;  /* not the current word: a job may already be posted */
    for (;;) {
        long t0 = now_ns();
        int spins = 0;
        while ((atomic_load_explicit(&P.job, memory_order_acquire) >> 16) == seen) {
            cpu_relax();
            if ((++spins & 255) == 0 && now_ns() - t0 > P.spin_ns) {
                pthread_mutex_lock(&P.mu);
                atomic_fetch_add(&P.sleepers, 1);
                while ((atomic_load(&P.job) >> 16) == seen && !atomic_load(&P.quit))
                    pthread_cond_wait(&P.cv, &P.mu);
                atomic_fetch_sub(&P.sleepers, 1);
                pthread_mutex_unlock(&P.mu);
                break;
            }
        }
        if (atomic_load(&P.quit)) return NULL;
        uint64_t job = atomic_load_explicit(&P.job, memory_order_acquire);
        seen = job >> 16;
        const int nth = (int)(job & 0xFFFF);
        if (ith >= nth) continue;  /* not ours: fn/ctx may already belong to a later job */
        /* Enter, then check the job is still open: the caller closes it, then waits for
         * active == 0, so either it waits for us or we see it closed (both seq_cst). A worker
         * that was descheduled past the end of its job therefore never touches a later one. */
        atomic_fetch_add(&P.active, 1);
        if (atomic_load(&P.closed) < seen) P.fn(P.ctx, ith, nth);
        atomic_fetch_sub(&P.active, 1);
    }
}

static void wake_all(void) {
    if (atomic_load(&P.sleepers) > 0) {
        pthread_mutex_lock(&P.mu);
        pthread_cond_broadcast(&P.cv);
        pthread_mutex_unlock(&P.mu);
    }
}

static void stop_pool(void) {
    if (P.nworkers <= 0) return;
    atomic_store(&P.quit, 1);
    pthread_mutex_lock(&P.mu);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 0; i < P.nworkers; i++) pthread_join(P.tid[i], NULL);
    P.nworkers = 0;
    atomic_store(&P.quit, 0);
}

static void start_pool(int nthreads) {
    const char *spin = getenv("LOCALSERVE_CPU_SPIN_US");
    P.spin_ns = (spin ? atol(spin) : 100) * 1000L;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > LS_MAX_THREADS) nthreads = LS_MAX_THREADS;
    P.nworkers = 0;
    P.start_gen = atomic_load(&P.job) >> 16;
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&P.tid[P.nworkers], NULL, worker, (void *)(intptr_t)i) != 0) break;
        P.nworkers++;
    }
}

static void ensure_pool(void) {
    if (P.nworkers < 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        start_pool(n > 0 ? (int)n : 1);
    }
}

LS_API void ls_set_num_threads(int n) {
    pthread_mutex_lock(&P.submit);
    if (P.nworkers >= 0) stop_pool();
    start_pool(n);
    pthread_mutex_unlock(&P.submit);
}

LS_API int ls_get_num_threads(void) {
    pthread_mutex_lock(&P.submit);
    ensure_pool();
    int n = P.nworkers + 1;
    pthread_mutex_unlock(&P.submit);
    return n;
}

int ls_pool_threads(void) {
    int n = P.nworkers;
    if (n < 0) return ls_get_num_threads();
    return n + 1;
}

void ls_parallel(ls_task_fn fn, void *ctx, int nth) {
    if (nth > 1 && pthread_mutex_trylock(&P.submit) == 0) {
        ensure_pool();
        if (nth > P.nworkers + 1) nth = P.nworkers + 1;
        if (nth > 1) {
            P.fn = fn;
            P.ctx = ctx;
            uint64_t gen = (atomic_load(&P.job) >> 16) + 1;
            atomic_store_explicit(&P.job, (gen << 16) | (uint64_t)nth, memory_order_seq_cst);
            wake_all();
            fn(ctx, 0, nth);  /* claims work until none is left */
            /* Wait only for workers still inside fn, never for one that has not started
             * (descheduled, or asleep): on a busy machine that wait would be a time slice. */
            atomic_store(&P.closed, gen);
            while (atomic_load_explicit(&P.active, memory_order_acquire) > 0) cpu_relax();
            pthread_mutex_unlock(&P.submit);
            return;
        }
        pthread_mutex_unlock(&P.submit);
    }
    /* Single thread, or the pool is busy with another caller: run the shares serially. */
    if (nth < 1) nth = 1;
    for (int i = 0; i < nth; i++) fn(ctx, i, nth);
}
