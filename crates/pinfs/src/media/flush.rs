//! Cache-line write-back and store fences: the CPU half of persistence.
//!
//! A store to persistent memory (or to memory we treat as such: tmpfs,
//! hugetlbfs, memfd) sits in the CPU cache until its line is written back.
//! This module owns the choice of write-back instruction — detected once per
//! process from CPUID, best first: `clwb` (writes back, keeps the line cached),
//! `clflushopt` (writes back and evicts, weakly ordered), `clflush` (writes back
//! and evicts, serialising) — and the `sfence` that orders those write-backs
//! before later stores. Page-cache backed pools persist with `msync` instead;
//! that lives with the mapping in [`super::mapped`].
//!
//! On targets other than x86_64 the module still compiles: [`detect`] reports
//! [`FlushMethod::None`], [`flush_lines`] does nothing and [`fence`] is a
//! sequentially consistent fence.
//!
//! # Safety
//!
//! This module executes cache-maintenance instructions through intrinsics and
//! inline assembly. Two things make that sound:
//!
//! - An instruction is executed only when CPUID says the processor has it
//!   ([`flush_lines`] downgrades any other request to the detected method), so
//!   no undefined-opcode fault and no intrinsic runs without its target feature.
//! - The write-back instructions fault like a one-byte load when the address
//!   is not mapped, so [`flush_lines`] is an `unsafe fn` whose callers promise
//!   the range lies inside a live mapping. The instructions never change the
//!   contents of memory, so they cannot break any Rust aliasing assumption.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use super::FlushMethod;

/// Size of a cache line, the unit of write-back, in bytes.
pub const CACHE_LINE_BYTES: usize = 64;

/// Which write-back instructions this processor has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuFlushFeatures {
    clwb: bool,
    clflushopt: bool,
    clflush: bool,
}

impl CpuFlushFeatures {
    fn best(self) -> FlushMethod {
        if self.clwb {
            FlushMethod::Clwb
        } else if self.clflushopt {
            FlushMethod::Clflushopt
        } else if self.clflush {
            FlushMethod::Clflush
        } else {
            FlushMethod::None
        }
    }
}

/// The processor's write-back instructions, queried once per process.
fn features() -> CpuFlushFeatures {
    static FEATURES: OnceLock<CpuFlushFeatures> = OnceLock::new();
    *FEATURES.get_or_init(query_cpu)
}

