//! `io` commands on files and the namespace (CLI.md "Files"): open and
//! close the actor's current file, read and write it, change its layout
//! (truncate, the fallocate family, reflink), inspect it (stat, fiemap) and
//! the file system (statfs), and the namespace operations.
//!
//! Each command is a thin translation to one library call; output formats
//! follow `xfs_io` where it has the command.
//!
//! One extension to CLI.md: `truncate -p PATH LEN` is `truncate(2)` by path
//! (plain `truncate LEN` is `ftruncate(2)` of the current file). Only the
//! by-path form breaks open leases, as in Linux, so it is what lets a script
//! act as the "truncate" lease breaker of the Linux test project's lease
//! tests.

use pinfs::fs::{FallocMode, FiemapExtent, OpenFlags};

use super::dump::dump;
use super::parse::{OptSpec, Parsed};
use super::{CmdResult, Ctx, OpenFile};
use crate::io::parse::Line;

/// Largest single read or write; bigger requests go in pieces of this size
/// (a multiple of 16, so `pread -v` dumps the same lines either way).
pub const IO_CHUNK_BYTES: u64 = 1 << 20;

/// Mode of files created by `open -c`.
const CREATE_MODE: u32 = 0o644;

/// Mode of directories created by `mkdir`.
const MKDIR_MODE: u32 = 0o755;

/// The byte `pwrite` writes without `-S` (as `xfs_io`).
pub const DEFAULT_FILL_BYTE: u8 = 0xcd;

const OPEN: OptSpec = OptSpec {
    flags: "rwctn",
    valued: "",
    long: &[],
    usage: "open [-r] [-w] [-c] [-t] [-n] PATH",
};
const CLOSE: OptSpec = OptSpec::plain("close");
const PWRITE: OptSpec = OptSpec {
    flags: "",
    valued: "S",
    long: &[],
    usage: "pwrite [-S BYTE] OFF LEN",
};
const PREAD: OptSpec = OptSpec {
    flags: "v",
    valued: "",
    long: &[],
    usage: "pread [-v] OFF LEN",
};
const TRUNCATE: OptSpec = OptSpec {
    flags: "",
    valued: "p",
    long: &[],
    usage: "truncate [-p PATH] LEN",
};
const FALLOC: OptSpec = OptSpec {
    flags: "k",
    valued: "",
    long: &[],
    usage: "falloc [-k] OFF LEN",
};
const FPUNCH: OptSpec = OptSpec::plain("fpunch OFF LEN");
const FZERO: OptSpec = OptSpec {
    flags: "k",
    valued: "",
    long: &[],
    usage: "fzero [-k] OFF LEN",
};
const FCOLLAPSE: OptSpec = OptSpec::plain("fcollapse OFF LEN");
const FINSERT: OptSpec = OptSpec::plain("finsert OFF LEN");
const REFLINK: OptSpec = OptSpec::plain("reflink SRC [SRC_OFF DST_OFF LEN]");
const FSYNC: OptSpec = OptSpec::plain("fsync");
const STAT: OptSpec = OptSpec::plain("stat");
const FIEMAP: OptSpec = OptSpec::plain("fiemap");
const STATFS: OptSpec = OptSpec::plain("statfs");
const UNLINK: OptSpec = OptSpec::plain("unlink PATH");
const MKDIR: OptSpec = OptSpec::plain("mkdir PATH");
const RMDIR: OptSpec = OptSpec::plain("rmdir PATH");
const RENAME: OptSpec = OptSpec::plain("rename FROM TO");
const LS: OptSpec = OptSpec::plain("ls [PATH]");

/// Run `line` if it is a file command.
pub fn run(ctx: &mut Ctx<'_>, line: &Line) -> Option<CmdResult> {
    let (spec, cmd): (OptSpec, fn(&mut Ctx<'_>, &Parsed<'_>) -> CmdResult) =
        match line.name.as_str() {
            "open" => (OPEN, open),
            "close" => (CLOSE, close),
            "pwrite" => (PWRITE, pwrite),
            "pread" => (PREAD, pread),
            "truncate" => (TRUNCATE, truncate),
            "falloc" => (FALLOC, falloc),
            "fpunch" => (FPUNCH, fpunch),
            "fzero" => (FZERO, fzero),
            "fcollapse" => (FCOLLAPSE, fcollapse),
            "finsert" => (FINSERT, finsert),
            "reflink" => (REFLINK, reflink),
            "fsync" => (FSYNC, fsync),
            "stat" => (STAT, stat),
            "fiemap" => (FIEMAP, fiemap),
            "statfs" => (STATFS, statfs),
            "unlink" => (UNLINK, unlink),
            "mkdir" => (MKDIR, mkdir),
            "rmdir" => (RMDIR, rmdir),
            "rename" => (RENAME, rename),
            "ls" => (LS, ls),
            _ => return None,
        };
    Some(spec.parse(&line.args).and_then(|args| cmd(ctx, &args)))
}

fn open(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [path] = args.exactly()?;
    let (read_only, write_only) = (args.flag('r'), args.flag('w'));
    let flags = OpenFlags {
        // `-r -w` together is read-write, as neither.
        read: !write_only || read_only,
        write: !read_only || write_only,
        create: args.flag('c'),
        exclusive: false,
        truncate: args.flag('t'),
        nonblocking: args.flag('n'),
    };
    let handle = ctx.actor.conn.open(path, flags, CREATE_MODE)?;
    ctx.shared.remember_path(handle.lease_file(), path);
    // Replacing the current file closes the previous one; a failed open
    // leaves it alone.
    ctx.actor.file = Some(OpenFile {
        handle,
        path: path.to_string(),
    });
    Ok(())
}

fn close(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    ctx.actor.handle()?;
    ctx.actor.file = None;
    Ok(())
}

