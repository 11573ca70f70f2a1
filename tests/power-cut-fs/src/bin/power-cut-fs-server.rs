//! The serving process of a power-cut mount, started by `power_cut_fs::mount` (not by hand):
//! `power-cut-fs-server BACKING MOUNTPOINT`, commanded through its stdin and stdout.
#![forbid(unsafe_code)]

use std::env;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let folders: Vec<PathBuf> = env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = folders.as_slice() else {
        eprintln!("usage: power-cut-fs-server BACKING MOUNTPOINT (started by power_cut_fs::mount)");
        return ExitCode::from(2);
    };
    match power_cut_fs::serve(backing, mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("power-cut-fs-server: {error}");
            ExitCode::FAILURE
        }
    }
}