// The CPUID intrinsics became safe to call in later Rust releases; the
// workspace's minimum Rust still needs the `unsafe` blocks.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn query_cpu() -> CpuFlushFeatures {
    use core::arch::x86_64::{__cpuid, __cpuid_count, __get_cpuid_max};

    // SAFETY: CPUID exists on every x86_64 processor; leaf 0 is always valid.
    let (max_leaf, _) = unsafe { __get_cpuid_max(0) };
    let clflush = if max_leaf >= 1 {
        // SAFETY: CPUID exists on every x86_64 processor and leaf 1 is at most
        // the maximum basic leaf just reported.
        let leaf1 = unsafe { __cpuid(1) };
        leaf1.edx & (1 << 19) != 0
    } else {
        false
    };
    let (clwb, clflushopt) = if max_leaf >= 7 {
        // SAFETY: CPUID exists on every x86_64 processor and leaf 7 is at most
        // the maximum basic leaf just reported.
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        (leaf7.ebx & (1 << 24) != 0, leaf7.ebx & (1 << 23) != 0)
    } else {
        (false, false)
    };
    CpuFlushFeatures {
        clwb,
        clflushopt,
        clflush,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn query_cpu() -> CpuFlushFeatures {
    CpuFlushFeatures::default()
}

/// The best cache-line write-back instruction of this processor
/// ([`FlushMethod::None`] when it has none, or off x86_64). Detected on first
/// use and cached for the life of the process.
pub fn detect() -> FlushMethod {
    features().best()
}

/// Whether this processor can execute `method` in [`flush_lines`].
/// `Msync` and `None` are not instructions and are never "supported" here.
pub fn cpu_supports(method: FlushMethod) -> bool {
    let f = features();
    match method {
        FlushMethod::Clwb => f.clwb,
        FlushMethod::Clflushopt => f.clflushopt,
        FlushMethod::Clflush => f.clflush,
        FlushMethod::Msync | FlushMethod::None => false,
    }
}

/// Writes back every cache line that overlaps `ptr..ptr+len`, with `method`.
///
/// A cache-line method this processor lacks is replaced by [`detect`]'s
/// choice. `Msync` and `None` do nothing here: page-cache pools are persisted
/// by their mapping, not by the CPU. The write-backs are weakly ordered
/// (except `clflush`); call [`fence`] before relying on them.
///
/// # Safety
///
/// `ptr..ptr+len` must lie inside memory mapped readable in this process for
/// the whole call (the instructions fault like a load on an unmapped address).
/// The range's cache-line cover is then mapped too, because a cache line never
/// crosses a page boundary.
pub unsafe fn flush_lines(ptr: *const u8, len: usize, method: FlushMethod) {
    if len == 0 {
        return;
    }
    let method = if cpu_supports(method) {
        method
    } else {
        match method {
            FlushMethod::Msync | FlushMethod::None => return,
            _ => detect(),
        }
    };
    // The caller guarantees the range is mapped, so `addr + len` cannot wrap.
    let addr = ptr as usize;
    let offset_in_line = addr % CACHE_LINE_BYTES;
    let lines = (offset_in_line + len).div_ceil(CACHE_LINE_BYTES);
    let first_line = ptr.wrapping_sub(offset_in_line);
    // SAFETY: the caller guarantees `ptr..ptr+len` is mapped; its line cover
    // `first_line..first_line + lines * 64` stays within the same pages, and
    // `method` is supported by this processor (checked above).
    unsafe { flush_line_range(first_line, lines, method) }
}

/// Writes back `lines` cache lines starting at the line-aligned `first_line`.
///
/// # Safety
///
/// The lines must be mapped readable, and `method` must be supported by this
/// processor ([`cpu_supports`]).
#[cfg(target_arch = "x86_64")]
unsafe fn flush_line_range(first_line: *const u8, lines: usize, method: FlushMethod) {
    use core::arch::asm;
    use core::arch::x86_64::_mm_clflush;

    let line_at = |i: usize| first_line.wrapping_add(i * CACHE_LINE_BYTES);
    match method {
        FlushMethod::Clwb => {
            for i in 0..lines {
                // SAFETY: the line is mapped and the processor has `clwb`
                // (caller's contract). There is no stable intrinsic for `clwb`,
                // so it is emitted directly; it only writes back the line, uses
                // no stack and leaves the flags alone. No `nomem`: the compiler
                // must not move stores to the line across the write-back.
                unsafe { asm!("clwb [{}]", in(reg) line_at(i), options(nostack, preserves_flags)) };
            }
        }
        FlushMethod::Clflushopt => {
            for i in 0..lines {
                // SAFETY: as for `clwb` above: the line is mapped, the processor
                // has `clflushopt`, and the instruction has no stable intrinsic.
                unsafe {
                    asm!("clflushopt [{}]", in(reg) line_at(i), options(nostack, preserves_flags))
                };
            }
        }
        FlushMethod::Clflush => {
            for i in 0..lines {
                // SAFETY: the line is mapped and the processor has `clflush`
                // (caller's contract); `_mm_clflush`'s only requirement is a
                // readable address.
                unsafe { _mm_clflush(line_at(i)) };
            }
        }
        FlushMethod::Msync | FlushMethod::None => {}
    }
}

/// Off x86_64 there is no write-back instruction to run ([`detect`] says
/// `None`, so no caller gets here with anything else).
///
/// # Safety
///
/// None required; kept `unsafe` to match the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn flush_line_range(_first_line: *const u8, _lines: usize, _method: FlushMethod) {}

/// Orders every write-back issued before it ahead of every store after it:
/// after `fence` returns, the flushed lines are durable.
// `_mm_sfence` became safe to call in later Rust releases; the workspace's
// minimum Rust still needs the `unsafe` block.
#[allow(unused_unsafe)]
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    {
        // Keep the compiler from moving stores across the fence as well.
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: `sfence` is part of SSE, which every x86_64 processor has;
        // it touches no memory operand.
        unsafe { core::arch::x86_64::_mm_sfence() };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CPU_METHODS: [FlushMethod; 3] = [
        FlushMethod::Clwb,
        FlushMethod::Clflushopt,
        FlushMethod::Clflush,
    ];

    #[test]
    fn detect_is_stable_and_supported() {
        let method = detect();
        assert_eq!(method, detect());
        if method != FlushMethod::None {
            assert!(cpu_supports(method), "{method:?} detected but unsupported");
        }
        assert!(!cpu_supports(FlushMethod::Msync));
        assert!(!cpu_supports(FlushMethod::None));
        #[cfg(target_arch = "x86_64")]
        assert_ne!(method, FlushMethod::None, "every x86_64 has clflush");
    }

    #[test]
    fn flush_buffer_with_every_supported_method() {
        // Odd start and length so the range straddles partial lines at both ends.
        let mut buf: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut tried = Vec::new();
        for method in ALL_CPU_METHODS {
            if !cpu_supports(method) {
                continue;
            }
            tried.push(method);
            // Dirty every line, so there is something to write back.
            buf.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            let expected = buf.clone();
            let ptr = buf.as_ptr().wrapping_add(3);
            // SAFETY: `3..3 + 4000` lies inside the 4096-byte buffer, which
            // stays alive and mapped for the call.
            unsafe { flush_lines(ptr, 4000, method) };
            // SAFETY: as above, a 1-byte range inside the buffer.
            unsafe { flush_lines(buf.as_ptr().wrapping_add(63), 1, method) };
            // SAFETY: a zero-length range touches nothing.
            unsafe { flush_lines(buf.as_ptr(), 0, method) };
            fence();
            assert_eq!(buf, expected, "{method:?} changed memory");
        }
        #[cfg(target_arch = "x86_64")]
        assert!(!tried.is_empty());
        eprintln!("flushed with {tried:?}");
    }

    #[test]
    fn non_instruction_methods_do_nothing() {
        let buf = vec![7u8; 256];
        for method in [FlushMethod::Msync, FlushMethod::None] {
            // SAFETY: the range is the whole live buffer.
            unsafe { flush_lines(buf.as_ptr(), buf.len(), method) };
        }
        fence();
        assert!(buf.iter().all(|&b| b == 7));
    }
}
