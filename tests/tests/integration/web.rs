//! `host serve`: every API route over HTTP, its refusals, and the page in headless Chromium.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use integration_tests::TestQueue;
use serde_json::{Value, json};

/// A running `host serve`, stopped when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(q: &TestQueue, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut child = q
        .host()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    Server { child, url }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A request's status and JSON body.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = agent().get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn post(url: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = agent().post(url);
    let mut typed = false;
    for (k, v) in headers {
        typed |= k.eq_ignore_ascii_case("content-type");
        request = request.header(*k, *v);
    }
    if !typed {
        request = request.header("Content-Type", "application/json");
    }
    let mut response = request.send(body.to_string()).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn every_api_route_answers_as_documented() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let url = |path: &str| format!("{}{path}", server.url);

    let mut page = agent().get(&url("/")).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.body_mut()
            .read_to_string()
            .unwrap()
            .contains("host dashboard")
    );

    let (status, added) = post(
        &url("/api/tasks"),
        json!({"type": "noop", "description": "web"}),
        &[],
    );
    assert_eq!(status, 200, "{added}");
    let id = added["id"].as_str().unwrap().to_string();
    let (status, refused) = post(&url("/api/tasks"), json!({"type": "nonsense"}), &[]);
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("unknown task type")
    );
    let (status, _) = post(
        &url("/api/tasks"),
        json!({"type": "noop", "colour": 1}),
        &[],
    );
    assert_eq!(status, 400);

    let (status, tasks) = get(&url("/api/tasks?status=pending"), &[]);
    assert_eq!(status, 200);
    assert_eq!(tasks[0]["id"], id.as_str());
    let (_, tasks) = get(&url("/api/tasks?q=nothing-matches-this"), &[]);
    assert_eq!(tasks.as_array().unwrap().len(), 0);
    let (status, task) = get(&url(&format!("/api/tasks/{id}")), &[]);
    assert_eq!((status, task["description"].as_str()), (200, Some("web")));
    let (status, _) = get(&url("/api/tasks/999"), &[]);
    assert_eq!(status, 404);
    let (status, log) = get(&url(&format!("/api/tasks/{id}/log")), &[]);
    assert_eq!((status, log["log"].as_str()), (200, Some("")));

    let (_, status_json) = get(&url("/api/status"), &[]);
    assert_eq!(status_json["counts"]["pending"], 1);
    assert_eq!(status_json, q.status(), "the same JSON as `status --json`");
    let (status, stats) = get(&url("/api/stats"), &[]);
    assert_eq!(status, 200);
    assert_eq!(stats["byType"]["noop"]["counts"]["pending"], 1);

    let (status, task) = post(&url(&format!("/api/tasks/{id}/cancel")), json!({}), &[]);
    assert_eq!((status, task["status"].as_str()), (200, Some("cancelled")));
    let (status, task) = post(&url(&format!("/api/tasks/{id}/retry")), json!({}), &[]);
    assert_eq!((status, task["status"].as_str()), (200, Some("pending")));
    let (status, _) = post(&url(&format!("/api/tasks/{id}/retry")), json!({}), &[]);
    assert_eq!(status, 409, "a pending task cannot be retried");

    assert_eq!(
        post(&url("/api/pause"), json!({"type": "noop"}), &[]).0,
        200
    );
    assert_eq!(q.status()["paused"][0], "type noop");
    assert_eq!(
        post(&url("/api/resume"), json!({"type": "noop"}), &[]).0,
        200
    );
    assert_eq!(q.status()["paused"].as_array().unwrap().len(), 0);

    let mut events = agent().get(&url("/api/events")).call().unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let mut first = vec![0u8; 64];
    let n = events.body_mut().as_reader().read(&mut first).unwrap();
    let first = String::from_utf8_lossy(&first[..n]);
    assert!(first.starts_with("event: change"), "{first}");
}

