//! `io` device commands (CLI.md "Devices"): register a range of the current
//! mapping with a device (`dma-reg`), let the device write or read through
//! the registration (`dma-write`, `dma-read`), keep it writing in the
//! background (`dma-stream`, stopped by `dma-stop` or deregistration), and
//! deregister (`dma-dereg`).
//!
//! - `dma-reg [--device soft|uring] [--revoke invalidate|redirect|odp] OFF
//!   LEN` (default `soft`, `invalidate`; offsets relative to the current
//!   mapping) prints `mr ID iova 0xADDR lkey 0xK rkey 0xK`; ID is what the
//!   other commands and the `pins` listing name. Entitlement errors are the
//!   library's (SPEC §6.1): `Operation not supported` (a plain mapping
//!   without the actor's unbreakable lease, a device lacking the mode), `No
//!   such device or address` (the `MAP_DIRECT` lease broken).
//! - `dma-write [-S BYTE] ID OFF LEN`, `dma-read [-v] ID OFF LEN`: the
//!   device's own traffic; each prints the completion status (`ok`,
//!   `protection-error`, ...). A status other than `ok` also fails the
//!   command (`dma-write: protection-error`), so a script's exit status
//!   shows it. `-v` dumps the bytes read as `pread -v` does.
//! - `dma-stream [-S BYTE] ID OFF LEN` (meant to end in ` &`): writes LEN
//!   bytes at OFF over and over until the registration is deregistered or
//!   `dma-stop ID` is given; prints `dma-stream: N writes (ok X,
//!   protection-error Y, ...)`. It runs in the actor that issues it, so give
//!   it its own actor (`@dev dma-stream 1 0 64k &`) if the owner has more to
//!   do meanwhile.
//! - `dma-dereg ID`: only the actor that registered (else `Operation not
//!   permitted`); an actor's registrations end with it, as at process exit.
//!
//! Devices are created once per run, on first use, over the run's pool:
//! `uring` on a pool the kernel cannot pin (a regular file) fails with the
//! kernel's error and a message saying why.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pinfs::dma::{Completion, Device, RevokeMode};
use pinfs::Errno;

use super::backend::{HeldMap, RegHandle};
use super::dump::dump;
use super::parse::{Line, OptSpec, Parsed};
use super::{CmdResult, Ctx, Shared};
use crate::error::{describe, CmdError};

/// Most bytes one `dma-write`/`dma-read`/`dma-stream` moves per request (a
/// named limit on script input).
pub const MAX_DMA_IO_BYTES: u64 = 64 << 20;

/// Most registrations one run holds at once (the library has its own,
/// larger, limit per file system).
pub const MAX_RUN_REGISTRATIONS: usize = 1024;

const DMA_REG: OptSpec = OptSpec {
    flags: "",
    valued: "",
    long: &[("device", 1), ("revoke", 1)],
    usage: "dma-reg [--device soft|uring] [--revoke invalidate|redirect|odp] OFF LEN",
};
const DMA_WRITE: OptSpec = OptSpec {
    flags: "",
    valued: "S",
    long: &[],
    usage: "dma-write [-S BYTE] ID OFF LEN",
};
const DMA_READ: OptSpec = OptSpec {
    flags: "v",
    valued: "",
    long: &[],
    usage: "dma-read [-v] ID OFF LEN",
};
const DMA_STREAM: OptSpec = OptSpec {
    flags: "",
    valued: "S",
    long: &[],
    usage: "dma-stream [-S BYTE] ID OFF LEN",
};
const DMA_STOP: OptSpec = OptSpec::plain("dma-stop ID");
const DMA_DEREG: OptSpec = OptSpec::plain("dma-dereg ID");

/// One registration of the run, shared by the actors: any actor may drive
/// the device's traffic through it; only its owner deregisters it.
#[derive(Debug)]
pub struct RunReg {
    /// The registering actor.
    owner: u64,
    /// The device's kind (`soft`, `uring`), for the `pins` listing.
    device: &'static str,
    /// `None` once deregistered. Each device request holds the lock, so a
    /// deregistration waits for the one in progress and no request starts
    /// after it.
    reg: Mutex<Option<RegHandle>>,
    /// Set by `dma-stop`.
    stop: AtomicBool,
}

/// The run's devices (created on first use) and registrations.
#[derive(Debug, Default)]
pub struct DmaState {
    devices: Mutex<BTreeMap<&'static str, Arc<dyn Device>>>,
    regs: Mutex<BTreeMap<u64, Arc<RunReg>>>,
}

