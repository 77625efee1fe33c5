//! A small synchronous W3C WebDriver client over Debian's chromedriver and
//! headless Chromium, for the tests that drive the agent's web console.
//!
//! `Browser::start` fails the test (never skips) when chromium or
//! chromedriver is missing: `scripts/test` installs both. Every WebDriver
//! error is a panic naming the command and the driver's message. Dropping
//! the `Browser` deletes the session and kills chromedriver's whole process
//! group, so no chromium process outlives the test.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
use serde_json::{Value, json};

use crate::harness;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key under which an element reference travels.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long `find` waits for an element to appear (pages may render late).
const FIND_LIMIT: Duration = Duration::from_secs(5);
/// Headless, as root (no sandbox), quiet (no network of its own), with a
/// fixed window; `start` adds a fresh `--user-data-dir`.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

pub struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    session: String,
    driver: Child,
    /// Holds chromedriver's log and the fresh Chromium profile.
    dir: tempfile::TempDir,
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

/// Where console tests leave their screenshots: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

impl Browser {
    pub fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).is_file(),
                "{path} not found: run scripts/test, which installs chromium and chromium-driver \
                 (missing package: {package})"
            );
        }
        let dir = harness::tempdir();
        let log_path = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&log_path).expect("creating chromedriver.log");
        let port = harness::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .expect("cloning the chromedriver log handle"),
            )
            .stderr(log);
        // Its own process group: Drop kills chromedriver and every Chromium.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {CHROMEDRIVER}: {e}"));
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the WebDriver HTTP client");
        let mut b = Browser {
            http,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            driver,
            dir,
        };
        b.wait_ready(Duration::from_secs(20));
        let profile = format!("--user-data-dir={}", b.dir.path().join("profile").display());
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(profile);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = b.raw(Method::POST, "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session: no sessionId in {v}"))
            .to_string();
        b
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log"));
        harness::tail(&log.unwrap_or_default(), 30)
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let url = format!("{}/status", self.base);
        loop {
            if let Ok(Some(st)) = self.driver.try_wait() {
                panic!(
                    "chromedriver exited ({st}) before it was ready:\n{}",
                    self.driver_log()
                );
            }
            let ready = self
                .http
                .get(&url)
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok());
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on {} not ready within {limit:?}:\n{}",
                self.base,
                self.driver_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One WebDriver command; any error response is a panic. Returns `value`.
    fn raw(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_raw(method.clone(), path, body)
            .unwrap_or_else(|(error, message)| {
                panic!(
                    "WebDriver {method} {path}: {error}: {message}\nchromedriver log:\n{}",
                    self.driver_log()
                )
            })
    }

    /// As `raw`, but hands back the W3C `(error, message)` of a failure.
    fn try_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (String, String)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap_or_else(|e| {
            panic!(
                "WebDriver {method} {path}: no answer: {e}\n{}",
                self.driver_log()
            )
        });
        let status = resp.status();
        let v: Value = resp.json().unwrap_or_else(|e| {
            panic!("WebDriver {method} {path}: HTTP {status}, body not JSON: {e}")
        });
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) if !status.is_success() || !error.is_empty() => Err((
                error.to_string(),
                value["message"].as_str().unwrap_or("").to_string(),
            )),
            _ if !status.is_success() => Err((format!("HTTP {status}"), v.to_string())),
            _ => Ok(value),
        }
    }

    fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
    }

    fn text_of(&self, path: &str) -> String {
        let v = self.cmd(Method::GET, path, None);
        v.as_str()
            .unwrap_or_else(|| panic!("GET {path}: not a string: {v}"))
            .to_string()
    }

    pub fn goto(&self, url: &str) {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })));
    }

    pub fn current_url(&self) -> String {
        self.text_of("/url")
    }

    pub fn title(&self) -> String {
        self.text_of("/title")
    }

    pub fn source(&self) -> String {
        self.text_of("/source")
    }

    pub fn window_size(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        self.cmd(Method::POST, "/window/rect", Some(rect));
    }

    /// The first element matching `css`, waiting up to 5 s for it to appear.
    pub fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + FIND_LIMIT;
        let path = format!("/session/{}/element", self.session);
        loop {
            let by = json!({ "using": "css selector", "value": css });
            match self.try_raw(Method::POST, &path, Some(by)) {
                Ok(v) => return self.element(&v),
                Err((e, _)) if e == "no such element" && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((e, m)) => {
                    let src = self.source();
                    let cut = src.char_indices().rev().nth(2000).map_or(0, |(i, _)| i);
                    panic!(
                        "find({css:?}): {e}: {m}\npage source tail:\n{}",
                        &src[cut..]
                    );
                }
            }
        }
    }

    /// Every element matching `css` now (possibly none).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.elements("", css)
    }

    fn elements(&self, under: &str, css: &str) -> Vec<Element<'_>> {
        let by = json!({ "using": "css selector", "value": css });
        let v = self.cmd(Method::POST, &format!("{under}/elements"), Some(by));
        let list = v
            .as_array()
            .unwrap_or_else(|| panic!("find_all({css:?}): not a list: {v}"));
        list.iter().map(|e| self.element(e)).collect()
    }

    fn element(&self, v: &Value) -> Element<'_> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not an element reference: {v}"));
        Element {
            browser: self,
            id: id.to_string(),
        }
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = base64::engine::general_purpose::STANDARD
            .decode(self.text_of("/screenshot"))
            .expect("decoding the screenshot's base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl<'a> Element<'a> {
    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }

    pub fn text(&self) -> String {
        self.browser.text_of(&self.path("/text"))
    }

    pub fn attr(&self, name: &str) -> Option<String> {
        let v = self
            .browser
            .cmd(Method::GET, &self.path(&format!("/attribute/{name}")), None);
        v.as_str().map(String::from)
    }

    pub fn click(&self) {
        self.browser
            .cmd(Method::POST, &self.path("/click"), Some(json!({})));
    }

    /// Every element under this one matching `css` now (possibly none).
    pub fn find_all(&self, css: &str) -> Vec<Element<'a>> {
        self.browser.elements(&self.path(""), css)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = self
                .http
                .delete(url)
                .timeout(Duration::from_secs(10))
                .send();
        }
        let pgid = Pid::from_child(&self.driver);
        let _ = kill_process_group(pgid, Signal::KILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium's orphans are reaped by init: wait until the group is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while test_kill_process_group(pgid).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const FIRST_PAGE: &str = r#"<!doctype html><html><head><title>First page</title></head><body>
<h1 id="heading">Mirror console test</h1><a id="next" href="/second">second page</a>
<svg width="120" height="60"><rect width="50" height="40" fill="teal"/>
<rect x="60" width="50" height="40" fill="orange"/><circle cx="30" cy="50" r="8"/></svg>
</body></html>"#;
const SECOND_PAGE: &str = r#"<!doctype html><html><head><title>Second page</title></head><body>
<p class="msg">You reached the second page.</p></body></html>"#;

/// Answers `/` and `/second` with fixed pages, anything else with 404.
fn serve_pages() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the page server");
    let port = listener.local_addr().expect("page server address").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req);
                let line = req.lines().next().unwrap_or("");
                let (status, body) = match line.split(' ').nth(1) {
                    Some("/") => ("200 OK", FIRST_PAGE),
                    Some("/second") => ("200 OK", SECOND_PAGE),
                    _ => ("404 Not Found", "not found"),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body.as_bytes());
            });
        }
    });
    port
}

