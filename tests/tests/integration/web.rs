//! `host serve`: every API route over HTTP, its refusals, and the page in headless Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use integration_tests::TestQueue;
use serde_json::{Value, json};

use crate::acp::{add_script, bind_acp_agent, exits_well, wait_for_question};

/// A running `host serve`, stopped when dropped.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    url: String,
    /// The token from the URL it printed.
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `Authorization: Bearer TOKEN`, as a script sends it.
    fn bearer(&self) -> (&'static str, String) {
        ("Authorization", format!("Bearer {}", self.token))
    }

    /// GET with the token.
    fn get(&self, path: &str) -> (u16, Value) {
        let (name, value) = self.bearer();
        get(&format!("{}{path}", self.url), &[(name, &value)])
    }

    /// POST of JSON with the token.
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (name, value) = self.bearer();
        post(&format!("{}{path}", self.url), body, &[(name, &value)])
    }
}

fn serve(q: &TestQueue, extra: &[&str]) -> Server {
    serve_with(q, extra, &[])
}

/// `host serve` with these arguments and environment variables.
fn serve_with(q: &TestQueue, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut child = q
        .host()
        .args(&args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let printed = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let (url, token) = printed
        .split_once("/?token=")
        .unwrap_or_else(|| panic!("no token in the URL {printed:?}"));
    Server {
        child,
        url: url.to_string(),
        token: token.to_string(),
    }
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

    let (name, value) = server.bearer();
    let mut page = agent()
        .get(&format!("{}/", server.url))
        .header(name, &value)
        .call()
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.body_mut()
            .read_to_string()
            .unwrap()
            .contains("host dashboard")
    );

    let (status, added) = server.post("/api/tasks", json!({"type": "noop", "description": "web"}));
    assert_eq!(status, 200, "{added}");
    let id = added["id"].as_str().unwrap().to_string();
    let (status, refused) = server.post("/api/tasks", json!({"type": "nonsense"}));
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("unknown task type")
    );
    // An unknown field is JSON of the wrong shape.
    let (status, _) = server.post("/api/tasks", json!({"type": "noop", "colour": 1}));
    assert_eq!(status, 422);

    let (status, tasks) = server.get("/api/tasks?status=pending");
    assert_eq!(status, 200);
    assert_eq!(tasks[0]["id"], id.as_str());
    let (_, tasks) = server.get("/api/tasks?q=nothing-matches-this");
    assert_eq!(tasks.as_array().unwrap().len(), 0);
    let (status, task) = server.get(&format!("/api/tasks/{id}"));
    assert_eq!((status, task["description"].as_str()), (200, Some("web")));
    let (status, _) = server.get("/api/tasks/999");
    assert_eq!(status, 404);
    let (status, log) = server.get(&format!("/api/tasks/{id}/log"));
    assert_eq!((status, log["log"].as_str()), (200, Some("")));

    let (_, status_json) = server.get("/api/status");
    assert_eq!(status_json["counts"]["pending"], 1);
    assert_eq!(status_json, q.status(), "the same JSON as `status --json`");
    let (status, stats) = server.get("/api/stats");
    assert_eq!(status, 200);
    assert_eq!(stats["byType"]["noop"]["counts"]["pending"], 1);

    let (status, task) = server.post(&format!("/api/tasks/{id}/cancel"), json!({}));
    assert_eq!((status, task["status"].as_str()), (200, Some("cancelled")));
    let (status, task) = server.post(&format!("/api/tasks/{id}/retry"), json!({}));
    assert_eq!((status, task["status"].as_str()), (200, Some("pending")));
    let (status, _) = server.post(&format!("/api/tasks/{id}/retry"), json!({}));
    assert_eq!(status, 409, "a pending task cannot be retried");

    let (status, paused) = server.post("/api/pause", json!({"type": "noop"}));
    assert_eq!(status, 200, "{paused}");
    assert_eq!(q.status()["paused"][0], "type noop");
    let (status, resumed) = server.post("/api/resume", json!({"type": "noop"}));
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(q.status()["paused"].as_array().unwrap().len(), 0);

    let (name, value) = server.bearer();
    let mut events = agent()
        .get(&format!("{}/api/events", server.url))
        .header(name, &value)
        .call()
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let mut first = vec![0u8; 64];
    let n = events.body_mut().as_reader().read(&mut first).unwrap();
    let first = String::from_utf8_lossy(&first[..n]);
    assert!(first.starts_with("event: change"), "{first}");
}

#[test]
fn without_the_token_nothing_is_served_on_loopback_either() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    assert_eq!(server.token.len(), 64, "a token is made when none is given");
    let url = |path: &str| format!("{}{path}", server.url);
    for path in ["/", "/api/status", "/api/tasks", "/api/events"] {
        let (status, body) = get(&url(path), &[]);
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
    // The attack of the report: another local user adding a command to run as the owner.
    let test_task = json!({"type": "test", "target": "/", "payload": {"command": ["id"]}});
    assert_eq!(post(&url("/api/tasks"), test_task.clone(), &[]).0, 401);
    let wrong = ("Authorization", "Bearer 0000000000000000000000000000000000");
    assert_eq!(post(&url("/api/tasks"), test_task, &[wrong]).0, 401);
    assert_eq!(q.status()["counts"]["pending"], 0, "nothing was added");

    // The printed URL hands the token to the browser as a cookie it cannot leak to scripts
    // or to other sites, and sends it to the page without the token in its address.
    let response = agent()
        .get(&format!("{}/?token={}", server.url, server.token))
        .config()
        .max_redirects(0)
        .build()
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(pair.ends_with(&server.token), "{cookie}");
    for path in ["/", "/api/status", "/api/events"] {
        let response = agent()
            .get(&url(path))
            .header("Cookie", &pair)
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path} with the cookie");
    }
    let (status, _) = post(
        &url("/api/tasks"),
        json!({"type": "noop"}),
        &[("Cookie", &pair)],
    );
    assert_eq!(status, 200, "the page's own requests carry the cookie");
    assert_eq!(
        get(&url(&format!("/api/status?token={}", server.token)), &[]).0,
        200
    );
}

