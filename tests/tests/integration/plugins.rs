//! Finding, loading and refusing plugin libraries.

use std::fs;

use integration_tests::{TestQueue, fixtures, library_file, workspace};
use serde_json::Value;

fn library<'a>(listing: &'a Value, crate_name: &str) -> &'a Value {
    let file = library_file(crate_name);
    listing["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|lib| lib["file"].as_str().unwrap().ends_with(&file))
        .unwrap_or_else(|| panic!("{file} not listed in {listing:#}"))
}

#[test]
fn a_custom_role_copied_alone_into_a_folder_is_found_and_runs() {
    let q = TestQueue::with_plugins(&[]);
    let folder = q.scratch.join("my-plugins");
    fs::create_dir_all(&folder).unwrap();
    fs::copy(
        workspace().library("deployer"),
        folder.join(library_file("deployer")),
    )
    .unwrap();
    let dir = folder.to_str().unwrap();

    let listing = q.ok(&["plugins", "--plugin-dir", dir]);
    assert!(
        listing.contains("role deployer") && listing.contains("deploy"),
        "{listing}"
    );

    let site = q.scratch.join("site");
    fs::create_dir_all(site.join("css")).unwrap();
    fs::write(site.join("index.html"), "<h1>hi</h1>").unwrap();
    fs::write(site.join("css/app.css"), "h1{}").unwrap();
    let dest = q.scratch.join("www/live");
    let payload = format!(r#"{{"destination": "{}"}}"#, dest.display());
    let id = q.add(&[
        "--plugin-dir",
        dir,
        "--type",
        "deploy",
        "--target",
        site.to_str().unwrap(),
        "--payload",
        &payload,
    ]);
    q.drain("deployer", &["--plugin-dir", dir]);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["files"], 2);
    assert_eq!(
        fs::read_to_string(dest.join("css/app.css")).unwrap(),
        "h1{}"
    );
}

#[test]
fn plugins_lists_roles_types_version_and_file() {
    let q = TestQueue::new();
    let listing: Value = serde_json::from_str(&q.ok(&["plugins", "--json"])).unwrap();
    let builtin = library(&listing, "builtin_roles");
    assert_eq!(builtin["status"], "loaded");
    assert_eq!(builtin["apiVersion"], listing["hostApiVersion"]);
    let roles: Vec<(String, Vec<Value>)> = builtin["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["taskTypes"].as_array().unwrap().clone(),
            )
        })
        .collect();
    for (role, task_type) in [
        ("inspector", "inspect"),
        ("writer", "write"),
        ("tester", "test"),
    ] {
        let found = roles.iter().find(|(name, _)| name == role).expect(role);
        assert_eq!(found.1, [Value::from(task_type)]);
    }
}

#[test]
fn libraries_that_are_not_compatible_plugins_are_refused_in_one_line_and_the_rest_load() {
    let q = TestQueue::with_plugins(&["noop", "builtin_roles"]);
    let fx = fixtures();
    for lib in [&fx.older_api, &fx.changed_layout, &fx.not_a_plugin] {
        fs::copy(lib, q.plugins.join(lib.file_name().unwrap())).unwrap();
    }
    fs::write(
        q.plugins.join(library_file("garbage")),
        b"not a library at all",
    )
    .unwrap();

    let output = q.run(&["plugins", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    let reason = |name: &str| {
        let lib = library(&listing, name);
        assert_eq!(lib["status"], "refused", "{lib:#}");
        let reason = lib["reason"].as_str().unwrap().to_string();
        assert!(!reason.contains('\n'), "one line: {reason}");
        reason
    };
    let older = reason("older_api_fixture");
    assert!(
        older.contains(&format!("plugin-api {}", fixtures().older_api_version))
            && older.contains("incompatible"),
        "{older}"
    );
    let changed = reason("changed_layout_fixture");
    assert!(changed.contains("incompatible plugin-api"), "{changed}");
    assert!(reason("not_a_plugin").contains("not a plugin"));
    assert!(reason("garbage").contains("not a loadable library"));
    assert_eq!(library(&listing, "noop")["status"], "loaded");
    assert_eq!(library(&listing, "builtin_roles")["status"], "loaded");

    // The human listing stays short (no layout report without -v), and work goes on.
    let text = q.ok(&["plugins"]);
    assert!(text.lines().count() < 40, "{text}");
    let id = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    assert_eq!(q.task(&id)["status"], "completed");
}

#[test]
fn verbose_listing_keeps_the_layout_report() {
    let q = TestQueue::with_plugins(&[]);
    let lib = &fixtures().changed_layout;
    fs::copy(lib, q.plugins.join(lib.file_name().unwrap())).unwrap();
    let short = q.ok(&["plugins"]);
    let long = q.ok(&["plugins", "-v"]);
    assert!(long.lines().count() > short.lines().count() + 5, "{long}");
}

#[test]
fn an_unknown_role_names_the_role_the_folders_and_the_roles_available() {
    let q = TestQueue::with_plugins(&["noop", "builtin_roles"]);
    let line = q.fails(&["--role", "deployer"]);
    assert!(line.contains("\"deployer\""), "{line}");
    assert!(line.contains(q.plugins.to_str().unwrap()), "{line}");
    assert!(line.contains("inspector, noop, tester, writer"), "{line}");
}

#[test]
fn the_default_plugin_path_includes_the_folder_of_the_host_executable() {
    let q = TestQueue::with_plugins(&[]);
    // A copy of the host beside a plugin, in a folder only this user can write to, as
    // `cargo build --release` leaves them.
    let bin = q.scratch.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(workspace().host(), bin.join("host")).unwrap();
    fs::copy(workspace().library("noop"), bin.join(library_file("noop"))).unwrap();
    let output = std::process::Command::new(bin.join("host"))
        .env("HOST_QUEUE_DIR", &q.queue)
        .args(["plugins", "--json"])
        .output()
        .unwrap();
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap();
    let path: Vec<&str> = listing["searchPath"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(path[0], q.queue.join("plugins").to_str().unwrap());
    assert_eq!(path[1], bin.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(library(&listing, "noop")["status"], "loaded");
}

#[test]
fn a_world_writable_plugin_folder_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let q = TestQueue::with_plugins(&["noop"]);
    fs::set_permissions(&q.plugins, fs::Permissions::from_mode(0o777)).unwrap();
    let listing: Value = serde_json::from_str(&q.ok(&["plugins", "--json"])).unwrap();
    let noop = library(&listing, "noop");
    assert_eq!(noop["status"], "refused");
    assert!(
        noop["reason"]
            .as_str()
            .unwrap()
            .contains("writable by other users")
    );
    fs::set_permissions(&q.plugins, fs::Permissions::from_mode(0o755)).unwrap();
    let listing: Value = serde_json::from_str(&q.ok(&["plugins", "--json"])).unwrap();
    assert_eq!(library(&listing, "noop")["status"], "loaded");
}
