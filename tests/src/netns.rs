//! Simulated machines for the tests and the benchmark: network namespaces, each linked to the
//! host's by a veth pair, so that processes in one reach the PostgreSQL server over a link of
//! their own that can be cut, as separate machines reach it over a network. Needs root.

use std::path::Path;
use std::process::{Command, Stdio};

/// A simulated machine: a network namespace linked to the host's by a veth pair, on subnet
/// 10.X.N.0/24, X from this process's id (the server's side .1, the machine's .2). Removed
/// when dropped.
pub struct Machine {
    namespace: String,
    /// The host side of the link: taking it down cuts the machine off.
    link: String,
    /// The server's address as the machine sees it.
    pub server: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {args:?} failed");
}

impl Machine {
    /// Machine `n` (1-254): its namespace and link made anew.
    pub fn new(n: u8) -> Machine {
        let tag = std::process::id() % 100_000;
        let net = format!("10.{}.{n}", 100 + tag % 100);
        let namespace = format!("hq{tag}m{n}");
        let link = format!("hq{tag}a{n}");
        let inside = format!("hq{tag}b{n}");
        let _ = Command::new("ip")
            .args(["netns", "del", &namespace])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &namespace]);
        let machine = Machine {
            namespace,
            link,
            server: format!("{net}.1"),
        };
        ip(&[
            "link",
            "add",
            &machine.link,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &machine.namespace]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", machine.server),
            "dev",
            &machine.link,
        ]);
        ip(&["link", "set", &machine.link, "up"]);
        let ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &machine.namespace, "ip"];
            full.extend_from_slice(args);
            ip(&full);
        };
        ns(&["addr", "add", &format!("{net}.2/24"), "dev", &inside]);
        ns(&["link", "set", &inside, "up"]);
        ns(&["link", "set", "lo", "up"]);
        machine
    }

    /// A command that runs `program` on this machine (in its namespace).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace]).arg(program);
        cmd
    }

    /// Cuts the machine off the network.
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"]);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Removing the namespace removes its end of the link, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}