#[test]
fn a_rebinding_page_another_origin_and_weak_tokens_are_refused() {
    let q = TestQueue::new();
    let server = serve(&q, &["--allow-host", "queue.example"]);
    let (name, bearer) = server.bearer();
    let url = |path: &str| format!("{}{path}", server.url);
    let port = server.url.rsplit(':').next().unwrap().to_string();

    // A DNS-rebinding page: its own name in Host and Origin, even with a valid token.
    let evil_host = format!("evil.example:{port}");
    let evil_origin = format!("http://evil.example:{port}");
    for headers in [
        vec![(name, bearer.as_str()), ("Host", evil_host.as_str())],
        vec![
            (name, bearer.as_str()),
            ("Host", evil_host.as_str()),
            ("Origin", evil_origin.as_str()),
        ],
    ] {
        let (status, body) = get(&url("/api/status"), &headers);
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("evil.example"),
            "{body}"
        );
    }
    let allowed = format!("queue.example:{port}");
    let localhost = format!("localhost:{port}");
    for host in [allowed.as_str(), localhost.as_str()] {
        let (status, _) = get(&url("/api/status"), &[(name, &bearer), ("Host", host)]);
        assert_eq!(status, 200, "Host {host}");
    }
    let task = json!({"type": "noop"});
    let (status, body) = post(
        &url("/api/tasks"),
        task.clone(),
        &[(name, &bearer), ("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403, "{body}");
    let same = server.url.clone();
    assert_eq!(
        post(
            &url("/api/tasks"),
            task.clone(),
            &[(name, &bearer), ("Origin", &same)]
        )
        .0,
        200
    );
    let (status, _) = post(
        &url("/api/tasks"),
        task,
        &[(name, &bearer), ("Content-Type", "text/plain")],
    );
    assert_eq!(status, 415);
    assert_eq!(
        q.status()["counts"]["pending"],
        1,
        "only the accepted add added"
    );

    // Empty and short tokens are refused at start, on loopback and everywhere else.
    for args in [
        vec!["serve", "--addr", "0.0.0.0:0", "--token", ""],
        vec!["serve", "--addr", "127.0.0.1:0", "--token", "short"],
    ] {
        let line = usage_error(&q, &args, None);
        assert!(line.contains("at least 16 characters"), "{line}");
    }
    let line = usage_error(&q, &["serve", "--addr", "0.0.0.0:0"], Some(""));
    assert!(
        line.contains("at least 16 characters"),
        "an empty HOST_WEB_TOKEN: {line}"
    );
}

/// Runs `host ARGS` (with `HOST_WEB_TOKEN` set to `token` when given), insists on a usage error
/// (exit 2) in one line, and returns that line.
fn usage_error(q: &TestQueue, args: &[&str], token: Option<&str>) -> String {
    let mut command = q.host();
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("HOST_WEB_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    // A server that took the token serves until stopped: stop it, and say so.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} (token {token:?}) started serving instead of refusing the token");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr.trim().to_string()
}

#[test]
fn a_blank_token_is_refused_and_the_bearer_scheme_is_case_insensitive() {
    let q = TestQueue::new();
    let blank = " ".repeat(16);
    for token in [
        blank.as_str(),
        "0123456789 abcdef",
        "0123456789abcdef\t",
        "\u{3000}".repeat(16).as_str(),
    ] {
        for (args, env) in [
            (
                vec!["serve", "--addr", "127.0.0.1:0", "--token", token],
                None,
            ),
            (vec!["serve", "--addr", "127.0.0.1:0"], Some(token)),
        ] {
            let line = usage_error(&q, &args, env);
            assert!(line.starts_with("error: "), "{line}");
            assert!(
                line.contains("at least 16 characters") && line.contains("no spaces"),
                "{token:?}: {line}"
            );
        }
    }

    let token = "0123456789abcdef-token";
    let server = serve(&q, &["--token", token]);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {token}");
        let (status, body) = get(
            &format!("{}/api/status", server.url),
            &[("Authorization", &value)],
        );
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, _) = get(
        &format!("{}/api/status", server.url),
        &[("Authorization", &format!("Basic {token}"))],
    );
    assert_eq!(status, 401, "another scheme is not a bearer token");
}

/// A token of any ASCII punctuation (`+ & # % ;` among them) travels whole: the printed URL
/// opens the dashboard and its cookie is accepted.
#[test]
fn a_token_with_punctuation_works_from_the_printed_url_and_its_cookie() {
    let q = TestQueue::new();
    let token = "0123456789+a&b#c%d;e=f/g?h";
    let server = serve(&q, &["--token", token]);
    let printed = format!("{}/?token={}", server.url, server.token);
    let response = agent()
        .get(&printed)
        .config()
        .max_redirects(0)
        .build()
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 303, "{printed}");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    let response = agent()
        .get(&format!("{}/api/status", server.url))
        .header("Cookie", &pair)
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "with the cookie {pair}");
    let (status, _) = get(
        &format!("{}/api/status", server.url),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(status, 200, "the token itself as a bearer token");
}

#[test]
fn every_error_is_json() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let (name, bearer) = server.bearer();
    let url = |path: &str| format!("{}{path}", server.url);
    let is_error = |status: u16, body: &Value, want: u16| {
        assert_eq!(status, want, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{want}: {body}"
        );
    };
    let (status, body) = server.get("/api/no-such-route");
    is_error(status, &body, 404);
    let (status, body) = server.post("/api/pause", json!({"type": 5}));
    is_error(status, &body, 422);
    let mut response = agent()
        .post(&url("/api/pause"))
        .header(name, &bearer)
        .header("Content-Type", "application/json")
        .send("{not json")
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    is_error(response.status().as_u16(), &body, 400);
    // A body over the limit is refused as soon as the server sees its length, which can be
    // while the client is still writing it: that try ends in a broken pipe, not an answer.
    let huge = "x".repeat(3 * 1024 * 1024);
    let (status, body) = (0..5)
        .find_map(|_| {
            let (name, value) = server.bearer();
            let request = agent()
                .post(&url("/api/tasks"))
                .header(name, &value)
                .header("Content-Type", "application/json");
            let body = json!({"type": "noop", "description": huge}).to_string();
            let mut response = request.send(body).ok()?;
            let text = response.body_mut().read_to_string().ok()?;
            Some((
                response.status().as_u16(),
                serde_json::from_str(&text).ok()?,
            ))
        })
        .expect("an answer to an oversized body within five tries");
    is_error(status, &body, 413);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("2097152 bytes (2 MiB)"),
        "the limit is named: {body}"
    );
    let mut response = agent()
        .delete(&url("/api/status"))
        .header(name, &bearer)
        .call()
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    is_error(response.status().as_u16(), &body, 405);
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

    /// Runs `script`, which ends by calling `done(VALUE)`, and answers that value.
    fn script_async(&self, script: &str) -> Value {
        let script = format!("const done = arguments[arguments.length - 1]; {script}");
        self.command("/execute/async", json!({"script": script, "args": []}))
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

    /// Opens the dashboard as a user would: the URL `host serve` printed, after which the page
    /// lives on the cookie it set; returns once the live connection is up.
    fn open(&self, server: &Server) {
        self.command(
            "/url",
            json!({"url": format!("{}/?token={}", server.url, server.token)}),
        );
        self.wait_for(
            "the live connection",
            "return document.getElementById('live').textContent.startsWith('live')",
        );
    }

    /// Sets the size of the window's viewport, as a user's screen would give it.
    fn resize(&self, width: u32, height: u32) {
        // The window's outer size includes whatever the browser draws around the page.
        let inner = self.script("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]");
        let extra = |i: usize| inner[i].as_u64().unwrap_or(0) as u32;
        self.command(
            "/window/rect",
            json!({"width": width + extra(0), "height": height + extra(1)}),
        );
        let size = self.script("return [window.innerWidth, window.innerHeight]");
        assert_eq!(size, json!([width, height]), "the viewport's size");
    }

    /// Saves a screenshot of the page as `target/test-artifacts/NAME.png`.
    fn screenshot(&self, name: &str) {
        let (status, png) = get(&format!("{}/screenshot", self.base), &[]);
        assert_eq!(status, 200, "{png}");
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            png["value"].as_str().unwrap_or_default(),
        )
        .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
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
    browser.open(&server);
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

    browser.screenshot("dashboard");
}

