//! Copies to and from pool memory: memory that devices and other processes
//! write concurrently, so it is never reached through `&`/`&mut` and never
//! copied with `copy_nonoverlapping`/`copy_from_slice` (whose semantics
//! assume no other writer: the compiler may elide, split, widen or repeat
//! such accesses). vm-memory's rule for guest memory applies: every access
//! to it is volatile (or atomic).
//!
//! - On x86_64 each copy of `SMALL_COPY_BYTES` (32) or more is one
//!   inline-assembly `rep movsb` (`rep stosb` for a fill). The assembly is
//!   opaque to the compiler: it must assume the
//!   block reads and writes exactly the memory its pointers name, once,
//!   and can neither elide it, split it, nor assume the memory stable
//!   around it — the guarantees a volatile access gives — while the CPU
//!   copies at full speed (ERMS: fast-string microcode on every x86_64
//!   since Ivy Bridge).
//! - Smaller copies, and every copy elsewhere: a loop of volatile accesses to
//!   the pool — bytes up to 8-byte alignment of the pool pointer, aligned
//!   `u64` words in the middle — against plain accesses to the Rust buffer.
//!
//! A concurrent writer can make a copy see a mix of old and new bytes (a
//! torn copy); that is the data race SPEC §5.2 allows, and it is defined
//! here because no access is a Rust reference or a non-volatile access.
#![allow(unsafe_code)]

/// Copies shorter than this use the word loop on x86_64 too: below it the
/// start-up cost of `rep movsb` dominates (measured on this project's
/// build machine: 8–16-byte copies 6–10 GB/s by the loop, about memcpy's;
/// 4 KiB and 64 MiB copies by `rep movsb` within noise of memcpy; 33–300
/// bytes 3–13 ns per copy, a half to a seventh of memcpy's rate, still far
/// below the cost of the locks and system calls around any `pread`).
const SMALL_COPY_BYTES: usize = 32;

/// Bytes per word of the word loop.
const WORD: usize = 8;

