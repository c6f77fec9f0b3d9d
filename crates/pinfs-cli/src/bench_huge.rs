//! The 2 MiB-page coverage every bandwidth line of `pinfs bench` prints, from
//! the kernel's own accounting (`/proc/self/smaps`), and the transparent
//! huge page settings a run saw.
//!
//! Bandwidth through a mapping depends on its page size (a 4 KiB page costs
//! a TLB miss, and on a virtual machine a two-dimensional page walk, every
//! 4 KiB), so a figure without the page size it was measured on cannot be
//! compared with another run's. The coverage of a range is the share of the
//! resident memory of the mappings (`smaps` entries) holding it that the
//! kernel maps with 2 MiB entries: `AnonHugePages` for anonymous memory,
//! `ShmemPmdMapped`/`FilePmdMapped` for shared memory and files. A range
//! that is a whole mapping (a pinfs mapping's pieces, a large buffer) is
//! measured exactly; a range inside a larger mapping (a window of the pool)
//! is reported for that whole mapping.

use std::fmt;

/// Limit on the `smaps` text read, so a process with very many mappings
/// cannot make the benchmark allocate without bound.
const MAX_SMAPS_BYTES: usize = 64 << 20;

/// Resident and 2 MiB-mapped bytes of the mappings holding a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Bytes mapped with 2 MiB page-table entries.
    pub huge_bytes: u64,
    /// Resident bytes.
    pub rss_bytes: u64,
}

impl Coverage {
    /// The share in percent (0 when nothing is resident).
    pub fn percent(self) -> f64 {
        if self.rss_bytes == 0 {
            0.0
        } else {
            (self.huge_bytes as f64 * 100.0 / self.rss_bytes as f64).min(100.0)
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "huge {:>3.0}%", self.percent())
    }
}

/// The coverage of the mappings overlapping `addr..addr+len`, or `None`
/// when `/proc/self/smaps` cannot be read.
pub fn coverage(addr: usize, len: usize) -> Option<Coverage> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/proc/self/smaps")
        .ok()?
        .take(MAX_SMAPS_BYTES as u64)
        .read_to_string(&mut text)
        .ok()?;
    Some(parse(&text, addr as u64, addr as u64 + len as u64))
}

/// [`coverage`] over the text of an `smaps` file.
fn parse(smaps: &str, lo: u64, hi: u64) -> Coverage {
    let mut out = Coverage::default();
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a < hi && b > lo;
                continue;
            }
        }
        if !inside {
            continue;
        }
        let kib = || -> u64 {
            line.split_ascii_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => out.rss_bytes += kib() * 1024,
            "AnonHugePages:" | "ShmemPmdMapped:" | "FilePmdMapped:" => {
                out.huge_bytes += kib() * 1024
            }
            _ => {}
        }
    }
    out
}

/// The coverage of a pool's own mapping, as `huge N%` (`huge ?` where the
/// pool is not mapped or `smaps` cannot be read).
pub fn pool(media: &dyn pinfs::media::Media) -> String {
    media
        .mapping()
        .and_then(|m| coverage(m.base.as_ptr() as usize, m.len_bytes as usize))
        .map_or_else(|| "huge ?".to_string(), |c| c.to_string())
}

/// One line naming the transparent huge page settings this run saw.
pub fn settings_line() -> String {
    let get = |name: &str| pinfs::media::mapped::thp_setting(name).unwrap_or_else(|| "-".into());
    format!(
        "transparent huge pages: enabled={}, defrag={}, shmem_enabled={}, hugepages-2048kB/shmem_enabled={}",
        get("enabled"),
        get("defrag"),
        get("shmem_enabled"),
        get("hugepages-2048kB/shmem_enabled"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_mappings_overlapping_the_range() {
        let smaps = "\
1000-3000 rw-s 00000000 00:01 1 /memfd:a (deleted)
Rss:                   8 kB
ShmemPmdMapped:        0 kB
3000-9000 rw-s 00000000 00:01 1 /memfd:a (deleted)
Rss:                  24 kB
ShmemPmdMapped:       16 kB
9000-a000 rw-p 00000000 00:00 0
Rss:                   4 kB
AnonHugePages:         4 kB
";
        let c = parse(smaps, 0x2000, 0x4000);
        assert_eq!(
            c,
            Coverage {
                huge_bytes: 16 << 10,
                rss_bytes: 32 << 10
            }
        );
        assert_eq!(c.to_string(), "huge  50%");
        assert_eq!(parse(smaps, 0x9000, 0x9001).percent(), 100.0);
        assert_eq!(parse(smaps, 0xa000, 0xb000), Coverage::default());
        assert_eq!(Coverage::default().percent(), 0.0);
    }
}
