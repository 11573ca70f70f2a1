//! The lines that a [`crate::PowerCutFs`] and its serving process exchange over the serving
//! process's stdin and stdout: one command a line, one reply a line. A reply is `ok` and its
//! words, or `error`, the errno (or `-`) and a message. Byte strings (file names) are written as
//! `x` and their bytes in hexadecimal, so that any name fits in one word.

use std::ffi::OsString;
use std::fmt::Write;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::{CutReport, DiskError, Fault, FaultOp};

/// What the controlling process asks its serving process.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Cut,
    Inject(Fault),
    Heal,
    FaultsHit,
    Unmount,
}

impl Command {
    pub(crate) fn encode(&self) -> String {
        match self {
            Command::Cut => "cut".to_owned(),
            Command::Inject(fault) => format!(
                "inject {} {} {} {} {}",
                op_word(fault.op),
                error_word(fault.error),
                fault.after,
                fault
                    .times
                    .map_or("-".to_owned(), |times| times.to_string()),
                bytes_word(fault.file_suffix.as_bytes()),
            ),
            Command::Heal => "heal".to_owned(),
            Command::FaultsHit => "faults-hit".to_owned(),
            Command::Unmount => "unmount".to_owned(),
        }
    }

    pub(crate) fn decode(line: &str) -> io::Result<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["cut"] => Ok(Command::Cut),
            ["inject", op, error, after, times, suffix] => Ok(Command::Inject(Fault {
                op: word_op(op)?,
                error: word_error(error)?,
                after: number(after)?,
                times: match *times {
                    "-" => None,
                    times => Some(number(times)?),
                },
                file_suffix: String::from_utf8(word_bytes(suffix)?).map_err(invalid)?,
            })),
            ["heal"] => Ok(Command::Heal),
            ["faults-hit"] => Ok(Command::FaultsHit),
            ["unmount"] => Ok(Command::Unmount),
            _ => Err(invalid(format!("not a command: {line:?}"))),
        }
    }
}

pub(crate) fn encode_reply(reply: Result<&[String], &io::Error>) -> String {
    match reply {
        Ok(words) => ["ok"]
            .into_iter()
            .chain(words.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        Err(error) => {
            let errno = error
                .raw_os_error()
                .map_or("-".to_owned(), |errno| errno.to_string());
            format!("error {errno} {}", error.to_string().replace('\n', " "))
        }
    }
}

pub(crate) fn decode_reply(line: &str) -> io::Result<Vec<String>> {
    if let Some(error) = line.strip_prefix("error ") {
        let (errno, message) = error.split_once(' ').unwrap_or((error, ""));
        let kind = match errno.parse() {
            Ok(errno) => io::Error::from_raw_os_error(errno).kind(),
            Err(_) => io::ErrorKind::Other,
        };
        return Err(io::Error::new(kind, message.to_owned()));
    }
    let mut words = line.split_whitespace();
    if words.next() != Some("ok") {
        return Err(invalid(format!("not a reply: {line:?}")));
    }
    Ok(words.map(str::to_owned).collect())
}

pub(crate) fn report_words(report: &CutReport) -> Vec<String> {
    let counts = [
        report.files_reverted as u64,
        report.bytes_restored,
        report.bytes_truncated,
    ];
    let removed = report
        .files_removed
        .iter()
        .map(|path| bytes_word(path.as_os_str().as_bytes()));
    counts.iter().map(u64::to_string).chain(removed).collect()
}

pub(crate) fn words_report(words: &[String]) -> io::Result<CutReport> {
    let [reverted, restored, truncated, removed @ ..] = words else {
        return Err(invalid(format!("not a cut report: {words:?}")));
    };
    let files_removed = removed
        .iter()
        .map(|word| Ok(PathBuf::from(OsString::from_vec(word_bytes(word)?))))
        .collect::<io::Result<_>>()?;
    Ok(CutReport {
        files_reverted: number(reverted)?,
        bytes_restored: number(restored)?,
        bytes_truncated: number(truncated)?,
        files_removed,
    })
}

fn op_word(op: FaultOp) -> &'static str {
    match op {
        FaultOp::Write => "write",
        FaultOp::Fsync => "fsync",
        FaultOp::Create => "create",
        FaultOp::AnyChange => "any-change",
    }
}

fn word_op(word: &str) -> io::Result<FaultOp> {
    [
        FaultOp::Write,
        FaultOp::Fsync,
        FaultOp::Create,
        FaultOp::AnyChange,
    ]
    .into_iter()
    .find(|&op| op_word(op) == word)
    .ok_or_else(|| invalid(format!("not a fault operation: {word}")))
}

fn error_word(error: DiskError) -> &'static str {
    match error {
        DiskError::Eio => "eio",
        DiskError::Enospc => "enospc",
    }
}

fn word_error(word: &str) -> io::Result<DiskError> {
    [DiskError::Eio, DiskError::Enospc]
        .into_iter()
        .find(|&error| error_word(error) == word)
        .ok_or_else(|| invalid(format!("not a disk error: {word}")))
}

fn bytes_word(bytes: &[u8]) -> String {
    bytes.iter().fold("x".to_owned(), |mut word, byte| {
        let _ = write!(word, "{byte:02x}");
        word
    })
}

fn word_bytes(word: &str) -> io::Result<Vec<u8>> {
    let hex = word
        .strip_prefix('x')
        .filter(|hex| hex.is_ascii() && hex.len() % 2 == 0)
        .ok_or_else(|| invalid(format!("not a byte string: {word}")))?;
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).map_err(invalid))
        .collect()
}

fn number<T: std::str::FromStr>(word: &str) -> io::Result<T> {
    word.parse()
        .map_err(|_| invalid(format!("not a number: {word}")))
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_come_back_as_they_were_sent() {
        let commands = [
            Command::Cut,
            Command::Inject(Fault {
                op: FaultOp::AnyChange,
                file_suffix: "a b\nç".to_owned(),
                error: DiskError::Enospc,
                after: 3,
                times: Some(2),
            }),
            Command::Inject(Fault {
                op: FaultOp::Fsync,
                file_suffix: String::new(),
                error: DiskError::Eio,
                after: 0,
                times: None,
            }),
            Command::Heal,
            Command::FaultsHit,
            Command::Unmount,
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
    }

    #[test]
    fn a_cut_report_comes_back_as_it_was_sent() {
        let report = CutReport {
            files_reverted: 2,
            bytes_restored: 11,
            bytes_truncated: 4096,
            files_removed: vec!["new file".into(), "folder/x.db-shm".into()],
        };
        let line = encode_reply(Ok(&report_words(&report)));
        assert_eq!(words_report(&decode_reply(&line).unwrap()).unwrap(), report);
    }

    #[test]
    fn an_error_comes_back_with_its_kind_and_message() {
        let busy = io::Error::from_raw_os_error(nix::libc::EBUSY);
        let error = decode_reply(&encode_reply(Err(&busy))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ResourceBusy);
        assert!(error.to_string().contains("busy"), "{error}");
        let other = io::Error::other("two\nlines");
        let error = decode_reply(&encode_reply(Err(&other))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Other);
        assert_eq!(error.to_string(), "two lines");
    }
}
