/* A small persistent pthread pool: one parallel region per kernel call. */
#ifndef LS_THREADS_H
#define LS_THREADS_H

typedef void (*ls_task_fn)(void *ctx, int ith, int nth);

/* Runs fn(ctx, i, nth) for i in [0, nth) on the pool (the caller runs i = 0) and waits.
 * nth is clamped to the pool size; nth <= 1 calls fn directly.
 * Contract: fn must claim its work dynamically (an atomic counter in ctx) so that any subset
 * of the shares finishes the job: the caller's share runs until no work is left, and shares
 * whose thread has not started by then are skipped, not waited for. */
void ls_parallel(ls_task_fn fn, void *ctx, int nth);

/* Threads a kernel may use (the caller's thread included). */
int ls_pool_threads(void);

#endif
