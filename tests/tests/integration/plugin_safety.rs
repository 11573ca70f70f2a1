//! Plugin code runs only when nobody else could have put the library there, and never inside the
//! process that asked: a library that aborts or hangs costs one line, not `host add`, `host
//! serve` or the worker.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::{TestQueue, library_file, running_as_root, workspace};
use serde_json::Value;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A folder under the queue's scratch space holding a copy of `crate_name`'s library.
fn folder_with(q: &TestQueue, name: &str, crate_name: &str) -> PathBuf {
    let dir = q.scratch.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(
        workspace().library(crate_name),
        dir.join(library_file(crate_name)),
    )
    .unwrap();
    dir
}

/// `host plugins --json` over `path` (joined with ':'), with the bad plugin writing `marker`
/// if any of its code runs.
fn list_plugins(q: &TestQueue, path: &[&Path], marker: &Path) -> Value {
    let joined: Vec<&str> = path.iter().map(|p| p.to_str().unwrap()).collect();
    let output = q
        .host()
        .env("HOST_PLUGIN_PATH", joined.join(":"))
        .env("BAD_PLUGIN_MARKER", marker)
        .args(["plugins", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn status_of(listing: &Value, file: &Path) -> (String, String) {
    let lib = listing["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|lib| lib["file"].as_str() == file.to_str())
        .unwrap_or_else(|| panic!("{} not listed in {listing:#}", file.display()));
    (
        lib["status"].as_str().unwrap().to_string(),
        lib["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Asserts that the library is refused for `why`, and that none of its code ran.
fn refused_unopened(q: &TestQueue, path: &[&Path], library: &Path, why: &str) {
    let marker = q.scratch.join("marker");
    let _ = fs::remove_file(&marker);
    let listing = list_plugins(q, path, &marker);
    let (status, reason) = status_of(&listing, library);
    assert_eq!(status, "refused", "{}: {listing:#}", library.display());
    assert!(reason.contains(why), "{}: {reason}", library.display());
    assert!(
        !marker.exists(),
        "{} was opened before it was refused",
        library.display()
    );
}

#[test]
fn a_library_someone_else_could_have_placed_is_refused_before_it_is_opened() {
    let q = TestQueue::with_plugins(&[]);
    let bad = library_file("bad_plugin");

    let group_folder = folder_with(&q, "group-folder", "bad_plugin");
    chmod(&group_folder, 0o775);
    refused_unopened(
        &q,
        &[&group_folder],
        &group_folder.join(&bad),
        "writable by its group",
    );

    let group_file = folder_with(&q, "group-file", "bad_plugin");
    chmod(&group_file.join(&bad), 0o664);
    refused_unopened(
        &q,
        &[&group_file],
        &group_file.join(&bad),
        "writable by its group or other",
    );

    // A sticky world-writable folder first on the path, shadowing a good role: refused, and the
    // good one is used.
    let sticky = folder_with(&q, "sticky", "bad_plugin");
    fs::copy(
        workspace().library("noop"),
        sticky.join(library_file("noop")),
    )
    .unwrap();
    chmod(&sticky, 0o1777);
    let good = folder_with(&q, "good", "noop");
    refused_unopened(
        &q,
        &[&sticky, &good],
        &sticky.join(&bad),
        "writable by other users",
    );
    let listing = list_plugins(&q, &[&sticky, &good], &q.scratch.join("marker"));
    assert_eq!(
        status_of(&listing, &sticky.join(library_file("noop"))).0,
        "refused"
    );
    assert_eq!(
        status_of(&listing, &good.join(library_file("noop"))).0,
        "loaded"
    );

    // A link in a world-writable folder to a library in a sticky world-writable folder.
    let links = q.scratch.join("links");
    fs::create_dir_all(&links).unwrap();
    symlink(sticky.join(&bad), links.join(&bad)).unwrap();
    chmod(&links, 0o777);
    refused_unopened(&q, &[&links], &links.join(&bad), "writable by other users");
    // The same link from a folder only this user can write still leads into the sticky one.
    let private_links = q.scratch.join("private-links");
    fs::create_dir_all(&private_links).unwrap();
    symlink(sticky.join(&bad), private_links.join(&bad)).unwrap();
    refused_unopened(
        &q,
        &[&private_links],
        &private_links.join(&bad),
        "writable by other users",
    );

    // A chain of links: a private link to a link in a world-writable folder (which anyone
    // could re-point) to a library in a private folder. Every link on the way counts.
    let real = folder_with(&q, "real", "bad_plugin");
    let hop = q.scratch.join("hop");
    fs::create_dir_all(&hop).unwrap();
    symlink(real.join(&bad), hop.join(&bad)).unwrap();
    chmod(&hop, 0o777);
    let chain = q.scratch.join("chain");
    fs::create_dir_all(&chain).unwrap();
    symlink(hop.join(&bad), chain.join(&bad)).unwrap();
    refused_unopened(&q, &[&chain], &chain.join(&bad), "writable by other users");

    if running_as_root("plugins owned by another user are refused") {
        let owned = folder_with(&q, "owned", "bad_plugin");
        nix::unistd::chown(
            &owned.join(&bad),
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
        refused_unopened(&q, &[&owned], &owned.join(&bad), "owned by uid 65534");

        // Another user's `<queue>/plugins`, the first folder of the default path.
        let queue_plugins = q.queue.join("plugins");
        fs::create_dir_all(&queue_plugins).unwrap();
        fs::copy(workspace().library("bad_plugin"), queue_plugins.join(&bad)).unwrap();
        nix::unistd::chown(
            &queue_plugins,
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
        refused_unopened(
            &q,
            &[&queue_plugins],
            &queue_plugins.join(&bad),
            "owned by uid 65534",
        );
    }

    // The same library in a folder only this user can write is opened.
    let fine = folder_with(&q, "fine", "bad_plugin");
    let marker = q.scratch.join("marker");
    let listing = list_plugins(&q, &[&fine], &marker);
    assert_eq!(status_of(&listing, &fine.join(&bad)).0, "loaded");
    assert!(marker.exists(), "the accepted library ran");
}

/// `host ARGS` on the queue with the bad plugin (misbehaving as `mode`) beside noop.
fn with_bad_plugin(q: &TestQueue, mode: &str, args: &[&str]) -> std::process::Output {
    q.host()
        .env("BAD_PLUGIN", mode)
        .env("HOST_PLUGIN_TIMEOUT", "1s")
        .args(args)
        .output()
        .unwrap()
}

fn one_line_failure(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn a_library_that_aborts_hangs_or_panics_while_listing_costs_only_itself() {
    let q = TestQueue::with_plugins(&["noop", "bad_plugin"]);
    let bad = q.plugins.join(library_file("bad_plugin"));
    for (mode, said) in [
        ("abort-listing", "aborted (SIGABRT) while listing its roles"),
        ("hang-listing", "did not finish listing its roles within 1s"),
        ("panic-listing", "the bad plugin panics while listing"),
    ] {
        let started = Instant::now();
        let output = with_bad_plugin(&q, mode, &["plugins", "--json"]);
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{mode} held up the listing"
        );
        let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
        let (status, reason) = status_of(&listing, &bad);
        assert_eq!(status, "refused", "{mode}");
        assert!(reason.contains(said), "{mode}: {reason}");
        let noop = q.plugins.join(library_file("noop"));
        assert_eq!(status_of(&listing, &noop).0, "loaded", "{mode}");

        // Adds and workers of other roles go on.
        let output = with_bad_plugin(&q, mode, &["add", "--type", "noop"]);
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let output = with_bad_plugin(&q, mode, &["--role", "noop", "--drain"]);
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        // Asking for its role says why there is none.
        let line = one_line_failure(&with_bad_plugin(&q, mode, &["--role", "bad"]));
        assert!(
            line.contains("refused") && line.contains(said),
            "{mode}: {line}"
        );
    }
    assert_eq!(q.status()["counts"]["completed"], 3);
}

#[test]
fn a_validate_that_aborts_or_hangs_fails_that_add_and_nothing_else() {
    let q = TestQueue::with_plugins(&["noop", "bad_plugin"]);
    for (mode, said) in [
        ("abort-validate", "aborted (SIGABRT) while validating"),
        ("hang-validate", "did not finish validating tasks within 1s"),
    ] {
        let line = one_line_failure(&with_bad_plugin(&q, mode, &["add", "--type", "bad"]));
        assert!(
            line.contains(said) && line.contains("bad_plugin"),
            "{mode}: {line}"
        );
        assert_eq!(q.status()["counts"]["pending"], 0, "{mode}: nothing added");
    }

    // `host serve` answers the add with an error and goes on serving.
    let mut server = q
        .host()
        .env("BAD_PLUGIN", "abort-validate")
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token",
            "0123456789abcdef0123",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .split_whitespace()
        .last()
        .unwrap()
        .split("/?")
        .next()
        .unwrap()
        .to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let bearer = "Bearer 0123456789abcdef0123";
    let mut refused = agent
        .post(&format!("{base}/api/tasks"))
        .header("Authorization", bearer)
        .header("Content-Type", "application/json")
        .send(r#"{"type": "bad"}"#)
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let body = refused.body_mut().read_to_string().unwrap();
    assert!(body.contains("aborted"), "{body}");
    let status = agent
        .get(&format!("{base}/api/status"))
        .header("Authorization", bearer)
        .call()
        .unwrap();
    assert_eq!(status.status().as_u16(), 200, "the server is still up");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn what_a_library_lists_is_remembered_until_the_file_changes() {
    use std::os::unix::fs::PermissionsExt;
    let q = TestQueue::with_plugins(&["noop", "bad_plugin"]);
    let bad = q.plugins.join(library_file("bad_plugin"));
    // The bad plugin writes the marker whenever its roles are listed, that is whenever a
    // probe opens it: an add of a noop task opens it only to learn what it provides.
    let marker = q.scratch.join("marker");
    let add = || {
        let output = q
            .host()
            .env("BAD_PLUGIN_MARKER", &marker)
            .args(["add", "--type", "noop"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let probed = || {
        let was = marker.exists();
        let _ = fs::remove_file(&marker);
        was
    };
    let mode = |path: &std::path::Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;

    add();
    assert!(probed(), "the first add lists the library's roles");
    add();
    assert!(!probed(), "the second add remembers them");
    let cache = q.cache.join("host/plugins.json");
    assert_eq!(mode(&cache), 0o600, "the cache is the user's alone");
    assert_eq!(mode(cache.parent().unwrap()), 0o700);

    // A new modification time (same size), then a new size: probed again, then remembered.
    let file = fs::File::options().write(true).open(&bad).unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    drop(file);
    add();
    assert!(
        probed(),
        "a library with a new modification time is probed again"
    );
    add();
    assert!(!probed());
    fs::File::options()
        .append(true)
        .open(&bad)
        .unwrap()
        .write_all(b"\0")
        .unwrap();
    add();
    assert!(probed(), "a library of a new size is probed again");
    add();
    assert!(!probed());

    // A cache others could have written is not read, and is replaced by one they cannot.
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o666)).unwrap();
    add();
    assert!(probed(), "a world-writable cache is ignored");
    assert_eq!(mode(&cache), 0o600);
    add();
    assert!(!probed());
    // So is one that is not a cache.
    fs::write(&cache, "not a cache").unwrap();
    add();
    assert!(probed(), "a corrupt cache is ignored");
    add();
    assert!(!probed());

    // The ownership and permission checks still run every time: a library made writable by
    // others is refused, remembered or not.
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o666)).unwrap();
    let output = q.host().args(["--role", "bad"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("writable by its group or other users"),
        "{stderr}"
    );
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o644)).unwrap();

    // `host plugins` shows what the libraries say now: it always asks them.
    add();
    let _ = probed();
    q.host()
        .env("BAD_PLUGIN_MARKER", &marker)
        .args(["plugins"])
        .output()
        .unwrap();
    assert!(probed(), "host plugins probes every library");
}

#[test]
fn a_refused_library_is_named_where_its_role_is_missed_and_by_doctor() {
    let q = TestQueue::with_plugins(&["noop"]);
    q.ok(&["add", "--type", "noop"]);
    let doctor = q.ok(&["doctor"]);
    assert!(
        doctor.contains("this machine's plugins: roles noop"),
        "{doctor}"
    );

    let library = q.plugins.join(library_file("noop"));
    chmod(&library, 0o666);
    let line = one_line_failure(&q.run(&["add", "--type", "noop"]));
    assert!(
        line.contains("unknown task type \"noop\"")
            && line.contains(&format!("refused: {}: ", library.display()))
            && line.contains("writable by its group or other users"),
        "{line}"
    );
    let doctor = q.run(&["doctor"]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "PROBLEM  this machine's plugin {}: refused:",
            library.display()
        )) && report.contains("note     this machine's plugin path has no role"),
        "{report}"
    );
    // Nothing of the queue was touched: the task added before is still there.
    assert_eq!(q.status()["counts"]["pending"], 1);
}
