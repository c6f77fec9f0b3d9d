//! `io` pin commands (CLI.md "Mappings and pins"): take a long-term pin
//! (`pin OFF LEN`, prints `pin ID`), drop one (`unpin ID`), and list every
//! pin per owner (`pins`), in the style of `/proc/<pid>/file_pins`: a line
//! `@ACTOR`, then one tab-indented line `PATH START END` per pinned range
//! (END is the last byte, as in the `leases` listing).
//!
//! A long-term pin needs an entitlement (SPEC §4.2): with a current mapping
//! (offsets relative to it), that mapping must be `MAP_DIRECT`, or a shared
//! writable mapping under the actor's unbreakable layout lease over the
//! range (`lease read --layout --exclusive`: `mmap`, lease, pin); without a
//! mapping, that lease over the current file's range. Else `pin:
//! Operation not permitted`. Pins belong to the actor: closing the file does not drop them;
//! `unpin` or the actor's end does. Under `--policy revoke`, a layout change
//! still blocked by a pin at lease-break-time revokes it: it disappears from
//! `pins` and its blocks are freed (nothing but the actor held them).

use pinfs::pin::{PinInfo, PinVia};
use pinfs::Errno;

use super::parse::{Line, OptSpec, Parsed};
use super::{CmdResult, Ctx};
use crate::error::CmdError;

const PIN: OptSpec = OptSpec::plain("pin OFF LEN");
const UNPIN: OptSpec = OptSpec::plain("unpin ID");
const PINS: OptSpec = OptSpec::plain("pins");

/// Run `line` if it is a pin command.
pub fn run(ctx: &mut Ctx<'_>, line: &Line) -> Option<CmdResult> {
    let (spec, cmd): (OptSpec, fn(&mut Ctx<'_>, &Parsed<'_>) -> CmdResult) =
        match line.name.as_str() {
            "pin" => (PIN, pin),
            "unpin" => (UNPIN, unpin),
            "pins" => (PINS, pins),
            _ => return None,
        };
    Some(spec.parse(&line.args).and_then(|args| cmd(ctx, &args)))
}

fn pin(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [off, len] = args.exactly()?;
    let (off, len) = (args.size(off)?, args.size(len)?);
    let file = ctx.actor.file()?;
    // A pin taken here has no device behind it: revoking it (the `revoke`
    // policy) has nothing to stop, so the revocation completes at once.
    let revoke: pinfs::pin::RevokeFn = std::sync::Arc::new(|| Ok(()));
    // Through the current mapping (MAP_DIRECT, or shared under the actor's
    // unbreakable lease; offsets relative to it) when there is one; else the current file's range (exclusive layout lease).
    let pin = match &ctx.actor.mapping {
        Some(m) => m.pin_long_term(off, len, Some(revoke))?,
        None => file.handle.local()?.pin_long_term(off, len, Some(revoke))?,
    };
    ctx.shared
        .remember_path(file.handle.lease_file(), &file.path);
    let id = pin.id().0;
    ctx.actor.pins.insert(id, pin);
    ctx.out.line(format!("pin {id}"));
    Ok(())
}

fn unpin(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [id] = args.exactly()?;
    let id = args.id(id, "pin id")?;
    // Only the owner drops its pins (SPEC §4.2).
    match ctx.actor.pins.remove(&id) {
        Some(pin) => {
            drop(pin);
            Ok(())
        }
        None => Err(CmdError::Errno(Errno::EINVAL)),
    }
}

/// The `pins` listing: per owner, its pinned ranges — a registration's
/// pins name its device and id (`/f 0 65535 soft mr 3`) — then its
/// on-demand registrations, which pin nothing (`... soft mr 4 odp`).
fn pins(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    let mut all: Vec<PinInfo> = ctx.shared.fs()?.pins();
    all.sort_by_key(|p| (p.owner, p.id));
    let mut lines: Vec<(u64, u8, u64, String)> = Vec::new();
    for p in all {
        let end = p.offset + p.len - 1;
        let via = match p.via {
            PinVia::Registration(id) => format!(
                " {} mr {}",
                ctx.shared.dma.device_of(id.0).unwrap_or("?"),
                id.0
            ),
            _ => String::new(),
        };
        let text = format!(
            "\t{} {} {}{via}",
            ctx.shared.path_of_ino(p.ino),
            p.offset,
            end
        );
        lines.push((p.owner, 0, p.id.0, text));
    }
    // Registrations that hold no pin are listed too: on-demand ones, and
    // revoked ones (their device addresses stay reserved until `dma-dereg`).
    for r in ctx.shared.fs()?.registrations() {
        let what = match (r.mode, r.revoked) {
            (pinfs::dma::RevokeMode::Odp, _) => "odp",
            (_, true) => "revoked",
            _ => continue,
        };
        let text = format!(
            "\t{} {} {} {} mr {} {what}",
            ctx.shared.path_of_ino(r.ino),
            r.offset,
            r.offset + r.len - 1,
            r.device,
            r.id.0
        );
        lines.push((r.owner, 1, r.id.0, text));
    }
    lines.sort_by_key(|l| (l.0, l.1, l.2));
    let mut last_owner = None;
    for (owner, _, _, text) in lines {
        if last_owner != Some(owner) {
            ctx.out
                .line(ctx.shared.actor_label(pinfs::lease::OwnerId(owner)));
            last_owner = Some(owner);
        }
        ctx.out.line(text);
    }
    Ok(())
}
