//! The pages of git packs that reading objects has mapped into this process, handed back.
//!
//! gix reads packs (and indexes a received one) through memory maps. Every page of a pack that
//! an object was read from stays mapped into the process, and counts in its RSS and against a
//! container's memory limit, for as long as the pack is open, which for a cache is always.
//! Without this, a first publish would end up holding the whole pack (80 MB for 100,000 files)
//! and a sidecar would keep it for the rest of its life. The pages are clean copies of files on
//! local disk, so they can be given back at any time: the next read faults them in again.
//!
//! What a read maps cannot be predicted: most blobs of a pack are deltas, and reading one reads
//! its chain of bases (up to 50 of them, anywhere in the pack), each fault mapping up to 64 KiB
//! around it. So pages are handed back by time, every [`EVERY`] while objects are read: by the
//! readers themselves ([`release_if_due`], called by [`super::RepoBlobs`] and the tree walk),
//! and by a thread of its own while gix receives and indexes a pack ([`while_running`]). Pack
//! indices (`.idx`) are kept: every object lookup reads them, and they are small (28 bytes per
//! object).
//!
//! The only packs this process maps are its caches', so every mapped file of a directory named
//! `objects/pack` is one of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often pages are handed back while objects are read: what is mapped in this time is what
/// the process holds (measured: 15-25 MiB at 16 threads on local disk, against the whole pack).
/// A hand-back (a read of /proc/self/maps and a system call per pack) costs tens of
/// microseconds, under 1% of the time between two.
const EVERY: Duration = Duration::from_millis(5);
/// The same for the thread of [`while_running`]: gix hashes a received pack through its map at
/// memory speed (a GB/s), faster than objects are read one by one.
const WHILE_RUNNING_EVERY: Duration = Duration::from_millis(1);

/// Hand back every resident page of the packs this process maps.
///
/// `MADV_DONTNEED` on a read-only map of a file drops the process's pages and leaves the file's
/// content in the page cache, where the next read finds it again (`MADV_PAGEOUT` would evict it
/// from the cache too, and re-reading a pack's delta bases from disk made a first publish five
/// times slower). It would zero anonymous memory, though, so the ranges it is given must still
/// be pack maps when it runs, not only when /proc/self/maps was read. They are: gix unmaps a
/// pack only when its store is dropped, since every handle dagsnap reads through keeps packs
/// mapped ([`keep_mapped`]), and stores are dropped by the thread that runs the cycle (or the
/// operator command), never while this runs: it runs on that thread, or on threads it waits for
/// (the build's workers). [`while_running`] runs beside gix's own work, which maps and unmaps
/// the pack it receives, and uses `MADV_PAGEOUT` instead.
pub(crate) fn release() {
    release_with(libc::MADV_DONTNEED);
}

fn release_with(advice: libc::c_int) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for (start, end) in pack_maps(&maps) {
        // SAFETY: MADV_PAGEOUT never changes what memory holds (reclaimed pages are read or
        // swapped in again on the next access), whatever is mapped at [start, end) by now.
        // MADV_DONTNEED is only passed by `release`, when [start, end) is a read-only map of a
        // pack file for the whole call (see there), whose pages it only drops: reads of it
        // fault the same content in again, so no reference into it sees a change.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot hand back pack pages");
            return;
        }
    }
}

/// After a build: hand back the pack pages its last reads mapped, and the heap the build freed.
///
/// glibc keeps freed memory in its arenas for reuse; after a build of 100,000 files that is
/// some 20 MiB (entry lists, the workers' buffers) an idle loop would hold until the next build.
/// `malloc_trim` returns the free pages of every arena to the kernel.
pub(crate) fn give_back() {
    release();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes the arenas'
    // locks like any allocation does.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `repo`, reading through a handle that keeps every pack gix maps for as long as it lives,
/// even one deleted from disk (see [`release`] for why).
pub(crate) fn keep_mapped(mut repo: gix::Repository) -> gix::Repository {
    repo.objects.prevent_pack_unload();
    repo
}

/// Hand back pack pages if [`EVERY`] has passed since they last were: for readers of objects.
pub(crate) fn release_if_due() {
    static START: OnceLock<Instant> = OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = START.get_or_init(Instant::now).elapsed().as_micros() as u64;
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= EVERY.as_micros() as u64
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        release();
    }
}

