//! How many kernel areas (VMAs) one mapping may need: each run of pages
//! placed in a mapping is one, and `mmap(MAP_FIXED)` fails once the process
//! reaches `vm.max_map_count` — so `mmap` of a range too fragmented for its
//! share fails up front with `ENOMEM`, instead of a later re-placement
//! failing.

use super::*;

/// One mapping may need at most `vm.max_map_count / MAP_COUNT_SHARE` areas
/// (each run of pages placed is one kernel VMA), minus what the process
/// already uses: the rest is left for re-placements after layout changes
/// (which split runs) and for the rest of the process.
pub const MAP_COUNT_SHARE: u64 = 2;

/// `vm.max_map_count` when `/proc/sys/vm/max_map_count` cannot be read
/// (the kernel's default).
const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;

/// A mapping needing at most this many runs is not checked against the
/// budget: reading `/proc/self/maps` would cost more than the mapping, and
/// this many areas cannot exhaust `vm.max_map_count` on its own.
const BUDGET_FREE_RUNS: u64 = 256;

/// The number of areas (kernel VMAs) one more mapping may use: a share of
/// `vm.max_map_count` minus the areas the process maps now.
fn placement_budget() -> Result<u64> {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_MAX_MAP_COUNT);
    let maps =
        std::fs::read("/proc/self/maps").map_err(|e| Error::media("read /proc/self/maps", e))?;
    let used = maps.iter().filter(|&&b| b == b'\n').count() as u64;
    Ok((max / MAP_COUNT_SHARE).saturating_sub(used))
}

/// `ENOMEM` when placing `m` as its file's layout stands would need more
/// areas than the budget allows (a fragmented file: each run of pages is a
/// VMA; `mmap(MAP_FIXED)` fails once `vm.max_map_count` is reached, and a
/// mapping that cannot be re-placed keeps blocks busy).
pub(super) fn check_budget(st: &FsState, m: &MapInner) -> Result<()> {
    // The file's extents and holes under the range: what `desired` places,
    // but counted without its per-block walk (an mmap of a large file must
    // not pay twice for its size). Shared blocks may split a few more.
    let fb0 = m.file_offset / BLOCK_SIZE;
    let runs = match st.inode(m.ino) {
        Ok(inode) => inode.extents.segments(fb0, fb0 + m.pages()).len() as u64,
        Err(_) => 1,
    };
    let budget = match st.maps.budget_override {
        Some(b) => b,
        None if runs <= BUDGET_FREE_RUNS => return Ok(()),
        None => placement_budget()?,
    };
    if runs <= budget {
        return Ok(());
    }
    tracing::warn!(target: "pinfs::map", ino = m.ino, runs, budget, "mmap refused: the range is too fragmented for vm.max_map_count");
    Err(Error::media(
        format!(
            "mmap of inode {} needs {runs} separate areas, over the budget of {budget} \
             (vm.max_map_count / {MAP_COUNT_SHARE}, minus the areas in use)",
            m.ino
        ),
        std::io::Error::from_raw_os_error(libc::ENOMEM),
    ))
}