/// Copy `dst.len()` bytes from pool memory at `src` into `dst`.
///
/// # Safety
///
/// `src..src + dst.len()` must be mapped and readable for the whole call,
/// and must not overlap `dst` (pool memory is never lent out as a Rust
/// slice, so a caller's buffer never does). Others may write the range
/// concurrently: every access to it is volatile, so that is no undefined
/// behaviour (the bytes read may then be torn).
pub unsafe fn copy_from_pool(src: *const u8, dst: &mut [u8]) {
    let (dst, len) = (dst.as_mut_ptr(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if len >= SMALL_COPY_BYTES {
        // SAFETY: forwarded from the caller; `dst` is an exclusive Rust
        // buffer of exactly `len` bytes.
        unsafe { rep_movsb(src, dst, len) };
        return;
    }
    // SAFETY: every address lies in the caller's ranges. Pool-side loads are
    // volatile, words only at 8-byte-aligned pool addresses; stores go to
    // the caller's own buffer (ordinary memory, unaligned writes allowed).
    unsafe {
        let head = src.align_offset(WORD).min(len);
        let mut i = 0;
        while i < head {
            dst.add(i).write(src.add(i).read_volatile());
            i += 1;
        }
        while i + WORD <= len {
            let w = src.add(i).cast::<u64>().read_volatile();
            dst.add(i).cast::<u64>().write_unaligned(w);
            i += WORD;
        }
        while i < len {
            dst.add(i).write(src.add(i).read_volatile());
            i += 1;
        }
    }
}

/// Copy `src` into pool memory at `dst`.
///
/// # Safety
///
/// `dst..dst + src.len()` must be mapped and writable for the whole call,
/// not overlap `src`, and hold no Rust value whose validity the bytes could
/// break (pool memory holds only bytes). Concurrent readers and writers of
/// the range see a torn copy, not undefined behaviour.
pub unsafe fn copy_to_pool(dst: *mut u8, src: &[u8]) {
    let (src, len) = (src.as_ptr(), src.len());
    #[cfg(target_arch = "x86_64")]
    if len >= SMALL_COPY_BYTES {
        // SAFETY: forwarded from the caller; `src` is a Rust buffer of
        // exactly `len` bytes.
        unsafe { rep_movsb(src, dst, len) };
        return;
    }
    // SAFETY: every address lies in the caller's ranges. Pool-side stores
    // are volatile, words only at 8-byte-aligned pool addresses; loads come
    // from the caller's own buffer (unaligned reads allowed).
    unsafe {
        let head = dst.align_offset(WORD).min(len);
        let mut i = 0;
        while i < head {
            dst.add(i).write_volatile(src.add(i).read());
            i += 1;
        }
        while i + WORD <= len {
            let w = src.add(i).cast::<u64>().read_unaligned();
            dst.add(i).cast::<u64>().write_volatile(w);
            i += WORD;
        }
        while i < len {
            dst.add(i).write_volatile(src.add(i).read());
            i += 1;
        }
    }
}

/// Set `len` bytes of pool memory at `dst` to `byte`.
///
/// # Safety
///
/// As for [`copy_to_pool`]: `dst..dst + len` mapped and writable for the
/// whole call.
pub unsafe fn fill_pool(dst: *mut u8, len: usize, byte: u8) {
    #[cfg(target_arch = "x86_64")]
    if len >= SMALL_COPY_BYTES {
        // SAFETY: `rep stosb` stores `al` to `rcx` bytes from `rdi` upwards
        // (the ABI guarantees the direction flag is clear at every call
        // boundary); the caller promises that range is writable. No `nomem`
        // option: the compiler treats the block as writing memory.
        unsafe {
            core::arch::asm!(
                "rep stosb",
                inout("rcx") len => _,
                inout("rdi") dst => _,
                in("al") byte,
                options(nostack, preserves_flags),
            );
        }
        return;
    }
    let pattern = u64::from_ne_bytes([byte; WORD]);
    // SAFETY: every address lies in `dst..dst+len` (caller's promise); the
    // stores are volatile, words only at 8-byte-aligned addresses.
    unsafe {
        let head = dst.align_offset(WORD).min(len);
        let mut i = 0;
        while i < head {
            dst.add(i).write_volatile(byte);
            i += 1;
        }
        while i + WORD <= len {
            dst.add(i).cast::<u64>().write_volatile(pattern);
            i += WORD;
        }
        while i < len {
            dst.add(i).write_volatile(byte);
            i += 1;
        }
    }
}

/// `len` bytes from `src` to `dst` with one `rep movsb`.
///
/// # Safety
///
/// `src..src+len` readable, `dst..dst+len` writable, for the whole call;
/// the two do not overlap.
#[cfg(target_arch = "x86_64")]
unsafe fn rep_movsb(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: `rep movsb` copies `rcx` bytes from `rsi` to `rdi` upwards
    // (direction flag clear per the ABI); the caller promises both ranges.
    // No `nomem`/`readonly` option: the compiler treats the block as
    // reading and writing memory it cannot see into, so the copy happens
    // exactly once, whole, where it is written.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags),
        );
    }
}

/// A range of memory that others write concurrently (a pool mapping, a
/// device's scratch memory), reached only through bounds-checked volatile
/// copies: the one place the checks and the `unsafe` copies are written,
/// for the pool, the soft device's window and scratch page, and the uring
/// device's scratch.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a `Window` is an address range, reached only by volatile copies
// whose concurrent use is the memory's contract (devices and other
// processes write it too); moving or sharing it adds no data race that
// another writer would not already cause.
unsafe impl Send for Window {}
// SAFETY: as for `Send`.
unsafe impl Sync for Window {}

impl Window {
    /// The window over `base..base + len`.
    ///
    /// # Safety
    ///
    /// `base..base + len` must stay mapped, readable and writable for as long
    /// as this window or a copy of it is used, and must never be lent out as
    /// a Rust reference.
    pub unsafe fn new(base: std::ptr::NonNull<u8>, len: usize) -> Window {
        Window { base, len }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its first byte's address (for the kernel, which names memory by
    /// address: fixed buffers, `mmap`).
    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// The address of `offset..offset + len`, when it lies in the window.
    fn at(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let offset = usize::try_from(offset).ok()?;
        if offset.checked_add(len)? > self.len {
            return None;
        }
        Some(self.base.as_ptr().wrapping_add(offset))
    }

    /// Copy window bytes at `offset` into `buf`; `false` (and nothing
    /// copied) when the range passes the window.
    #[must_use]
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(src) = self.at(offset, buf.len()) else {
            return false;
        };
        // SAFETY: `src..src + buf.len()` lies in the window (checked by `at`),
        // mapped for the window's life (`new`'s contract); `buf` is a Rust
        // buffer, never window memory, so they do not overlap.
        unsafe { copy_from_pool(src, buf) };
        true
    }