impl DmaState {
    /// Device `kind` of the run, created over the pool on first use.
    fn device(&self, shared: &Shared, kind: &str) -> Result<Arc<dyn Device>, CmdError> {
        let mut devices = self.devices.lock();
        let pool = shared.fs()?.media().clone();
        let name: &'static str = match kind {
            "soft" => "soft",
            "uring" => "uring",
            _ => {
                return Err(CmdError::usage(
                    DMA_REG.usage,
                    format!("\"{kind}\": no such device (soft, uring)"),
                ))
            }
        };
        if let Some(d) = devices.get(name) {
            return Ok(d.clone());
        }
        let made = new_device(name, pool);
        let dev = made.map_err(|e| CmdError::Detail(describe(&e, None)))?;
        devices.insert(name, dev.clone());
        Ok(dev)
    }

    /// The registrations of `owner`, dropped at the actor's end.
    pub fn drop_owner(&self, owner: u64) {
        let mine: Vec<Arc<RunReg>> = {
            let mut regs = self.regs.lock();
            let ids: Vec<u64> = regs
                .iter()
                .filter(|(_, r)| r.owner == owner)
                .map(|(&id, _)| id)
                .collect();
            ids.iter().filter_map(|id| regs.remove(id)).collect()
        };
        for r in mine {
            r.stop.store(true, Ordering::Release);
            drop(r.reg.lock().take());
        }
    }

    /// The device kind of registration `id` (for the `pins` listing).
    pub fn device_of(&self, id: u64) -> Option<&'static str> {
        self.regs.lock().get(&id).map(|r| r.device)
    }

    fn get(&self, id: u64) -> Result<Arc<RunReg>, CmdError> {
        self.regs
            .lock()
            .get(&id)
            .cloned()
            .ok_or(CmdError::Errno(Errno::EINVAL))
    }
}

/// A new device of kind `name` over `pool`.
fn new_device(name: &str, pool: Arc<dyn pinfs::media::Media>) -> pinfs::Result<Arc<dyn Device>> {
    match name {
        "soft" => Ok(Arc::new(pinfs::dma::soft::SoftDevice::new(pool)?)),
        _ => Ok(Arc::new(pinfs::dma::uring::UringDevice::new(pool)?)),
    }
}

/// Run `line` if it is a device command.
pub fn run(ctx: &mut Ctx<'_>, line: &Line) -> Option<CmdResult> {
    let (spec, cmd): (OptSpec, fn(&mut Ctx<'_>, &Parsed<'_>) -> CmdResult) =
        match line.name.as_str() {
            "dma-reg" => (DMA_REG, dma_reg),
            "dma-write" => (DMA_WRITE, dma_write),
            "dma-read" => (DMA_READ, dma_read),
            "dma-stream" => (DMA_STREAM, dma_stream),
            "dma-stop" => (DMA_STOP, dma_stop),
            "dma-dereg" => (DMA_DEREG, dma_dereg),
            _ => return None,
        };
    Some(spec.parse(&line.args).and_then(|args| cmd(ctx, &args)))
}

fn dma_reg(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [off, len] = args.exactly()?;
    let (off, len) = (args.size(off)?, args.size(len)?);
    let kind = args.long("device").map_or("soft", |v| v[0]);
    let mode: RevokeMode = match args.long("revoke") {
        None => RevokeMode::Invalidate,
        Some(v) => v[0].parse().map_err(|_| {
            args.error(format!(
                "\"{}\": no such revocation mode (invalidate, redirect, odp)",
                v[0]
            ))
        })?,
    };
    let shared = ctx.shared;
    if shared.dma.regs.lock().len() >= MAX_RUN_REGISTRATIONS {
        return Err(CmdError::Limit {
            what: "registrations",
            limit: MAX_RUN_REGISTRATIONS,
        });
    }
    let mapping = ctx
        .actor
        .mapping
        .as_ref()
        .ok_or(CmdError::Errno(Errno::EINVAL))?;
    let (reg, device) = match mapping {
        HeldMap::Local(m) => {
            let device = shared.dma.device(shared, kind)?;
            let reg = m
                .register(device, off, len, mode)
                // The file system's refusals read as their strerror text;
                // the device's own (the kernel's, for uring) keep what they
                // say why.
                .map_err(|e| CmdError::Detail(describe(&e, None)))?;
            let device = reg.device().name();
            (RegHandle::Local(reg), device)
        }
        // The daemon registers with its soft device.
        HeldMap::Remote(m) => match kind {
            "soft" => (RegHandle::Remote(m.register(off, len, mode)?), "soft"),
            "uring" => return Err(CmdError::Errno(Errno::EOPNOTSUPP)),
            _ => {
                return Err(CmdError::usage(
                    DMA_REG.usage,
                    format!("\"{kind}\": no such device (soft, uring)"),
                ))
            }
        },
    };
    if let Some(file) = &ctx.actor.file {
        shared.remember_path(file.handle.lease_file(), &file.path);
    }
    let (id, k) = match &reg {
        RegHandle::Local(r) => (r.id().0, r.keys()),
        RegHandle::Remote(r) => (r.id(), r.keys()),
    };
    shared.dma.regs.lock().insert(
        id,
        Arc::new(RunReg {
            owner: ctx.actor.owner.0,
            device,
            reg: Mutex::new(Some(reg)),
            stop: AtomicBool::new(false),
        }),
    );
    ctx.out.line(format!(
        "mr {id} iova {:#x} lkey {:#x} rkey {:#x}",
        k.iova, k.lkey, k.rkey
    ));
    Ok(())
}