#[test]
fn browser_drives_a_local_page() {
    let port = serve_pages();
    let base = format!("http://127.0.0.1:{port}");
    let b = Browser::start();
    b.window_size(1024, 768);
    b.goto(&format!("{base}/"));
    assert_eq!(b.title(), "First page");
    assert_eq!(b.find("h1#heading").text(), "Mirror console test");
    assert!(
        b.source().contains("<svg"),
        "page source lacks the inline SVG"
    );

    let svg = b.find("svg");
    assert_eq!(svg.find_all("rect").len(), 2, "rects inside the svg");
    assert_eq!(
        b.find_all("svg rect, svg circle").len(),
        3,
        "svg shapes on the page"
    );
    assert!(b.find_all("table").is_empty(), "no table on the page");

    let shot = screenshot_dir().join("browser_drives_a_local_page.png");
    let _ = std::fs::remove_file(&shot);
    b.screenshot(&shot);
    let png = std::fs::read(&shot).expect("reading the screenshot back");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    assert!(png.len() > 1024, "screenshot only {} bytes", png.len());

    let link = b.find("a#next");
    assert_eq!(link.attr("href").as_deref(), Some("/second"));
    assert_eq!(link.attr("data-missing"), None);
    link.click();
    assert_eq!(b.current_url(), format!("{base}/second"));
    assert_eq!(b.title(), "Second page");
    assert_eq!(b.find("p.msg").text(), "You reached the second page.");
}
