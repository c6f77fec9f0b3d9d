//! Parsing of `io` commands: a script line into actor, command and
//! background flag; a command's words into options and operands (a small
//! `getopt`, as `xfs_io` commands take their options); and the numbers that
//! commands accept (sizes with k/m/g suffixes, bytes, milliseconds).
//!
//! Words are separated by whitespace; there is no quoting (paths inside the
//! file system are plain). `echo` gets the rest of its line verbatim.

use crate::error::CmdError;

/// The actor of commands without an `@NAME` prefix.
pub const MAIN_ACTOR: &str = "main";

/// Longest actor name accepted.
const MAX_ACTOR_NAME: usize = 64;

/// One script line, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The actor that runs it (`main` without a prefix).
    pub actor: String,
    /// Whether it ends in ` &` (runs in the background).
    pub background: bool,
    /// The command name (`pwrite`); empty for a blank line.
    pub name: String,
    /// The words after the command name.
    pub args: Vec<String>,
    /// The text after the command name, verbatim but trimmed (for `echo`).
    pub rest: String,
}

/// Why a script line could not be split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// `@` with no name, or a name with characters other than letters,
    /// digits, `_` and `-`, or too long.
    BadActor(String),
    /// An actor prefix with no command after it.
    NoCommand(String),
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::BadActor(a) => write!(
                f,
                "bad actor name \"{a}\" (letters, digits, _ and -, at most {MAX_ACTOR_NAME})"
            ),
            LineError::NoCommand(_) => f.write_str("no command"),
        }
    }
}

/// Split a script line: `[@NAME] COMMAND [ARGS...] [&]`.
pub fn line(text: &str) -> Result<Line, LineError> {
    let mut body = text.trim();
    let mut background = false;
    if let Some(b) = body.strip_suffix('&') {
        if b.is_empty() || b.ends_with(char::is_whitespace) {
            background = true;
            body = b.trim_end();
        }
    }
    let mut actor = MAIN_ACTOR.to_string();
    if let Some(after) = body.strip_prefix('@') {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let name = &after[..end];
        let valid = !name.is_empty()
            && name.len() <= MAX_ACTOR_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(LineError::BadActor(name.to_string()));
        }
        actor = name.to_string();
        body = after[end..].trim_start();
        if body.is_empty() {
            return Err(LineError::NoCommand(actor));
        }
    }
    let end = body.find(char::is_whitespace).unwrap_or(body.len());
    let name = body[..end].to_string();
    let rest = body[end..].trim().to_string();
    let args = rest.split_whitespace().map(str::to_string).collect();
    Ok(Line {
        actor,
        background,
        name,
        args,
        rest,
    })
}

/// The options a command takes.
#[derive(Clone, Copy, Debug)]
pub struct OptSpec {
    /// Single-letter options without a value (`"rwctn"`).
    pub flags: &'static str,
    /// Single-letter options that take a value (`"S"`).
    pub valued: &'static str,
    /// Long options and how many values each takes (`("range", 2)`).
    pub long: &'static [(&'static str, usize)],
    /// The synopsis, for usage errors.
    pub usage: &'static str,
}

impl OptSpec {
    /// A command without options.
    pub const fn plain(usage: &'static str) -> Self {
        OptSpec {
            flags: "",
            valued: "",
            long: &[],
            usage,
        }
    }

    /// A usage error of this command.
    pub fn error(&self, problem: impl Into<String>) -> CmdError {
        CmdError::usage(self.usage, problem)
    }

