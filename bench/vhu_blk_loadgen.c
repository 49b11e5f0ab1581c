/* A guest-free vhost-user-blk front-end that generates load and verifies every byte pattern it reads back.
 *
 * It plays the part of QEMU plus a Linux guest's virtio-blk driver: memfd guest memory shared with the back-end,
 * the vhost-user set-up messages, one split virtqueue with EVENT_IDX, eventfd kicks and calls, and requests built
 * the way the Linux driver builds them (header, data segments, status byte; direct chains or one indirect table
 * per request).  Built and run by bench/blk_loadgen.py; not installed.
 *
 *   vhu_blk_loadgen --fill FILE --size BYTES --seed S
 *       write FILE with the pattern (every 512-byte sector holds its LBA and the seed) and fdatasync it
 *   vhu_blk_loadgen --socket PATH --size BYTES --seed S [--seconds T] [--backend-pid P] [--seg BYTES]
 *                   --job RW:BS:QD:d|i ...
 *       RW is randread, read or write.  Reads check the pattern (seed S); each write job writes with its own
 *       fresh seed and is then read back in full (untimed) and checked.  One JSON object per job on stdout.
 *
 * Verification: every sector carries (lba, seed) in its first 16 bytes and lba ^ seed ^ K in its last 8.  Before
 * a read is submitted those words are poisoned in the buffer; on completion they must hold the pattern of the
 * sector asked for, so a back-end cannot pass by doing nothing or by reading the wrong place.  Timed reads check
 * every sector of requests up to 8 KiB and the first, last and one random sector of larger ones (checking all of
 * a 128 KiB request would make this front-end the bottleneck); the read-back after a write checks every sector.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512
#define QSIZE 256
#define MAX_JOBS 16
#define MAX_QD 128
#define MAX_SEG 64
#define PAT_K 0x5a17c0de5a17c0deULL
#define POISON 0xdeadbeefdeadbeefULL

/* virtio / vhost-user constants */
#define F_INDIRECT 28
#define F_EVENT_IDX 29
#define F_PROTOCOL 30
#define F_VERSION_1 32
#define D_NEXT 1
#define D_WRITE 2
#define D_INDIRECT 4
enum { GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5, SET_VRING_NUM = 8, SET_VRING_ADDR = 9,
       SET_VRING_BASE = 10, SET_VRING_KICK = 12, SET_VRING_CALL = 13, GET_PROTOCOL_FEATURES = 15,
       SET_PROTOCOL_FEATURES = 16, SET_VRING_ENABLE = 18 };

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct used_elem { uint32_t id, len; };

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vhu_blk_loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static uint64_t rng_state;
static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void pattern_sector(uint8_t *p, uint64_t lba, uint64_t seed) {
    uint64_t *w = (uint64_t *)p;
    w[0] = lba;
    w[1] = seed;
    w[SECTOR / 8 - 1] = lba ^ seed ^ PAT_K;
}

static int check_sector(const uint8_t *p, uint64_t lba, uint64_t seed) {
    const volatile uint64_t *w = (const volatile uint64_t *)p;
    return w[0] == lba && w[1] == seed && w[SECTOR / 8 - 1] == (lba ^ seed ^ PAT_K);
}

static void poison_sector(uint8_t *p) {
    uint64_t *w = (uint64_t *)p;
    w[0] = w[1] = w[SECTOR / 8 - 1] = POISON;
}

/* ------------------------------------------------------------------ fill */

static void fill(const char *path, uint64_t size, uint64_t seed) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die("open %s: %s", path, strerror(errno));
    size_t chunk = 1 << 20;
    uint8_t *buf = malloc(chunk);
    if (!buf) die("out of memory");
    for (size_t i = 0; i < chunk; i++) buf[i] = (uint8_t)(0xa5 ^ i);  /* no zero pages, nothing sparse */
    for (uint64_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        for (size_t s = 0; s < n; s += SECTOR) pattern_sector(buf + s, (off + s) / SECTOR, seed);
        for (size_t done = 0; done < n;) {
            ssize_t w = pwrite(fd, buf + done, n - done, off + done);
            if (w <= 0) die("write %s: %s", path, strerror(errno));
            done += w;
        }
    }
    if (fdatasync(fd)) die("fdatasync %s: %s", path, strerror(errno));
    close(fd);
    free(buf);
}

