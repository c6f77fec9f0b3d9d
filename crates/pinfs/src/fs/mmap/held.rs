//! Blocks that broken mappings may still reach (SPEC §4.4 for mappings):
//! a page that could be neither re-placed, nor made to raise `SIGBUS`, nor
//! made inaccessible keeps showing its old pool block, so that block must
//! not be freed (nor reused) until the mapping is torn down. Releases of
//! blocks divert such blocks to the busy list; unmapping the broken mapping
//! releases them.

use super::*;

/// `run` split into pieces, each with whether it lies in one of `sorted`
/// (sorted, merged runs).
fn split_by(run: Run, sorted: &[Run]) -> Vec<(Run, bool)> {
    let mut out = Vec::new();
    let mut at = run.start;
    let first = sorted.partition_point(|h| h.end() <= run.start);
    for h in &sorted[first..] {
        if h.start >= run.end() {
            break;
        }
        let (s, e) = (h.start.max(at), h.end().min(run.end()));
        if s > at {
            out.push((
                Run {
                    start: at,
                    len: s - at,
                },
                false,
            ));
        }
        out.push((
            Run {
                start: s,
                len: e - s,
            },
            true,
        ));
        at = e;
    }
    if at < run.end() {
        out.push((
            Run {
                start: at,
                len: run.end() - at,
            },
            false,
        ));
    }
    out
}

/// Release `run` (blocks nothing refers to any more; `Op::install`, after
/// [`replace`]): to free space through `FsState::release_blocks` — except
/// the blocks a broken mapping may still reach, because one of its pages
/// could not be re-placed: those go to the busy list (neither free nor
/// reusable) until the mapping is torn down (SPEC §4.4 for mappings).
pub(crate) fn release_blocks(st: &mut FsState, held: &Held, run: Run) {
    if held.0.is_empty() {
        st.release_blocks(run);
        return;
    }
    for (part, is_held) in split_by(run, &held.0) {
        if is_held {
            tracing::warn!(target: "pinfs::map", start = part.start, len = part.len, "blocks a broken mapping may still reach stay busy until it is unmapped");
            st.alloc.hold_busy(part);
            st.maps.diverted.push(part);
        } else {
            st.release_blocks(part);
        }
    }
}

/// `run` (source blocks a reflink is about to share) split into the blocks
/// a broken mapping may still reach (or a mapping whose tear-down failed)
/// and the others: reflink copies the first, as it copies pinned blocks,
/// and shares only the others — a stuck page storing into a shared block
/// would change the other file.
///
/// First, still before the commit and under the state lock, every live
/// page that shows one of these blocks writable ([`Kind::Pool`] in a
/// shared writable mapping, in this process or a client's) is re-placed
/// write-protected, as it will show once the blocks are shared — what
/// Linux's writeback does with `page_mkclean` before blocks become shared.
/// A page whose re-placement is not confirmed (a local placement stuck, a
/// client that does not acknowledge) breaks its mapping, which then holds
/// the block: so the split below copies it. The pages re-placed are added
/// to `protected`: if the operation fails, [`unprotect`] re-places them
/// from the unchanged layout.
pub(crate) fn split_held(
    st: &FsState,
    media: &dyn Media,
    ino: u64,
    run: Run,
    protected: &mut Vec<(Arc<MapInner>, u64, u64)>,
) -> (Vec<Run>, Vec<Run>) {
    protect_before_sharing(st, media, ino, run, protected);
    if st.maps.hold_disabled
        || (st.maps.broken.load(Ordering::Acquire) == 0 && st.maps.zombies.is_empty())
    {
        return (Vec::new(), vec![run]);
    }
    let held = st.maps.held_blocks();
    let (mut yes, mut no) = (Vec::new(), Vec::new());
    for (part, is_held) in split_by(run, &held) {
        if is_held {
            yes.push(part);
        } else {
            no.push(part);
        }
    }
    (yes, no)
}

