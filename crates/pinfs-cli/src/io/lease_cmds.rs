//! `io` lease commands (CLI.md "Leases"): set and release open and layout
//! leases on the actor's current file (`lease`), ask for the handle's open
//! lease (`getlease`), wait for a notification addressed to the actor
//! (`wait-break`), and list every lease (`leases`).
//!
//! They translate to the lease engine ([`pinfs::lease`]) through the
//! current file's [`pinfs::fs::Handle::lease_file`] and
//! [`pinfs::fs::Handle::lease_handle`], with the actor as owner.
//!
//! # Output
//!
//! * `getlease`: `read`, `write` or `none` — the *target* type while a break
//!   is pending, as `F_GETLEASE`.
//! * `wait-break MS`: one line per notification, `break FILE WHAT`, FILE
//!   being the path the file was last opened by:
//!   - `break FILE read` / `break FILE none`: the lease is being broken;
//!     downgrade it to a read lease, or release it (the target type);
//!   - `break FILE refused`: someone's layout change was refused with
//!     `ETXTBSY` because of the actor's unbreakable layout lease (which is
//!     unchanged);
//!   - `break FILE lost` / `break FILE downgraded`: lease-break-time passed
//!     and the lease was forcibly removed (or, for a pending downgrade,
//!     downgraded to a read lease).
//!
//!   No notification within MS fails with `ETIMEDOUT` (`wait-break:
//!   Connection timed out`).
//! * `leases`: one line per lease, by id, in the style of `/proc/locks`:
//!   `ID LEASE|LAYOUT TYPE ACTIVE|BREAKING ACTOR PATH START END`, e.g.
//!   `1 LAYOUT READ ACTIVE @h /f 0 EOF`. TYPE is `READ`, `WRITE` or
//!   `UNLCK` — the target type, so a lease being removed shows `UNLCK` as in
//!   `/proc/locks` — with `+EXCL` for an unbreakable layout lease
//!   (`READ+EXCL`); END is the last byte of the range or `EOF`.

use std::time::Duration;

use pinfs::lease::{BreakEvent, ByteRange, EventKind, LeaseInfo, LeaseRequest, LeaseType};
use pinfs::Errno;

use super::parse::{Line, OptSpec, Parsed};
use super::{CmdResult, Ctx, Shared};
use crate::error::CmdError;

/// Longest `wait-break` accepted, in milliseconds (an hour): a typo should
/// not hang a script for days.
pub const MAX_WAIT_BREAK_MS: u64 = 3_600_000;

const LEASE: OptSpec = OptSpec {
    flags: "",
    valued: "",
    long: &[("layout", 0), ("exclusive", 0), ("range", 2)],
    usage: "lease read|write|none [--layout] [--exclusive] [--range OFF LEN]",
};
const GETLEASE: OptSpec = OptSpec::plain("getlease");
const WAIT_BREAK: OptSpec = OptSpec::plain("wait-break MS");
const LEASES: OptSpec = OptSpec::plain("leases");

/// Run `line` if it is a lease command.
pub fn run(ctx: &mut Ctx<'_>, line: &Line) -> Option<CmdResult> {
    let (spec, cmd): (OptSpec, fn(&mut Ctx<'_>, &Parsed<'_>) -> CmdResult) =
        match line.name.as_str() {
            "lease" => (LEASE, lease),
            "getlease" => (GETLEASE, getlease),
            "wait-break" => (WAIT_BREAK, wait_break),
            "leases" => (LEASES, leases),
            _ => return None,
        };
    Some(spec.parse(&line.args).and_then(|args| cmd(ctx, &args)))
}

/// The word for a lease type in `getlease` and `wait-break` output.
fn type_word(ty: LeaseType) -> &'static str {
    match ty {
        LeaseType::Read => "read",
        LeaseType::Write => "write",
        LeaseType::Unlock => "none",
    }
}

/// The request `lease` makes: `read`/`write`/`none` are `F_RDLCK`/`F_WRLCK`/
/// `F_UNLCK`; `--layout` adds `F_LAYOUT`; `--exclusive` is `F_LAYOUT |
/// F_EXCLUSIVE` (unbreakable; implies `--layout`); `--range` limits a
/// layout lease (or a layout release) to a byte range.
fn lease_request(args: &Parsed<'_>) -> Result<LeaseRequest, CmdError> {
    let [ty] = args.exactly()?;
    let unbreakable = args.long("exclusive").is_some();
    let layout = unbreakable || args.long("layout").is_some();
    let req = match (ty, layout) {
        ("read", false) => LeaseRequest::read(),
        ("write", false) => LeaseRequest::write(),
        ("none", false) => LeaseRequest::unlock(),
        ("read", true) => LeaseRequest::layout_shared(),
        ("write", true) => LeaseRequest::layout_exclusive(),
        // Releases the handle's layout leases (over the range, if given);
        // `--exclusive` changes nothing about a release.
        ("none", true) => LeaseRequest::layout_unlock(),
        _ => return Err(args.error(format!("bad lease type \"{ty}\" (read, write or none)"))),
    };
    let req = if unbreakable && ty != "none" {
        req.unbreakable()
    } else {
        req
    };
    match args.long("range") {
        None => Ok(req),
        Some(_) if !layout => {
            Err(args.error("--range needs --layout (open leases cover the whole file)"))
        }
        Some([off, len]) => Ok(req.range(ByteRange::from_len(args.size(off)?, args.size(len)?))),
        Some(_) => Err(args.error("--range needs OFF LEN")),
    }
}