/// `ID OFF LEN` of the traffic commands.
fn target(args: &Parsed<'_>) -> Result<(u64, u64, u64), CmdError> {
    let [id, off, len] = args.exactly()?;
    let (id, off, len) = (
        args.id(id, "registration id")?,
        args.size(off)?,
        args.size(len)?,
    );
    if len > MAX_DMA_IO_BYTES {
        return Err(CmdError::Limit {
            what: "bytes in one device request",
            limit: MAX_DMA_IO_BYTES as usize,
        });
    }
    Ok((id, off, len))
}

/// The status line, and the failure for a status other than `ok`.
fn status(ctx: &mut Ctx<'_>, c: Completion) -> CmdResult {
    ctx.out.line(c.name());
    match c {
        Completion::Ok => Ok(()),
        other => Err(CmdError::Detail(other.name())),
    }
}

fn dma_write(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let byte = match args.value('S') {
        Some(s) => args.byte(s)?,
        None => super::file_cmds::DEFAULT_FILL_BYTE,
    };
    let (id, off, len) = target(args)?;
    let r = ctx.shared.dma.get(id)?;
    let c = {
        let g = r.reg.lock();
        let reg = g.as_ref().ok_or(CmdError::Errno(Errno::EINVAL))?;
        reg.write(off, &vec![byte; len as usize])?
    };
    status(ctx, c)
}

fn dma_read(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let verbose = args.flag('v');
    let (id, off, len) = target(args)?;
    let r = ctx.shared.dma.get(id)?;
    let mut buf = vec![0u8; len as usize];
    let c = {
        let g = r.reg.lock();
        let reg = g.as_ref().ok_or(CmdError::Errno(Errno::EINVAL))?;
        reg.read(off, &mut buf)?
    };
    if verbose && c == Completion::Ok {
        dump(ctx.out, off, &buf);
    }
    status(ctx, c)
}

fn dma_stream(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let byte = match args.value('S') {
        Some(s) => args.byte(s)?,
        None => super::file_cmds::DEFAULT_FILL_BYTE,
    };
    let (id, off, len) = target(args)?;
    let r = ctx.shared.dma.get(id)?;
    let data = vec![byte; len as usize];
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut writes = 0u64;
    let mut failed = None;
    while !r.stop.load(Ordering::Acquire) {
        let c = {
            let g = r.reg.lock();
            let Some(reg) = g.as_ref() else {
                break; // deregistered
            };
            reg.write(off, &data)
        };
        match c {
            Ok(c) => {
                writes += 1;
                *counts.entry(c.name()).or_default() += 1;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        // Let the owner's commands (deregistration) in between requests.
        std::thread::yield_now();
    }
    let ok = counts.remove("ok").unwrap_or(0);
    let mut parts = vec![format!("ok {ok}")];
    parts.extend(counts.iter().map(|(k, v)| format!("{k} {v}")));
    ctx.out.line(format!(
        "dma-stream: {writes} writes ({})",
        parts.join(", ")
    ));
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn dma_stop(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [id] = args.exactly()?;
    let id = args.id(id, "registration id")?;
    ctx.shared.dma.get(id)?.stop.store(true, Ordering::Release);
    Ok(())
}

fn dma_dereg(ctx: &mut Ctx<'_>, args: &Parsed<'_>) -> CmdResult {
    let [id] = args.exactly()?;
    let id = args.id(id, "registration id")?;
    let r = ctx.shared.dma.get(id)?;
    if r.owner != ctx.actor.owner.0 {
        return Err(CmdError::Errno(Errno::EPERM));
    }
    ctx.shared.dma.regs.lock().remove(&id);
    r.stop.store(true, Ordering::Release);
    let reg = r.reg.lock().take();
    match reg {
        Some(reg) => Ok(reg.deregister()?),
        None => Err(CmdError::Errno(Errno::EINVAL)),
    }
}