#[test]
fn the_dashboard_of_an_empty_queue_says_what_to_do() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let browser = Browser::start();
    browser.resize(1400, 1000);
    browser.open(&server);
    let text = |selector: &str| {
        browser.script(&format!(
            "return document.querySelector('{selector}').textContent"
        ))
    };
    browser.wait_for(
        "the empty task list",
        "return document.getElementById('tasks').textContent.includes('The queue is empty')",
    );
    let tasks = text("#tasks");
    assert!(
        tasks.as_str().unwrap().contains("host add --type TYPE"),
        "{tasks}"
    );
    let chart = text("#chart");
    assert_eq!(chart, "Nothing finished in the last hour.");
    let workers = text("#workers");
    assert!(
        workers.as_str().unwrap().contains("host --role ROLE"),
        "{workers}"
    );
    browser.click("#tab-graph");
    let plan = text("#graph-empty");
    assert!(
        plan.as_str().unwrap().contains("host add --after ID"),
        "{plan}"
    );
    browser.click("#tab-list");
    // Filters that match nothing say so, rather than suggest adding a first task.
    browser.type_into("#f-type", "nothing-like-this");
    browser.wait_for(
        "the filtered empty list",
        "return document.getElementById('tasks').textContent.includes('No task matches these filters')",
    );
    browser.command(
        &format!("/element/{}/clear", browser.find("#f-type")),
        json!({}),
    );
    browser.wait_for(
        "the empty list again",
        "return document.getElementById('tasks').textContent.includes('The queue is empty')",
    );
    browser.screenshot("dashboard-empty");
}

#[test]
fn the_dashboard_lays_out_a_busy_queue_and_draws_its_plan() {
    let q = TestQueue::new();
    // A plan: first, then second and third after it, then last after both.
    let first = q.add(&["--type", "noop", "--description", "plan: first"]);
    let second = q.add(&[
        "--type",
        "noop",
        "--after",
        &first,
        "--description",
        "plan: second",
    ]);
    let third = q.add(&[
        "--type",
        "sleep",
        "--after",
        &first,
        "--description",
        "plan: third",
    ]);
    // (`last` is not a noop: a noop worker's --drain would wait for it.)
    let last = q.add(&[
        "--type",
        "sleep",
        "--after",
        &second,
        "--after",
        &third,
        "--description",
        "plan: last",
    ]);
    let failed = q.add_failing_once();
    q.drain("noop", &[]);
    q.drain("flaky", &[]);
    // A busy queue: many tasks, some with descriptions longer than any screen is wide.
    let long_word = "x".repeat(400);
    for i in 0..60 {
        let description = match i % 3 {
            0 => format!("long {long_word}"),
            1 => "words ".repeat(80),
            _ => format!("task {i}"),
        };
        // Ahead of the plan's sleeps, so that the claims below take these.
        q.add(&[
            "--type",
            "sleep",
            "--priority",
            "1",
            "--description",
            &description,
        ]);
    }
    // Three assistants hold a task each.
    for name in ["assistant-1", "assistant-2", "assistant-3"] {
        q.ok(&["claim", "--role", "sleeper", "--name", name, "--json"]);
    }
    let server = serve(&q, &[]);
    let browser = Browser::start();
    browser.resize(1400, 1000);
    browser.open(&server);
    browser.wait_for(
        "the task list",
        "return document.querySelectorAll('#tasks tr.task').length >= 60",
    );
    let above_the_fold = browser.script(
        "return [...document.querySelectorAll('#tasks tr.task')].filter(r => r.getBoundingClientRect().bottom <= window.innerHeight).length",
    );
    assert!(
        above_the_fold.as_u64().unwrap() >= 20,
        "task rows above the fold at 1400x1000: {above_the_fold}"
    );
    let workers = browser.script("return document.querySelectorAll('#workers tr').length");
    assert_eq!(workers, 3, "one row per assistant");
    browser.screenshot("dashboard-busy");

    // Nothing pushes the page sideways at 1280 px, details of a long task included.
    browser.resize(1280, 900);
    browser.click("#tasks tr.task");
    browser.wait_for(
        "the details",
        "return document.getElementById('details').textContent.includes('Log')",
    );
    let overflow = browser.script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
    );
    assert_eq!(overflow, 0, "horizontal scroll at 1280 px");

    // The plan as a graph: its four tasks, four edges, coloured by state.
    browser.click("#tab-graph");
    let nodes = browser.script(
        "return [...document.querySelectorAll('#graph .node')].map(n => [n.dataset.id, n.classList[1]])",
    );
    assert_eq!(
        nodes,
        json!([
            [first, "completed"],
            [second, "completed"],
            [third, "pending"],
            [last, "blocked"]
        ]),
        "the failed task {failed} is in no plan"
    );
    let edges = browser.script(
        "return [...document.querySelectorAll('#graph .edge')].map(e => e.dataset.from + '>' + e.dataset.to).sort()",
    );
    let mut want = vec![
        format!("{first}>{second}"),
        format!("{first}>{third}"),
        format!("{second}>{last}"),
        format!("{third}>{last}"),
    ];
    want.sort();
    assert_eq!(edges, json!(want));
    // A task stands right of what it comes after.
    let x = |id: &str| {
        browser
            .script(&format!(
                "return document.querySelector('#graph .node[data-id=\"{id}\"]').getBoundingClientRect().left"
            ))
            .as_f64()
            .unwrap()
    };
    assert!(x(&first) < x(&second) && x(&second) < x(&last) && x(&third) < x(&last));
    browser.click(&format!("#graph .node[data-id=\"{last}\"]"));
    browser.wait_for(
        "the plan's last task in the details",
        &format!("return document.getElementById('details').textContent.includes('Task {last}')"),
    );
    browser.resize(1400, 1000);
    browser.screenshot("dashboard-plan");
}

