//! The inode-level API (`pinfs::fs::node`): each function of the contract,
//! the file types of format version 3 (symlinks, FIFOs, devices, sockets,
//! hard links) across a remount and across every crash point, permissions
//! for another user (supplementary groups, sticky directories, set-id
//! bits), timestamps, name limits, and `ESTALE` for a node whose inode slot
//! was reused — with its negative control.

use std::collections::BTreeMap;
use std::sync::Arc;

use pinfs::format::{
    S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, S_ISGID, S_ISUID,
    S_ISVTX,
};
use pinfs::fs::{
    Cred, Fs, Groups, Node, OpenFlags, RenameFlags, SetAttr, TimeSet, MAX_LINKS, MAX_NAME,
    MAX_SYMLINK,
};
use pinfs::media::recording::CrashMode;
use pinfs::media::{MappedPool, Media, RecordingMedia};
use pinfs::Errno;

const ROOT: Cred = Cred::ROOT;

fn user(uid: u32, gid: u32, groups: &[u32]) -> Cred {
    Cred {
        uid,
        gid,
        groups: Groups::from_slice(groups),
        owner: u64::from(uid),
    }
}

fn pool() -> (Arc<dyn Media>, Arc<Fs>) {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(16 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media.clone()).unwrap();
    (media, fs)
}

fn errno<T: std::fmt::Debug>(r: pinfs::Result<T>) -> Errno {
    r.expect_err("must fail").errno()
}

/// Make `node` look old: atime, mtime and ctime at 1 ns, so any later
/// change of them is visible without reading a clock.
fn age(fs: &Fs, node: Node) {
    fs.setattr(
        ROOT,
        node,
        &SetAttr {
            atime: Some(TimeSet::Ns(1)),
            mtime: Some(TimeSet::Ns(1)),
            ctime_ns: Some(1),
            ..SetAttr::default()
        },
    )
    .unwrap();
}

/// What a tree holds, by path: type, permission bits, size, links, device
/// number, symlink target, regular file contents.
type Shape = BTreeMap<String, (u32, u32, u64, u32, u64, Vec<u8>)>;

fn shape(fs: &Arc<Fs>) -> Shape {
    let mut out = Shape::new();
    let mut todo = vec![("".to_string(), fs.root())];
    while let Some((path, dir)) = todo.pop() {
        for e in fs.readdir_node(ROOT, dir).unwrap() {
            let st = fs.lookup(ROOT, dir, &e.name).unwrap();
            assert_eq!(e.kind, st.mode & S_IFMT, "readdir's kind");
            assert_eq!(e.is_dir, st.is_dir());
            let p = format!("{path}/{}", e.name_lossy());
            let data = match st.mode & S_IFMT {
                S_IFLNK => fs.readlink(ROOT, st.node()).unwrap(),
                S_IFREG => {
                    let h = fs.open_node(ROOT, st.node(), OpenFlags::RDONLY).unwrap();
                    let mut buf = vec![0u8; st.size as usize];
                    h.pread(0, &mut buf).unwrap();
                    buf
                }
                _ => Vec::new(),
            };
            if st.is_dir() {
                todo.push((p.clone(), st.node()));
            }
            out.insert(
                p,
                (
                    st.mode & S_IFMT,
                    st.mode & 0o7777,
                    st.size,
                    st.nlink,
                    st.rdev,
                    data,
                ),
            );
        }
    }
    out
}

/// Every new file type, made through the node functions.
fn populate(fs: &Arc<Fs>) {
    let root = fs.root();
    let d = fs.mkdir_in(ROOT, root, b"d", 0o755).unwrap().node();
    let (h, f) = fs
        .create_in(ROOT, d, b"f", 0o644, OpenFlags::CREATE)
        .unwrap();
    h.pwrite(0, b"file data").unwrap();
    drop(h);
    fs.symlink_in(ROOT, d, b"short", b"f").unwrap();
    fs.symlink_in(ROOT, root, b"long", &vec![b'x'; MAX_SYMLINK])
        .unwrap();
    fs.mknod_in(ROOT, d, b"fifo", S_IFIFO | 0o640, 0).unwrap();
    fs.mknod_in(ROOT, d, b"chr", S_IFCHR | 0o600, 0x0501)
        .unwrap();
    fs.mknod_in(ROOT, root, b"blk", S_IFBLK | 0o600, 0x0803)
        .unwrap();
    fs.mknod_in(ROOT, root, b"sock", S_IFSOCK | 0o755, 0)
        .unwrap();
    fs.link_in(ROOT, f.node(), root, b"f2").unwrap();
}