/* ------------------------------------------------------------------ vhost-user */

static int sock = -1;

static void send_msg(uint32_t req, const void *payload, uint32_t size, int fd) {
    uint8_t buf[12 + 512];
    uint32_t hdr[3] = {req, 1, size};
    memcpy(buf, hdr, 12);
    if (size) memcpy(buf + 12, payload, size);
    struct iovec iov = {buf, 12 + size};
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.b;
        mh.msg_controllen = sizeof ctl.b;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    if (sendmsg(sock, &mh, 0) != (ssize_t)(12 + size)) die("sendmsg request %u: %s", req, strerror(errno));
}

static uint64_t recv_u64(uint32_t req) {
    uint8_t buf[20];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = recv(sock, buf + got, sizeof buf - got, 0);
        if (n <= 0) die("back-end closed the connection (waiting for the reply to %u)", req);
        got += n;
    }
    uint32_t hdr[3];
    memcpy(hdr, buf, 12);
    if (hdr[0] != req || hdr[2] != 8) die("unexpected reply %u size %u to request %u", hdr[0], hdr[2], req);
    uint64_t v;
    memcpy(&v, buf + 12, 8);
    return v;
}

static void send_u64(uint32_t req, uint64_t v, int fd) { send_msg(req, &v, 8, fd); }

static void send_state(uint32_t req, uint32_t index, uint32_t num) {
    uint32_t p[2] = {index, num};
    send_msg(req, p, 8, -1);
}

/* ------------------------------------------------------------------ the device, as the driver sees it */

static uint8_t *mem;              /* guest memory, gpa 0 */
static uint64_t mem_size;
static struct desc *dtab;         /* descriptor table */
static volatile uint16_t *avail;  /* flags, idx, ring[QSIZE], used_event */
static volatile uint16_t *used16; /* flags, idx, ...; avail_event at [2 + 4 * QSIZE] */
static volatile struct used_elem *used_ring;
static uint64_t off_ind, off_hdr, off_data;
static int kick_fd, call_fd;
static int event_idx;
static uint16_t avail_idx, last_used;
static uint64_t kicks, waits;

struct slot {
    uint64_t offset;    /* byte offset in the image */
    uint64_t t0;        /* submission time */
    uint32_t check;     /* random sector checked (large reads) */
    int busy;
};
static struct slot slots[MAX_QD];

struct job {
    char rw[16];
    uint32_t bs, qd;
    int indirect;
};

struct runstate {
    const struct job *job;
    uint64_t seed, size, seg, next_off, limit; /* limit: stop after this many bytes (read-back), else by time */
    int check_all, writing, random;
    uint64_t submitted_bytes, ios, bytes, lat_ns, sectors_checked;
    uint32_t nseg;
};

