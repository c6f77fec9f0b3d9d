//! The credentials a FUSE request runs with: the caller's `uid` and `gid`
//! from the request header, its supplementary groups read from
//! `/proc/PID/status` (`Groups:`, as libfuse's `fuse_getgroups` does — the
//! FUSE protocol does not carry them), and the mount's lease owner.
//!
//! Groups matter where the core checks permissions against a group the
//! caller has only as a supplementary one (the kernel's
//! `default_permissions` check already uses the full list, but the core
//! checks again — directory search, `chown` to a group, setgid clearing).
//! Root bypasses those checks, so its groups are not read. A process that
//! is gone, or a `/proc` that cannot be read, gives no groups: the request
//! then runs with fewer rights, never more.

use pinfs::fs::{Cred, Groups, MAX_GROUPS};

/// The credentials of a request from `uid`/`gid`/`pid`, acting as `owner`.
pub fn request_cred(uid: u32, gid: u32, pid: u32, owner: u64) -> Cred {
    let groups = if uid == 0 || pid == 0 {
        Groups::NONE
    } else {
        groups_of(pid)
    };
    Cred {
        uid,
        gid,
        owner,
        groups,
    }
}

/// The supplementary groups of process `pid` (at most [`MAX_GROUPS`]).
fn groups_of(pid: u32) -> Groups {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => parse_groups(&status),
        Err(_) => Groups::NONE,
    }
}

/// The `Groups:` line of a `/proc/PID/status` text.
fn parse_groups(status: &str) -> Groups {
    let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) else {
        return Groups::NONE;
    };
    let gids: Vec<u32> = line
        .split_whitespace()
        .take(MAX_GROUPS)
        .filter_map(|g| g.parse().ok())
        .collect();
    Groups::from_slice(&gids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line_is_parsed() {
        let g = parse_groups("Name:\tx\nGid:\t5\t5\t5\t5\nGroups:\t10 20 30 \nNgid:\t0\n");
        assert!(g.contains(10) && g.contains(20) && g.contains(30));
        assert!(!g.contains(5));
        let none = parse_groups("Groups:\t\n");
        assert!(!none.contains(0));
        assert!(!parse_groups("Name:\tx\n").contains(0));
    }

    #[test]
    fn own_groups_are_read() {
        let me = std::process::id();
        // Whatever this process has: reading it must not fail into a panic,
        // and root reads none.
        let _ = groups_of(me);
        assert_eq!(request_cred(0, 0, me, 9).groups, Groups::NONE);
    }
}