#[test]
fn the_dashboard_shows_a_worktree_tasks_branch_and_merges_it() {
    let q = TestQueue::new();
    let repo = crate::worktrees::repository(&q);
    crate::worktrees::bind_editor(&q);
    // The worktree is kept (`keep_worktree`): the details say where.
    let toml = std::fs::read_to_string(q.queue.join("host.toml")).unwrap();
    std::fs::write(q.queue.join("host.toml"), toml + "keep_worktree = true\n").unwrap();
    let id = q.add(&["--type", "edit", "--target", repo.to_str().unwrap()]);
    q.drain("editor", &[]);
    let kept = q.task(&id)["result"]["worktree"]["folder"]
        .as_str()
        .expect("the kept folder is recorded")
        .to_string();
    // A pull request opened with `host pr` (a bare origin, a fake gh) is linked from the task.
    let origin = q.scratch.join("origin.git");
    let git = crate::worktrees::git;
    git(
        &q.scratch,
        &["init", "--quiet", "--bare", origin.to_str().unwrap()],
    );
    git(
        &repo,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    let (gh, _) = crate::branches::fake_gh(&q, false);
    let path = format!("{}:{}", gh.display(), std::env::var("PATH").unwrap());
    let opened = q
        .host()
        .args(["pr", &id])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(opened.status.success(), "{opened:?}");
    let server = serve(&q, &[]);
    let (status, diff) = server.get(&format!("/api/tasks/{id}/diff"));
    assert_eq!(status, 200, "{diff}");
    let branch = crate::worktrees::task_branch(&q, &id);
    assert_eq!(diff["worktree"]["branch"], branch.as_str());
    assert!(
        diff["patch"].as_str().unwrap().contains(&format!("+{id}")),
        "{diff}"
    );

    let browser = Browser::start();
    browser.resize(1400, 1000);
    browser.open(&server);
    let row = format!("#tasks tr.task[data-id=\"{id}\"]");
    browser.wait_for(
        "the task",
        &format!("return document.querySelector('{row}') !== null"),
    );
    browser.click(&row);
    browser.wait_for(
        "the branch in the details",
        &format!(
            "return (document.getElementById('branch') || {{}}).textContent?.includes('{branch}')"
        ),
    );
    let folder = browser.script("return document.getElementById('branch-folder').textContent");
    assert_eq!(folder, format!("worktree kept in {kept}").as_str());
    let pr = browser.script("return document.querySelector('#branch-pr a').href");
    assert_eq!(pr, "https://github.com/acme/app/pull/7");
    let files = browser.script("return document.getElementById('branch-files').textContent");
    assert!(files.as_str().unwrap().contains("shared.txt"), "{files}");
    browser.click("button[data-branch=diff]");
    browser.wait_for(
        "the patch",
        &format!("return document.getElementById('branch-diff').textContent.includes('+{id}')"),
    );
    browser.screenshot("dashboard-branch");
    browser.click("button[data-branch=merge]");
    browser.wait_for(
        "the merge",
        &format!("return document.getElementById('branch-said').textContent.includes('merged {branch} into main')"),
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("shared.txt")).unwrap(),
        format!("{id}\n")
    );
    assert!(
        !std::path::Path::new(&kept).exists(),
        "merged: the kept worktree is gone"
    );
    // The details say what became of the branch, and offer nothing more to do with it.
    browser.wait_for(
        "the branch's new state",
        "return (document.getElementById('branch-state') || {}).textContent?.startsWith('merged into main')",
    );
    let buttons = browser.script("return document.querySelectorAll('#branch button').length");
    assert_eq!(buttons, 0);
    let (status, diff) = server.get(&format!("/api/tasks/{id}/diff"));
    assert_eq!(status, 200, "the merged change is still shown: {diff}");
    assert!(
        diff["patch"].as_str().unwrap().contains(&format!("+{id}")),
        "{diff}"
    );
    let (status, body) = server.post(&format!("/api/tasks/{id}/discard"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("its branch was merged or discarded already")
    );
}

#[test]
fn the_dashboard_approves_and_rejects_a_change_waiting_for_review() {
    let q = TestQueue::new();
    let repo = crate::worktrees::repository(&q);
    crate::worktrees::bind_editor(&q);
    let toml = std::fs::read_to_string(q.queue.join("host.toml")).unwrap();
    let toml = toml.replace(
        "types = [\"edit\"]\n",
        "types = [\"edit\"]\nreview = \"required\"\n",
    );
    std::fs::write(q.queue.join("host.toml"), toml).unwrap();
    let target = repo.to_str().unwrap();
    let id = q.add(&["--type", "edit", "--target", target]);
    let pending = q.add(&["--type", "noop"]);
    q.drain("editor", &[]);
    assert_eq!(q.task(&id)["status"], "review");
    let server = serve(&q, &[]);
    let (status, body) = server.post(&format!("/api/tasks/{pending}/approve"), json!({}));
    assert_eq!(status, 409, "{body}");
    let (status, body) = server.post(&format!("/api/tasks/{id}/reject"), json!({}));
    assert_eq!(status, 422, "a rejection without a reason: {body}");
    let (status, body) = server.post(&format!("/api/tasks/{id}/reject"), json!({"reason": ""}));
    assert_eq!(status, 400, "{body}");
    let (status, report) = server.get("/api/status");
    assert_eq!(status, 200);
    assert_eq!(report["review"], json!([id]));

    let browser = Browser::start();
    browser.resize(1400, 1000);
    browser.open(&server);
    browser.wait_for(
        "the header's review count and list",
        &format!(
            "return document.getElementById('attention').textContent === 'to review: task {id}'"
        ),
    );
    let row = format!("#tasks tr.task[data-id=\"{id}\"]");
    browser.wait_for(
        "the task",
        &format!("return document.querySelector('{row}') !== null"),
    );
    browser.click(&row);
    browser.wait_for(
        "the review buttons",
        "return document.querySelector('button[data-branch=approve]') !== null",
    );
    browser.screenshot("dashboard-review");
    browser.script("document.getElementById('reject-reason').value = 'say why'; return null");
    browser.click("button[data-branch=reject]");
    browser.wait_for(
        "the rejection",
        "return (document.getElementById('branch-said') || {}).textContent?.includes('pending again')",
    );
    let task = q.task(&id);
    assert_eq!(task["status"], "pending");
    assert_eq!(task["reviews"][0]["reason"], "say why");

    q.drain("editor", &[]);
    // The list redraws as the task moves: open its details the way a click does.
    browser.script(&format!("showDetails('{id}'); return null"));
    browser.wait_for(
        "the review buttons again",
        "return document.querySelector('button[data-branch=approve]') !== null",
    );
    // Live updates may redraw the details between finding the button and clicking it.
    browser.script("document.querySelector('button[data-branch=approve]').click(); return null");
    browser.wait_for(
        "the approval",
        "return (document.getElementById('branch-said') || {}).textContent?.includes('approved')",
    );
    assert_eq!(q.task(&id)["status"], "completed");
    browser.wait_for(
        "the merge buttons once approved",
        "return document.querySelector('button[data-branch=merge]') !== null",
    );
}

/// The script of both tests below: a permission to write a file, then a question with a form
/// (a required `answer`, an optional integer `count`).
const ASKING_SCRIPT: &str = "[[acp write notes.txt hello]] [[acp elicit Which branch?]]";

#[test]
fn an_agents_question_is_in_the_inbox_and_answered_over_http_and_the_agent_resumes() {
    let q = TestQueue::new();
    let repo = crate::worktrees::repository(&q);
    bind_acp_agent(&q, "permissions = \"ask\"");
    let id = add_script(&q, &repo, ASKING_SCRIPT);
    let idle = q.add(&["--type", "noop"]);
    let server = serve(&q, &[]);
    let worker = q.spawn_worker("supervised", &["--drain"]);
    wait_for_question(&q, &id, "Write notes.txt");

    let (status, inbox) = server.get("/api/inbox");
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox.as_array().unwrap().len(), 1, "{inbox:#}");
    assert_eq!(inbox[0]["kind"], "input");
    assert_eq!(inbox[0]["task"], id.as_str());
    assert_eq!(inbox[0]["title"], "Write notes.txt (edit)");
    assert_eq!(inbox[0]["input"]["options"][0]["id"], "allow_once");
    assert_eq!(
        inbox[0]["answer"],
        format!("host answer {id} allow_once|allow_always|reject_once|reject_always").as_str()
    );
    let (_, report) = server.get("/api/status");
    assert_eq!(report["input"][0]["id"], id.as_str(), "{report:#}");
    assert_eq!(report["input"][0]["title"], "Write notes.txt");
    let (status, waiting) = server.get("/api/tasks?status=input");
    assert_eq!(status, 200, "{waiting}");
    let waiting: Vec<&str> = waiting
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, [id.as_str()]);

    let answer = format!("/api/tasks/{id}/answer");
    let asked_at = q.task(&id)["input"]["askedAt"].clone();
    // An option the agent did not offer is a bad value, 400, said in one line naming those it
    // did; no option and no values, too; JSON of the wrong shape is 422.
    let (status, body) = server.post(&answer, json!({"option": "yes"}));
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"yes\" is not one of the options offered: allow_once, allow_always")
            && !error.contains('\n'),
        "{error}"
    );
    let (status, body) = server.post(&answer, json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("name one of the options offered"),
        "{body}"
    );
    let (status, body) = server.post(&answer, json!({"option": 5}));
    assert_eq!(status, 422, "{body}");
    // A task that waits for no answer is a conflict, 409; an unknown one 404.
    let (status, body) = server.post(
        &format!("/api/tasks/{idle}/answer"),
        json!({"option": "allow_once"}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("waits for no answer"),
        "{body}"
    );
    let (status, _) = server.post("/api/tasks/999/answer", json!({"option": "allow_once"}));
    assert_eq!(status, 404);
    assert_eq!(
        q.task(&id)["input"]["answer"],
        Value::Null,
        "nothing answered"
    );

    let (status, body) = server.post(
        &answer,
        json!({"option": "allow_once", "askedAt": asked_at}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["said"]
            .as_str()
            .unwrap()
            .contains(&format!("task {id}: answered allow_once")),
        "{body}"
    );
    // Answered: an answer for the same question is refused, whether its worker took the
    // answer yet (and the agent asks anew) or not.
    let (status, body) = server.post(
        &answer,
        json!({"option": "reject_once", "askedAt": asked_at}),
    );
    assert_eq!(status, 409, "{body}");

    // The form: the values alone, without an option, accept it; a value of the wrong type is
    // refused, saying why.
    wait_for_question(&q, &id, "Which branch?");
    let (_, inbox) = server.get("/api/inbox");
    assert_eq!(
        inbox[0]["input"]["fields"][0]["name"], "answer",
        "{inbox:#}"
    );
    let (status, body) = server.post(
        &answer,
        json!({"fields": {"answer": "main", "count": "lots"}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("field \"count\" takes"),
        "{body}"
    );
    let (status, body) = server.post(&answer, json!({"fields": {"answer": "main", "count": 3}}));
    assert_eq!(status, 200, "{body}");

    exits_well(worker);
    let task = q.task(&id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let branch = crate::worktrees::task_branch(&q, &id);
    assert_eq!(
        crate::worktrees::git(&repo, &["show", &format!("{branch}:notes.txt")]),
        "hello"
    );
    let log = q.ok(&["logs", &id]);
    for expected in [
        "input: answered allow_once by dashboard",
        "assistant: elicited: accept answer=\"main\",count=3",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    let (status, body) = server.post(&answer, json!({"option": "allow_once"}));
    assert_eq!(status, 409, "a finished task: {body}");
    let (_, inbox) = server.get("/api/inbox");
    assert_eq!(inbox, json!([]));
}

#[test]
fn the_dashboard_answers_an_agents_question_from_its_inbox() {
    let q = TestQueue::new();
    let repo = crate::worktrees::repository(&q);
    bind_acp_agent(&q, "permissions = \"ask\"");
    let id = add_script(&q, &repo, ASKING_SCRIPT);
    let server = serve(&q, &[]);
    let worker = q.spawn_worker("supervised", &["--drain"]);
    wait_for_question(&q, &id, "Write notes.txt");

    let browser = Browser::start();
    browser.resize(1400, 1000);
    browser.open(&server);
    browser.wait_for(
        "the header's input line",
        &format!("return document.getElementById('attention').textContent === 'input: task {id}'"),
    );
    let item = format!("#inbox tr.inbox-item[data-id=\"{id}\"]");
    browser.wait_for(
        "the inbox entry",
        &format!(
            "const item = document.querySelector('{item}'); return item !== null && item.dataset.kind === 'input' && item.textContent.includes('Write notes.txt (edit)') && item.nextElementSibling.textContent.includes('host answer {id} allow_once|')"
        ),
    );
    browser.wait_for(
        "the task's state in the list",
        &format!(
            "return (document.querySelector('#tasks tr.task[data-id=\"{id}\"] .status') || {{}}).textContent === 'input'"
        ),
    );
    // Live updates redraw the inbox and the details: each click is the page's own, at once.
    let click = |selector: &str| {
        browser.script(&format!(
            "document.querySelector('{selector}').click(); return null"
        ));
    };
    click(&item);
    browser.wait_for(
        "the question's buttons",
        "return document.querySelector('button[data-answer=allow_once]') !== null",
    );
    let question = browser.script("return document.getElementById('input').textContent");
    assert!(
        question.as_str().unwrap().contains("Write notes.txt"),
        "{question}"
    );
    let labels = browser.script(
        "return [...document.querySelectorAll('#input-options button')].map(b => b.textContent)",
    );
    assert_eq!(
        labels,
        json!(["Allow once", "Allow always", "Reject once", "Reject always"])
    );
    browser.screenshot("dashboard-inbox");
    // What the server said shows until the next question replaces it, which may be at once:
    // it is caught as it shows.
    let said = browser.script_async(
        "const said = () => (document.getElementById('branch-said') || {}).textContent || ''; \
         const seen = new MutationObserver(() => { if (said()) { seen.disconnect(); done(said()); } }); \
         seen.observe(document.getElementById('details'), { childList: true, subtree: true }); \
         setTimeout(() => done('nothing said within 20 s'), 20000); \
         document.querySelector('button[data-answer=allow_once]').click();",
    );
    assert!(
        said.as_str()
            .unwrap()
            .contains(&format!("task {id}: answered allow_once")),
        "{said}"
    );

    // The form of the next question: values typed in it outlive the redraws of the details.
    browser.wait_for(
        "the question's form",
        "return document.querySelector('#input-fields [data-field=answer]') !== null && document.querySelector('button[data-answer=accept]') !== null",
    );
    browser.script(
        "document.querySelector('[data-field=answer]').value = 'main'; document.querySelector('[data-field=count]').value = '3'; return null",
    );
    browser.script(&format!("showDetails('{id}'); return null"));
    browser.wait_for(
        "the details redrawn with the values kept",
        "return document.querySelector('[data-field=count]')?.value === '3' && document.querySelector('[data-field=answer]').value === 'main'",
    );
    browser.screenshot("dashboard-inbox-form");
    click("button[data-answer=accept]");
    browser.wait_for(
        "the task completed",
        &format!(
            "return (document.querySelector('#tasks tr.task[data-id=\"{id}\"] .status') || {{}}).textContent === 'completed'"
        ),
    );
    browser.wait_for(
        "an empty inbox and header",
        "return document.getElementById('inbox').textContent.includes('Nothing waits for a person.') && document.getElementById('attention').textContent === ''",
    );
    exits_well(worker);
    let log = q.ok(&["logs", &id]);
    for expected in [
        "input: answered allow_once by dashboard",
        "assistant: elicited: accept answer=\"main\",count=3",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
}

#[test]
fn the_dashboard_shows_the_plan_a_running_agent_follows_as_it_changes() {
    let q = TestQueue::new();
    let repo = crate::worktrees::repository(&q);
    bind_acp_agent(&q, "permissions = \"ask\"");
    // The agent publishes its plan, waits for a permission, then ticks off its last step and
    // waits again (a question of its own), so the page sees the plan change while it runs.
    let id = add_script(
        &q,
        &repo,
        "[[acp plan completed:read the code; in_progress:write the notes]] \
         [[acp write notes.txt x]] \
         [[acp plan completed:read the code; completed:write the notes]] \
         [[acp ask Finish up?]]",
    );
    let server = serve(&q, &[]);
    let worker = q.spawn_worker("supervised", &["--drain"]);
    wait_for_question(&q, &id, "Write notes.txt");

    let browser = Browser::start();
    browser.resize(1400, 1000);
    browser.open(&server);
    let row = format!("#tasks tr.task[data-id=\"{id}\"]");
    browser.wait_for(
        "the task",
        &format!("return document.querySelector('{row}') !== null"),
    );
    browser.click(&row);
    // The checklist `list` (`plan-live` or `plan`) in the details, as `[status, text]` pairs.
    let checklist = |list: &str| {
        browser.script(&format!(
            "return [...(document.getElementById('{list}') || {{children: []}}).children].map(li => [li.dataset.status, li.textContent])"
        ))
    };
    let wait_for_checklist = |what: &str, list: &str, want: Value| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown = checklist(list);
            if shown == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}: {want} (shows {shown})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for_checklist(
        "the live plan",
        "plan-live",
        json!([
            ["completed", "✓read the code"],
            ["in_progress", "▶write the notes"]
        ]),
    );
    let head = browser.script("return document.getElementById('plan-live-head').textContent");
    assert!(
        head.as_str().unwrap().starts_with("Plan (live)")
            && head.as_str().unwrap().contains("1 of 2 done"),
        "{head}"
    );
    assert_eq!(
        browser.script("return document.getElementById('plan') === null"),
        true,
        "no finished plan while it runs"
    );
    // The question shows beside the plan.
    browser.wait_for(
        "the question's buttons",
        "return document.querySelector('button[data-answer=allow_once]') !== null",
    );
    browser.screenshot("dashboard-live-plan");

    // Answered from the command line: the agent writes, ticks off its last step and asks
    // again; the page, left alone, shows the new plan.
    q.ok(&["answer", &id, "allow_once"]);
    wait_for_question(&q, &id, "Finish up?");
    wait_for_checklist(
        "the plan updated live",
        "plan-live",
        json!([
            ["completed", "✓read the code"],
            ["completed", "✓write the notes"]
        ]),
    );
    assert_eq!(q.task(&id)["status"], "running");
    let head = browser.script("return document.getElementById('plan-live-head').textContent");
    assert!(head.as_str().unwrap().contains("2 of 2 done"), "{head}");

    // Finished: the plan its result kept, no longer live.
    q.ok(&["answer", &id, "allow_once"]);
    browser.wait_for(
        "the task completed in the details",
        "return (document.querySelector('#details > span.completed') || {}).textContent === 'completed'",
    );
    wait_for_checklist(
        "the finished plan",
        "plan",
        json!([
            ["completed", "✓read the code"],
            ["completed", "✓write the notes"]
        ]),
    );
    assert_eq!(
        browser.script("return document.getElementById('plan-live') === null"),
        true
    );
    let head = browser.script("return document.getElementById('plan-head').textContent");
    assert!(head.as_str().unwrap().starts_with("Plan "), "{head}");
    exits_well(worker);
    assert_eq!(q.task(&id)["result"]["plan"][1]["status"], "completed");
}

#[test]
fn the_dashboard_serves_a_postgres_queue_without_showing_its_password() {
    let q = TestQueue::on_postgres();
    let server = serve(&q, &[]);
    let (status, added) = server.post("/api/tasks", json!({"type": "noop"}));
    assert_eq!(status, 200, "{added}");
    let (status, tasks) = server.get("/api/tasks?status=pending");
    assert_eq!(status, 200);
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
    let (status, report) = server.get("/api/status");
    assert_eq!(status, 200);
    let queue = report["queue"].as_str().unwrap();
    assert!(queue.starts_with("postgres://host_test:***@"), "{report}");
    assert!(!report.to_string().contains(integration_tests::pg::PASSWORD));
    assert_eq!(report, q.status(), "the same JSON as `status --json`");
}

#[test]
fn the_dashboard_takes_a_task_up_to_the_size_limit_that_every_way_in_applies() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let limit = 2 * 1024 * 1024;
    let under = json!({"type": "noop", "description": "x".repeat(limit - 1000)});
    let (status, body) = server.post("/api/tasks", under);
    assert_eq!(status, 200, "{body}");
    // Over the limit, but within what the server reads: the store's check, as for MCP and
    // `host add` (`every_error_is_json` sends one far over it).
    let over = json!({"type": "noop", "description": "x".repeat(limit + 1000)});
    let (status, body) = server.post("/api/tasks", over);
    assert_eq!(status, 413, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("over the limit of 2097152 bytes (2 MiB)"),
        "{error}"
    );
    assert_eq!(q.status()["counts"]["pending"], 1);
}

#[test]
fn the_api_refuses_what_the_command_line_refuses_with_the_documented_status() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let (status, body) = server.post("/api/pause", json!({"type": "typo"}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown task type"),
        "{body}"
    );
    assert!(q.status()["paused"].as_array().unwrap().is_empty());
    // JSON of the wrong shape is 422; a bad value in the right shape is 400.
    let (status, body) = server.post("/api/tasks", json!({"type": 5}));
    assert_eq!(status, 422, "{body}");
    let (status, body) = server.post("/api/tasks", json!({"type": "noop", "timeout": "abc"}));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_self_serve_holder_is_among_the_dashboards_workers_with_its_progress() {
    let q = TestQueue::new();
    let id = q.add(&["--type", "noop"]);
    let claimed: Value = serde_json::from_str(&q.ok(&[
        "claim",
        "--role",
        "noop",
        "--name",
        "assistant-7",
        "--json",
    ]))
    .unwrap();
    let token = claimed["leaseToken"].as_str().unwrap();
    q.ok(&["progress", &id, "30", "reading", "--token", token]);
    let server = serve(&q, &[]);
    let (code, status) = server.get("/api/status");
    assert_eq!(code, 200, "{status}");
    let holder = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "assistant-7")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(holder["alive"], true);
    assert_eq!(holder["tasks"][0]["progress"], 30);
    assert_eq!(holder["tasks"][0]["message"], "reading");
}

/// A raw connection to the server, for what a well-behaved client never does.
fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// A raw HTTP/1.1 GET with the token, keeping the connection alive.
fn raw_get(server: &Server, stream: &mut TcpStream, path: &str) {
    let host = server.url.trim_start_matches("http://");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token
    );
    stream.write_all(request.as_bytes()).unwrap();
}

/// Reads from `stream` until what was read contains `want`; panics when the server closes the
/// connection first or nothing comes for 20 seconds.
fn read_until(stream: &mut TcpStream, want: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !String::from_utf8_lossy(&seen).contains(want) {
        match stream.read(&mut buf) {
            Ok(0) => panic!("closed before {want:?}: {}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(err) => panic!("no {want:?} ({err}): {}", String::from_utf8_lossy(&seen)),
        }
    }
    String::from_utf8_lossy(&seen).to_string()
}

/// Whether the server closed the connection (an end of file or a reset) without waiting.
fn closed_now(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match (&mut &*stream).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Waits up to `limit` for the server to close the connection; how long it took, or `None`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// The open file descriptors of a process: its sockets among them.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn idle_connections_neither_pile_up_nor_keep_a_request_out() {
    let q = TestQueue::new();
    // Connections that send nothing are closed after a while anyway: not during this test.
    let server = serve_with(&q, &[], &[("HOST_SERVE_HEADER_TIMEOUT", "10m")]);
    let idle: Vec<TcpStream> = (0..300).map(|_| connect(&server)).collect();
    // A real request, on a connection of its own, is answered at once.
    let (status, body) = server.get("/api/status");
    assert_eq!(status, 200, "{body}");
    // The server holds at most its 256 connections: the oldest idle ones made room.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    while closed < 300 - 256 {
        assert!(
            Instant::now() < deadline,
            "the server closed only {closed} of 300 idle connections to stay within 256"
        );
        std::thread::sleep(Duration::from_millis(100));
        closed = idle.iter().filter(|s| closed_now(s)).count();
    }
    assert!(
        open_fds(server.child.id()) < 256 + 64,
        "the server holds {} file descriptors",
        open_fds(server.child.id())
    );
    // The newest ones are still open, waiting for their headers.
    assert!(!closed_now(idle.last().unwrap()));
    let (status, _) = server.get("/api/status");
    assert_eq!(status, 200);
}

#[test]
fn a_silent_connection_and_an_idle_keep_alive_one_are_closed() {
    let q = TestQueue::new();
    let server = serve_with(
        &q,
        &[],
        &[
            ("HOST_SERVE_HEADER_TIMEOUT", "1s"),
            ("HOST_SERVE_IDLE_TIMEOUT", "2s"),
        ],
    );
    let mut silent = connect(&server);
    let mut kept = connect(&server);
    // Two requests on one connection: it is kept alive between them.
    raw_get(&server, &mut kept, "/api/status");
    read_until(&mut kept, "\"counts\"");
    raw_get(&server, &mut kept, "/api/stats");
    read_until(&mut kept, "\"byType\"");
    assert!(
        closed_within(&mut silent, Duration::from_secs(15)).is_some(),
        "a connection that sent nothing is still open after 15 s (limit 1 s)"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(15)).is_some(),
        "an idle keep-alive connection is still open after 15 s (limit 2 s)"
    );
    let (status, _) = server.get("/api/status");
    assert_eq!(status, 200, "the server goes on serving");
}

/// The CPU time a process has used (user and system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    let per_second: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn idle_event_streams_cost_little_and_still_hear_of_changes() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let mut streams: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut stream = connect(&server);
            raw_get(&server, &mut stream, "/api/events");
            read_until(&mut stream, "event: change");
            stream
        })
        .collect();
    let pid = server.child.id();
    let (cpu, start) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_time(pid) - cpu;
    let share = used.as_secs_f64() / start.elapsed().as_secs_f64();
    // Each stream reading the status itself took about a third of a core here (debug build);
    // one read for all of them, a few percent.
    assert!(
        share < 0.1,
        "100 idle event streams took {:.0} % of a core ({used:?} in {:?})",
        share * 100.0,
        start.elapsed()
    );
    q.add(&["--type", "noop"]);
    for stream in &mut streams {
        read_until(stream, "\"pending\":1");
    }
}