    /// Split `words` into options and operands. Options may appear anywhere
    /// (as GNU `getopt` permutes them); `-rw` combines flags; `-S0xab` and
    /// `-S 0xab` both give a value; `--` ends the options.
    pub fn parse<'a>(&self, words: &'a [String]) -> Result<Parsed<'a>, CmdError> {
        let mut parsed = Parsed {
            spec: *self,
            shorts: Vec::new(),
            longs: Vec::new(),
            operands: Vec::new(),
        };
        let mut it = words.iter().map(String::as_str);
        while let Some(w) = it.next() {
            if w == "--" {
                parsed.operands.extend(it.by_ref());
                break;
            }
            if let Some(name) = w.strip_prefix("--") {
                let &(long, arity) = self
                    .long
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or_else(|| self.error(format!("unknown option {w}")))?;
                let mut values = Vec::with_capacity(arity);
                for _ in 0..arity {
                    values.push(
                        it.next()
                            .ok_or_else(|| self.error(format!("{w} needs {arity} value(s)")))?,
                    );
                }
                parsed.longs.push((long, values));
            } else if w.len() > 1
                && w.starts_with('-')
                && !w[1..].starts_with(|c: char| c.is_ascii_digit())
            {
                // `-1` is a (negative) number, not an option: no command has
                // digit options, and the number's parser says what is wrong.
                let letters = &w[1..];
                for (i, c) in letters.char_indices() {
                    if self.flags.contains(c) {
                        parsed.shorts.push((c, None));
                    } else if self.valued.contains(c) {
                        let attached = &letters[i + c.len_utf8()..];
                        let value = if attached.is_empty() {
                            it.next()
                                .ok_or_else(|| self.error(format!("-{c} needs a value")))?
                        } else {
                            attached
                        };
                        parsed.shorts.push((c, Some(value)));
                        break;
                    } else {
                        return Err(self.error(format!("unknown option -{c}")));
                    }
                }
            } else {
                parsed.operands.push(w);
            }
        }
        Ok(parsed)
    }
}

/// A command's words, split by [`OptSpec::parse`].
#[derive(Debug)]
pub struct Parsed<'a> {
    spec: OptSpec,
    shorts: Vec<(char, Option<&'a str>)>,
    longs: Vec<(&'static str, Vec<&'a str>)>,
    /// The operands, in order.
    pub operands: Vec<&'a str>,
}

impl<'a> Parsed<'a> {
    /// Whether flag `-c` was given.
    pub fn flag(&self, c: char) -> bool {
        self.shorts.iter().any(|&(f, _)| f == c)
    }

    /// The value of the last `-c VALUE`.
    pub fn value(&self, c: char) -> Option<&'a str> {
        self.shorts
            .iter()
            .rev()
            .find(|&&(f, _)| f == c)
            .and_then(|&(_, v)| v)
    }

    /// The values of the last `--name ...`, when given.
    pub fn long(&self, name: &str) -> Option<&[&'a str]> {
        self.longs
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The operands, which must number exactly `N`.
    pub fn exactly<const N: usize>(&self) -> Result<[&'a str; N], CmdError> {
        <[&str; N]>::try_from(self.operands.as_slice()).map_err(|_| {
            self.spec.error(format!(
                "{} operand(s) given, {N} expected",
                self.operands.len()
            ))
        })
    }

    /// A usage error of this command.
    pub fn error(&self, problem: impl Into<String>) -> CmdError {
        self.spec.error(problem)
    }

    /// Operand `s` as a size (offsets and lengths: k/m/g suffixes, `0x` hex).
    pub fn size(&self, s: &str) -> Result<u64, CmdError> {
        number::size(s).map_err(|e| self.error(e))
    }

    /// `s` as a byte value (`0xcd` or `205`).
    pub fn byte(&self, s: &str) -> Result<u8, CmdError> {
        number::byte(s).map_err(|e| self.error(e))
    }

    /// `s` as a count of milliseconds (plain decimal).
    pub fn millis(&self, s: &str) -> Result<u64, CmdError> {
        number::count(s, "number of milliseconds").map_err(|e| self.error(e))
    }

    /// `s` as raw flag bits in hex.
    pub fn hex_bits(&self, s: &str) -> Result<u32, CmdError> {
        number::hex_bits(s).map_err(|e| self.error(e))
    }

    /// `s` as an id (of a pin, a registration: plain decimal).
    pub fn id(&self, s: &str, what: &str) -> Result<u64, CmdError> {
        number::count(s, what).map_err(|e| self.error(e))
    }
}

