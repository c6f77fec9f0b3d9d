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

use pinfs::Errno;

use super::parse::{Line, OptSpec, Parsed};
use super::{CmdResult, Ctx};
use crate::error::CmdError;
use crate::stat::{pin_lines, RegLine};

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
        None => file.handle.pin_long_term(off, len, Some(revoke))?,
    };
    ctx.shared
        .remember_path(file.handle.lease_file(), &file.path);
    let id = pin.id();
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
    // Through a daemon: what it lists (every client's pins).
    if let Some(client) = ctx.actor.conn.client() {
        let status = client.status()?;
        for line in ctx.shared.status_pin_lines(&status) {
            ctx.out.line(line);
        }
        return Ok(());
    }
    let fs = ctx.shared.fs()?;
    // Registrations that hold no pin are listed too: on-demand ones, and
    // revoked ones (their device addresses stay reserved until `dma-dereg`).
    let regs: Vec<RegLine> = fs
        .registrations()
        .into_iter()
        .map(|r| RegLine {
            owner: r.owner,
            id: r.id.0,
            ino: r.ino,
            offset: r.offset,
            len: r.len,
            device: r.device.to_string(),
            what: match (r.mode, r.revoked) {
                (pinfs::dma::RevokeMode::Odp, _) => Some("odp"),
                (_, true) => Some("revoked"),
                _ => None,
            },
        })
        .collect();
    let lines = pin_lines(
        fs.pins(),
        &regs,
        |owner| ctx.shared.actor_label(pinfs::lease::OwnerId(owner)),
        |ino| ctx.shared.path_of_ino(ino),
        |id| ctx.shared.dma.device_of(id).unwrap_or("?").to_string(),
    );
    for line in lines {
        ctx.out.line(line);
    }
    Ok(())
}