/// `OFF LEN` operands.
fn range(args: &Parsed<'_>) -> Result<(u64, u64), crate::error::CmdError> {
    let [off, len] = args.exactly()?;
    Ok((args.size(off)?, args.size(len)?))
}

fn pwrite(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let byte = match args.value('S') {
        Some(s) => args.byte(s)?,
        None => DEFAULT_FILL_BYTE,
    };
    let (offset, len) = range(args)?;
    let handle = ctx.actor.handle()?;
    let buf = vec![byte; len.min(IO_CHUNK_BYTES) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(IO_CHUNK_BYTES);
        let at = pinfs::util::add(offset, done)?;
        let wrote = handle.pwrite(at, &buf[..n as usize])? as u64;
        if wrote == 0 {
            // The library writes something or fails; never spin on a bug.
            return Err(pinfs::Errno::EIO.into());
        }
        done += wrote;
        if wrote < n {
            // A short write (the largest file size reached): like xfs_io,
            // report what was written and stop.
            break;
        }
    }
    ctx.out
        .line(format_args!("wrote {done}/{len} bytes at offset {offset}"));
    Ok(())
}

fn pread(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let verbose = args.flag('v');
    let (offset, len) = range(args)?;
    let handle = ctx.actor.handle()?;
    let mut buf = vec![0u8; len.min(IO_CHUNK_BYTES) as usize];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(IO_CHUNK_BYTES) as usize;
        let at = pinfs::util::add(offset, done)?;
        let n = handle.pread(at, &mut buf[..want])?;
        if verbose {
            dump(ctx.out, at, &buf[..n]);
        }
        done += n as u64;
        if n < want {
            break; // end of file
        }
    }
    ctx.out
        .line(format_args!("read {done}/{len} bytes at offset {offset}"));
    Ok(())
}

/// `truncate LEN` (`ftruncate(2)` of the current file) or `truncate -p PATH
/// LEN` (`truncate(2)`: breaks open leases, then changes the layout).
fn truncate(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [len] = args.exactly()?;
    let len = args.size(len)?;
    match args.value('p') {
        Some(path) => Ok(ctx.actor.conn.truncate_path(path, len)?),
        None => Ok(ctx.actor.handle()?.truncate(len)?),
    }
}

fn fallocate(ctx: &mut Ctx<'_>, args: &Parsed<'_>, mode: FallocMode) -> CmdResult {
    let (offset, len) = range(args)?;
    Ok(ctx.actor.handle()?.fallocate(mode, offset, len)?)
}

fn falloc(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let keep_size = args.flag('k');
    fallocate(ctx, args, FallocMode::Allocate { keep_size })
}

fn fpunch(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    fallocate(ctx, args, FallocMode::PunchHole)
}

fn fzero(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let keep_size = args.flag('k');
    fallocate(ctx, args, FallocMode::ZeroRange { keep_size })
}

fn fcollapse(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    fallocate(ctx, args, FallocMode::CollapseRange)
}

fn finsert(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    fallocate(ctx, args, FallocMode::InsertRange)
}

fn reflink(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let (src, range) = match args.operands.as_slice() {
        [src] => (*src, None),
        [src, src_off, dst_off, len] => (
            *src,
            Some((args.size(src_off)?, args.size(dst_off)?, args.size(len)?)),
        ),
        _ => return Err(args.error("1 or 4 operands expected")),
    };
    let handle = ctx.actor.handle()?;
    // The source is open (read-only) only for the duration of the clone.
    let source = ctx.actor.conn.open(src, OpenFlags::RDONLY, 0)?;
    Ok(handle.reflink(&source, range)?)
}

fn fsync(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    Ok(ctx.actor.handle()?.fsync()?)
}

fn stat(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    let st = ctx.actor.handle()?.stat()?;
    ctx.out.line(format_args!("size {}", st.size));
    ctx.out.line(format_args!("blocks {}", st.blocks));
    ctx.out.line(format_args!("extents {}", st.extents));
    Ok(())
}

/// The flags column of `fiemap`.
fn fiemap_flags(e: &FiemapExtent) -> &'static str {
    match (e.unwritten, e.shared) {
        (true, true) => "unwritten,shared",
        (true, false) => "unwritten",
        (false, true) => "shared",
        (false, false) => "-",
    }
}

fn fiemap(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    for e in ctx.actor.handle()?.fiemap()? {
        ctx.out.line(format_args!(
            "{} {} {} {}",
            e.logical,
            e.physical,
            e.len,
            fiemap_flags(&e)
        ));
    }
    Ok(())
}

fn statfs(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [] = args.exactly()?;
    let st = ctx.actor.conn.statfs()?;
    ctx.out.line(format_args!("blocks {}", st.blocks));
    ctx.out.line(format_args!("free {}", st.free));
    ctx.out.line(format_args!("busy {}", st.busy));
    Ok(())
}

fn unlink(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [path] = args.exactly()?;
    Ok(ctx.actor.conn.unlink(path)?)
}

fn mkdir(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [path] = args.exactly()?;
    Ok(ctx.actor.conn.mkdir(path, MKDIR_MODE)?)
}

fn rmdir(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [path] = args.exactly()?;
    Ok(ctx.actor.conn.rmdir(path)?)
}

fn rename(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [from, to] = args.exactly()?;
    Ok(ctx.actor.conn.rename(from, to)?)
}

fn ls(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let path = match args.operands.as_slice() {
        [] => "/",
        [path] => path,
        _ => return Err(args.error("at most one operand expected")),
    };
    for entry in ctx.actor.conn.readdir(path)? {
        let slash = if entry.is_dir { "/" } else { "" };
        ctx.out.line(format_args!("{}{slash}", entry.name_lossy()));
    }
    Ok(())
}