/// Every number of the command line, parsed in one place so that every one
/// says the same thing about the same mistake: `pinfs mkfs --size`, `pinfs io
/// --break-time`, and the sizes, offsets, bytes, milliseconds and ids of
/// `io` commands. A leading `-` is always "must not be negative" (no number
/// here can be), never an unknown option or an unexpected argument.
pub mod number {
    /// `Err` for a negative number, which nothing here accepts.
    fn not_negative(s: &str) -> Result<&str, String> {
        let t = s.trim();
        if t.starts_with('-') && t.len() > 1 {
            return Err(format!("\"{s}\": must not be negative"));
        }
        Ok(t)
    }

    /// A size or offset: decimal with an optional k/m/g/t suffix (powers of
    /// 1024), or `0x` hex.
    pub fn size(s: &str) -> Result<u64, String> {
        let t = not_negative(s)?;
        pinfs::util::parse_size(t).ok_or_else(|| {
            if t.bytes().any(|b| b.is_ascii_digit()) && too_large(t) {
                format!("\"{s}\": too large")
            } else {
                format!("\"{s}\" is not a size (a number with an optional k, m, g or t suffix, or 0x hex)")
            }
        })
    }

    /// Whether `t` is all digits (after any suffix) but overflows a `u64`.
    fn too_large(t: &str) -> bool {
        let digits = t.trim_end_matches(|c: char| "kKmMgGtTbB".contains(c));
        let digits = digits.strip_prefix("0x").unwrap_or(digits);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// A plain decimal number; `what` names it (`number of milliseconds`,
    /// `pin id`).
    pub fn count(s: &str, what: &str) -> Result<u64, String> {
        let t = not_negative(s)?;
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t.parse().map_err(|_| format!("\"{s}\": too large"));
        }
        Err(format!("\"{s}\" is not a {what} (a plain decimal number)"))
    }

    /// Raw flag bits in hex, `0x` optional (`mmap -F 0x3`).
    pub fn hex_bits(s: &str) -> Result<u32, String> {
        let t = not_negative(s)?;
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        u32::from_str_radix(digits, 16)
            .map_err(|_| format!("\"{s}\" is not hexadecimal flag bits (at most 32 bits)"))
    }

