#!/usr/bin/python3
"""A high-latency volume for benchmarks: a FUSE passthrough of a directory that waits --delay
before every metadata operation (lookup, getattr, create, mkdir, link, symlink, chmod, rename,
unlink, rmdir, fsync, open, release, utimens, readdir, statfs), as an NFS client waits for the
server. Reads and writes of file content are passed through without delay (NFS batches them).

It serves requests on many threads (libfuse's multithreaded loop; the delay is a sleep that
releases the interpreter), so that its own thread pool is not what limits a parallel client;
the kernel still serializes creates and links within one directory, as it does on NFS.

Usage (root, or a user allowed to mount FUSE):
    bench/slowfs.py BACKING MOUNTPOINT [--delay 1ms]      # stays in the foreground
    fusermount -u MOUNTPOINT                              # to stop it

Needs fusepy (Debian: apt-get install python3-fusepy, imported as `fusepy`; PyPI: fusepy).
"""

import argparse
import errno
import os
import sys
import threading
import time

try:
    import fusepy as fuse
except ImportError:  # PyPI's name
    import fuse


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0

    def tick(self):
        with self.lock:
            self.calls += 1


class SlowPassthrough(fuse.Operations):
    def __init__(self, backing, delay):
        self.backing = os.path.realpath(backing)
        self.delay = delay
        self.counters = Counters()

    def _full(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _wait(self):
        self.counters.tick()
        if self.delay:
            time.sleep(self.delay)

    # Metadata: each waits, as a round trip to a server would.
    def getattr(self, path, fh=None):
        self._wait()
        st = os.lstat(self._full(path))
        return {key: getattr(st, key) for key in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
            "st_uid", "st_ino")}

    def readdir(self, path, fh):
        self._wait()
        return [".", ".."] + os.listdir(self._full(path))

    def readlink(self, path):
        self._wait()
        return os.readlink(self._full(path))

    def mkdir(self, path, mode):
        self._wait()
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        self._wait()
        os.rmdir(self._full(path))

    def unlink(self, path):
        self._wait()
        os.unlink(self._full(path))

    def symlink(self, target, source):
        self._wait()
        os.symlink(source, self._full(target))

    def link(self, target, source):
        self._wait()
        os.link(self._full(source), self._full(target))

    def rename(self, old, new):
        self._wait()
        os.rename(self._full(old), self._full(new))

    def chmod(self, path, mode):
        self._wait()
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        self._wait()
        os.lchown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        self._wait()
        os.utime(self._full(path), times, follow_symlinks=False)

    def statfs(self, path):
        self._wait()
        st = os.statvfs(self._full(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def create(self, path, mode, fi=None):
        self._wait()
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def open(self, path, flags):
        self._wait()
        return os.open(self._full(path), flags)

    def release(self, path, fh):
        self._wait()
        os.close(fh)

    def fsync(self, path, datasync, fh):
        self._wait()
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def truncate(self, path, length, fh=None):
        self._wait()
        with open(self._full(path), "r+b") as f:
            f.truncate(length)

    # Content: passed through.
    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def access(self, path, amode):
        # The kernel checks permissions itself (default_permissions); nothing to ask.
        return 0

    def destroy(self, path):
        print(f"slowfs: {self.counters.calls} metadata operations", file=sys.stderr)


def parse_delay(text):
    text = text.strip()
    for suffix, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--delay", default="1ms", help="wait before each metadata operation")
    args = parser.parse_args()
    fuse.FUSE(
        SlowPassthrough(args.backing, parse_delay(args.delay)),
        args.mountpoint,
        foreground=True,
        nothreads=False,
        allow_other=os.geteuid() == 0,
        default_permissions=True,
        # Attributes and names are cached for a second, as an NFS client caches them
        # (close-to-open consistency); every create, link, chmod and rename still goes out.
        attr_timeout=1.0,
        entry_timeout=1.0,
        negative_timeout=0,
    )


if __name__ == "__main__":
    main()
