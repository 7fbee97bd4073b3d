//! Load program for the event streams (`scripts/bench-events.sh` runs it; see BENCHMARKS.md).
//!
//! ```text
//! events_load delay   <publish-base> <subscribe-base> <conversation-path> <token> <service-token> <count>
//! events_load fanout  <publish-base> <subscribe-base> <conversation-path> <token> <service-token> <subscribers> <writes>
//! events_load idle    <subscribe-base> <conversation-path> <token> <server-pid> <subscribers>
//! ```
//!
//! `delay`: one subscriber on the second instance; each event is posted on the first and timed
//! until it arrives (custom events, then message appends, which include the PostgreSQL commit).
//! `fanout`: `subscribers` streams of one conversation; each write's delivery time to every one.
//! `idle`: the server's resident memory before and after opening `subscribers` idle streams.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("delay") if args.len() == 7 => {
            delay(
                &args[1],
                &args[2],
                &args[3],
                &args[4],
                &args[5],
                args[6].parse()?,
            )
            .await
        }
        Some("fanout") if args.len() == 8 => {
            fanout(
                &args[1],
                &args[2],
                &args[3],
                &args[4],
                &args[5],
                args[6].parse()?,
                args[7].parse()?,
            )
            .await
        }
        Some("idle") if args.len() == 6 => {
            idle(
                &args[1],
                &args[2],
                &args[3],
                args[4].parse()?,
                args[5].parse()?,
            )
            .await
        }
        _ => Err("usage: see the comment at the top of examples/events_load.rs".into()),
    }
}

/// An open event stream: yields the `data:` of each event (heartbeats skipped).
struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buffer: Vec<u8>,
}

impl Events {
    async fn open(client: &reqwest::Client, url: &str, token: &str) -> Result<Self> {
        let response = client
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()).into());
        }
        Ok(Self {
            body: Box::pin(response.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buffer: Vec::new(),
        })
    }

    /// The data of the next event carrying `marker`.
    async fn next_with(&mut self, marker: &str) -> Result<String> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                if text.contains(marker) {
                    return Ok(text.into_owned());
                }
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the stream ended".into()),
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p99 = percentile(&samples, 0.99);
    println!(
        "{name}: n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    p99
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> Result<()> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()).into());
    }
    Ok(())
}

async fn delay(
    publish: &str,
    subscribe: &str,
    conversation: &str,
    token: &str,
    service: &str,
    count: usize,
) -> Result<()> {
    let client = reqwest::Client::new();
    let mut events =
        Events::open(&client, &format!("{subscribe}{conversation}/events"), token).await?;
    let mut custom = Vec::with_capacity(count);
    for i in 0..count {
        let marker = format!("bench-{i}-x");
        let started = Instant::now();
        post(
            &client,
            &format!("{publish}{conversation}/events"),
            service,
            json!({"type": "bench.delta", "data": {"m": marker}}),
        )
        .await?;
        events.next_with(&marker).await?;
        custom.push(started.elapsed());
    }
    let mut appends = Vec::with_capacity(count);
    for i in 0..count {
        let marker = format!("append-{i}-x");
        let started = Instant::now();
        post(
            &client,
            &format!("{publish}{conversation}/messages"),
            token,
            json!({"role": "user", "content": marker}),
        )
        .await?;
        events.next_with(&marker).await?;
        appends.push(started.elapsed());
    }
    let p99 = report("custom event, POST on A to arrival on B", custom);
    report(
        "message append (PostgreSQL commit included), POST on A to arrival on B",
        appends,
    );
    println!("goal: p99 <= 10 ms for the custom event");
    println!("ratio={:.3}", p99.as_secs_f64() * 1e3 / 10.0);
    Ok(())
}

async fn fanout(
    publish: &str,
    subscribe: &str,
    conversation: &str,
    token: &str,
    service: &str,
    subscribers: usize,
    writes: usize,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let url = format!("{subscribe}{conversation}/events");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    for _ in 0..subscribers {
        let (client, url, token, tx, ready) = (
            client.clone(),
            url.clone(),
            token.to_owned(),
            tx.clone(),
            ready.clone(),
        );
        tokio::spawn(async move {
            let events = Events::open(&client, &url, &token).await;
            ready.wait().await;
            let Ok(mut events) = events else { return };
            for w in 0..writes {
                if events.next_with(&format!("fan-{w}-x")).await.is_err() {
                    return;
                }
                let _ = tx.send((w, Instant::now()));
            }
        });
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(subscribers * writes);
    for w in 0..writes {
        let started = Instant::now();
        post(
            &client,
            &format!("{publish}{conversation}/events"),
            service,
            json!({"type": "bench.delta", "data": {"m": format!("fan-{w}-x")}}),
        )
        .await?;
        let mut got = 0;
        while got < subscribers {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((write, at))) if write == w => {
                    samples.push(at.duration_since(started));
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => return Err(format!("write {w}: only {got} of {subscribers} delivered").into()),
            }
        }
    }
    let p99 = report(
        &format!("one write to {subscribers} subscribers of one conversation, delivery"),
        samples,
    );
    println!("ratio={:.3}", p99.as_secs_f64() * 1e3 / 10.0);
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

async fn idle(
    subscribe: &str,
    conversation: &str,
    token: &str,
    pid: u32,
    subscribers: usize,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let url = format!("{subscribe}{conversation}/events");
    let before = rss_kib(pid)?;
    let mut open = Vec::with_capacity(subscribers);
    for chunk in 0..subscribers.div_ceil(250) {
        let batch = (chunk * 250..subscribers.min((chunk + 1) * 250))
            .map(|_| Events::open(&client, &url, token));
        for events in futures::future::join_all(batch).await {
            open.push(events?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / subscribers as f64;
    println!(
        "idle subscribers: {subscribers} open; server RSS {before} KiB -> {after} KiB; {:.1} KiB per subscriber",
        per / 1024.0
    );
    println!("kib_per_subscriber={:.1}", per / 1024.0);
    drop(open);
    Ok(())
}