static inline uint16_t load_acquire16(volatile uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release16(volatile uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static uint8_t *slot_data(int i, const struct job *j) { return mem + off_data + (uint64_t)i * j->bs; }
static uint64_t slot_hdr(int i) { return off_hdr + (uint64_t)i * 32; }

/* Build request i (header, nseg data segments, status) and put its head in the avail ring (not published). */
static void submit(struct runstate *rs, int i) {
    const struct job *j = rs->job;
    struct slot *s = &slots[i];
    uint64_t off;
    if (rs->random) {
        off = (rnd() % (rs->size / j->bs)) * j->bs;
    } else {
        off = rs->next_off;
        rs->next_off += j->bs;
        if (rs->next_off + j->bs > rs->size) rs->next_off = 0;
    }
    s->offset = off;
    uint8_t *data = slot_data(i, j);
    uint32_t nsect = j->bs / SECTOR;
    if (rs->writing) {
        for (uint32_t k = 0; k < nsect; k++) pattern_sector(data + (uint64_t)k * SECTOR, off / SECTOR + k, rs->seed);
    } else if (rs->check_all || nsect <= 16) {
        for (uint32_t k = 0; k < nsect; k++) poison_sector(data + (uint64_t)k * SECTOR);
    } else {
        s->check = 1 + rnd() % (nsect - 2);
        poison_sector(data);
        poison_sector(data + (uint64_t)s->check * SECTOR);
        poison_sector(data + (uint64_t)(nsect - 1) * SECTOR);
    }
    uint64_t h = slot_hdr(i);
    uint32_t *hdr = (uint32_t *)(mem + h);
    hdr[0] = rs->writing ? 1 : 0;
    hdr[1] = 0;
    *(uint64_t *)(mem + h + 8) = off / SECTOR;
    mem[h + 16] = 0xff;  /* status, poisoned */

    uint32_t n = rs->nseg + 2;
    struct desc *d;
    uint16_t head;
    if (j->indirect) {
        d = (struct desc *)(mem + off_ind + (uint64_t)i * n * sizeof(struct desc));
        head = i;
        dtab[head] = (struct desc){off_ind + (uint64_t)i * n * sizeof(struct desc), n * sizeof(struct desc),
                                   D_INDIRECT, 0};
    } else {
        d = dtab + (uint64_t)i * n;
        head = i * n;
    }
    uint16_t base = j->indirect ? 0 : head;
    d[0] = (struct desc){h, 16, D_NEXT, base + 1};
    uint32_t seg = rs->seg;
    for (uint32_t k = 0; k < rs->nseg; k++) {
        uint32_t len = k == rs->nseg - 1 ? j->bs - k * seg : seg;
        d[1 + k] = (struct desc){(uint64_t)(data - mem) + (uint64_t)k * seg, len,
                                 (uint16_t)(D_NEXT | (rs->writing ? 0 : D_WRITE)), (uint16_t)(base + 2 + k)};
    }
    d[n - 1] = (struct desc){h + 16, 1, D_WRITE, 0};
    avail[2 + avail_idx % QSIZE] = head;
    avail_idx++;
    s->busy = 1;
    s->t0 = now_ns();
    rs->submitted_bytes += j->bs;
}

static void publish_and_kick(uint16_t old) {
    store_release16(&avail[1], avail_idx);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* avail idx visible before we read the device's avail_event */
    int need;
    if (event_idx) {
        uint16_t ev = used16[2 + 4 * QSIZE];
        need = (uint16_t)(avail_idx - ev - 1) < (uint16_t)(avail_idx - old);
    } else {
        need = !(used16[0] & 1);
    }
    if (need) {
        uint64_t one = 1;
        if (write(kick_fd, &one, 8) != 8) die("kick: %s", strerror(errno));
        kicks++;
    }
}

static void complete(struct runstate *rs, int i, uint64_t t) {
    const struct job *j = rs->job;
    struct slot *s = &slots[i];
    uint8_t status = mem[slot_hdr(i) + 16];
    if (status != 0) die("%s: request at offset %" PRIu64 " failed with status %u", j->rw, s->offset, status);
    if (!rs->writing) {
        const uint8_t *data = slot_data(i, j);
        uint32_t nsect = j->bs / SECTOR;
        uint64_t lba = s->offset / SECTOR;
        if (rs->check_all || nsect <= 16) {
            for (uint32_t k = 0; k < nsect; k++)
                if (!check_sector(data + (uint64_t)k * SECTOR, lba + k, rs->seed))
                    die("%s: wrong data in sector %" PRIu64 " (lba %" PRIu64 " read at offset %" PRIu64 ")",
                        j->rw, lba + k, ((const uint64_t *)(data + (uint64_t)k * SECTOR))[0], s->offset);
            rs->sectors_checked += nsect;
        } else {
            uint32_t ks[3] = {0, s->check, nsect - 1};
            for (int m = 0; m < 3; m++)
                if (!check_sector(data + (uint64_t)ks[m] * SECTOR, lba + ks[m], rs->seed))
                    die("%s: wrong data in sector %" PRIu64 " (read at offset %" PRIu64 ")", j->rw, lba + ks[m],
                        s->offset);
            rs->sectors_checked += 3;
        }
    }
    s->busy = 0;
    rs->ios++;
    rs->bytes += j->bs;
    rs->lat_ns += t - s->t0;
}

static int head_to_slot(const struct runstate *rs, uint32_t head) {
    uint32_t n = rs->nseg + 2;
    int i = rs->job->indirect ? (int)head : (head % n ? -1 : (int)(head / n));
    if (i < 0 || i >= (int)rs->job->qd || !slots[i].busy) die("device returned an unknown head %u", head);
    return i;
}

static double cpu_ticks(int pid) {
    if (pid <= 0) return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open %s: %s", path, strerror(errno));
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) die("read %s", path);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        die("cannot parse %s", path);
    return (double)(ut + st);
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* Run one job until `seconds` pass (or rs->limit bytes are submitted), then wait for what is in flight. */
static void run(struct runstate *rs, double seconds) {
    const struct job *j = rs->job;
    double end = now_s() + seconds;
    int stopping = 0;
    uint16_t old = avail_idx;
    for (uint32_t i = 0; i < j->qd && !(rs->limit && rs->submitted_bytes >= rs->limit); i++) submit(rs, i);
    publish_and_kick(old);
    uint64_t inflight = rs->submitted_bytes / j->bs;
    while (inflight) {
        uint16_t uidx = load_acquire16(&used16[1]);
        if (uidx == last_used) {
            if (event_idx) avail[2 + QSIZE] = last_used;  /* used_event: interrupt me at the next completion */
            else avail[0] = 0;
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (load_acquire16(&used16[1]) != last_used) continue;
            struct pollfd pfd = {call_fd, POLLIN, 0};
            int r = poll(&pfd, 1, 5000);
            if (r == 0) die("%s: no completion for 5 s (%" PRIu64 " requests in flight)", j->rw, inflight);
            if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
            uint64_t v;
            if (r > 0 && read(call_fd, &v, 8) < 0 && errno != EAGAIN) die("read call fd: %s", strerror(errno));
            waits++;
            continue;
        }
        if ((uint16_t)(uidx - last_used) > j->qd) die("used idx jumped from %u to %u", last_used, uidx);
        uint64_t t = now_ns();
        if (!stopping && t * 1e-9 >= end) stopping = 1;
        old = avail_idx;
        while (last_used != uidx) {
            struct used_elem e = used_ring[last_used % QSIZE];
            last_used++;
            int i = head_to_slot(rs, e.id);
            complete(rs, i, t);
            inflight--;
            if (!stopping && !(rs->limit && rs->submitted_bytes >= rs->limit)) {
                submit(rs, i);
                inflight++;
            }
        }
        if (avail_idx != old) publish_and_kick(old);
    }
}

static void parse_job(const char *s, struct job *j) {
    char mode;
    if (sscanf(s, "%15[a-z]:%u:%u:%c", j->rw, &j->bs, &j->qd, &mode) != 4)
        die("bad --job %s (want RW:BS:QD:d|i)", s);
    if (strcmp(j->rw, "randread") && strcmp(j->rw, "read") && strcmp(j->rw, "write")) die("bad rw in %s", s);
    if (j->bs < SECTOR || j->bs % SECTOR || j->bs > (4u << 20)) die("bad block size in %s", s);
    if (j->qd < 1 || j->qd > MAX_QD) die("bad queue depth in %s", s);
    if (mode != 'd' && mode != 'i') die("bad descriptor mode in %s (d: direct, i: indirect)", s);
    j->indirect = mode == 'i';
}

int main(int argc, char **argv) {
    const char *sock_path = NULL, *fill_path = NULL;
    uint64_t size = 0, seed = 1, seg = 0;
    double seconds = 2;
    int backend_pid = 0, njobs = 0;
    struct job jobs[MAX_JOBS];
    for (int a = 1; a < argc; a++) {
        const char *k = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (!v) die("%s needs a value", k);
        a++;
        if (!strcmp(k, "--socket")) sock_path = v;
        else if (!strcmp(k, "--fill")) fill_path = v;
        else if (!strcmp(k, "--size")) size = strtoull(v, NULL, 0);
        else if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 0);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--backend-pid")) backend_pid = atoi(v);
        else if (!strcmp(k, "--seg")) seg = strtoull(v, NULL, 0);
        else if (!strcmp(k, "--job")) {
            if (njobs == MAX_JOBS) die("too many jobs");
            parse_job(v, &jobs[njobs++]);
        } else die("unknown option %s", k);
    }
    if (size < (1 << 20) || size % (1 << 20)) die("--size must be a multiple of 1 MiB");
    if (fill_path) {
        fill(fill_path, size, seed);
        return 0;
    }
    if (!sock_path || !njobs) die("need --socket and at least one --job");
    rng_state = seed ^ now_ns();

    uint64_t max_data = 1 << 20;
    for (int i = 0; i < njobs; i++) {
        uint32_t nseg = seg ? (jobs[i].bs + seg - 1) / seg : 1;
        if (nseg > MAX_SEG) die("--seg too small for %u-byte blocks", jobs[i].bs);
        if (!jobs[i].indirect && jobs[i].qd * (nseg + 2) > QSIZE) die("job %d needs more than %d descriptors", i, QSIZE);
        if ((uint64_t)jobs[i].qd * jobs[i].bs > max_data) max_data = (uint64_t)jobs[i].qd * jobs[i].bs;
        if (jobs[i].bs > size) die("block size larger than the image");
    }
    /* guest memory layout: desc table, avail, used, indirect tables, headers+status, data */
    off_ind = 16384;
    off_hdr = off_ind + MAX_QD * (MAX_SEG + 2) * sizeof(struct desc);
    off_data = (off_hdr + MAX_QD * 32 + 4095) & ~4095ULL;
    mem_size = (off_data + max_data + (2 << 20) - 1) & ~((2ULL << 20) - 1);
    int mfd = memfd_create("vhu-blk-loadgen", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0 || ftruncate(mfd, mem_size) || fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK))
        die("memfd: %s", strerror(errno));
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mem == MAP_FAILED) die("mmap: %s", strerror(errno));
    dtab = (struct desc *)mem;
    avail = (volatile uint16_t *)(mem + 4096);
    used16 = (volatile uint16_t *)(mem + 8192);
    used_ring = (volatile struct used_elem *)(mem + 8192 + 4);

    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof sa.sun_path) die("socket path too long");
    strcpy(sa.sun_path, sock_path);
    if (connect(sock, (struct sockaddr *)&sa, sizeof sa)) die("connect %s: %s", sock_path, strerror(errno));

    send_msg(SET_OWNER, NULL, 0, -1);
    send_msg(GET_FEATURES, NULL, 0, -1);
    uint64_t offered = recv_u64(GET_FEATURES);
    uint64_t want = (1ULL << F_VERSION_1) | (1ULL << F_INDIRECT) | (1ULL << F_EVENT_IDX) | (1ULL << F_PROTOCOL);
    if ((offered & want) != want) die("back-end lacks features: offered %#" PRIx64, offered);
    /* the device's own bits the Linux driver takes if offered: SEG_MAX 2, BLK_SIZE 6, FLUSH 9 */
    uint64_t features = want | (offered & ((1ULL << 2) | (1ULL << 6) | (1ULL << 9)));
    send_msg(GET_PROTOCOL_FEATURES, NULL, 0, -1);
    (void)recv_u64(GET_PROTOCOL_FEATURES);
    send_u64(SET_PROTOCOL_FEATURES, 0, -1);
    send_u64(SET_FEATURES, features, -1);
    event_idx = 1;
    uint64_t region[5] = {1, 0, mem_size, (uint64_t)(uintptr_t)mem, 0};  /* nregions+pad, gpa, size, uva, offset */
    send_msg(SET_MEM_TABLE, region, sizeof region, mfd);
    send_state(SET_VRING_NUM, 0, QSIZE);
    send_state(SET_VRING_BASE, 0, 0);
    uint64_t addr[6];
    uint32_t ai[2] = {0, 0};
    memcpy(addr, ai, 8);
    addr[1] = (uint64_t)(uintptr_t)dtab;
    addr[2] = (uint64_t)(uintptr_t)used16;
    addr[3] = (uint64_t)(uintptr_t)avail;
    addr[4] = 0;
    send_msg(SET_VRING_ADDR, addr, 40, -1);
    kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (kick_fd < 0 || call_fd < 0) die("eventfd: %s", strerror(errno));
    send_u64(SET_VRING_KICK, 0, kick_fd);
    send_u64(SET_VRING_CALL, 0, call_fd);
    send_state(SET_VRING_ENABLE, 0, 1);
    send_msg(GET_PROTOCOL_FEATURES, NULL, 0, -1);  /* a round trip: the back-end has applied all of the above */
    (void)recv_u64(GET_PROTOCOL_FEATURES);

    for (int n = 0; n < njobs; n++) {
        const struct job *j = &jobs[n];
        struct runstate rs = {.job = j, .size = size, .seg = seg && seg < j->bs ? seg : j->bs};
        rs.nseg = (j->bs + rs.seg - 1) / rs.seg;
        rs.writing = !strcmp(j->rw, "write");
        rs.random = !strcmp(j->rw, "randread");
        rs.seed = rs.writing ? rnd() : seed;
        uint64_t kicks0 = kicks, waits0 = waits;
        double cpu0 = cpu_ticks(backend_pid), self0 = self_cpu_s(), t0 = now_s();
        run(&rs, seconds);
        double elapsed = now_s() - t0, cpu1 = cpu_ticks(backend_pid), self1 = self_cpu_s();
        double backend_cpu = (cpu1 - cpu0) / sysconf(_SC_CLK_TCK);
        uint64_t verified = rs.sectors_checked;
        if (rs.writing) {  /* read back everything written, check every sector */
            struct job rb = {"read", j->bs < (128u << 10) ? 128u << 10 : j->bs, 8, j->indirect};
            if ((uint64_t)rb.bs * rb.qd > max_data) rb.bs = j->bs, rb.qd = 1;
            struct runstate vs = {.job = &rb, .size = size, .seg = rb.bs, .nseg = 1, .check_all = 1,
                                  .seed = rs.seed, .limit = rs.bytes < size ? rs.bytes : size};
            vs.limit -= vs.limit % rb.bs;
            if (vs.limit) run(&vs, 1e9);
            verified = vs.sectors_checked;
        }
        printf("{\"rw\": \"%s\", \"bs\": %u, \"qd\": %u, \"indirect\": %s, \"segments\": %u, \"ios\": %" PRIu64
               ", \"bytes\": %" PRIu64 ", \"seconds\": %.6f, \"iops\": %.1f, \"bw_bytes\": %.1f, \"lat_us\": %.3f"
               ", \"backend_cpu_s\": %.3f, \"cpu_us_per_io\": %.3f, \"frontend_cpu\": %.3f, \"kicks\": %" PRIu64
               ", \"waits\": %" PRIu64 ", \"sectors_verified\": %" PRIu64 "}\n",
               j->rw, j->bs, j->qd, j->indirect ? "true" : "false", rs.nseg, rs.ios, rs.bytes, elapsed,
               rs.ios / elapsed, rs.bytes / elapsed, rs.ios ? rs.lat_ns / 1e3 / rs.ios : 0.0, backend_cpu,
               rs.ios && backend_pid > 0 ? backend_cpu * 1e6 / rs.ios : 0.0, (self1 - self0) / elapsed,
               kicks - kicks0, waits - waits0, verified);
        fflush(stdout);
    }
    close(sock);
    return 0;
}