fn lease(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let req = lease_request(args)?;
    let owner = ctx.actor.owner();
    let file = ctx.actor.file()?;
    let key = file.handle.lease_file();
    file.handle.set_lease(owner, req)?;
    // The listing names the file as its holder opened it.
    ctx.shared.remember_path(key, &file.path);
    Ok(())
}

fn getlease(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    let handle = ctx.actor.handle()?;
    let ty = handle.get_lease()?;
    ctx.out.line(type_word(ty));
    Ok(())
}

/// The `wait-break` line of one notification.
fn event_line(shared: &Shared, ev: &BreakEvent) -> String {
    let what = match (ev.kind, ev.target) {
        (EventKind::Break, target) => type_word(target),
        (EventKind::Refused, _) => "refused",
        (EventKind::Lost, LeaseType::Read) => "downgraded",
        (EventKind::Lost, _) => "lost",
    };
    format!("break {} {what}", shared.path_of(ev.lease.file))
}

fn wait_break(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [ms] = args.exactly()?;
    let ms = args.millis(ms)?;
    if ms > MAX_WAIT_BREAK_MS {
        return Err(args.error(format!("at most {MAX_WAIT_BREAK_MS} ms")));
    }
    let event = ctx
        .actor
        .conn
        .recv_event(Duration::from_millis(ms))?
        .ok_or(CmdError::Errno(Errno(libc::ETIMEDOUT)))?;
    ctx.out.line(event_line(ctx.shared, &event));
    Ok(())
}

/// One line of the `leases` listing: `ID LEASE|LAYOUT TYPE ACTIVE|BREAKING
/// ACTOR PATH START END`.
pub fn listing_line(info: &LeaseInfo, actor: &str, path: &str) -> String {
    format!(
        "{} {} {} {} {actor} {path} {}",
        info.id,
        info.kind,
        info.type_label(),
        info.state,
        info.range
    )
}

fn leases(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    // Through a daemon: what it lists (every client's leases), with the
    // paths it knows.
    if let Some(client) = ctx.actor.conn.client() {
        let status = client.status()?;
        for info in &status.leases {
            let label = ctx.shared.client_label(&status, info.owner.0);
            ctx.out
                .line(listing_line(info, &label, status.path_of(info.file)));
        }
        return Ok(());
    }
    for info in ctx.shared.fs()?.leases().list() {
        let line = listing_line(
            &info,
            &ctx.shared.actor_label(info.owner),
            &ctx.shared.path_of(info.file),
        );
        ctx.out.line(line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinfs::lease::{FileKey, HandleId, LeaseId, LeaseKind, LeaseState, OwnerId};

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn request(s: &str) -> Result<LeaseRequest, CmdError> {
        let w = words(s);
        lease_request(&LEASE.parse(&w)?)
    }

    #[test]
    fn lease_requests() {
        let r = request("read").unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Read, false, false)
        );
        let r = request("write --layout").unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Write, true, false)
        );
        let r = request("read --exclusive --range 4k 8k").unwrap();
        assert_eq!(
            (r.ty, r.layout, r.unbreakable),
            (LeaseType::Read, true, true)
        );
        assert_eq!(r.range, ByteRange::new(4096, 12288));
        let r = request("none --layout").unwrap();
        assert_eq!(
            (r.ty, r.layout, r.range),
            (LeaseType::Unlock, true, ByteRange::WHOLE)
        );
        assert!(request("read --range 0 4k").is_err());
        assert!(request("shared").is_err());
        assert!(request("read write").is_err());
        assert!(request("read --range 0").is_err());
        assert!(request("read --layout --range x 4k").is_err());
    }

    #[test]
    fn listing_lines() {
        let info = LeaseInfo {
            id: LeaseId(3),
            kind: LeaseKind::Layout,
            ty: LeaseType::Read,
            target: LeaseType::Unlock,
            unbreakable: false,
            state: LeaseState::Breaking,
            owner: OwnerId(2),
            handle: HandleId(7),
            file: FileKey(9),
            range: ByteRange::from_len(0, 4096),
        };
        assert_eq!(
            listing_line(&info, "@h", "/f"),
            "3 LAYOUT UNLCK BREAKING @h /f 0 4095"
        );
        let info = LeaseInfo {
            kind: LeaseKind::Lease,
            target: LeaseType::Read,
            unbreakable: true,
            state: LeaseState::Active,
            range: ByteRange::WHOLE,
            ..info
        };
        assert_eq!(
            listing_line(&info, "@h", "/f"),
            "3 LEASE READ+EXCL ACTIVE @h /f 0 EOF"
        );
    }
}