/// Opens `count` event streams, each read up to its first event, as dashboards do.
fn open_event_streams(server: &Server, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let mut stream = connect(server);
            raw_get(server, &mut stream, "/api/events");
            read_until(&mut stream, "event: change");
            stream
        })
        .collect()
}

#[test]
fn an_event_reaches_open_streams_promptly_after_host_add() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let mut streams = open_event_streams(&server, 3);
    for pending in 1..=3 {
        // A moment after an event, when the reads that the streams' opening asked for are
        // done, the feed's slow fallback read is still far away: only the queue's signal (the
        // doorbell that `host add` rings) brings the next event in time.
        std::thread::sleep(Duration::from_millis(400));
        q.add(&["--type", "noop"]);
        let added = Instant::now();
        for stream in &mut streams {
            read_until(stream, &format!("\"pending\":{pending}"));
        }
        let took = added.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "task {pending} reached the open streams {took:?} after `host add` returned"
        );
    }
}

/// A query of one number, as the cluster's superuser over its Unix socket.
fn pg_number(cluster: &integration_tests::pg::PgCluster, sql: &str, database: &str) -> i64 {
    let mut client = postgres::Config::new()
        .host_path(&cluster.socket_dir)
        .port(cluster.port)
        .user(integration_tests::pg::USER)
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    client.query_one(sql, &[&database]).unwrap().get(0)
}

