//! `pinfs stat`: what a pool (`stat POOL`, mounted in process) or a running
//! daemon (`stat --socket PATH`, from its `Status`) holds — space, leases,
//! pins, registrations, busy extents and, for a daemon, its clients.
//!
//! The listings are shared with `pinfs io` (`leases`, `pins`): one line
//! format per listing, written here and in [`crate::io::lease_cmds`], so a
//! lease or pin reads the same wherever it is printed. Owners are named the
//! same way everywhere: an `io` actor by its `@NAME`, any other daemon
//! client as `@client-ID` (this command's `clients` section gives each id's
//! pid, uid and gid), an owner that is neither as `@owner-N`.

use std::collections::HashMap;
use std::path::Path;

use pinfs::lease::OwnerId;
use pinfs::pin::{PinInfo, PinVia};
use pinfs_client::{Client, Status};

use crate::error::CliError;
use crate::io;
use crate::io::lease_cmds::listing_line;

/// How a daemon client is named where no `io` actor name is known.
pub fn client_name(client_id: u64) -> String {
    format!("@client-{client_id}")
}

/// The label of lease or pin owner `owner` in a daemon's `Status`: the
/// `@NAME` in `names` (client id → actor name) of the client that is that
/// owner, else [`client_name`], else (an owner no client is)
/// [`io::unnamed_actor`].
pub fn owner_label(status: &Status, owner: u64, names: &HashMap<u64, String>) -> String {
    match status.clients.iter().find(|c| c.owner == owner) {
        Some(c) => match names.get(&c.client_id) {
            Some(name) => format!("@{name}"),
            None => client_name(c.client_id),
        },
        None => io::unnamed_actor(OwnerId(owner)),
    }
}

/// A registration as the `pins` listing shows it.
#[derive(Debug)]
pub struct RegLine {
    /// Who registered.
    pub owner: u64,
    /// Its id.
    pub id: u64,
    /// The file.
    pub ino: u64,
    /// First file byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// The device's kind.
    pub device: String,
    /// `odp` (pins nothing) or `revoked`; a registration that is neither is
    /// shown through its pins.
    pub what: Option<&'static str>,
}

/// The `pins` listing, in the style of `/proc/<pid>/file_pins`: per owner a
/// line with its label, then a tab-indented line per pinned range (`PATH
/// START END`, a registration's naming its device and id: `... soft mr 3`)
/// and per registration that holds no pin (`... soft mr 4 odp`, `...
/// revoked`).
pub fn pin_lines(
    mut pins: Vec<PinInfo>,
    regs: &[RegLine],
    label: impl Fn(u64) -> String,
    path_of_ino: impl Fn(u64) -> String,
    device_of: impl Fn(u64) -> String,
) -> Vec<String> {
    pins.sort_by_key(|p| (p.owner, p.id));
    let mut lines: Vec<(u64, u8, u64, String)> = Vec::new();
    for p in pins {
        let end = p.offset + p.len.max(1) - 1;
        let via = match p.via {
            PinVia::Registration(id) => format!(" {} mr {}", device_of(id.0), id.0),
            _ => String::new(),
        };
        let text = format!("\t{} {} {end}{via}", path_of_ino(p.ino), p.offset);
        lines.push((p.owner, 0, p.id.0, text));
    }
    for r in regs {
        let Some(what) = r.what else { continue };
        let text = format!(
            "\t{} {} {} {} mr {} {what}",
            path_of_ino(r.ino),
            r.offset,
            r.offset + r.len.max(1) - 1,
            r.device,
            r.id
        );
        lines.push((r.owner, 1, r.id, text));
    }
    lines.sort_by_key(|l| (l.0, l.1, l.2));
    let mut out = Vec::new();
    let mut last_owner = None;
    for (owner, _, _, text) in lines {
        if last_owner != Some(owner) {
            out.push(label(owner));
            last_owner = Some(owner);
        }
        out.push(text);
    }
    out
}

/// The registrations of a daemon's `Status` as the `pins` listing takes
/// them.
pub fn status_regs(status: &Status) -> Vec<RegLine> {
    status
        .registrations
        .iter()
        .map(|r| RegLine {
            owner: r.owner,
            id: r.id,
            ino: r.ino,
            offset: r.offset,
            len: r.len,
            device: r.device.clone(),
            what: r.revoked.then_some("revoked"),
        })
        .collect()
}

/// The path of inode `ino` in a daemon's `Status` (the path it was last
/// opened by), or `?`.
pub fn status_path_of_ino(status: &Status, ino: u64) -> String {
    status
        .paths
        .iter()
        .find(|(k, _)| k.0 & 0xffff_ffff == ino)
        .map_or_else(|| "?".to_string(), |(_, p)| p.clone())
}