    /// Copy `data` into the window at `offset`; `false` (and nothing
    /// copied) when the range passes the window.
    #[must_use]
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Some(dst) = self.at(offset, data.len()) else {
            return false;
        };
        // SAFETY: as in `read`, writing.
        unsafe { copy_to_pool(dst, data) };
        true
    }

    /// Fill `len` bytes at `offset` with `byte`; `false` when the range
    /// passes the window.
    #[must_use]
    pub fn fill(&self, offset: u64, len: usize, byte: u8) -> bool {
        let Some(dst) = self.at(offset, len) else {
            return false;
        };
        // SAFETY: `dst..dst + len` lies in the window (checked by `at`).
        unsafe { fill_pool(dst, len, byte) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source and destination alignment within a word, every length
    /// 0..300: the bytes in range are copied, the guard bytes around the
    /// destination are untouched.
    #[test]
    fn copies_and_fills_every_alignment_and_length() {
        const GUARD: u8 = 0xEE;
        let pattern: Vec<u8> = (0..1100u32).map(|i| (i * 7 + 1) as u8).collect();
        for src_off in 0..8 {
            for dst_off in 0..8 {
                for len in (0..300).chain([SMALL_COPY_BYTES - 1, SMALL_COPY_BYTES, 1000]) {
                    let src = &pattern[src_off..src_off + len];
                    // "Pool" side as destination.
                    let mut pool = vec![GUARD; len + 16];
                    // SAFETY: `pool[dst_off..dst_off+len]` is in bounds and
                    // distinct from `src`.
                    unsafe { copy_to_pool(pool.as_mut_ptr().add(dst_off), src) };
                    assert_eq!(
                        &pool[dst_off..dst_off + len],
                        src,
                        "{src_off} {dst_off} {len}"
                    );
                    assert!(pool[..dst_off].iter().all(|&b| b == GUARD));
                    assert!(pool[dst_off + len..].iter().all(|&b| b == GUARD));
                    // And back out of it.
                    let mut out = vec![GUARD; len + 16];
                    // SAFETY: as above, reading `pool`.
                    unsafe {
                        copy_from_pool(pool.as_ptr().add(dst_off), &mut out[src_off..src_off + len])
                    };
                    assert_eq!(&out[src_off..src_off + len], src);
                    assert!(out[..src_off].iter().all(|&b| b == GUARD));
                    assert!(out[src_off + len..].iter().all(|&b| b == GUARD));
                }
            }
            for len in (0..300).chain([SMALL_COPY_BYTES - 1, SMALL_COPY_BYTES, 1000]) {
                let mut pool = vec![GUARD; len + 16];
                // SAFETY: in bounds.
                unsafe { fill_pool(pool.as_mut_ptr().add(src_off), len, 0x5A) };
                assert!(pool[src_off..src_off + len].iter().all(|&b| b == 0x5A));
                assert!(pool[..src_off].iter().all(|&b| b == GUARD));
                assert!(pool[src_off + len..].iter().all(|&b| b == GUARD));
            }
        }
    }

    /// A window copies inside its range and refuses (copying nothing) any
    /// range that passes its end, offsets near `u64::MAX` included.
    #[test]
    fn windows_check_their_bounds() {
        let raw: *mut [u8] = Box::into_raw(vec![0u8; 64].into_boxed_slice());
        let base = std::ptr::NonNull::new(raw.cast::<u8>()).unwrap();
        // SAFETY: the boxed buffer lives until the end of the test and is
        // reached only through the window until it is freed.
        let w = unsafe { Window::new(base, 64) };
        assert!(w.write(60, &[1, 2, 3, 4]));
        assert!(!w.write(61, &[9; 4]), "one byte past the end");
        assert!(!w.write(u64::MAX, &[9]));
        assert!(w.fill(0, 4, 7));
        assert!(!w.fill(63, 2, 7));
        let mut back = [0u8; 8];
        assert!(w.read(56, &mut back));
        assert_eq!(back, [0, 0, 0, 0, 1, 2, 3, 4]);
        assert!(!w.read(57, &mut back));
        assert!(w.read(0, &mut back[..4]));
        assert_eq!(&back[..4], &[7; 4]);
        assert!(w.read(64, &mut []), "an empty range at the end is inside");
        // SAFETY: the window is no longer used; the box is freed once.
        drop(unsafe { Box::from_raw(raw) });
    }
}
