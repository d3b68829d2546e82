//! Our pacer against `governor` (keyed GCRA), the crate docs/numbers.md weighed it against: for
//! rates 80 and 1,000 with two numbers, the most permits in any sliding one-second window per
//! number, and the CPU per permit (every thread of the process). No database, no network.
//!
//! ```sh
//! cargo bench --bench pacer                 # 3 s of backlog per number and rate
//! cargo bench --bench pacer -- --seconds 5
//! ```
//!
//! Each number gets `rate × seconds` senders at once (distinct recipients, no pair spacing),
//! as a backlog in the queue would:
//! - `ours`: `Pacer::acquire` (a deferral is slept, as the queue would hold the job) and then
//!   `Pacer::release` (the sliding window the request leaves through);
//! - `governor burst=rate`: `RateLimiter::keyed(Quota::per_second(rate))`, governor's default;
//! - `governor burst=1`: the same quota with `allow_burst(1)` (strict spacing, no burst).
//!
//! The instant a permit is granted is when the send would leave. docs/numbers.md holds the
//! latest figures.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
#[path = "../tests/integration/support/window.rs"]
mod window;
use outbound_runner::config::{LoadOptions, NumberSettings, WhatsappSettings, load};
use outbound_runner::whatsapp::pacing::Pacer;
use window::most_in_one_second;

const NUMBERS: [&str; 2] = ["106540352242922", "208811223344556"];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ours,
    Governor { burst: bool },
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours (spacing + sliding window)",
            Kind::Governor { burst: true } => "governor keyed, burst = rate",
            Kind::Governor { burst: false } => "governor keyed, burst = 1",
        }
    }
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`, in ns).
fn cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

fn settings(rate: u32) -> WhatsappSettings {
    let mut s = load(&LoadOptions {
        skip_default_path: true,
        ..Default::default()
    })
    .expect("the built-in configuration loads");
    s.whatsapp.phone_number_id = NUMBERS[0].into();
    s.whatsapp.rate_per_second = rate;
    s.whatsapp.pair_interval = Duration::ZERO;
    s.whatsapp.numbers = vec![NumberSettings {
        phone_number_id: NUMBERS[1].into(),
        ..Default::default()
    }];
    s.whatsapp
}

struct Figures {
    most: [usize; 2],
    cpu_per_permit: Duration,
    took: Duration,
}

async fn run(kind: Kind, rate: u32, seconds: u32) -> Figures {
    let wa = settings(rate);
    let numbers: Vec<WhatsappSettings> = NUMBERS
        .iter()
        .map(|id| wa.number(Some(id)).expect("configured"))
        .collect();
    let per_number = (rate * seconds) as usize;
    let ours = Arc::new(Pacer::new());
    let nz = |n: u32| NonZeroU32::new(n).expect("not zero");
    let quota = match kind {
        Kind::Governor { burst: false } => Quota::per_second(nz(rate)).allow_burst(nz(1)),
        _ => Quota::per_second(nz(rate)),
    };
    let governor = Arc::new(RateLimiter::<String, _, _>::keyed(quota));
    let granted: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(vec![Vec::new(); 2]));
    let cpu_before = cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, number) in numbers.iter().enumerate() {
        for i in 0..per_number {
            let (ours, governor, granted, wa) = (
                ours.clone(),
                governor.clone(),
                granted.clone(),
                number.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let to = format!("1555{n}{i:07}");
                match kind {
                    Kind::Ours => loop {
                        match ours.acquire(&wa, &to).await {
                            Ok(permit) => {
                                ours.release(&wa).await;
                                granted.lock().unwrap()[n].push(Instant::now());
                                permit.done(true);
                                break;
                            }
                            // Back to the queue, due at its slot.
                            Err(d) => tokio::time::sleep(d.delay).await,
                        }
                    },
                    Kind::Governor { .. } => {
                        governor.until_key_ready(&wa.phone_number_id).await;
                        granted.lock().unwrap()[n].push(Instant::now());
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let took = started.elapsed();
    let spent = cpu().saturating_sub(cpu_before);
    let granted = std::mem::take(&mut *granted.lock().unwrap());
    let most = [
        most_in_one_second(granted[0].clone()),
        most_in_one_second(granted[1].clone()),
    ];
    Figures {
        most,
        cpu_per_permit: spent / (2 * per_number) as u32,
        took,
    }
}

fn main() {
    let mut seconds = 3u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            seconds = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--seconds N");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "two numbers, each with {seconds} s of backlog at its rate; most permits in any sliding \
         1 s window per number (both numbers at the same rate), CPU per permit (all threads)\n"
    );
    println!(
        "| {:<32} | {:>5} | {:>18} | {:>13} | {:>8} |",
        "pacer", "rate", "most in 1 s (a, b)", "CPU / permit", "took"
    );
    println!(
        "|{}|",
        [
            "-".repeat(34),
            "-".repeat(7),
            "-".repeat(20),
            "-".repeat(15),
            "-".repeat(10)
        ]
        .join("|")
    );
    for rate in [80u32, 1000] {
        for kind in [
            Kind::Ours,
            Kind::Governor { burst: true },
            Kind::Governor { burst: false },
        ] {
            let f = rt.block_on(run(kind, rate, seconds));
            println!(
                "| {:<32} | {:>5} | {:>18} | {:>10.2} µs | {:>6.2} s |",
                kind.label(),
                rate,
                format!("{}, {}", f.most[0], f.most[1]),
                f.cpu_per_permit.as_secs_f64() * 1e6,
                f.took.as_secs_f64()
            );
        }
    }
}