/// The `pins` listing of a daemon's `Status`.
pub fn status_pin_lines(status: &Status, names: &HashMap<u64, String>) -> Vec<String> {
    let regs = status_regs(status);
    pin_lines(
        status.pins.clone(),
        &regs,
        |owner| owner_label(status, owner, names),
        |ino| status_path_of_ino(status, ino),
        |id| {
            status
                .registrations
                .iter()
                .find(|r| r.id == id)
                .map_or_else(|| "?".to_string(), |r| r.device.clone())
        },
    )
}

/// `pinfs stat POOL`: the pool's space, inodes and journal, and its leases
/// (a pool mounted by this process alone has none; a daemon's has).
pub fn stat_pool(fs: &pinfs::fs::Fs) {
    let st = fs.statfs();
    let journal = fs.journal_stats();
    println!("media {}", fs.media().caps());
    println!("bytes {}", fs.media().len_bytes());
    println!("blocks {}", st.blocks);
    println!("free {}", st.free);
    println!("busy {}", st.busy);
    println!("inodes {}", st.inodes);
    println!("free_inodes {}", st.free_inodes);
    println!("journal_commits_since_mount {}", journal.commits);
    println!("journal_record_bytes_since_mount {}", journal.record_bytes);
    // `leases N`, then the `io leases` listing.
    let leases = fs.leases().list();
    println!("leases {}", leases.len());
    for info in &leases {
        let owner = io::unnamed_actor(info.owner);
        println!("{}", listing_line(info, &owner, "?"));
    }
}

/// `pinfs stat --socket PATH`: the daemon's `Status`, one section per kind,
/// each headed by `NAME N` (its count):
///
/// ```text
/// daemon PID
/// blocks N / free N / busy N / inodes N / free_inodes N
/// clients N
/// @client-ID pid PID uid UID gid GID handles N leases N pins N registrations N mappings N [fenced] [disconnected]
/// <TAB>PATH                       (each open file)
/// leases N                        (the `io leases` listing)
/// pins N                          (the `io pins` listing; N pins)
/// registrations N
/// @client-ID DEVICE mr ID PATH START END [revoked]
/// busy_extents N
/// START_BLOCK LEN_BLOCKS
/// ```
pub fn stat_socket(socket: &Path) -> Result<(), CliError> {
    let fail = |e: pinfs::Error| CliError::Socket {
        path: socket.to_path_buf(),
        source: e,
    };
    let client = Client::connect(socket).map_err(fail)?;
    let status = client.status().map_err(fail)?;
    // This connection is itself a client; it is no part of what is shown.
    let me = client.id();
    let names = HashMap::new();
    let st = &status.statfs;
    println!("daemon {}", status.daemon_pid);
    println!("blocks {}", st.blocks);
    println!("free {}", st.free);
    println!("busy {}", st.busy);
    println!("inodes {}", st.inodes);
    println!("free_inodes {}", st.free_inodes);
    let clients: Vec<_> = status
        .clients
        .iter()
        .filter(|c| c.client_id != me)
        .collect();
    println!("clients {}", clients.len());
    for c in clients {
        let mut line = format!(
            "{} pid {} uid {} gid {} handles {} leases {} pins {} registrations {} mappings {}",
            client_name(c.client_id),
            c.pid,
            c.uid,
            c.gid,
            c.handles.len(),
            c.leases.len(),
            c.pins.len(),
            c.registrations.len(),
            c.mappings.len()
        );
        if c.fenced {
            line.push_str(" fenced");
        }
        if c.disconnected {
            line.push_str(" disconnected");
        }
        println!("{line}");
        for h in &c.handles {
            println!("\t{}", h.path);
        }
    }
    println!("leases {}", status.leases.len());
    for info in &status.leases {
        let label = owner_label(&status, info.owner.0, &names);
        println!("{}", listing_line(info, &label, status.path_of(info.file)));
    }
    println!("pins {}", status.pins.len());
    for line in status_pin_lines(&status, &names) {
        println!("{line}");
    }
    println!("registrations {}", status.registrations.len());
    for r in &status.registrations {
        println!(
            "{} {} mr {} {} {} {}{}",
            owner_label(&status, r.owner, &names),
            r.device,
            r.id,
            status_path_of_ino(&status, r.ino),
            r.offset,
            r.offset + r.len.max(1) - 1,
            if r.revoked { " revoked" } else { "" }
        );
    }
    println!("busy_extents {}", status.busy_extents.len());
    for run in &status.busy_extents {
        println!("{} {}", run.start, run.len);
    }
    Ok(())
}
