/*
 * slowfs: a high-latency volume for benchmarks. A FUSE passthrough (libfuse 3) of a backing
 * directory that waits SLOWFS_DELAY_US microseconds (default 1000) before every metadata
 * operation (getattr, lookup, create, mkdir, link, symlink, chmod, rename, unlink, rmdir,
 * open, release, fsync, readdir, statfs, utimens, truncate), as an NFS client waits for its
 * server. File content (read, write) passes through without delay, as NFS batches it.
 *
 * Attributes and names are cached by the kernel for a second (an NFS client's close-to-open
 * caching); every create, link, chmod and rename still goes to the "server". Requests are
 * served by up to SLOWFS_THREADS threads (default 256; libfuse's default of 10 would be the
 * bottleneck of a parallel client). The kernel still serializes creates and links within one
 * directory, as it does on NFS.
 *
 * Build: cc -O2 -Wall -o slowfs bench/slowfs.c $(pkg-config fuse3 --cflags --libs)
 *        (Debian: apt-get install libfuse3-dev pkg-config)
 * Run:   SLOWFS_DELAY_US=1000 ./slowfs BACKING MOUNTPOINT -o allow_other,default_permissions
 * Stop:  fusermount3 -u MOUNTPOINT      (prints how many operations waited)
 * Count: SLOWFS_COUNT_FILE=PATH makes it write how many operations waited so far into PATH
 *        ten times a second, for a benchmark that measures a phase.
 *
 * It stays in the foreground. bench/netvol.py builds and runs it.
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int backing = -1;
static long delay_us = 1000;
static atomic_long waits;

/* One round trip to the "server". */
static void wait_rtt(void)
{
    atomic_fetch_add(&waits, 1);
    if (delay_us > 0) {
        struct timespec ts = {delay_us / 1000000, (delay_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
}

/* Write the count of waited operations into `path` ten times a second. */
static void *count_writer(void *path)
{
    for (;;) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", (const char *)path);
        FILE *f = fopen(tmp, "w");
        if (f) {
            fprintf(f, "%ld\n", atomic_load(&waits));
            fclose(f);
            rename(tmp, (const char *)path);
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* FUSE paths start with '/': relative to the backing directory, "." for its top. */
static const char *rel(const char *path)
{
    return path[1] ? path + 1 : ".";
}

static int fail(int r)
{
    return r == -1 ? -errno : r;
}

static void *sf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->use_ino = 1;
    cfg->attr_timeout = 1.0;
    cfg->entry_timeout = 1.0;
    cfg->negative_timeout = 0;
    return NULL;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    wait_rtt();
    if (fi)
        return fail(fstat((int)fi->fh, st));
    return fail(fstatat(backing, rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int sf_readlink(const char *path, char *buf, size_t size)
{
    wait_rtt();
    ssize_t n = readlinkat(backing, rel(path), buf, size - 1);
    if (n == -1)
        return -errno;
    buf[n] = 0;
    return 0;
}

static int sf_mkdir(const char *path, mode_t mode)
{
    wait_rtt();
    return fail(mkdirat(backing, rel(path), mode));
}

static int sf_unlink(const char *path)
{
    wait_rtt();
    return fail(unlinkat(backing, rel(path), 0));
}

static int sf_rmdir(const char *path)
{
    wait_rtt();
    return fail(unlinkat(backing, rel(path), AT_REMOVEDIR));
}

static int sf_symlink(const char *target, const char *path)
{
    wait_rtt();
    return fail(symlinkat(target, backing, rel(path)));
}

static int sf_rename(const char *from, const char *to, unsigned int flags)
{
    wait_rtt();
    return fail(renameat2(backing, rel(from), backing, rel(to), flags));
}

static int sf_link(const char *from, const char *to)
{
    wait_rtt();
    return fail(linkat(backing, rel(from), backing, rel(to), 0));
}

static int sf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    wait_rtt();
    if (fi)
        return fail(fchmod((int)fi->fh, mode));
    return fail(fchmodat(backing, rel(path), mode, 0));
}

static int sf_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    wait_rtt();
    if (fi)
        return fail(fchown((int)fi->fh, uid, gid));
    return fail(fchownat(backing, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int sf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    wait_rtt();
    if (fi)
        return fail(ftruncate((int)fi->fh, size));
    int fd = openat(backing, rel(path), O_WRONLY);
    if (fd == -1)
        return -errno;
    int r = fail(ftruncate(fd, size));
    close(fd);
    return r;
}

static int sf_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    wait_rtt();
    if (fi)
        return fail(futimens((int)fi->fh, tv));
    return fail(utimensat(backing, rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
    wait_rtt();
    int fd = openat(backing, rel(path), fi->flags & ~O_NOFOLLOW);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sf_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    wait_rtt();
    int fd = openat(backing, rel(path), fi->flags, mode);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    return fail((int)pread((int)fi->fh, buf, size, off));
}

static int sf_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)path;
    return fail((int)pwrite((int)fi->fh, buf, size, off));
}

static int sf_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    wait_rtt();
    close((int)fi->fh);
    return 0;
}

static int sf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    wait_rtt();
    return fail(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int sf_statfs(const char *path, struct statvfs *st)
{
    (void)path;
    wait_rtt();
    return fail(fstatvfs(backing, st));
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off;
    (void)fi;
    (void)flags;
    wait_rtt();
    int fd = openat(backing, rel(path), O_RDONLY | O_DIRECTORY);
    if (fd == -1)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        return -errno;
    }
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        struct stat st = {0};
        st.st_ino = e->d_ino;
        st.st_mode = (mode_t)(e->d_type << 12);
        if (fill(buf, e->d_name, &st, 0, 0))
            break;
    }
    closedir(dir);
    return 0;
}

static void sf_destroy(void *data)
{
    (void)data;
    fprintf(stderr, "slowfs: %ld operations waited %ld us each\n", atomic_load(&waits), delay_us);
}

static const struct fuse_operations ops = {
    .init = sf_init,
    .getattr = sf_getattr,
    .readlink = sf_readlink,
    .mkdir = sf_mkdir,
    .unlink = sf_unlink,
    .rmdir = sf_rmdir,
    .symlink = sf_symlink,
    .rename = sf_rename,
    .link = sf_link,
    .chmod = sf_chmod,
    .chown = sf_chown,
    .truncate = sf_truncate,
    .utimens = sf_utimens,
    .open = sf_open,
    .create = sf_create,
    .read = sf_read,
    .write = sf_write,
    .release = sf_release,
    .fsync = sf_fsync,
    .statfs = sf_statfs,
    .readdir = sf_readdir,
    .destroy = sf_destroy,
};

int main(int argc, char *argv[])
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    const char *env = getenv("SLOWFS_DELAY_US");
    if (env)
        delay_us = atol(env);
    const char *threads_env = getenv("SLOWFS_THREADS");
    unsigned int threads = threads_env ? (unsigned int)atoi(threads_env) : 256;
    const char *count_file = getenv("SLOWFS_COUNT_FILE");
    if (count_file) {
        pthread_t writer;
        pthread_create(&writer, NULL, count_writer, (void *)count_file);
        pthread_detach(writer);
    }
    backing = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (backing == -1) {
        perror(argv[1]);
        return 2;
    }
    /* libfuse sees: argv[0] MOUNTPOINT [options]. */
    argv[1] = argv[0];
    struct fuse_args args = FUSE_ARGS_INIT(argc - 1, argv + 1);
    struct fuse_cmdline_opts opts;
    if (fuse_parse_cmdline(&args, &opts) != 0 || !opts.mountpoint) {
        fprintf(stderr, "usage: %s BACKING MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    struct fuse *fuse = fuse_new(&args, &ops, sizeof(ops), NULL);
    if (!fuse)
        return 1;
    int status = 1;
    if (fuse_mount(fuse, opts.mountpoint) == 0) {
        if (fuse_set_signal_handlers(fuse_get_session(fuse)) == 0) {
            struct fuse_loop_config *config = fuse_loop_cfg_create();
            /* libfuse's default (10 threads) would be what limits a parallel client. */
            fuse_loop_cfg_set_max_threads(config, threads);
            fuse_loop_cfg_set_idle_threads(config, threads);
            status = fuse_loop_mt(fuse, config) == 0 ? 0 : 1;
            fuse_loop_cfg_destroy(config);
            fuse_remove_signal_handlers(fuse_get_session(fuse));
        }
        fuse_unmount(fuse);
    }
    fuse_destroy(fuse);
    free(opts.mountpoint);
    fuse_opt_free_args(&args);
    return status;
}
