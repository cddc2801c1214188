//! The launcher's errors and exit codes. Every other module imports this one; it imports none
//! of them.
//!
//! Exit codes: 0 success; 2 bad input ([`BadInput`]: one line naming the file or key and what was
//! expected, and nothing written); 128 + the signal's number for a training stopped by a signal
//! after its checkpoint ([`Interrupted`]: 143 for SIGTERM, 130 for SIGINT); 1 any other failure;
//! 101 a panic (a bug).

use std::fmt;

use metaloop_engine::Error as EngineError;

/// Bad input from the user: a one-line message; the command exits with code 2 and writes nothing.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Shorthand for a [`BadInput`] wrapped in `anyhow`.
pub fn bad(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(message.into().replace('\n', " ")))
}

/// "no such file" and friends, without the OS error number.
pub fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Engine errors that come from the user's input (config, datasets, checkpoints) become
/// [`BadInput`] (exit code 2); the rest stay failures (exit code 1).
pub fn setup_error(e: EngineError) -> anyhow::Error {
    if e.is_user_input() {
        bad(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}

/// A run stopped by a signal after writing its checkpoint: the command exits with
/// `128 + signal`, and rank 0 prints `message`.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub message: String,
    /// Only rank 0 prints.
    pub print: bool,
}

impl Interrupted {
    /// 143 for SIGTERM, 130 for SIGINT.
    pub fn exit_code(&self) -> u8 {
        u8::try_from(128 + self.signal).unwrap_or(1)
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// A failure that every process of the job knows of and ends alike: the ranks agreed on it
/// after their set-up, or it is the exit code of the job that `launch` ran. The command exits
/// with `code`, without `MPI_Abort`, and prints `line` where it has one (on one rank only).
#[derive(Debug)]
pub struct Agreed {
    pub code: u8,
    pub line: Option<String>,
}

impl fmt::Display for Agreed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.line {
            Some(line) => f.write_str(line),
            None => write!(f, "exit code {}", self.code),
        }
    }
}

impl std::error::Error for Agreed {}

/// An [`Agreed`] ending that prints nothing: another process reported it.
pub fn quiet(code: u8) -> anyhow::Error {
    anyhow::Error::new(Agreed { code, line: None })
}

/// The failure `e`, agreed on: this process prints it and ends without `MPI_Abort`.
pub fn agreed(e: &anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Agreed {
        code: failure_code(e),
        line: Some(line_of(e)),
    })
}

/// The exit code that a failure `e` ends the command with: 2 for bad input, 1 otherwise.
pub fn failure_code(e: &anyhow::Error) -> u8 {
    if let Some(a) = e.downcast_ref::<Agreed>() {
        return a.code;
    }
    if e.downcast_ref::<BadInput>().is_some() {
        2
    } else {
        1
    }
}

/// The one line that reports `e`.
fn line_of(e: &anyhow::Error) -> String {
    match e.downcast_ref::<BadInput>() {
        Some(bad) => bad.0.clone(),
        None => format!("{e:#}"),
    }
}

/// How a command's error ends the process.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every rank agreed on a stop (and wrote its checkpoint) or on a failure: all end alike,
    /// without aborting.
    Stopped(u8),
    /// A failure on this rank: it ends the job (`MPI_Abort`) with this code.
    Failed(u8),
}

/// Prints `metaloop: <message>` on stderr in one write: under mpirun other ranks and mpirun's
/// own notices write to the same stream, and a line written in pieces can be split by theirs.
pub fn say(message: &str) {
    use std::io::Write;
    let line = format!("metaloop: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Prints `e` as one line on stderr (a stop only where it asks to) and says how to end.
pub fn report(e: &anyhow::Error) -> Ending {
    if let Some(stop) = e.downcast_ref::<Interrupted>() {
        if stop.print {
            say(&stop.to_string());
        }
        return Ending::Stopped(stop.exit_code());
    }
    if let Some(a) = e.downcast_ref::<Agreed>() {
        if let Some(line) = &a.line {
            say(line);
        }
        return Ending::Stopped(a.code);
    }
    say(&line_of(e));
    Ending::Failed(failure_code(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(signal: i32) -> Interrupted {
        Interrupted {
            signal,
            message: String::new(),
            print: false,
        }
    }

    #[test]
    fn exit_codes_are_128_plus_the_signal_2_for_bad_input_and_1_otherwise() {
        let (sigterm, sigint) = (signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT);
        assert_eq!(stop(sigterm).exit_code(), 143);
        assert_eq!(stop(sigint).exit_code(), 130);
        let ending = |e: anyhow::Error| report(&e);
        assert_eq!(
            ending(anyhow::Error::new(stop(sigterm))),
            Ending::Stopped(143)
        );
        assert_eq!(ending(bad("c.toml: x")), Ending::Failed(2));
        assert_eq!(ending(anyhow::anyhow!("disk full")), Ending::Failed(1));
        assert_eq!(ending(quiet(137)), Ending::Stopped(137));
        assert_eq!(ending(agreed(&bad("x"))), Ending::Stopped(2));
        assert_eq!(failure_code(&bad("x")), 2);
        assert_eq!(failure_code(&anyhow::anyhow!("disk full")), 1);
        assert_eq!(failure_code(&quiet(101)), 101);
    }

    #[test]
    fn a_bad_input_message_is_one_line() {
        assert_eq!(bad("a\nb").to_string(), "a b");
    }
}
