//! FUSE node ids and attributes: how a [`Node`] (inode number and
//! generation) travels as the kernel's 64-bit node id, and how a [`Stat`]
//! becomes a [`FileAttr`].
//!
//! The kernel's root is node id 1 (`FUSE_ROOT_ID`), which is always
//! [`Fs::root`](pinfs::fs::Fs::root). Every other node id is
//! `generation << 32 | ino`: inode numbers are below `2^32` (a pool has at
//! most [`MAX_INODES`](pinfs::format::MAX_INODES) = `2^24` slots, checked
//! at mount), so the two halves never overlap, and no id but the root's
//! has `ino` 1 (`ROOT_INO`) in its low half — so no node id is 0 or 1 by
//! accident. The id carries the generation, so a request for a file that
//! was deleted and whose slot was reused names the old file and fails with
//! `ESTALE` in the core, never reaching the new one. Node ids need no table:
//! `forget` has nothing to drop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use pinfs::format::{S_IFDIR, S_IFMT};
use pinfs::fs::{Node, Stat};

/// The kernel's id of the root directory (`FUSE_ROOT_ID`).
pub const FUSE_ROOT_ID: u64 = 1;

// Inode numbers fit the low half of a node id.
const _: () = assert!(pinfs::format::MAX_INODES < 1 << 32);

/// The node id the kernel is given for `node` (`root` is the file system's
/// root directory).
pub fn node_id(node: Node, root: Node) -> u64 {
    if node == root {
        FUSE_ROOT_ID
    } else {
        u64::from(node.generation) << 32 | node.ino
    }
}

/// The [`Node`] the kernel means by node id `id`.
pub fn node_of_id(id: u64, root: Node) -> Node {
    if id == FUSE_ROOT_ID {
        root
    } else {
        Node {
            ino: id & u64::from(u32::MAX),
            generation: (id >> 32) as u32,
        }
    }
}

/// The FUSE file type of a `mode`'s `S_IFMT` bits.
pub fn file_type(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        m if m == libc::S_IFLNK => FileType::Symlink,
        m if m == libc::S_IFIFO => FileType::NamedPipe,
        m if m == libc::S_IFCHR => FileType::CharDevice,
        m if m == libc::S_IFBLK => FileType::BlockDevice,
        m if m == libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The attributes the kernel is given for `stat`. `ino` is the inode number
/// (what `stat(2)` shows), not the node id.
pub fn attr(stat: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(stat.ino),
        size: stat.size,
        // 512-byte units, as stat(2) counts them.
        blocks: stat.blocks.saturating_mul(pinfs::format::BLOCK_SIZE / 512),
        atime: time(stat.atime_ns),
        mtime: time(stat.mtime_ns),
        ctime: time(stat.ctime_ns),
        crtime: time(stat.ctime_ns),
        kind: file_type(stat.mode),
        perm: (stat.mode & 0o7777) as u16,
        nlink: stat.nlink,
        uid: stat.uid,
        gid: stat.gid,
        // The kernel's `fuse_attr.rdev` is 32 bits, in the kernel's
        // `new_encode_dev` form, which `makedev` matches for the numbers it
        // can hold.
        rdev: stat.rdev as u32,
        blksize: pinfs::format::BLOCK_SIZE as u32,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_root_is_one() {
        let root = Node {
            ino: 1,
            generation: 7,
        };
        assert_eq!(node_id(root, root), FUSE_ROOT_ID);
        assert_eq!(node_of_id(FUSE_ROOT_ID, root), root);
        for (ino, generation) in [(2, 0), (2, 1), (1 << 24, u32::MAX), (77, 12345)] {
            let n = Node { ino, generation };
            let id = node_id(n, root);
            assert!(id > FUSE_ROOT_ID);
            assert_eq!(node_of_id(id, root), n);
        }
        // Two generations of one slot are two ids.
        assert_ne!(
            node_id(
                Node {
                    ino: 5,
                    generation: 1
                },
                root
            ),
            node_id(
                Node {
                    ino: 5,
                    generation: 2
                },
                root
            )
        );
    }
}
