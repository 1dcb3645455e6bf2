//! A minimal HTTP(S) client: `FROM scratch` images have no curl.

use std::path::PathBuf;
use std::time::Duration;

use crate::{DemoError, parse_duration};

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The URL to fetch.
    pub url: String,
    /// Trust this PEM CA bundle (for https URLs); no client certificate is ever sent.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Give up on one try after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Tries before giving up; each try's status and time go to stderr.
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// Pause between tries.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// The status that counts as success (default: any 2xx), e.g. 503 to wait for a refusal.
    #[arg(long)]
    pub until_status: Option<u16>,
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// URL to call (e.g. a peer through the ambassador's outbound listener).
    #[arg(long)]
    pub call: String,
    /// How many calls make up the job.
    #[arg(long, default_value_t = 3)]
    pub count: u32,
    /// A sidecar admin `/shutdown` URL to POST once the work is done (repeatable), for pods
    /// without native sidecars where the sidecars would otherwise keep the Job running.
    #[arg(long = "shutdown")]
    pub shutdown: Vec<String>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn client(ca: Option<&PathBuf>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    // The workspace's one crypto provider; reqwest has none of its own here.
    let _already = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|source| DemoError::CaFile {
            path: path.clone(),
            source,
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = client(args.ca.as_ref(), args.timeout)?;
    let mut last = String::new();
    for attempt in 1..=args.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(args.interval).await;
        }
        let started = std::time::Instant::now();
        let outcome = fetch(&client, &args.url).await;
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok((status, body)) => {
                eprintln!("attempt {attempt}: status={status} time_ms={ms}");
                let wanted = match args.until_status {
                    Some(s) => status == s,
                    None => (200..300).contains(&status),
                };
                if wanted {
                    println!("{status}");
                    print!("{body}");
                    return Ok(());
                }
                last = format!("GET {}: status {status}: {body}", args.url);
            }
            Err(e) => {
                eprintln!("attempt {attempt}: error time_ms={ms}: {e}");
                last = e;
            }
        }
    }
    Err(DemoError::Http(last).into())
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", chain(&e)))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: body: {}", chain(&e)))?;
    Ok((status, body))
}

pub async fn job(args: JobArgs) -> anyhow::Result<()> {
    let client = client(None, args.timeout)?;
    let mut result = Ok(());
    for i in 1..=args.count {
        match client.get(&args.call).send().await {
            Ok(r) if r.status().is_success() => eprintln!("call {i}: {}", r.status()),
            Ok(r) => {
                result = Err(DemoError::Http(format!("call {i}: status {}", r.status())));
                break;
            }
            Err(e) => {
                result = Err(DemoError::Http(format!("call {i}: {}", chain(&e))));
                break;
            }
        }
    }
    // Stop the sidecars whether or not the work succeeded: the Job must end either way.
    for url in &args.shutdown {
        match client.post(url).send().await {
            Ok(r) => eprintln!("asked {url} to stop: {}", r.status()),
            Err(e) => eprintln!("could not ask {url} to stop: {}", chain(&e)),
        }
    }
    Ok(result?)
}

/// reqwest's top-level message hides the cause (refused, TLS alert...); show the whole chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