/// How many sessions PostgreSQL has established to `database`, counted once none is left open
/// (a session's count reaches the statistics by its end at the latest).
fn sessions_made(cluster: &integration_tests::pg::PgCluster, database: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let open = "SELECT count(*) FROM pg_stat_activity \
                WHERE datname = $1 AND backend_type = 'client backend'";
    while pg_number(cluster, open, database) > 0 {
        assert!(
            Instant::now() < deadline,
            "sessions to {database} stay open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last session's count may reach the statistics just after it ends.
    std::thread::sleep(Duration::from_millis(500));
    let made = "SELECT sessions FROM pg_stat_database WHERE datname = $1";
    pg_number(cluster, made, database)
}

#[test]
fn event_streams_on_postgres_keep_to_the_stores_pool_and_one_listener() {
    let q = TestQueue::on_postgres();
    let cluster = integration_tests::pg::PgCluster::shared();
    let database = q
        .address
        .rsplit_once('/')
        .and_then(|(_, rest)| rest.split('?').next())
        .unwrap()
        .to_string();
    let before = sessions_made(cluster, &database);
    let server = serve(&q, &[]);
    let mut streams = open_event_streams(&server, 20);
    std::thread::sleep(Duration::from_secs(10));
    // The streams are live: a task added is on all of them.
    let (status, added) = server.post("/api/tasks", json!({"type": "noop"}));
    assert_eq!(status, 200, "{added}");
    for stream in &mut streams {
        read_until(stream, "\"pending\":1");
    }
    drop(streams);
    drop(server);
    let made = sessions_made(cluster, &database) - before;
    // One store for the server's life: its pool's connections and the one that listens for
    // work, however many pages watch and for however long. (A store opened for each read of
    // the status made a connection four times a second.)
    let most = queue::POSTGRES_POOL_SIZE as i64 + 1;
    assert!(
        (1..=most).contains(&made),
        "the dashboard made {made} connections to its database for 20 event streams over 10 s \
         (at most {most}: its store's pool and one listener)"
    );
}

#[test]
fn a_dashboard_on_sqlite_leaves_the_queue_whole_beside_the_command_line() {
    let q = TestQueue::new();
    let server = serve(&q, &[]);
    let (status, added) = server.post("/api/tasks", json!({"type": "noop"}));
    assert_eq!(status, 200, "{added}");
    let id = added["id"].as_str().unwrap().to_string();
    // Each of these opens the store inside the server once more, beside any it holds; a
    // command closing the queue in between must not take the server's write-ahead log away.
    for path in ["/api/stats", "/api/status", &format!("/api/tasks/{id}")] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        q.status();
    }
    let (status, body) = server.post(&format!("/api/tasks/{id}/cancel"), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(&format!("/api/tasks/{id}/retry"), json!({}));
    assert_eq!(status, 200, "{body}");
    let doctor = q.run(&["doctor"]);
    assert!(
        doctor.status.success(),
        "{}{}",
        String::from_utf8_lossy(&doctor.stdout),
        String::from_utf8_lossy(&doctor.stderr)
    );
}

#[test]
fn the_dashboard_shows_a_snoozed_task_and_a_role_out_of_quota() {
    use queue::QueueStore as _;
    let q = TestQueue::new();
    let id = q.add(&["--type", "noop"]);
    q.ok(&["snooze", &id, "--for", "2h"]);
    // A limit as a worker of role `claude` records it when its CLI says the account is out.
    let store = queue::SqliteStore::open(&q.queue).unwrap();
    store
        .set_usage_limit(&queue::UsageLimit {
            role: "claude".into(),
            types: vec!["write".into()],
            until: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(3),
            reason: "five-hour limit reached".into(),
            task: "9".into(),
            worker: "claude-1".into(),
        })
        .unwrap();
    drop(store);
    let server = serve(&q, &[]);
    let (code, api) = server.get("/api/status");
    assert_eq!(code, 200);
    assert_eq!(api["usageLimits"][0]["role"], "claude", "{api:#}");
    let browser = Browser::start();
    browser.open(&server);
    browser.wait_for(
        "the snoozed task",
        &format!(
            "return [...document.querySelectorAll('#tasks tr.task')].some(r => r.dataset.id === '{id}' && r.querySelector('.status').textContent.includes('snoozed until'))"
        ),
    );
    browser.wait_for(
        "the role out of quota",
        "return document.getElementById('attention').textContent.includes('claude: usage limit until')",
    );
}