/// Run `work` while another thread hands back pack pages every [`WHILE_RUNNING_EVERY`], and
/// once more when it is done: for gix's own reads of a pack, which no caller can count.
///
/// The thread runs beside gix, which unmaps the pack it received when it has indexed it, so it
/// uses `MADV_PAGEOUT`, which is safe whatever is mapped at an address by the time it runs.
/// The pages of a pack just received are not yet written back, so the kernel unmaps them and
/// keeps them in the page cache, as `MADV_DONTNEED` would. (Kernels before 5.4 refuse it; the
/// pages then stay until the fetch ends.)
pub(crate) fn while_running<T>(work: impl FnOnce() -> T) -> T {
    let done = Mutex::new(false);
    let wake = Condvar::new();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut finished = done.lock().unwrap_or_else(|e| e.into_inner());
            while !*finished {
                finished = match wake.wait_timeout(finished, WHILE_RUNNING_EVERY) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
                release_with(libc::MADV_PAGEOUT);
            }
        });
        let result = work();
        *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        result
    });
    release();
    result
}

/// The address ranges in `maps` (the text of /proc/self/maps) of files in an `objects/pack`
/// directory, index files excepted.
fn pack_maps(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // "start-end perms offset dev inode path": only the path holds a '/'.
            let path = &line[line.find('/')?..];
            // A pack that a consolidation deleted may still be mapped.
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            let (dir, name) = path.rsplit_once('/')?;
            if !dir.ends_with("/objects/pack") || name.ends_with(".idx") {
                return None;
            }
            let mut fields = line.split(' ');
            let (start, end) = fields.next()?.split_once('-')?;
            // gix maps packs read-only; anything writable is not one of its maps.
            if fields.next()?.contains('w') {
                return None;
            }
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pack_data_is_handed_back() {
        let maps = "\
55d0a000-55d0b000 r--p 00000000 fd:01 123 /usr/bin/dagsnap
7f0000000000-7f0000100000 r--s 00000000 fd:01 456 /c/repo.git/objects/pack/pack-1.pack
7f0000200000-7f0000300000 r--s 00000000 fd:01 457 /c/repo.git/objects/pack/pack-1.idx
7f0000400000-7f0000500000 r--s 00000000 fd:01 458 /c/sub/objects/pack/.tmpA1b2C3
7f0000600000-7f0000700000 r--s 00000000 fd:01 459 /c/repo.git/objects/pack/pack-3.pack (deleted)
7f0000800000-7f0000900000 rw-p 00000000 00:00 0 
7f0000a00000-7f0000b00000 r--s 00000000 fd:01 460 /c/my objects/pack/x.pack
7f0000c00000-7f0000d00000 r--p 00000000 fd:01 461 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000e00000-7f0000f00000 rw-s 00000000 fd:01 462 /c/repo.git/objects/pack/pack-4.pack
";
        assert_eq!(
            pack_maps(maps),
            vec![
                (0x7f0000000000, 0x7f0000100000),
                (0x7f0000400000, 0x7f0000500000),
                (0x7f0000600000, 0x7f0000700000),
            ]
        );
    }

    #[test]
    fn handing_back_pages_keeps_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let pack_dir = dir.path().join("objects/pack");
        std::fs::create_dir_all(&pack_dir).unwrap();
        let path = pack_dir.join("pack-test.pack");
        let content: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is private to this test and not changed while mapped.
        let map = unsafe { gix::odb::pack::MMap::map(&file) }.unwrap();
        assert_eq!(&map[..], &content[..]);
        release();
        assert_eq!(&map[..], &content[..]);
        let doubled = while_running(|| map.iter().map(|b| *b as u64).sum::<u64>());
        assert_eq!(doubled, content.iter().map(|b| *b as u64).sum::<u64>());
    }
}
