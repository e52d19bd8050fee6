//! A `loyalty serve` process and an HTTP client for end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub mod moto;

pub const SECRET: &str = "end-to-end-secret";
pub const BIN: &str = env!("CARGO_BIN_EXE_loyalty");

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts serve on a free port, in memory unless `extra` says otherwise.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_env(extra, &[])
    }

    /// Starts serve with extra arguments and environment (webhook secrets...).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--jobs-every", "0"])
            .args(if extra.is_empty() {
                &["--memory"][..]
            } else {
                extra
            })
            .env("LOYALTY_JWT_SECRET", SECRET)
            .env("LOYALTY_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("loyalty serve starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("serve prints its address")
                .expect("utf-8");
            if let Some(url) = line.strip_prefix("loyalty serve: listening on ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }

    /// Sends a request; returns the status and the JSON body (Null when there is none).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            let typed = headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
            if !typed {
                request = request.header("Content-Type", "application/json");
            }
            request = request.body(body.to_string());
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }
}

/// What an operator's view of a member (`GET .../members/{member}`) says of its points: the
/// view, or for a member with no account (404 `unknown-member`) no points at all,
/// `{"balance": 0, "pending": 0, "account": false}`. Anything else fails the test.
pub fn points_view(status: u16, answer: Value) -> Value {
    match (status, answer["type"].as_str()) {
        (200, _) => answer,
        (404, Some("/problems/unknown-member")) => {
            serde_json::json!({"balance": 0, "pending": 0, "account": false})
        }
        _ => panic!("member view: {status} {answer}"),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token from `loyalty token`.
pub fn token(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("token")
        .args(args)
        .env("LOYALTY_JWT_SECRET", SECRET)
        .output()
        .expect("loyalty token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Waits until the store of a running `loyalty serve` has nothing left to relay or to process
/// on the earn queue, so that what was queued has had its effect (or its lack of one).
pub fn settled(db: &std::path::Path) {
    let conn = rusqlite::Connection::open(db).expect("db");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM queue WHERE queue = 'earn')",
                [],
                |r| r.get(0),
            )
            .unwrap_or(1);
        if waiting == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} messages never processed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