#[test]
fn the_api_refuses_missing_tokens_other_origins_and_non_json() {
    let q = TestQueue::new();
    let server = serve(&q, &["--token", "s3cret"]);
    let url = |path: &str| format!("{}{path}", server.url);
    assert_eq!(get(&url("/api/status"), &[]).0, 401);
    assert_eq!(
        get(&url("/api/status"), &[("Authorization", "Bearer wrong")]).0,
        401
    );
    assert_eq!(
        get(&url("/api/status"), &[("Authorization", "Bearer s3cret")]).0,
        200
    );
    assert_eq!(get(&url("/api/status?token=s3cret"), &[]).0, 200);
    assert_eq!(get(&url("/api/events"), &[]).0, 401);

    let bearer = ("Authorization", "Bearer s3cret");
    let task = json!({"type": "noop"});
    let (status, body) = post(
        &url("/api/tasks"),
        task.clone(),
        &[bearer, ("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403, "{body}");
    let host = server.url.trim_start_matches("http://").to_string();
    let same = format!("http://{host}");
    assert_eq!(
        post(
            &url("/api/tasks"),
            task.clone(),
            &[bearer, ("Origin", same.as_str())]
        )
        .0,
        200
    );
    let (status, _) = post(
        &url("/api/tasks"),
        task,
        &[bearer, ("Content-Type", "text/plain")],
    );
    assert_eq!(status, 415);
    assert_eq!(
        q.status()["counts"]["pending"],
        1,
        "only the accepted add added"
    );

    let line = q.fails(&["serve", "--addr", "0.0.0.0:0"]);
    assert!(line.contains("--token"), "{line}");
}

/// The little of the WebDriver protocol the browser test needs.
struct Browser {
    driver: Child,
    base: String,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (install chromium and chromium-driver; .ci/run does)");
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = || {
            let mut response = agent().get(&format!("{root}/status")).call().ok()?;
            let status: Value =
                serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
            Some(status["value"]["ready"] == true)
        };
        while ready() != Some(true) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (_, session) = post(
            &format!("{root}/session"),
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"]
            }}}}),
            &[],
        );
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {session}"));
        Browser {
            driver,
            base: format!("{root}/session/{id}"),
        }
    }

    fn command(&self, path: &str, body: Value) -> Value {
        let (status, answer) = post(&format!("{}{path}", self.base), body, &[]);
        assert_eq!(status, 200, "{path}: {answer}");
        answer["value"].clone()
    }

    fn script(&self, script: &str) -> Value {
        self.command("/execute/sync", json!({"script": script, "args": []}))
    }

    /// The WebDriver id of the element `selector` finds.
    fn find(&self, selector: &str) -> String {
        let element = self.command(
            "/element",
            json!({"using": "css selector", "value": selector}),
        );
        let id = element.as_object().and_then(|e| e.values().next());
        id.and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {selector}: {element}"))
            .to_string()
    }

    fn type_into(&self, selector: &str, text: &str) {
        let id = self.find(selector);
        self.command(&format!("/element/{id}/value"), json!({"text": text}));
    }

    fn click(&self, selector: &str) {
        let id = self.find(selector);
        self.command(&format!("/element/{id}/click"), json!({}));
    }

    fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.script(script) != true {
            assert!(Instant::now() < deadline, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_dashboard_adds_a_task_and_shows_it_complete_without_reloading() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let browser = Browser::start();
    browser.command("/url", json!({"url": format!("{}/", server.url)}));
    browser.wait_for(
        "the live connection",
        "return document.getElementById('live').textContent.startsWith('live')",
    );
    // A marker that a reload would lose.
    browser.script("window.notReloaded = true; return true");

    browser.type_into("#add-type", "noop");
    browser.type_into("#add-description", "added from the browser");
    browser.click("#add-submit");
    browser.wait_for(
        "the new task",
        "return [...document.querySelectorAll('#tasks tr.task')].some(r => r.textContent.includes('added from the browser') && r.querySelector('.status').textContent === 'pending')",
    );
    assert_eq!(
        q.status()["counts"]["pending"],
        1,
        "the form added it to the queue"
    );

    let worker = q.spawn_worker("noop", &["--drain", "--name", "web-worker"]);
    assert!(worker.wait_with_output().unwrap().status.success());
    browser.wait_for(
        "the task completed",
        "return [...document.querySelectorAll('#tasks tr.task .status')].some(c => c.textContent === 'completed') && document.querySelector('[data-state=completed] b').textContent === '1'",
    );
    assert_eq!(
        browser.script("return window.notReloaded === true"),
        true,
        "no reload"
    );

    let (status, png) = get(&format!("{}/screenshot", browser.base), &[]);
    assert_eq!(status, 200, "{png}");
    let png = &png["value"];
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        png.as_str().unwrap_or_default(),
    )
    .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
