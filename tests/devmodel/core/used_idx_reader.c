/* A driver-side reader on another CPU: spins on used->idx in shared guest memory and counts the times the
 * index goes backwards.  Used by test_core_publish_race.py.
 *
 * usage: used_idx_reader FD MAP_SIZE IDX_OFFSET CTL_OFFSET CPU
 * The control word (u32 at CTL_OFFSET) is set to 1 when the reader runs; the writer sets it to 2 to stop it.
 * Prints "reads changes backwards stalls" on stdout.
 *
 * A jump of more than half the index space looks like a step back, but it is also what a reader sees when it
 * was not running while the writer published 32,768 indexes or more (preempted on a loaded machine, or its
 * vCPU stolen).  The clock tells the two apart: such a jump after a stall of over STALL_NS since the last
 * periodic clock reading is counted as a stall, not as a step back.  The writer publishes at most a few
 * million indexes a second, so 32,768 of them take over 5 ms; a torn store needs no stall at all.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define STALL_NS 5000000L
#define CLOCK_EVERY 1024

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s FD MAP_SIZE IDX_OFFSET CTL_OFFSET CPU\n", argv[0]);
        return 2;
    }
    int fd = atoi(argv[1]);
    size_t size = strtoul(argv[2], NULL, 0);
    size_t idx_off = strtoul(argv[3], NULL, 0), ctl_off = strtoul(argv[4], NULL, 0);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(atoi(argv[5]), &set);
    if (sched_setaffinity(0, sizeof set, &set)) {
        perror("sched_setaffinity");
        return 1;
    }
    char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    volatile uint16_t *idx = (volatile uint16_t *)(base + idx_off);
    volatile uint32_t *ctl = (volatile uint32_t *)(base + ctl_off);
    unsigned long reads = 0, changes = 0, backwards = 0, stalls = 0;
    uint16_t prev = *idx;
    long clock = now_ns();
    __atomic_store_n(ctl, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(ctl, __ATOMIC_ACQUIRE) != 2) {
        uint16_t v = *idx; /* one 16-bit load, as a driver does */
        if (++reads % CLOCK_EVERY == 0)
            clock = now_ns();
        if (v != prev) {
            changes++;
            if ((uint16_t)(v - prev) > 0x8000) {
                long t = now_ns();
                if (t - clock > STALL_NS)
                    stalls++;
                else
                    backwards++;
                clock = t;
            }
            prev = v;
        }
    }
    printf("%lu %lu %lu %lu\n", reads, changes, backwards, stalls);
    return 0;
}
