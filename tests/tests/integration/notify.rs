//! Notifications (`[notify]` in host.toml): webhooks in each format hear of a review, a failure
//! for good, a merge conflict and the drain; the `events` a sink takes; a sink that fails is
//! reported and changes nothing; `host notify test`. The webhooks are a small HTTP server of the
//! test's own on 127.0.0.1.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::TestQueue;
use serde_json::Value;

use crate::worktrees::{bind_editor, repository};

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on 127.0.0.1: answers each request with `status` (or, for `None`, never
/// answers, holding the connection for up to 10 s) and keeps what it was sent. It stops when
/// dropped.
pub(crate) struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub(crate) fn start(status: Option<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (keep, stopped) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (keep, stopped) = (Arc::clone(&keep), Arc::clone(&stopped));
                        std::thread::spawn(move || serve(stream, status, &keep, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver { port, got, stop }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What was posted to `path`, in the order it came.
    pub(crate) fn at(&self, path: &str) -> Vec<Request> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The `event` of each JSON body posted to `path`, with its task's id.
    fn events(&self, path: &str) -> Vec<(String, String)> {
        self.at(path)
            .iter()
            .map(|r| {
                let body = r.json();
                (
                    body["event"].as_str().unwrap().to_string(),
                    body["task"]["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, status: Option<u16>, keep: &Mutex<Vec<Request>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let path = first
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    keep.lock().unwrap().push(Request {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let mut stream = stream;
    match status {
        Some(status) => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
        None => {
            let held = Instant::now();
            while !stop.load(Ordering::SeqCst) && held.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Appends `text` to the queue's host.toml (made if there is none).
pub(crate) fn append_config(q: &TestQueue, text: &str) {
    let path = q.queue.join("host.toml");
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, before + text).unwrap();
}

/// Role `checker` runs noop, and its successes wait for review.
const CHECKER: &str = "[roles.checker]\nhandler = \"noop\"\nreview = \"required\"\n\n";

fn drained_line(id: &str, task_type: &str, status: &str) -> String {
    format!(
        "the queue is drained: nothing is pending, running or blocked (the last task to end: \
         task {id} ({task_type}), {status})"
    )
}

#[test]
fn webhooks_hear_of_a_review_a_failure_for_good_and_the_drain_in_each_format() {
    let q = TestQueue::new();
    let hooks = Receiver::start(Some(200));
    append_config(
        &q,
        &format!(
            "{CHECKER}[notify]\n\
             [[notify.webhook]]\nurl = {:?}\n\
             [[notify.webhook]]\nurl = {:?}\nformat = \"slack\"\n\
             [[notify.webhook]]\nurl = {:?}\nformat = \"discord\"\n\
             [[notify.webhook]]\nurl = {:?}\nformat = \"ntfy\"\n",
            hooks.url("/json"),
            hooks.url("/slack"),
            hooks.url("/discord"),
            hooks.url("/ntfy"),
        ),
    );
    let reviewed = q.add(&["--type", "noop", "--description", "Check the README"]);
    let failed = q.add_failing_once();
    q.drain("checker", &[]);
    // The flaky task is still pending: the queue is not drained yet.
    assert_eq!(
        hooks.events("/json"),
        vec![("review".to_string(), reviewed.clone())]
    );
    q.drain("flaky", &[]);
    assert_eq!(q.task(&failed)["status"], "failed");
    let error = q.task(&failed)["error"].as_str().unwrap().to_string();

    let lines = [
        format!(
            "task {reviewed} (noop: Check the README) succeeded and waits for review (host \
             approve {reviewed} / host reject {reviewed})"
        ),
        format!("task {failed} (flaky) failed for good: {error}"),
        drained_line(&failed, "flaky", "failed"),
    ];
    let titles = [
        format!("host: task {reviewed} waits for review"),
        format!("host: task {failed} failed"),
        "host: the queue is drained".to_string(),
    ];
    let json = hooks.at("/json");
    assert_eq!(
        hooks.events("/json"),
        vec![
            ("review".to_string(), reviewed.clone()),
            ("failed".to_string(), failed.clone()),
            ("drained".to_string(), failed.clone()),
        ]
    );
    for (i, request) in json.iter().enumerate() {
        let body = request.json();
        assert_eq!(body["message"], lines[i].as_str(), "{body:#}");
        assert_eq!(body["title"], titles[i].as_str(), "{body:#}");
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
    assert_eq!(json[0].json()["task"]["status"], "review");
    assert_eq!(json[1].json()["task"]["status"], "failed");
    for (path, key) in [("/slack", "text"), ("/discord", "content")] {
        let bodies: Vec<Value> = hooks.at(path).iter().map(Request::json).collect();
        let want: Vec<Value> = lines
            .iter()
            .map(|line| serde_json::json!({ key: line }))
            .collect();
        assert_eq!(bodies, want, "{path}");
    }
    let ntfy = hooks.at("/ntfy");
    let bodies: Vec<&str> = ntfy.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, lines.iter().map(String::as_str).collect::<Vec<_>>());
    let sent_titles: Vec<&str> = ntfy.iter().map(|r| r.header("title").unwrap()).collect();
    assert_eq!(
        sent_titles,
        titles.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        ntfy[0]
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
}

#[test]
fn a_merge_conflict_is_notified() {
    let q = TestQueue::new();
    let repo = repository(&q);
    bind_editor(&q);
    let target = repo.to_str().unwrap();
    let first = q.add(&["--type", "edit", "--target", target]);
    let second = q.add(&["--type", "edit", "--target", target]);
    q.drain("editor", &[]);
    q.ok(&["merge", &first]);
    let hooks = Receiver::start(Some(200));
    append_config(
        &q,
        &format!(
            "\n[notify]\n[[notify.webhook]]\nurl = {:?}\nformat = \"json\"\n",
            hooks.url("/hook")
        ),
    );
    let line = q.fails(&["merge", &second]);
    assert!(line.contains("conflicts in shared.txt"), "{line}");
    // `host merge` sent it before it exited.
    assert_eq!(
        hooks.events("/hook"),
        vec![("conflict".to_string(), second.clone())]
    );
    let body = hooks.at("/hook")[0].json();
    assert_eq!(
        body["message"],
        format!(
            "task {second} (edit): merging its branch into main conflicts in shared.txt; nothing \
             was changed"
        )
    );
    assert_eq!(body["task"]["branchState"]["state"], "conflict");
    // The inbox lists it, with what settles it.
    let inbox: Value = serde_json::from_str(&q.ok(&["inbox", "--json"])).unwrap();
    assert_eq!(inbox[0]["kind"], "conflict", "{inbox:#}");
    assert_eq!(inbox[0]["task"], second.as_str(), "{inbox:#}");
    assert_eq!(
        inbox[0]["title"], "merging into main conflicts in shared.txt",
        "{inbox:#}"
    );
}

#[test]
fn a_notification_that_fails_is_one_line_on_stderr_and_changes_nothing() {
    let q = TestQueue::new();
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broken = Receiver::start(Some(500));
    let silent = Receiver::start(None);
    append_config(
        &q,
        &format!(
            "[notify]\ndesktop = true\ntimeout = \"1s\"\n\
             [[notify.webhook]]\nurl = \"http://127.0.0.1:{refused}/secret-path\"\n\
             [[notify.webhook]]\nurl = {:?}\n\
             [[notify.webhook]]\nurl = {:?}\n",
            broken.url("/hook"),
            silent.url("/hook"),
        ),
    );
    let id = q.add_failing_once();
    let started = Instant::now();
    // No notification service on this bus: the desktop notification fails too.
    let output = q
        .host()
        .args(["--role", "flaky", "--drain"])
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // A webhook that never answers is given up after the timeout (the failure and the drain
    // each wait a second for it), not waited for.
    assert!(took < Duration::from_secs(8), "{took:?}\n{stderr}");
    let task = q.task(&id);
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 1);
    let failures: Vec<&str> = stderr.lines().filter(|l| l.contains("not sent")).collect();
    assert_eq!(failures.len(), 8, "4 sinks, 2 events:\n{stderr}");
    let said = |prefix: &str, sink: &str, event: &str, why: &str| {
        let want = format!("{prefix}: {sink}: notification \"{event}\" not sent: ");
        assert!(
            failures
                .iter()
                .any(|line| line.contains(&want) && line.contains(why)),
            "want {want}...{why} in:\n{stderr}"
        );
    };
    let task_prefix = format!("task {id}");
    for (prefix, event) in [
        (task_prefix.as_str(), "failed"),
        ("the queue drained", "drained"),
    ] {
        said(prefix, "desktop", event, "");
        said(
            prefix,
            &format!("webhook 1 (127.0.0.1:{refused})"),
            event,
            "",
        );
        said(
            prefix,
            &format!("webhook 2 (127.0.0.1:{})", broken.port),
            event,
            "it answered HTTP 500",
        );
        said(
            prefix,
            &format!("webhook 3 (127.0.0.1:{})", silent.port),
            event,
            "no answer within 1s",
        );
    }
    assert!(!stderr.contains("secret-path"), "{stderr}");
    // The ones that could be reached were sent the events all the same.
    assert_eq!(broken.events("/hook").len(), 2);
    assert_eq!(silent.events("/hook").len(), 2);
}

#[test]
fn each_sink_hears_only_the_events_it_takes() {
    let q = TestQueue::new();
    let hooks = Receiver::start(Some(200));
    append_config(
        &q,
        &format!(
            "{CHECKER}[notify]\nevents = [\"failed\"]\n\
             [[notify.webhook]]\nurl = {:?}\n\
             [[notify.webhook]]\nurl = {:?}\nevents = [\"review\", \"drained\"]\n",
            hooks.url("/failures"),
            hooks.url("/others"),
        ),
    );
    let reviewed = q.add(&["--type", "noop"]);
    let failed = q.add_failing_once();
    q.drain("checker", &[]);
    q.drain("flaky", &[]);
    assert_eq!(
        hooks.events("/failures"),
        vec![("failed".to_string(), failed.clone())]
    );
    assert_eq!(
        hooks.events("/others"),
        vec![
            ("review".to_string(), reviewed),
            ("drained".to_string(), failed),
        ]
    );
}

#[test]
fn the_drain_is_announced_once_when_several_workers_end_together() {
    let q = TestQueue::new();
    let hooks = Receiver::start(Some(200));
    append_config(
        &q,
        &format!(
            "[notify]\nevents = [\"drained\"]\n[[notify.webhook]]\nurl = {:?}\n",
            hooks.url("/hook")
        ),
    );
    for _ in 0..6 {
        q.add(&["--type", "sleep", "--payload", r#"{"ms": 400}"#]);
    }
    let workers: Vec<_> = (0..3)
        .map(|_| q.spawn_worker("sleeper", &["--drain", "--concurrency", "2"]))
        .collect();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
    let drains = hooks.events("/hook");
    assert_eq!(drains.len(), 1, "{drains:?}");
    // The task that ended last says who announced it.
    let last = &drains[0].1;
    let log = q.ok(&["logs", last]);
    assert!(
        log.contains("host: the queue drained after this task ended at"),
        "{log}"
    );
    // Work added later drains the queue again.
    let more = q.add(&["--type", "noop"]);
    q.drain("noop", &[]);
    let drains = hooks.events("/hook");
    assert_eq!(drains.len(), 2, "{drains:?}");
    assert_eq!(drains[1], ("drained".to_string(), more));
}

#[test]
fn a_task_failed_through_host_fail_is_notified() {
    let q = TestQueue::new();
    let hooks = Receiver::start(Some(200));
    append_config(
        &q,
        &format!(
            "[notify]\n[[notify.webhook]]\nurl = {:?}\n",
            hooks.url("/hook")
        ),
    );
    let id = q.add(&["--type", "noop", "--max-attempts", "1"]);
    let claimed: Value =
        serde_json::from_str(&q.ok(&["claim", "--role", "noop", "--name", "me", "--json"]))
            .unwrap();
    let token = claimed["leaseToken"].as_str().unwrap();
    q.ok(&["fail", &id, "--error", "could not do it", "--token", token]);
    assert_eq!(
        hooks.events("/hook"),
        vec![
            ("failed".to_string(), id.clone()),
            ("drained".to_string(), id.clone()),
        ]
    );
    assert_eq!(
        hooks.at("/hook")[0].json()["message"],
        format!("task {id} (noop) failed for good: attempt 1: could not do it")
    );
}

#[test]
fn host_notify_test_reaches_every_sink_and_names_the_one_that_failed() {
    let q = TestQueue::new();
    let line = q.fails(&["notify", "test"]);
    assert!(line.contains("[notify] sets no sink"), "{line}");

    let hooks = Receiver::start(Some(200));
    // Whatever events a sink takes, the test reaches it.
    append_config(
        &q,
        &format!(
            "[notify]\nevents = [\"drained\"]\n\
             [[notify.webhook]]\nurl = {:?}\n\
             [[notify.webhook]]\nurl = {:?}\nformat = \"slack\"\nevents = [\"failed\"]\n",
            hooks.url("/json"),
            hooks.url("/slack"),
        ),
    );
    let said = q.ok(&["notify", "test"]);
    assert_eq!(
        said,
        format!(
            "webhook 1 (127.0.0.1:{0}): sent\nwebhook 2 (127.0.0.1:{0}): sent\n",
            hooks.port
        )
    );
    let test_line = "a test notification from host (host notify test): this sink works";
    let body = hooks.at("/json")[0].json();
    assert_eq!(body["event"], "test");
    assert_eq!(body["message"], test_line);
    assert_eq!(body["task"], Value::Null);
    assert_eq!(
        hooks.at("/slack")[0].json(),
        serde_json::json!({ "text": test_line })
    );

    let broken = Receiver::start(Some(500));
    append_config(
        &q,
        &format!("[[notify.webhook]]\nurl = {:?}\n", broken.url("/x")),
    );
    let line = q.fails(&["notify", "test"]);
    assert!(
        line.contains(&format!(
            "1 of 3 notification sink(s) failed: webhook 3 (127.0.0.1:{}): it answered HTTP 500",
            broken.port
        )),
        "{line}"
    );
}

#[test]
fn a_bad_notify_table_is_refused_naming_the_file_line_and_key() {
    let q = TestQueue::new();
    let cases = [
        (
            "[notify]\nevents = [\"failed\", \"nope\"]\n",
            "host.toml:2: notify.events: unknown event \"nope\" (known: review, input, failed, \
             conflict, usage_limit, drained)",
        ),
        (
            "[notify]\n[[notify.webhook]]\nurl = \"ftp://example\"\n",
            "host.toml:3: notify.webhook[1].url: must start with http:// or https://",
        ),
        (
            "[notify]\n[[notify.webhook]]\nurl = \"http://x\"\nformat = \"teams\"\n",
            "host.toml:4: notify.webhook[1].format: \"teams\" is not slack, discord, ntfy or json",
        ),
        (
            "[notify]\ntimeout = \"0s\"\n",
            "host.toml:2: notify.timeout: must be more than 0 and at most 1m",
        ),
        (
            "[notify]\n[[notify.webhook]]\nurl = \"http://x\"\nevents = [\"done\"]\n",
            "host.toml:4: notify.webhook[1].events: unknown event \"done\"",
        ),
        (
            "[notify]\ndesktp = true\n",
            "host.toml:2: unknown field `desktp`",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(q.queue.join("host.toml"), text).unwrap();
        let line = q.fails(&["add", "--type", "noop"]);
        assert!(line.contains(want), "{text}\nwant: {want}\ngot:  {line}");
    }
    assert_eq!(q.results().len(), 0, "nothing was added");
}