    /// A byte value: `0xcd` or `205`.
    pub fn byte(s: &str) -> Result<u8, String> {
        let t = not_negative(s)?;
        let value = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u8::from_str_radix(hex, 16).ok(),
            None => t.parse::<u8>().ok(),
        };
        value.ok_or_else(|| format!("\"{s}\" is not a byte (0..=255, decimal or 0x hex)"))
    }

    /// Seconds as a number, fractions allowed (`0.5`), from 0 to `max`.
    pub fn seconds_f64(s: &str, max: f64) -> Result<f64, String> {
        let t = not_negative(s)?;
        let secs: f64 = t
            .parse()
            .map_err(|_| format!("\"{s}\" is not a number of seconds"))?;
        if !secs.is_finite() || !(0.0..=max).contains(&secs) {
            return Err(format!("\"{s}\": out of range (0 to {max} seconds)"));
        }
        Ok(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn lines() {
        let l = line("  pwrite -S 0xab 0 4k ").unwrap();
        assert_eq!(
            (l.actor.as_str(), l.background, l.name.as_str()),
            ("main", false, "pwrite")
        );
        assert_eq!(l.args, words("-S 0xab 0 4k"));
        let l = line("@a truncate 0 &").unwrap();
        assert_eq!(
            (l.actor.as_str(), l.background, l.name.as_str()),
            ("a", true, "truncate")
        );
        assert_eq!(l.args, words("0"));
        let l = line("echo hello   world&").unwrap();
        assert!(!l.background);
        assert_eq!(l.rest, "hello   world&");
        assert_eq!(line("").unwrap().name, "");
        assert_eq!(line("@ x"), Err(LineError::BadActor(String::new())));
        assert_eq!(line("@a!b x"), Err(LineError::BadActor("a!b".into())));
        assert_eq!(line("@a &"), Err(LineError::NoCommand("a".into())));
    }

    #[test]
    fn options() {
        const SPEC: OptSpec = OptSpec {
            flags: "rwv",
            valued: "S",
            long: &[("range", 2), ("layout", 0)],
            usage: "x",
        };
        let w = words("-rw 0 -S0x10 --range 1 2 4k --layout");
        let p = SPEC.parse(&w).unwrap();
        assert!(p.flag('r') && p.flag('w') && !p.flag('v'));
        assert_eq!(p.value('S'), Some("0x10"));
        assert_eq!(p.long("range"), Some(&["1", "2"][..]));
        assert_eq!(p.long("layout"), Some(&[][..]));
        assert_eq!(p.exactly::<2>().unwrap(), ["0", "4k"]);
        assert!(p.exactly::<3>().is_err());
        assert_eq!(p.size("4k").unwrap(), 4096);
        assert!(p.size("4q").is_err());
        assert_eq!(p.byte("0xcd").unwrap(), 0xcd);
        assert_eq!(p.byte("17").unwrap(), 17);
        assert!(p.byte("256").is_err());
        assert!(p.byte("1k").is_err());
        assert!(p.byte("1b").is_err());
        let w = words("-S");
        assert!(SPEC.parse(&w).is_err());
        let w = words("-x");
        assert!(SPEC.parse(&w).is_err());
        let w = words("-- -5");
        assert_eq!(SPEC.parse(&w).unwrap().operands, ["-5"]);
        let w = words("-1 4k");
        let p = SPEC.parse(&w).unwrap();
        assert_eq!(p.operands, ["-1", "4k"]);
        assert!(p
            .size("-1")
            .unwrap_err()
            .to_string()
            .contains("must not be negative"));
    }

    #[test]
    fn numbers_say_the_same_about_the_same_mistake() {
        for e in [
            number::size("-1").unwrap_err(),
            number::size("-4k").unwrap_err(),
            number::count("-5", "milliseconds").unwrap_err(),
            number::byte("-1").unwrap_err(),
            number::hex_bits("-1").unwrap_err(),
            number::seconds_f64("-1", 10.0).unwrap_err(),
        ] {
            assert!(e.ends_with("must not be negative"), "{e}");
        }
        assert_eq!(number::size("4k"), Ok(4096));
        assert_eq!(number::size("0x10"), Ok(16));
        assert!(number::size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(number::size("4q").unwrap_err().contains("is not a size"));
        assert_eq!(number::count("250", "ms"), Ok(250));
        assert!(number::count("1k", "ms").is_err());
        assert!(number::count("", "ms").is_err());
        assert_eq!(number::seconds_f64("0.5", 10.0), Ok(0.5));
        assert!(number::seconds_f64("11", 10.0).is_err());
        assert!(number::seconds_f64("nan", 10.0).is_err());
        // --break-time: a positive time, however small, never becomes 0
        // ("never force").
        assert_eq!(
            crate::io::parse_break_time("0.5"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(crate::io::parse_break_time("0"), Ok(Duration::ZERO));
        assert!(crate::io::parse_break_time("0.0000000001").unwrap() > Duration::ZERO);
        assert!(crate::io::parse_break_time("-1")
            .unwrap_err()
            .ends_with("must not be negative"));
        assert_eq!(number::hex_bits("0x13"), Ok(0x13));
        assert_eq!(number::hex_bits("3"), Ok(3));
        assert!(number::hex_bits("0x1_0000_0000").is_err());
    }
}
