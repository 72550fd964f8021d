/*
 * clockstep: an LD_PRELOAD shim that shifts a process's wall clock by an
 * offset another process can change while it runs (testkit::clock).
 *
 * Debian's libfaketime cannot start redis-server (its initialisation
 * recurses through jemalloc's first clock_gettime call), so the tests use
 * this instead. Only the wall clock moves: CLOCK_REALTIME (and its coarse
 * variant), gettimeofday() and time(). The monotonic clocks are untouched,
 * which is exactly an NTP step or a VM resume as a running server sees it.
 *
 * The offset is a signed 64-bit count of milliseconds at the start of the
 * file named by $CLOCKSTEP_FILE, mapped shared, so a write by the test is
 * seen by the next clock read. Calls before the real functions are found go
 * straight to the kernel, which never recurses.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static volatile int64_t *offset_ms;

__attribute__((constructor)) static void clockstep_init(void) {
    const char *path = getenv("CLOCKSTEP_FILE");
    if (path != NULL) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
            close(fd);
            if (p != MAP_FAILED) offset_ms = (volatile int64_t *)p;
        }
    }
    real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
}

static int raw_clock_gettime(clockid_t id, struct timespec *ts) {
    if (real_clock_gettime != NULL) return real_clock_gettime(id, ts);
    return (int)syscall(SYS_clock_gettime, id, ts);
}

static void shift(struct timespec *ts) {
    if (offset_ms == NULL) return;
    int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + *offset_ms * 1000000;
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc = raw_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts);
    return rc;
}

/* glibc declares tv non-null; POSIX callers may still pass NULL. */
#pragma GCC diagnostic ignored "-Wnonnull-compare"
int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv != NULL) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
