//! The serving process of a mount: it runs the file system on a thread and obeys the commands
//! of the process that started it, read from stdin, answering on stdout.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};
use nix::errno::Errno;

use crate::passthrough::{Server, State};
use crate::protocol::{self, Command};

/// Serves one power-cut mount of `backing` at `mountpoint` for the process that started this
/// one through [`crate::mount`]: what the `power-cut-fs-server` binary runs. Says `ok` on stdout
/// once mounted, then answers each command read on stdin; unmounts when told to or when stdin
/// ends (the controlling process is gone).
pub fn serve(backing: &Path, mountpoint: &Path) -> io::Result<()> {
    let mut replies = io::stdout().lock();
    let mounted = Service::mount(backing, mountpoint);
    reply(&mut replies, mounted.as_ref().map(|_| &[][..]))?;
    let mut service = mounted?;
    for line in io::stdin().lock().lines() {
        let command = Command::decode(&line?);
        let unmounting = matches!(command, Ok(Command::Unmount));
        let answer = command.and_then(|command| service.obey(command));
        reply(&mut replies, answer.as_deref())?;
        if unmounting {
            return answer.map(drop);
        }
    }
    service.unmount()
}

/// How often, and how far apart, a busy mount is tried to unmount before it is detached.
const UNMOUNT_TRIES: usize = 40;
const UNMOUNT_PAUSE: Duration = Duration::from_millis(50);

struct Service {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl Service {
    fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(State::new(&backing.canonicalize()?)?));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("power-cut-fs".to_owned()),
            MountOption::DefaultPermissions,
        ];
        let server = Server::new(Arc::clone(&state));
        let session = fuser::spawn_mount(server, mountpoint, &config)?;
        Ok(Service {
            state,
            session: Some(session),
            mountpoint: mountpoint.canonicalize()?,
        })
    }

    fn obey(&mut self, command: Command) -> io::Result<Vec<String>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match command {
            Command::Cut => Ok(protocol::report_words(&state.cut()?)),
            Command::Inject(fault) => {
                state.faults.inject(fault);
                Ok(Vec::new())
            }
            Command::Heal => {
                state.faults.heal();
                Ok(Vec::new())
            }
            Command::FaultsHit => Ok(vec![state.faults.hits().to_string()]),
            Command::Unmount => {
                drop(state);
                self.unmount().map(|()| Vec::new())
            }
        }
    }

    /// Unmounts and waits for the serving thread. A file open on the mount makes it busy, if only
    /// for a moment (as in a process forked but not yet `exec`ed, which holds copies of its
    /// parent's files): after a while of trying, the mount is detached lazily instead and the
    /// unmount fails with `EBUSY` (the serving thread ends with this process).
    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        for _ in 0..UNMOUNT_TRIES {
            match nix::mount::umount(&self.mountpoint) {
                Ok(()) => return session.join(),
                Err(Errno::EBUSY) => thread::sleep(UNMOUNT_PAUSE),
                // Not root: fuser unmounts through fusermount3.
                Err(Errno::EPERM) => return session.umount_and_join(),
                Err(error) => return Err(error.into()),
            }
        }
        nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)?;
        Err(Errno::EBUSY.into())
    }
}

fn reply(replies: &mut impl Write, answer: Result<&[String], &io::Error>) -> io::Result<()> {
    writeln!(replies, "{}", protocol::encode_reply(answer))?;
    replies.flush()
}
