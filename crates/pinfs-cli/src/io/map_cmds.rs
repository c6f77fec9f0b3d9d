//! `io` mapping commands (CLI.md "Mappings and pins"): map a range of the
//! current file (`mmap`), store and load through the mapping (`mwrite`,
//! `mread`), flush it to the media (`persist`) and unmap it (`munmap`).
//!
//! `mmap [-r] [-s] [-d] [-F HEXFLAGS] OFF LEN`: `-r` read-only, `-s`
//! `MAP_SYNC`, `-d` `MAP_DIRECT` (both with `MAP_SHARED_VALIDATE`), `-F` raw
//! flag bits decoded as `mmap(2)` would (`MAP_SHARED_VALIDATE` with an
//! unknown bit: `mmap: Operation not supported`). The new mapping becomes the
//! actor's current mapping; offsets of the other commands are relative to it.
//!
//! A load or store that would raise `SIGBUS` (beyond end of file; an
//! invalidated `MAP_DIRECT` mapping; a `MAP_DIRECT` fault that would
//! allocate, convert unwritten blocks or touch a reflinked file) prints
//! `mwrite: SIGBUS` or `mread: SIGBUS` and fails; the actor goes on.
//! `mread` prints nothing without `-v` (as `xfs_io`), the `pread -v` dump
//! with it. `mstat` prints the current mapping's `offset`, `length`, `flags`
//! and `huge` (bytes the kernel maps with 2 MiB pages), one per line.

use pinfs::map::{MapFlags, MAP_DIRECT, MAP_SHARED, MAP_SHARED_VALIDATE, MAP_SYNC, MAP_TYPE};
use pinfs::Errno;

use super::backend::HeldMap;
use super::dump::dump;
use super::parse::{Line, OptSpec, Parsed};
use super::{CmdResult, Ctx};
use crate::error::CmdError;

/// Most bytes one `mwrite`/`mread` moves (a named limit on script input).
pub const MAX_MAP_IO_BYTES: u64 = 1 << 30;

const MMAP: OptSpec = OptSpec {
    flags: "rsd",
    valued: "F",
    long: &[],
    usage: "mmap [-r] [-s] [-d] [-F HEXFLAGS] OFF LEN",
};
const MWRITE: OptSpec = OptSpec {
    flags: "",
    valued: "S",
    long: &[],
    usage: "mwrite [-S BYTE] OFF LEN",
};
const MREAD: OptSpec = OptSpec {
    flags: "v",
    valued: "",
    long: &[],
    usage: "mread [-v] OFF LEN",
};
const PERSIST: OptSpec = OptSpec::plain("persist OFF LEN");
const MUNMAP: OptSpec = OptSpec::plain("munmap");
const MSTAT: OptSpec = OptSpec::plain("mstat");

/// Run `line` if it is a mapping command.
pub fn run(ctx: &mut Ctx<'_>, line: &Line) -> Option<CmdResult> {
    let (spec, cmd): (OptSpec, fn(&mut Ctx<'_>, &Parsed<'_>) -> CmdResult) =
        match line.name.as_str() {
            "mmap" => (MMAP, mmap),
            "mwrite" => (MWRITE, mwrite),
            "mread" => (MREAD, mread),
            "persist" => (PERSIST, persist),
            "munmap" => (MUNMAP, munmap),
            "mstat" => (MSTAT, mstat),
            _ => return None,
        };
    Some(spec.parse(&line.args).and_then(|args| cmd(ctx, &args)))
}

fn range(args: &Parsed<'_>) -> Result<(u64, u64), CmdError> {
    let [off, len] = args.exactly()?;
    Ok((args.size(off)?, args.size(len)?))
}

/// A fault a real load or store would have taken is reported as the signal.
fn sigbus(e: pinfs::Error) -> CmdError {
    match e.errno() {
        Errno::EFAULT => CmdError::Signal("SIGBUS"),
        other => CmdError::Errno(other),
    }
}

fn mmap(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let (offset, len) = range(args)?;
    // The flags, and the same as raw bits for the daemon (which validates
    // them itself).
    let mut raw = match args.value('F') {
        Some(hex) => args.hex_bits(hex)?,
        None => MAP_SHARED,
    };
    let mut flags = MapFlags::from_raw(raw)?;
    if args.flag('s') {
        flags.validate = true;
        flags.sync = true;
        raw = (raw & !MAP_TYPE) | MAP_SHARED_VALIDATE | MAP_SYNC;
    }
    if args.flag('d') {
        flags.validate = true;
        flags.direct = true;
        raw = (raw & !MAP_TYPE) | MAP_SHARED_VALIDATE | MAP_DIRECT;
    }
    if args.flag('r') {
        flags = flags.read_only();
    }
    let mapping = ctx.actor.handle()?.mmap(offset, len, flags, raw)?;
    ctx.actor.mapping = Some(mapping);
    Ok(())
}

fn mapping<'a>(ctx: &'a Ctx<'_>) -> Result<&'a HeldMap, CmdError> {
    ctx.actor
        .mapping
        .as_ref()
        .ok_or(CmdError::Errno(Errno::EINVAL))
}

fn mwrite(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let byte = match args.value('S') {
        Some(s) => args.byte(s)?,
        None => super::file_cmds::DEFAULT_FILL_BYTE,
    };
    let (offset, len) = range(args)?;
    if len > MAX_MAP_IO_BYTES {
        return Err(CmdError::Limit {
            what: "bytes in one mwrite",
            limit: MAX_MAP_IO_BYTES as usize,
        });
    }
    mapping(ctx)?
        .write(offset, &vec![byte; len as usize])
        .map_err(sigbus)
}

fn mread(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let (offset, len) = range(args)?;
    if len > MAX_MAP_IO_BYTES {
        return Err(CmdError::Limit {
            what: "bytes in one mread",
            limit: MAX_MAP_IO_BYTES as usize,
        });
    }
    let mut buf = vec![0u8; len as usize];
    mapping(ctx)?.read(offset, &mut buf).map_err(sigbus)?;
    if args.flag('v') {
        dump(ctx.out, offset, &buf);
    }
    Ok(())
}

fn persist(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let (offset, len) = range(args)?;
    Ok(mapping(ctx)?.persist(offset, len)?)
}

fn mstat(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    let m = mapping(ctx)?.local()?;
    let f = m.flags();
    let mut names = vec![if f.shared { "shared" } else { "private" }];
    for (on, name) in [
        (f.validate, "validate"),
        (f.sync, "sync"),
        (f.direct, "direct"),
        (f.read_only, "read-only"),
        (m.is_invalidated(), "invalidated"),
    ] {
        if on {
            names.push(name);
        }
    }
    let huge = m.huge_mapped_bytes()?;
    let (offset, length) = (m.file_offset(), m.len());
    let flags = names.join(",");
    ctx.out.line(format_args!("offset {offset}"));
    ctx.out.line(format_args!("length {length}"));
    ctx.out.line(format_args!("flags {flags}"));
    ctx.out.line(format_args!("huge {huge}"));
    Ok(())
}

fn munmap(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    match ctx.actor.mapping.take() {
        Some(m) => {
            drop(m);
            Ok(())
        }
        None => Err(CmdError::Errno(Errno::EINVAL)),
    }
}
