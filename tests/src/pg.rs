//! A throwaway PostgreSQL cluster for the tests: made with `initdb` in a temporary folder,
//! listening on a free port of 127.0.0.1 (password login) and on a Unix socket (for the tests'
//! own administration), started once per test process and stopped, its folder removed, when
//! the process ends. Each test gets a database of its own ([`PgCluster::database`]).
//!
//! Nothing here is skipped quietly: without PostgreSQL's programs the tests that need a server
//! fail, saying how to install them (`./test.sh` does).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The login the tests' queues use, with a password (so that URLs carry one to hide).
pub const USER: &str = "host_test";
/// Its password.
pub const PASSWORD: &str = "s3cret-pg-password";

/// A running cluster.
pub struct PgCluster {
    /// PostgreSQL's programs (`initdb`, `postgres`, `pg_ctl`).
    pub bin: PathBuf,
    /// The cluster's data folder.
    pub data: PathBuf,
    /// The folder holding the Unix socket.
    pub socket_dir: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The OS user the server runs as (`postgres` when the tests run as root, which the server
    /// refuses to run as).
    pub os_user: Option<String>,
    /// The addresses the server listens on (`listen_addresses`).
    pub listen: String,
    /// The folder holding everything of the cluster.
    base: PathBuf,
    /// Whether dropping this value stops the server (not for the shared one, which its
    /// watchdog stops).
    owned: bool,
}

impl PgCluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static PgCluster {
        static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            let mut cluster = PgCluster::start("127.0.0.1").unwrap_or_else(|why| panic!("{why}"));
            cluster.owned = false;
            cluster
        })
    }

    /// A cluster of its own (for a test that stops the server or listens on other addresses),
    /// listening on `listen` (PostgreSQL's `listen_addresses`), password logins accepted from
    /// any address; stopped and removed when dropped.
    pub fn start(listen: &str) -> Result<PgCluster, String> {
        let bin = postgres_bin()?;
        let root = nix::unistd::geteuid().is_root();
        let os_user = root.then(|| "postgres".to_string());
        // Under /tmp: the server's user must be able to reach it, which a home folder may
        // not allow.
        let base = tempfile::Builder::new()
            .prefix("host-pg-")
            .tempdir_in("/tmp")
            .map_err(|err| format!("cannot make the cluster's folder: {err}"))?
            .keep();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let data = base.join("data");
        let socket_dir = base.join("socket");
        fs::create_dir(&socket_dir).unwrap();
        if let Some(user) = &os_user {
            chown(&base, user)?;
            chown(&socket_dir, user)?;
        }
        let port = free_port();
        let cluster = PgCluster {
            bin,
            data,
            socket_dir,
            port,
            os_user,
            listen: listen.to_string(),
            base: base.clone(),
            owned: true,
        };
        let pwfile = base.join("pw");
        fs::write(&pwfile, PASSWORD).unwrap();
        if let Some(user) = &cluster.os_user {
            chown(&pwfile, user)?;
        }
        cluster.run_as_server_user(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data),
                "-U",
                USER,
                "--pwfile",
                path_str(&pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        )?;
        let hba = cluster.data.join("pg_hba.conf");
        let mut rules = fs::read_to_string(&hba).unwrap();
        rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
        fs::write(&hba, rules).unwrap();
        // Ends the server and removes its folder once this test process is gone, however it
        // ends; tests that stop the server start it again with `restart`.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             kill -QUIT $(head -1 {data}/postmaster.pid) 2>/dev/null; sleep 1; rm -rf {base}",
            pid = std::process::id(),
            data = path_str(&cluster.data),
            base = path_str(&base),
        );
        Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start the cluster's watchdog: {err}"))?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Starts the server (after [`PgCluster::stop`]) and waits until it accepts connections.
    pub fn start_server(&self) -> Result<(), String> {
        let log = self.data.parent().unwrap().join("server.log");
        let options = format!(
            "-k {} -p {} -c listen_addresses='{}' -c max_connections=300 \
             -c shared_buffers=128MB",
            path_str(&self.socket_dir),
            self.port,
            self.listen
        );
        self.run_as_server_user(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data),
                "-l",
                path_str(&log),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Turns TLS on with a new self-signed certificate for 127.0.0.1 and restarts the server;
    /// returns the certificate (PEM), for `sslrootcert`.
    pub fn enable_tls(&self) -> Result<PathBuf, String> {
        let base = self.data.parent().unwrap();
        let (cert, key) = (base.join("server.crt"), base.join("server.key"));
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            // A server certificate, not an authority: rustls refuses an authority as a leaf.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|err| format!("cannot run openssl: {err}"))?;
        if !status.success() {
            return Err("openssl could not make a certificate".into());
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(user) = &self.os_user {
            chown(&key, user)?;
            chown(&cert, user)?;
        }
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            path_str(&cert),
            path_str(&key)
        ));
        fs::write(&conf, text).unwrap();
        self.stop()?;
        self.start_server()?;
        Ok(cert)
    }

    /// Stops the server at once, as a crash would (`immediate`: no checkpoint).
    pub fn stop(&self) -> Result<(), String> {
        self.run_as_server_user(
            "pg_ctl",
            &["-D", path_str(&self.data), "-m", "immediate", "-w", "stop"],
        )
    }

    fn run_as_server_user(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut cmd = match &self.os_user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(&program);
                cmd
            }
            None => Command::new(&program),
        };
        let output = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", program.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {args:?} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A new, empty database owned by [`USER`]: its queue URL (with the password).
    pub fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "q{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.admin(&format!("CREATE DATABASE {name} OWNER {USER}"));
        self.url(&name)
    }

    /// The queue URL of database `name`, with the password.
    pub fn url(&self, name: &str) -> String {
        self.url_at("127.0.0.1", name)
    }

    /// The queue URL of database `name` on the server's address `host`.
    pub fn url_at(&self, host: &str, name: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@{host}:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL as the cluster's superuser, over the Unix socket; panics on failure.
    pub fn admin(&self, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connected = postgres::Config::new()
                .host_path(&self.socket_dir)
                .port(self.port)
                .user(USER)
                .dbname("postgres")
                .connect(postgres::NoTls);
            match connected {
                Ok(mut client) => {
                    client
                        .batch_execute(sql)
                        .unwrap_or_else(|err| panic!("{sql}: {err}"));
                    return;
                }
                Err(err) if Instant::now() > deadline => panic!("cannot reach the cluster: {err}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.stop();
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

/// PostgreSQL's programs, newest version first.
fn postgres_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin/initdb): \
         run ./test.sh, which installs Debian's postgresql, or `apt-get install postgresql`"
            .to_string()
    })
}

fn chown(path: &Path, user: &str) -> Result<(), String> {
    let status = Command::new("chown")
        .args(["-R", user])
        .arg(path)
        .status()
        .map_err(|err| err.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("chown {user} {} failed", path.display()))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