/// Re-place write-protected every page of a live shared writable mapping
/// that shows one of the blocks of `run` (blocks of file `ino`) in place
/// ([`split_held`]); the pages touched, per mapping, go to `protected`. One
/// path for local and client mappings: [`MapInner::show`].
///
/// Only mappings of `ino` are looked at: a page shows a block in place
/// only while the block is not shared, so only its file's mappings can —
/// except broken mappings' stale pages, whose blocks are held already.
fn protect_before_sharing(
    st: &FsState,
    media: &dyn Media,
    ino: u64,
    run: Run,
    protected: &mut Vec<(Arc<MapInner>, u64, u64)>,
) {
    if st.maps.protect_disabled || st.maps.by_id.is_empty() {
        return;
    }
    let ctx = place_ctx(st, media);
    for m in st.maps.of_ino(ino) {
        if !m.served() {
            // Read-only and private mappings never store into the pool.
            continue;
        }
        let mut placed = m.placed.lock();
        if placed.dead {
            continue;
        }
        // What `desired` gives these pages once the blocks are shared.
        let lost = !m.is_remote() && (st.maps.service_lost || st.maps.uffd.is_none());
        let mut want: Vec<(u64, u64, Kind)> = Vec::new();
        for (page, n, kind) in placed.runs.pieces(0, m.pages()) {
            let Kind::Pool { block } = kind else { continue };
            let (s, e) = (block.max(run.start), (block + n).min(run.end()));
            if s >= e {
                continue;
            }
            let kind = if m.flags.direct || lost {
                Kind::Sigbus
            } else {
                Kind::Served { copy_of: Some(s) }
            };
            want.push((page + (s - block), e - s, kind));
        }
        let (Some(&(p0, _, _)), Some(&(last, n, _))) = (want.first(), want.last()) else {
            continue;
        };
        m.show(&mut placed, &want, ctx.as_ref());
        drop(placed);
        protected.push((m, p0, last + n));
    }
}

/// A reflink that write-protected pages ([`split_held`]) failed: they show
/// what the layout in `st` (unchanged) says again.
pub(crate) fn unprotect(
    st: &FsState,
    media: &dyn Media,
    protected: Vec<(Arc<MapInner>, u64, u64)>,
) {
    for (m, p0, p1) in protected {
        place_range(st, media, &m, p0, p1);
    }
}

/// A broken mapping was torn down: the diverted blocks no remaining broken
/// mapping holds leave the busy list (unless a pin reaches them: unpinning
/// releases those).
pub(super) fn release_held(st: &mut FsState) {
    let held = st.maps.held_blocks();
    let diverted = std::mem::take(&mut st.maps.diverted);
    for d in diverted {
        for (part, is_held) in split_by(d, &held) {
            if is_held {
                st.maps.diverted.push(part);
                continue;
            }
            let (_pinned, free) = st.pins.split(part);
            for f in free {
                st.alloc.release_busy(f);
            }
        }
    }
}

/// The last pin on `run` dropped: its busy blocks leave the busy list —
/// except those a broken mapping may still reach (diverted by
/// [`release_blocks`]), which stay until that mapping is torn down
/// ([`release_held`] frees them then).
pub(crate) fn release_unpinned(st: &mut FsState, run: Run) {
    if st.maps.diverted.is_empty() {
        st.alloc.release_busy(run);
        return;
    }
    let mut diverted = st.maps.diverted.clone();
    diverted.sort_by_key(|r| r.start);
    for (part, is_diverted) in split_by(run, &diverted) {
        if !is_diverted {
            st.alloc.release_busy(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn split_by_marks_exactly_the_held_blocks() {
        let held = [run(2, 2), run(6, 1), run(10, 5)];
        assert_eq!(
            split_by(run(0, 12), &held),
            vec![
                (run(0, 2), false),
                (run(2, 2), true),
                (run(4, 2), false),
                (run(6, 1), true),
                (run(7, 3), false),
                (run(10, 2), true),
            ]
        );
        assert_eq!(split_by(run(3, 1), &held), vec![(run(3, 1), true)]);
        assert_eq!(split_by(run(20, 3), &held), vec![(run(20, 3), false)]);
        assert_eq!(split_by(run(0, 3), &[]), vec![(run(0, 3), false)]);
    }
}