#[test]
fn every_node_function_does_what_the_contract_says() {
    let (_, fs) = pool();
    let root = fs.root();
    assert_eq!(root, Node::ROOT);
    assert!(fs.getattr(root).unwrap().is_dir());
    // create_in: new, then existing (not exclusive), then O_EXCL.
    let (h, st) = fs
        .create_in(ROOT, root, b"f", 0o640, OpenFlags::CREATE)
        .unwrap();
    assert_eq!(st.mode, S_IFREG | 0o640);
    assert_eq!(h.node(), st.node());
    h.pwrite(0, b"hello").unwrap();
    let (h2, st2) = fs
        .create_in(ROOT, root, b"f", 0o600, OpenFlags::CREATE)
        .unwrap();
    assert_eq!((st2.node(), st2.size), (st.node(), 5));
    drop(h2);
    let excl = OpenFlags {
        exclusive: true,
        ..OpenFlags::CREATE
    };
    assert_eq!(
        errno(fs.create_in(ROOT, root, b"f", 0o600, excl)),
        Errno::EEXIST
    );
    // lookup, getattr, open_node.
    assert_eq!(fs.lookup(ROOT, root, b"f").unwrap().node(), st.node());
    assert_eq!(errno(fs.lookup(ROOT, root, b"nope")), Errno::ENOENT);
    assert_eq!(errno(fs.lookup(ROOT, st.node(), b"x")), Errno::ENOTDIR);
    assert_eq!(fs.getattr(st.node()).unwrap().size, 5);
    let r = fs.open_node(ROOT, st.node(), OpenFlags::RDONLY).unwrap();
    let mut buf = [0u8; 5];
    r.pread(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    drop(r);
    // setattr (size = truncate; mode; times) and Handle::setattr.
    let s = fs
        .setattr(
            ROOT,
            st.node(),
            &SetAttr {
                size: Some(2),
                mode: Some(0o600),
                atime: Some(TimeSet::Ns(7)),
                mtime: Some(TimeSet::Ns(9)),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(
        (s.size, s.mode, s.atime_ns, s.mtime_ns),
        (2, S_IFREG | 0o600, 7, 9)
    );
    let s = h
        .setattr(&SetAttr {
            size: Some(4096),
            ..SetAttr::default()
        })
        .unwrap();
    assert_eq!(s.size, 4096);
    let ro = fs.open_node(ROOT, st.node(), OpenFlags::RDONLY).unwrap();
    let shrink = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(ro.setattr(&shrink)),
        Errno::EINVAL,
        "ftruncate of a read-only handle"
    );
    drop((h, ro));
    // access.
    fs.access(ROOT, st.node(), 4 | 2).unwrap();
    assert_eq!(
        errno(fs.access(ROOT, st.node(), 1)),
        Errno::EACCES,
        "root executes only with an x bit"
    );
    assert_eq!(
        errno(fs.access(user(1000, 1000, &[]), st.node(), 4)),
        Errno::EACCES
    );
    // mkdir_in, readdir_node, rename_in, link_in, unlink_in, rmdir_in.
    let d = fs.mkdir_in(ROOT, root, b"d", 0o755).unwrap();
    assert_eq!(fs.getattr(root).unwrap().nlink, 3);
    fs.link_in(ROOT, st.node(), d.node(), b"g").unwrap();
    assert_eq!(fs.getattr(st.node()).unwrap().nlink, 2);
    assert_eq!(errno(fs.link_in(ROOT, d.node(), root, b"dl")), Errno::EPERM);
    let names: Vec<(String, u32)> = fs
        .readdir_node(ROOT, root)
        .unwrap()
        .into_iter()
        .map(|e| (e.name_lossy().into_owned(), e.kind))
        .collect();
    assert_eq!(
        names,
        [("d".to_string(), S_IFDIR), ("f".to_string(), S_IFREG)]
    );
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    fs.mknod_in(ROOT, root, b"p", S_IFIFO | 0o600, 0).unwrap();
    assert_eq!(
        errno(fs.rename_in(ROOT, root, b"p", root, b"f", noreplace)),
        Errno::EEXIST
    );
    fs.rename_in(ROOT, root, b"p", root, b"f", exchange)
        .unwrap();
    assert_eq!(fs.lookup(ROOT, root, b"f").unwrap().mode & S_IFMT, S_IFIFO);
    assert_eq!(fs.lookup(ROOT, root, b"p").unwrap().node(), st.node());
    // Exchanging a directory with a file in another directory moves `..`.
    fs.rename_in(ROOT, root, b"d", d.node(), b"g", exchange)
        .expect_err("a directory cannot go below itself");
    fs.mkdir_in(ROOT, root, b"e", 0o755).unwrap();
    let e = fs.lookup(ROOT, root, b"e").unwrap().node();
    fs.rename_in(ROOT, root, b"e", d.node(), b"g", exchange)
        .unwrap();
    assert_eq!(fs.lookup(ROOT, d.node(), b"g").unwrap().node(), e);
    assert_eq!(fs.lookup(ROOT, e, b"..").unwrap().node(), d.node());
    assert_eq!(fs.getattr(d.node()).unwrap().nlink, 3);
    assert!(fs.check().is_empty(), "{:?}", fs.check());
    fs.rename_in(ROOT, root, b"e", root, b"f2", RenameFlags::default())
        .unwrap();
    assert_eq!(errno(fs.unlink_in(ROOT, d.node(), b"g")), Errno::EISDIR);
    assert_eq!(errno(fs.rmdir_in(ROOT, root, b"d")), Errno::ENOTEMPTY);
    assert_eq!(errno(fs.rmdir_in(ROOT, root, b"f2")), Errno::ENOTDIR);
    fs.rmdir_in(ROOT, d.node(), b"g").unwrap();
    fs.rmdir_in(ROOT, root, b"d").unwrap();
    fs.unlink_in(ROOT, root, b"f2").unwrap();
    fs.unlink_in(ROOT, root, b"f").unwrap();
    assert_eq!(fs.getattr(st.node()).unwrap().nlink, 1);
    // symlink_in, readlink; the core opens neither symlinks nor specials.
    let l = fs.symlink_in(ROOT, root, b"l", b"/p").unwrap();
    assert_eq!((l.mode, l.size), (S_IFLNK | 0o777, 2));
    assert_eq!(fs.readlink(ROOT, l.node()).unwrap(), b"/p");
    assert_eq!(errno(fs.readlink(ROOT, st.node())), Errno::EINVAL);
    assert_eq!(
        errno(fs.open_node(ROOT, l.node(), OpenFlags::RDONLY)),
        Errno::ELOOP
    );
    assert_eq!(
        errno(fs.open(ROOT, "/l", OpenFlags::RDONLY, 0)),
        Errno::ELOOP
    );
    let c = fs
        .mknod_in(ROOT, root, b"c", S_IFCHR | 0o666, 0x0103)
        .unwrap();
    assert_eq!(c.rdev, 0x0103);
    assert_eq!(
        errno(fs.open_node(ROOT, c.node(), OpenFlags::RDWR)),
        Errno::ENXIO
    );
    // The path API follows no symlink: one in the middle is ENOTDIR.
    fs.symlink_in(ROOT, root, b"tod", b"/").unwrap();
    assert_eq!(errno(fs.stat(ROOT, "/tod/p")), Errno::ENOTDIR);
    assert_eq!(fs.stat(ROOT, "/tod").unwrap().mode & S_IFMT, S_IFLNK);
    assert_eq!(errno(fs.symlink_in(ROOT, root, b"e", b"")), Errno::ENOENT);
    assert_eq!(
        errno(fs.symlink_in(ROOT, root, b"e", &vec![b'y'; MAX_SYMLINK + 1])),
        Errno::ENAMETOOLONG
    );
    // mknod: a directory or an unknown type is refused; devices need root.
    assert_eq!(
        errno(fs.mknod_in(ROOT, root, b"x", S_IFDIR | 0o755, 0)),
        Errno::EPERM
    );
    assert_eq!(
        errno(fs.mknod_in(ROOT, root, b"x", 0o170000 | 0o755, 0)),
        Errno::EINVAL
    );
    fs.setattr(
        ROOT,
        root,
        &SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let alice = user(1000, 1000, &[]);
    assert_eq!(
        errno(fs.mknod_in(alice, root, b"x", S_IFBLK | 0o600, 1)),
        Errno::EPERM
    );
    fs.mknod_in(alice, root, b"x", S_IFSOCK | 0o600, 0).unwrap();
    assert!(fs.check().is_empty(), "{:?}", fs.check());
}

#[test]
fn names_are_checked() {
    let (_, fs) = pool();
    let root = fs.root();
    assert_eq!(errno(fs.mkdir_in(ROOT, root, b"", 0o755)), Errno::EINVAL);
    assert_eq!(errno(fs.mkdir_in(ROOT, root, b"a/b", 0o755)), Errno::EINVAL);
    assert_eq!(errno(fs.mkdir_in(ROOT, root, b".", 0o755)), Errno::EEXIST);
    let long = vec![b'n'; MAX_NAME + 1];
    assert_eq!(
        errno(fs.mkdir_in(ROOT, root, &long, 0o755)),
        Errno::ENAMETOOLONG
    );
    assert_eq!(errno(fs.lookup(ROOT, root, &long)), Errno::ENAMETOOLONG);
    fs.mkdir_in(ROOT, root, &long[..MAX_NAME], 0o755).unwrap();
    assert_eq!(errno(fs.rmdir_in(ROOT, root, b".")), Errno::EINVAL);
    assert_eq!(errno(fs.rmdir_in(ROOT, root, b"..")), Errno::ENOTEMPTY);
}

#[test]
fn new_file_types_survive_a_remount() {
    let (media, fs) = pool();
    populate(&fs);
    let before = shape(&fs);
    assert_eq!(before.len(), 9, "{before:?}");
    assert_eq!(before["/d/f"].3, 2, "two names");
    assert_eq!(before["/d/chr"].4, 0x0501);
    assert_eq!(before["/long"].5.len(), MAX_SYMLINK);
    drop(fs);
    let report = Fs::fsck(&*media).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let fs = Fs::mount(media).unwrap();
    assert_eq!(shape(&fs), before);
}

/// Each operation on the new types, crashed at every fence with pending
/// stores dropped or kept: the pool mounts, fsck is clean, and the tree is
/// the one before the operation or the one after.
#[test]
fn new_file_types_are_atomic_across_crashes() {
    type Step = fn(&Arc<Fs>);
    let steps: [(&str, Step); 7] = [
        ("symlink", |fs| {
            fs.symlink_in(ROOT, fs.root(), b"s", &[b'z'; 5000 - 905])
                .map(drop)
                .unwrap()
        }),
        ("mknod", |fs| {
            fs.mknod_in(ROOT, fs.root(), b"n", S_IFCHR | 0o600, 77)
                .map(drop)
                .unwrap()
        }),
        ("link", |fs| {
            let f = fs.lookup(ROOT, fs.root(), b"f").unwrap().node();
            fs.link_in(ROOT, f, fs.root(), b"f3").map(drop).unwrap()
        }),
        ("exchange", |fs| {
            let (root, d) = (fs.root(), fs.lookup(ROOT, fs.root(), b"d").unwrap().node());
            let flags = RenameFlags {
                noreplace: false,
                exchange: true,
            };
            fs.rename_in(ROOT, root, b"f2", d, b"fifo", flags).unwrap()
        }),
        ("unlink a second name", |fs| fs.unlink(ROOT, "/f2").unwrap()),
        ("unlink a symlink", |fs| fs.unlink(ROOT, "/long").unwrap()),
        ("rename over a device", |fs| {
            fs.rename(ROOT, "/sock", "/blk").unwrap()
        }),
    ];
    for (what, step) in steps {
        let media = Arc::new(RecordingMedia::new(8 << 20));
        Fs::mkfs(&*media).unwrap();
        let fs = Fs::mount(media.clone()).unwrap();
        populate(&fs);
        fs.rename(ROOT, "/d/f", "/f").unwrap();
        let before = shape(&fs);
        media.start_recording();
        step(&fs);
        let after = shape(&fs);
        assert_ne!(before, after, "{what} changed something");
        assert!(
            media.fence_count() >= 2,
            "{what} committed through the journal"
        );
        drop(fs);
        for k in 0..=media.fence_count() {
            for mode in [CrashMode::DurableOnly, CrashMode::AllPending] {
                let image = RecordingMedia::from_image(media.crash_image(k, mode));
                let report = Fs::fsck(&image).unwrap();
                assert!(
                    report.problems.is_empty(),
                    "{what} crash point {k} {mode:?}: {:?}",
                    report.problems
                );
                let fs = Fs::mount(Arc::new(image)).unwrap();
                let seen = shape(&fs);
                assert!(
                    seen == before || seen == after,
                    "{what} crash point {k} {mode:?}: neither before nor after: {seen:?}"
                );
            }
        }
    }
}

#[test]
fn supplementary_groups_count_like_the_primary_group() {
    let (_, fs) = pool();
    let root = fs.root();
    let (h, f) = fs
        .create_in(ROOT, root, b"f", 0o640, OpenFlags::CREATE)
        .unwrap();
    drop(h);
    fs.setattr(
        ROOT,
        f.node(),
        &SetAttr {
            gid: Some(50),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let outsider = user(1000, 1000, &[7, 8]);
    let member = user(1000, 1000, &[7, 50]);
    assert_eq!(
        errno(fs.open_node(outsider, f.node(), OpenFlags::RDONLY)),
        Errno::EACCES
    );
    drop(fs.open_node(member, f.node(), OpenFlags::RDONLY).unwrap());
    fs.access(member, f.node(), 4).unwrap();
    assert_eq!(errno(fs.access(member, f.node(), 2)), Errno::EACCES);
    // A directory writable by group 50: a member creates in it.
    let d = fs.mkdir_in(ROOT, root, b"g", 0o770).unwrap().node();
    fs.setattr(
        ROOT,
        d,
        &SetAttr {
            gid: Some(50),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(errno(fs.mkdir_in(outsider, d, b"x", 0o755)), Errno::EACCES);
    fs.mkdir_in(member, d, b"x", 0o755).unwrap();
    // The owner may give a file to one of its supplementary groups only.
    let (h, own) = fs
        .create_in(member, d, b"own", 0o644, OpenFlags::CREATE)
        .unwrap();
    drop(h);
    let chgrp = |g| SetAttr {
        gid: Some(g),
        ..SetAttr::default()
    };
    fs.setattr(member, own.node(), &chgrp(7)).unwrap();
    assert_eq!(
        errno(fs.setattr(member, own.node(), &chgrp(9))),
        Errno::EPERM
    );
    // Only the first MAX_GROUPS groups are kept.
    let many: Vec<u32> = (100..200).collect();
    let g = Groups::from_slice(&many);
    assert!(g.contains(100) && g.contains(131) && !g.contains(132));
    assert!(g.is_truncated() && !Groups::from_slice(&many[..32]).is_truncated());
}

/// A caller whose groups were dropped (more than `MAX_GROUPS`) is never
/// given more than it really has: a 0604 file of a group it may belong to
/// (its 33rd) stays unreadable — group bits deny what the other bits allow
/// — while what both allow is granted. Control: a caller with the same
/// first 32 groups and no more reads it (the other bits), so the refusal
/// comes from the doubt.
#[test]
fn dropped_groups_never_widen_access() {
    let (_, fs) = pool();
    let root = fs.root();
    let f = fs
        .mknod_in(ROOT, root, b"f", S_IFREG | 0o604, 0)
        .unwrap()
        .node();
    fs.setattr(
        ROOT,
        f,
        &SetAttr {
            gid: Some(500),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let first: Vec<u32> = (1000..1032).collect();
    let all: Vec<u32> = first.iter().copied().chain([500]).collect();
    let dropped = user(1000, 1000, &all);
    assert_eq!(errno(fs.access(dropped, f, 4)), Errno::EACCES);
    assert_eq!(
        errno(fs.open_node(dropped, f, OpenFlags::RDONLY)),
        Errno::EACCES
    );
    let outsider = user(1000, 1000, &first);
    fs.access(outsider, f, 4).unwrap();
    // What both the group and the other bits allow is granted on doubt.
    let both = fs
        .mknod_in(ROOT, root, b"both", S_IFREG | 0o644, 0)
        .unwrap()
        .node();
    fs.access(dropped, both, 4).unwrap();
    assert_eq!(errno(fs.access(dropped, both, 2)), Errno::EACCES);
}

#[test]
fn sticky_directories_protect_other_users_names() {
    let (_, fs) = pool();
    let root = fs.root();
    let (alice, bob, carol) = (
        user(1000, 1000, &[]),
        user(1001, 1001, &[]),
        user(1002, 1002, &[]),
    );
    let tmp = fs
        .mkdir_in(ROOT, root, b"tmp", 0o777 | S_ISVTX)
        .unwrap()
        .node();
    // Carol owns the directory.
    fs.setattr(
        ROOT,
        tmp,
        &SetAttr {
            uid: Some(1002),
            ..SetAttr::default()
        },
    )
    .unwrap();
    for name in [&b"a1"[..], b"a2", b"a3", b"a4"] {
        drop(
            fs.create_in(alice, tmp, name, 0o666, OpenFlags::CREATE)
                .unwrap(),
        );
    }
    fs.mkdir_in(alice, tmp, b"ad", 0o777).unwrap();
    let plain = RenameFlags::default();
    assert_eq!(errno(fs.unlink_in(bob, tmp, b"a1")), Errno::EPERM);
    assert_eq!(errno(fs.rmdir_in(bob, tmp, b"ad")), Errno::EPERM);
    assert_eq!(
        errno(fs.rename_in(bob, tmp, b"a1", tmp, b"b", plain)),
        Errno::EPERM
    );
    drop(
        fs.create_in(bob, tmp, b"b", 0o666, OpenFlags::CREATE)
            .unwrap(),
    );
    assert_eq!(
        errno(fs.rename_in(bob, tmp, b"b", tmp, b"a1", plain)),
        Errno::EPERM,
        "nor replace another's name"
    );
    fs.unlink_in(alice, tmp, b"a1").unwrap();
    fs.unlink_in(carol, tmp, b"a2").unwrap();
    fs.unlink_in(ROOT, tmp, b"a3").unwrap();
    fs.rmdir_in(carol, tmp, b"ad").unwrap();
    // Without the sticky bit, write permission on the directory suffices.
    fs.setattr(
        carol,
        tmp,
        &SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
    )
    .unwrap();
    fs.unlink_in(bob, tmp, b"a4").unwrap();
}

#[test]
fn set_id_bits_are_cleared_as_linux_clears_them() {
    let (_, fs) = pool();
    let root = fs.root();
    fs.setattr(
        ROOT,
        root,
        &SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let alice = user(1000, 1000, &[]);
    let mode = |n: Node| fs.getattr(n).unwrap().mode & 0o7777;
    let set = |who: Cred, n: Node, m: u32| {
        fs.setattr(
            who,
            n,
            &SetAttr {
                mode: Some(m),
                ..SetAttr::default()
            },
        )
    };
    let (h, f) = fs
        .create_in(alice, root, b"f", 0o755, OpenFlags::CREATE)
        .unwrap();
    let f = f.node();
    // A write by the owner (not root) clears both (group-exec is set).
    set(alice, f, 0o6755).unwrap();
    h.pwrite(0, b"x").unwrap();
    assert_eq!(mode(f), 0o755);
    // A truncate, too.
    set(alice, f, 0o6755).unwrap();
    fs.setattr(
        alice,
        f,
        &SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(mode(f), 0o755);
    // Without group-exec, S_ISGID is no set-gid bit and stays.
    set(alice, f, 0o6745).unwrap();
    h.pwrite(0, b"x").unwrap();
    assert_eq!(mode(f), 0o2745);
    drop(h);
    // An empty setattr changes nothing, set-id bits included.
    set(alice, f, 0o6755).unwrap();
    fs.setattr(alice, f, &SetAttr::default()).unwrap();
    assert_eq!(mode(f), 0o6755);
    // Root's writes clear nothing.
    set(ROOT, f, 0o6755).unwrap();
    let hr = fs.open_node(ROOT, f, OpenFlags::RDWR).unwrap();
    hr.pwrite(0, b"y").unwrap();
    assert_eq!(mode(f), 0o6755);
    drop(hr);
    // chown by anyone (root here) clears them on a non-directory.
    fs.setattr(
        ROOT,
        f,
        &SetAttr {
            uid: Some(1000),
            gid: Some(1000),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(mode(f), 0o755);
    // chmod by a caller not in the file's group drops S_ISGID.
    fs.setattr(
        ROOT,
        f,
        &SetAttr {
            gid: Some(99),
            ..SetAttr::default()
        },
    )
    .unwrap();
    set(alice, f, 0o2755).unwrap();
    assert_eq!(mode(f), 0o755);
    let member = user(1000, 1000, &[99]);
    set(member, f, 0o2755).unwrap();
    assert_eq!(mode(f), 0o2755);
    // A set-gid directory gives its group to what is created in it, and its
    // set-gid bit to subdirectories.
    let d = fs.mkdir_in(ROOT, root, b"sg", 0o777).unwrap().node();
    fs.setattr(
        ROOT,
        d,
        &SetAttr {
            mode: Some(0o2777),
            gid: Some(60),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let sub = fs.mkdir_in(alice, d, b"sub", 0o755).unwrap();
    assert_eq!((sub.gid, sub.mode & 0o7777), (60, 0o2755));
    let n = fs.mknod_in(alice, d, b"p", S_IFIFO | 0o2750, 0).unwrap();
    assert_eq!(
        (n.gid, n.mode & 0o7777),
        (60, 0o0750),
        "not in group 60: S_ISGID stripped"
    );
    assert_eq!(mode(d) & S_ISGID, S_ISGID);
    let _ = S_ISUID;
}

#[test]
fn times_change_as_posix_says() {
    let (_, fs) = pool();
    let root = fs.root();
    let (h, f) = fs
        .create_in(ROOT, root, b"f", 0o644, OpenFlags::CREATE)
        .unwrap();
    drop(h);
    let f = f.node();
    let d = fs.mkdir_in(ROOT, root, b"d", 0o755).unwrap().node();
    let t = |n: Node| {
        let s = fs.getattr(n).unwrap();
        (s.mtime_ns > 1, s.ctime_ns > 1)
    };
    // link: the file's ctime, the directory's mtime and ctime.
    age(&fs, f);
    age(&fs, d);
    fs.link_in(ROOT, f, d, b"g").unwrap();
    assert_eq!(t(f), (false, true));
    assert_eq!(t(d), (true, true));
    // unlink of one name: the same.
    age(&fs, f);
    age(&fs, d);
    fs.unlink_in(ROOT, d, b"g").unwrap();
    assert_eq!(t(f), (false, true));
    assert_eq!(t(d), (true, true));
    // rename: the file's ctime, both directories.
    age(&fs, f);
    age(&fs, d);
    age(&fs, root);
    fs.rename_in(ROOT, root, b"f", d, b"f", RenameFlags::default())
        .unwrap();
    assert_eq!(t(f), (false, true));
    assert_eq!(t(d), (true, true));
    assert_eq!(t(root), (true, true));
    // chmod, chown: ctime only.
    age(&fs, f);
    fs.setattr(
        ROOT,
        f,
        &SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(t(f), (false, true));
    age(&fs, f);
    fs.setattr(
        ROOT,
        f,
        &SetAttr {
            uid: Some(0),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(t(f), (false, true));
    // O_TRUNC on an existing file: mtime and ctime; a plain open: nothing.
    age(&fs, f);
    drop(fs.open_node(ROOT, f, OpenFlags::RDWR).unwrap());
    assert_eq!(t(f), (false, false));
    let trunc = OpenFlags {
        truncate: true,
        ..OpenFlags::RDWR
    };
    drop(fs.open_node(ROOT, f, trunc).unwrap());
    assert_eq!(t(f), (true, true));
    // mknod, symlink, mkdir, rmdir: the directory's mtime and ctime.
    for make in [
        |fs: &Fs, d| fs.mknod_in(ROOT, d, b"n", S_IFIFO | 0o600, 0).map(drop),
        |fs: &Fs, d| fs.symlink_in(ROOT, d, b"s", b"t").map(drop),
        |fs: &Fs, d| fs.mkdir_in(ROOT, d, b"m", 0o700).map(drop),
        |fs: &Fs, d| fs.rmdir_in(ROOT, d, b"m"),
    ] {
        age(&fs, d);
        make(&fs, d).unwrap();
        assert_eq!(t(d), (true, true));
    }
    // utimensat: explicit times for the owner or root (EPERM), "now" for a
    // writer too (EACCES otherwise); a failure changes nothing.
    let bob = user(1001, 1001, &[]);
    age(&fs, f);
    let explicit = SetAttr {
        mtime: Some(TimeSet::Ns(5)),
        ..SetAttr::default()
    };
    let now = SetAttr {
        atime: Some(TimeSet::Now),
        mtime: Some(TimeSet::Now),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(bob, f, &explicit)), Errno::EPERM);
    assert_eq!(errno(fs.setattr(bob, f, &now)), Errno::EACCES);
    assert_eq!(t(f), (false, false));
    fs.setattr(
        ROOT,
        f,
        &SetAttr {
            mode: Some(0o666),
            ..SetAttr::default()
        },
    )
    .unwrap();
    age(&fs, f);
    fs.setattr(bob, f, &now).unwrap();
    assert_eq!(t(f), (true, true));
    assert_eq!(errno(fs.setattr(bob, f, &explicit)), Errno::EPERM);
    // One time now, the other left alone (`touch -a`, `touch -m`): the
    // owner or root only, even for a writer (Linux: EPERM).
    age(&fs, f);
    for one in [
        SetAttr {
            atime: Some(TimeSet::Now),
            ..SetAttr::default()
        },
        SetAttr {
            mtime: Some(TimeSet::Now),
            ..SetAttr::default()
        },
    ] {
        age(&fs, f);
        assert_eq!(errno(fs.setattr(bob, f, &one)), Errno::EPERM);
        assert_eq!(t(f), (false, false));
        fs.setattr(ROOT, f, &one).unwrap();
    }
    // The change time: alone, the owner or root only (EPERM); along with
    // another permitted change, a stranger's value is not taken.
    age(&fs, f);
    let ctime = |c| SetAttr {
        ctime_ns: Some(c),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(bob, f, &ctime(7))), Errno::EPERM);
    assert_eq!(fs.getattr(f).unwrap().ctime_ns, 1);
    let st = fs
        .setattr(
            bob,
            f,
            &SetAttr {
                ctime_ns: Some(7),
                ..now
            },
        )
        .unwrap();
    assert!(
        st.ctime_ns > 7,
        "a writer's touch sets the change time to now"
    );
    assert_eq!(
        fs.setattr(ROOT, f, &ctime(7)).unwrap().ctime_ns,
        7,
        "root's (the owner's) change time is taken"
    );
}

#[test]
fn link_counts_are_limited() {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(64 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media).unwrap();
    let root = fs.root();
    let d = fs.mkdir_in(ROOT, root, b"d", 0o755).unwrap().node();
    let f = fs
        .mknod_in(ROOT, d, b"f", S_IFREG | 0o644, 0)
        .unwrap()
        .node();
    for i in 1..MAX_LINKS {
        fs.link_in(ROOT, f, d, format!("{i}").as_bytes()).unwrap();
    }
    assert_eq!(fs.getattr(f).unwrap().nlink, MAX_LINKS);
    assert_eq!(errno(fs.link_in(ROOT, f, root, b"one more")), Errno::EMLINK);
    fs.unlink_in(ROOT, d, b"1").unwrap();
    fs.link_in(ROOT, f, root, b"one more").unwrap();
    assert!(fs.check().is_empty());
}

/// A node names one use of an inode slot: after its file is removed and
/// the slot reused, every node function refuses the old node with `ESTALE`.
/// Negative control: with the generation check off, the old node reaches
/// the new file — the confusion the check prevents.
#[test]
fn a_reused_inode_slot_is_estale_for_the_old_node() {
    let (_, fs) = pool();
    let root = fs.root();
    let old = fs.mknod_in(ROOT, root, b"old", S_IFREG | 0o644, 0).unwrap();
    fs.unlink_in(ROOT, root, b"old").unwrap();
    let (h, new) = fs
        .create_in(ROOT, root, b"new", 0o600, OpenFlags::CREATE)
        .unwrap();
    h.pwrite(0, b"secret").unwrap();
    drop(h);
    assert_eq!(old.ino, new.ino, "the slot is reused (lowest free first)");
    assert_ne!(old.generation, new.generation);
    let n = old.node();
    assert_eq!(errno(fs.getattr(n)), Errno::ESTALE);
    assert_eq!(
        errno(fs.open_node(ROOT, n, OpenFlags::RDONLY)),
        Errno::ESTALE
    );
    assert_eq!(
        errno(fs.setattr(
            ROOT,
            n,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            }
        )),
        Errno::ESTALE
    );
    assert_eq!(errno(fs.access(ROOT, n, 4)), Errno::ESTALE);
    assert_eq!(errno(fs.link_in(ROOT, n, root, b"again")), Errno::ESTALE);
    assert_eq!(errno(fs.readlink(ROOT, n)), Errno::ESTALE);
    let stale_dir = Node {
        ino: root.ino,
        generation: root.generation + 1,
    };
    assert_eq!(errno(fs.lookup(ROOT, stale_dir, b"new")), Errno::ESTALE);
    assert_eq!(
        errno(fs.mkdir_in(ROOT, stale_dir, b"x", 0o755)),
        Errno::ESTALE
    );
    assert_eq!(fs.getattr(new.node()).unwrap().size, 6);
    assert_eq!(fs.stat(ROOT, "/new").unwrap().size, 6);

    #[cfg(feature = "negative-controls")]
    {
        fs.skip_generation_check_for_tests();
        let seen = fs
            .getattr(n)
            .expect("no generation check: the old node resolves");
        assert_eq!(
            (seen.size, seen.generation),
            (6, new.generation),
            "the old node reaches the file that reused its slot"
        );
        fs.setattr(
            ROOT,
            n,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
        .unwrap();
        assert_eq!(
            fs.getattr(new.node()).unwrap().size,
            0,
            "and a truncate through it destroys that file's data"
        );
    }
}

/// A truncate through a node waits for a layout lease with no lock held;
/// the file is removed meanwhile and a new one takes its slot. The
/// truncate must fail with `ESTALE` and leave the new file whole (the node
/// is checked again under the lock of the commit). Negative control: with
/// the generation check off, the same truncate destroys the new file.
#[test]
fn a_truncate_waiting_for_a_lease_never_reaches_the_slots_next_file() {
    fn race(skip_check: bool) -> (pinfs::Result<pinfs::fs::Stat>, u64) {
        use pinfs::lease::{Access, EventKind, HandleId, LeaseRequest, OwnerId};
        use std::time::Duration;
        let (_, fs) = pool();
        if skip_check {
            #[cfg(feature = "negative-controls")]
            fs.skip_generation_check_for_tests();
        }
        let root = fs.root();
        // The holder removes and re-creates as the lease's own owner, so
        // its own layout changes do not wait for its lease.
        let holder = Cred::root_as(7);
        let (h, old) = fs
            .create_in(holder, root, b"v", 0o644, OpenFlags::CREATE)
            .unwrap();
        h.pwrite(0, &[1u8; 8192]).unwrap();
        let key = h.lease_file();
        drop(h);
        // A layout lease on the old file through a handle the file system
        // does not count (so the unlink frees the slot at once).
        let (hid, owner) = (HandleId(u64::MAX / 2), OwnerId(7));
        fs.leases()
            .opened(key, hid, owner, Access::ReadWrite)
            .unwrap();
        let lease = fs
            .leases()
            .set_lease(key, hid, owner, LeaseRequest::layout_shared())
            .unwrap();
        let events = fs.leases().owner_events(owner).unwrap();
        let fs2 = fs.clone();
        let n = old.node();
        let truncater = std::thread::spawn(move || {
            fs2.setattr(
                ROOT,
                n,
                &SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            )
        });
        let ev = events
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .expect("the truncate breaks the layout lease");
        assert_eq!(ev.kind, EventKind::Break);
        fs.unlink_in(holder, root, b"v").unwrap();
        let (h, new) = fs
            .create_in(holder, root, b"w", 0o644, OpenFlags::CREATE)
            .unwrap();
        assert_eq!(new.ino, old.ino, "the slot is reused");
        h.pwrite(0, &[7u8; 8192]).unwrap();
        drop(h);
        fs.leases().release(lease).unwrap();
        fs.leases().closed(key, hid);
        let r = truncater.join().unwrap();
        let size = fs.getattr(new.node()).unwrap().size;
        (r, size)
    }
    let (r, size) = race(false);
    assert_eq!(errno(r), Errno::ESTALE);
    assert_eq!(size, 8192, "the new file is whole");
    #[cfg(feature = "negative-controls")]
    {
        let (r, size) = race(true);
        assert!(r.is_ok(), "without the check the truncate goes on: {r:?}");
        assert_eq!(size, 0, "and destroys the file that reused the slot");
    }
}

/// An explicit mtime (`utimensat`, `touch -d`, `tar x`) after an in-place
/// write sticks: in stat and after fsync (which persists the time of
/// in-place writes).
#[test]
fn an_explicit_mtime_after_an_in_place_write_sticks() {
    let (_, fs) = pool();
    let root = fs.root();
    let (h, st) = fs
        .create_in(ROOT, root, b"f", 0o644, OpenFlags::CREATE)
        .unwrap();
    h.pwrite(0, &[1u8; 4096]).unwrap(); // allocates
    h.pwrite(0, &[2u8; 4096]).unwrap(); // in place: the time stays in the runtime
    fs.setattr(
        ROOT,
        st.node(),
        &SetAttr {
            mtime: Some(TimeSet::Ns(1_000_000_000)),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(fs.getattr(st.node()).unwrap().mtime_ns, 1_000_000_000);
    h.fsync().unwrap();
    assert_eq!(fs.getattr(st.node()).unwrap().mtime_ns, 1_000_000_000);
    // A later in-place write moves it again.
    h.pwrite(0, &[3u8; 4096]).unwrap();
    assert!(fs.getattr(st.node()).unwrap().mtime_ns > 1_000_000_000);
}

/// Names are bytes: a name that is not UTF-8 comes back from readdir as it
/// was created, so a lookup (and an unlink: `rm -rf`) of it finds the file.
#[test]
fn names_that_are_not_utf8_round_trip_through_readdir() {
    let (_, fs) = pool();
    let root = fs.root();
    let names: [&[u8]; 3] = [b"caf\xe9", b"caf\xff", b"caf\xef\xbf\xbd"];
    for n in names {
        fs.mknod_in(ROOT, root, n, S_IFREG | 0o644, 0).unwrap();
    }
    let listed: Vec<Vec<u8>> = fs
        .readdir_node(ROOT, root)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    want.sort();
    assert_eq!(listed, want, "sorted by bytes, each as created");
    for n in &listed {
        fs.lookup(ROOT, root, n).unwrap();
        fs.unlink_in(ROOT, root, n).unwrap();
    }
    assert!(fs.readdir_node(ROOT, root).unwrap().is_empty());
}

/// `RENAME_EXCHANGE` of a directory and a file across parents gives the
/// file's parent a `..` link: at `MAX_LINKS` that is `EMLINK`, and nothing
/// changes (the pool stays consistent).
#[test]
fn an_exchange_into_a_full_parent_is_emlink() {
    let media: Arc<dyn Media> = Arc::new(MappedPool::memfd(1200 << 20).unwrap());
    Fs::mkfs(&*media).unwrap();
    let fs = Fs::mount(media).unwrap();
    let root = fs.root();
    let full = fs.mkdir_in(ROOT, root, b"full", 0o755).unwrap().node();
    for i in 0..MAX_LINKS - 2 {
        fs.mkdir_in(ROOT, full, format!("{i}").as_bytes(), 0o755)
            .unwrap();
    }
    assert_eq!(fs.getattr(full).unwrap().nlink, MAX_LINKS);
    fs.mknod_in(ROOT, full, b"f", S_IFREG | 0o644, 0).unwrap();
    fs.mkdir_in(ROOT, root, b"d", 0o755).unwrap();
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    assert_eq!(
        errno(fs.rename_in(ROOT, root, b"d", full, b"f", exchange)),
        Errno::EMLINK
    );
    assert_eq!(
        errno(fs.rename_in(ROOT, full, b"f", root, b"d", exchange)),
        Errno::EMLINK,
        "either way round"
    );
    assert_eq!(fs.getattr(full).unwrap().nlink, MAX_LINKS);
    assert!(fs.lookup(ROOT, full, b"f").unwrap().mode & S_IFMT == S_IFREG);
    assert!(fs.check().is_empty());
    // With room, the same exchange goes through.
    fs.rmdir_in(ROOT, full, b"0").unwrap();
    fs.rename_in(ROOT, root, b"d", full, b"f", exchange)
        .unwrap();
    assert_eq!(fs.getattr(full).unwrap().nlink, MAX_LINKS);
    assert!(fs.check().is_empty());
}

/// Renaming a name over another name of the same file does nothing and
/// succeeds before any permission check past the lookups (Linux
/// `vfs_rename`): even a caller who may not write the directory.
#[test]
fn a_rename_over_a_hard_link_of_itself_is_a_no_op() {
    let (_, fs) = pool();
    let root = fs.root();
    let d = fs.mkdir_in(ROOT, root, b"d", 0o755).unwrap().node();
    let f = fs
        .mknod_in(ROOT, d, b"a", S_IFREG | 0o644, 0)
        .unwrap()
        .node();
    fs.link_in(ROOT, f, d, b"b").unwrap();
    let bob = user(1001, 1001, &[]);
    fs.rename_in(bob, d, b"a", d, b"b", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, 2);
    fs.lookup(ROOT, d, b"a").unwrap();
    fs.lookup(ROOT, d, b"b").unwrap();
    // A different file in the same place still needs write permission.
    fs.mknod_in(ROOT, d, b"c", S_IFREG | 0o644, 0).unwrap();
    assert_eq!(
        errno(fs.rename_in(bob, d, b"a", d, b"c", RenameFlags::default())),
        Errno::EACCES
    );
    // Without search permission the lookups fail first.
    fs.setattr(
        ROOT,
        d,
        &SetAttr {
            mode: Some(0o700),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(
        errno(fs.rename_in(bob, d, b"a", d, b"b", RenameFlags::default())),
        Errno::EACCES
    );
}

/// The kernel's FUSE (without `HANDLE_KILLPRIV`) sends the set-id clearing
/// of a non-owner's truncate, `O_TRUNC` or fallocate as a mode change: a
/// writer other than the owner may clear `S_ISUID`/`S_ISGID` and change
/// nothing else; any other mode change, or one by a caller who may not
/// write, stays the owner's (`EPERM`).
#[test]
fn a_writer_may_clear_set_id_bits_and_nothing_else() {
    let (_, fs) = pool();
    let root = fs.root();
    let (h, f) = fs
        .create_in(ROOT, root, b"f", 0o644, OpenFlags::CREATE)
        .unwrap();
    h.pwrite(0, b"data").unwrap();
    drop(h);
    let f = f.node();
    let mode = |n: Node| fs.getattr(n).unwrap().mode & 0o7777;
    let chmod = |who: Cred, m: u32, size: Option<u64>| {
        fs.setattr(
            who,
            f,
            &SetAttr {
                mode: Some(m),
                size,
                ..SetAttr::default()
            },
        )
    };
    let nobody = user(65534, 65534, &[]);
    chmod(ROOT, 0o6777, None).unwrap();
    // The truncate with its set-id clearing, as FUSE sends it.
    chmod(nobody, S_IFREG | 0o777, Some(1)).unwrap();
    assert_eq!(mode(f), 0o777);
    assert_eq!(fs.getattr(f).unwrap().size, 1);
    // S_ISUID alone, without the size, by a member of the file's group
    // (for anyone else a mode change drops S_ISGID as well).
    chmod(ROOT, 0o6777, None).unwrap();
    chmod(user(65534, 0, &[]), 0o2777, None).unwrap();
    assert_eq!(mode(f), 0o2777);
    // Anything else changed too: the owner's.
    chmod(ROOT, 0o6777, None).unwrap();
    assert_eq!(errno(chmod(nobody, 0o776, None)), Errno::EPERM);
    assert_eq!(errno(chmod(nobody, 0o6776, None)), Errno::EPERM);
    // Nothing cleared (a chmod to the same mode) is the owner's, too.
    assert_eq!(errno(chmod(nobody, 0o6777, None)), Errno::EPERM);
    assert_eq!(mode(f), 0o6777);
    // A caller who may not write clears nothing.
    chmod(ROOT, 0o6775, None).unwrap();
    assert_eq!(errno(chmod(nobody, 0o775, None)), Errno::EPERM);
    assert_eq!(mode(f), 0o6775);
    // The owner may still do as it likes.
    chmod(ROOT, 0o640, None).unwrap();
    assert_eq!(mode(f), 0o640);
}
