//! The byte dump of `pread -v` (and later `mread -v`, `dma-read -v`),
//! byte for byte as `xfs_io` prints it, so that scripts and their expected
//! output carry over between the two tools.
//!
//! `xfs_io`'s `dump_buffer` prints 16 bytes per line: the offset as `%08llx:`
//! and two spaces, each byte as `%02x ` (so the hex column ends in a space),
//! one more space, then the bytes that are ASCII letters or digits as
//! themselves and every other byte (punctuation and space included) as `.`,
//! as xfs_io 6.1 does (checked against it over all 256 byte values). A short
//! last line is not padded.

use std::fmt::Write;

use super::Output;

/// Dump `bytes`, which were read at file offset `offset`.
pub fn dump(out: &mut Output, offset: u64, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(16).enumerate() {
        out.line(dump_line(offset.wrapping_add(16 * i as u64), chunk));
    }
}

/// One line of the dump (without the newline).
fn dump_line(offset: u64, chunk: &[u8]) -> String {
    let mut line = String::with_capacity(12 + chunk.len() * 4);
    let _ = write!(line, "{offset:08x}:  ");
    for b in chunk {
        let _ = write!(line, "{b:02x} ");
    }
    line.push(' ');
    line.extend(chunk.iter().map(|&b| {
        if b.is_ascii_alphanumeric() {
            b as char
        } else {
            '.'
        }
    }));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_xfs_io() {
        // `xfs_io -c "pread -v 0 40"` of a file holding this text.
        let text = b"Hello, world! This is pinfs testing 0123456789";
        let mut out = Output::Held(Vec::new());
        dump(&mut out, 0, &text[..40]);
        let Output::Held(got) = out else {
            unreachable!()
        };
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "00000000:  48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 20 54 68  Hello..world..Th\n\
             00000010:  69 73 20 69 73 20 70 69 6e 66 73 20 74 65 73 74  is.is.pinfs.test\n\
             00000020:  69 6e 67 20 30 31 32 33  ing.0123\n"
        );
        assert_eq!(dump_line(3, &[0xcd; 4]), "00000003:  cd cd cd cd  ....");
        assert_eq!(
            dump_line(0x1_0000_0000, &[0x7f, b'~', b'z']),
            "100000000:  7f 7e 7a  ..z"
        );
    }
}
