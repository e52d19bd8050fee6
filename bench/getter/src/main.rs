//! `getter BASE TOKENS_FILE RATE SECONDS OUT_CSV`
//!
//! GET /v1/programs/kr-shop/me at a fixed RATE, open loop: request i is due at start + i/RATE
//! and its latency is counted from when it was due, so a stalled server cannot hide its queue
//! (no coordinated omission). Cycles through the member tokens of TOKENS_FILE (a JSON list of
//! strings, or one token per line). Writes "due_ms,latency_ms,status" lines to OUT_CSV (due_ms
//! is wall-clock milliseconds since the epoch), after SECONDS or on SIGTERM once the requests
//! in flight have answered. Status 0 is a request that failed without an answer.
//!
//! The schedule is kept by a thread of its own with the OS's sleep (tens of microseconds late at
//! most when a core is free), not by the runtime's timer, whose millisecond ticks would add up to
//! a millisecond of the client's own lateness to every latency counted from the due time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

const PATH: &str = "/v1/programs/kr-shop/me";

struct Sample {
    k: u64,
    latency: Duration,
    status: u16,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: getter BASE TOKENS_FILE RATE SECONDS OUT_CSV");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(&args[1], &args[2], &args[3], &args[4], &args[5]));
}

async fn run(base: &str, tokens_file: &str, rate: &str, seconds: &str, out: &str) {
    let tokens = read_tokens(tokens_file);
    let rate: f64 = rate.parse().expect("RATE is a number");
    let seconds: f64 = seconds.parse().expect("SECONDS is a number");
    let uri = format!("{}{PATH}", base.trim_end_matches('/'));
    let period = Duration::from_secs_f64(1.0 / rate);
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let (done, mut samples) = mpsc::unbounded_channel::<Sample>();

    let start = Instant::now();
    let start_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
        * 1000.0;
    let end = start + Duration::from_secs_f64(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let mut due_now = pace(start, period, end, Arc::clone(&stop));
    loop {
        let k = tokio::select! {
            k = due_now.recv() => match k {
                Some(k) => k,
                None => break,
            },
            _ = term.recv() => break,
        };
        let due = start + period.mul_f64(k as f64);
        let token = &tokens[k as usize % tokens.len()];
        let request = hyper::Request::get(&uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            let status = match client.request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.into_body().collect().await {
                        Ok(_) => status,
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            let latency = due.elapsed();
            let _ = done.send(Sample { k, latency, status });
        });
    }
    stop.store(true, Ordering::Relaxed);
    drop(done);
    let mut lines = String::new();
    let ms = period.as_secs_f64() * 1000.0;
    while let Some(s) = samples.recv().await {
        lines.push_str(&format!(
            "{:.1},{:.3},{}\n",
            start_wall + s.k as f64 * ms,
            s.latency.as_secs_f64() * 1000.0,
            s.status
        ));
    }
    std::fs::write(out, lines).expect("the output file is writable");
}

/// Sends each request's number when it is due (all those overdue at once, however late the
/// thread woke), until `end` or `stop`.
fn pace(
    start: Instant,
    period: Duration,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> mpsc::UnboundedReceiver<u64> {
    let (due_now, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut k: u64 = 0;
        loop {
            let due = start + period.mul_f64(k as f64);
            if due >= end || stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_now.send(k).is_err() {
                return;
            }
            k += 1;
        }
    });
    receiver
}

fn read_tokens(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("the tokens file is readable");
    let tokens: Vec<String> = text
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split([',', '\n'])
        .map(|t| t.trim().trim_matches('"').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(!tokens.is_empty(), "no token in {path}");
    tokens
}
