//! How many kernel areas (VMAs) mappings may need: each run of pages placed
//! in a mapping is one, and `mmap(MAP_FIXED)` fails once the process
//! reaches `vm.max_map_count` — so `mmap` fails up front with `ENOMEM` when
//! the live mappings together would need more than their share, instead of
//! a later re-placement failing (and breaking a mapping).
//!
//! Areas are counted with the rule that places them ([`desired`]: a new run
//! wherever what a page shows changes, including a shared writable
//! mapping's every change between shared and private blocks inside one
//! extent), charged to the mapping at `mmap` and refunded at munmap; the
//! running total across live mappings never passes the budget, however
//! small each mapping is.

use super::*;

/// All mappings of one file system together may need at most
/// `vm.max_map_count / MAP_COUNT_SHARE` areas; a mapping needing many is
/// also checked against what the process maps now. The rest is left for
/// re-placements after layout changes (which split runs) and for the rest
/// of the process.
pub const MAP_COUNT_SHARE: u64 = 2;

/// `vm.max_map_count` when `/proc/sys/vm/max_map_count` cannot be read
/// (the kernel's default).
const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;

/// A mapping needing at most this many areas is checked only against the
/// running total, not against the areas the process maps now: reading
/// `/proc/self/maps` would cost more than the mapping.
const BUDGET_FREE_RUNS: u64 = 256;

/// `vm.max_map_count`, read once.
fn max_map_count() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_MAX_MAP_COUNT)
    })
}

/// The areas all live mappings together may need.
fn total_budget(maps: &MapTable) -> u64 {
    maps.budget_override
        .unwrap_or_else(|| max_map_count() / MAP_COUNT_SHARE)
}

/// The number of areas (kernel VMAs) one more mapping may use by what the
/// process maps now: a share of `vm.max_map_count` minus the areas in use.
fn process_budget() -> Result<u64> {
    let maps =
        std::fs::read("/proc/self/maps").map_err(|e| Error::media("read /proc/self/maps", e))?;
    let used = maps.iter().filter(|&&b| b == b'\n').count() as u64;
    Ok((max_map_count() / MAP_COUNT_SHARE).saturating_sub(used))
}

fn refuse(m: &MapInner, runs: u64, budget: u64, charged: u64) -> Error {
    tracing::warn!(target: "pinfs::map", ino = m.ino, runs, budget, charged, "mmap refused: over the vm.max_map_count budget");
    Error::media(
        format!(
            "mmap of inode {} needs {runs} separate areas; live mappings use {charged} \
             of a budget of {budget} areas (vm.max_map_count / {MAP_COUNT_SHARE})",
            m.ino
        ),
        std::io::Error::from_raw_os_error(libc::ENOMEM),
    )
}

/// The areas placing `m` as its file's layout stands needs, or `ENOMEM`
/// when the live mappings' total would pass the budget (or, for a mapping
/// needing many, the process's areas would). The caller charges the count
/// with [`charge_budget`] when it inserts the mapping.
pub(super) fn check_budget(st: &FsState, m: &MapInner) -> Result<u64> {
    // The same rule as the placement itself, so that no mapping needs more
    // areas than it was charged for (a shared-writable mapping splits at
    // every shared/private change inside an extent).
    let runs = desired(st, m, 0, m.pages(), false).len().max(1) as u64;
    let budget = total_budget(&st.maps);
    let charged = st.maps.charged;
    if charged.saturating_add(runs) > budget {
        return Err(refuse(m, runs, budget, charged));
    }
    if st.maps.budget_override.is_none() && runs > BUDGET_FREE_RUNS {
        let left = process_budget()?;
        if runs > left {
            return Err(refuse(m, runs, left, charged));
        }
    }
    Ok(runs)
}

/// Charge `runs` areas to `m` (under the state lock that inserts it):
/// `ENOMEM` if the total would pass the budget (another mapping was charged
/// since [`check_budget`]).
pub(super) fn charge_budget(maps: &mut MapTable, m: &MapInner, runs: u64) -> Result<()> {
    let budget = total_budget(maps);
    if maps.charged.saturating_add(runs) > budget {
        return Err(refuse(m, runs, budget, maps.charged));
    }
    maps.charged += runs;
    maps.charges.insert(m.id, runs);
    Ok(())
}

/// The mapping `id` is gone: its areas return to the budget.
pub(super) fn refund_budget(maps: &mut MapTable, id: u64) {
    if let Some(runs) = maps.charges.remove(&id) {
        maps.charged = maps.charged.saturating_sub(runs);
    }
}
