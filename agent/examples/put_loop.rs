//! The baseline of `scripts/bench s3`: a plain, sequential `object_store`
//! put loop, the simplest way to copy files to S3 with the same client
//! library the agent uses.
//!
//! ```text
//! put_loop ENDPOINT BUCKET PREFIX FILE...      (or @LIST: one path per line)
//! ```
//! For each file in order: read it, `put` it as `PREFIX/<i>.dcm` (one request
//! at a time, no conditional write, no hashing, no manifest). Prints the
//! seconds the loop took (process and client start-up excluded) on stdout,
//! as `put_loop_seconds S`, after `put_loop_files N` and `put_loop_bytes B`.
//! Dummy credentials (`test`/`test`), path-style requests, plain HTTP: made
//! for a local test server such as moto.

use std::error::Error;
use std::time::Instant;

use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, prefix, rest @ ..] = args.as_slice() else {
        return Err("usage: put_loop ENDPOINT BUCKET PREFIX FILE... (or @LIST)".into());
    };
    let mut files = Vec::new();
    for a in rest {
        match a.strip_prefix('@') {
            Some(list) => files.extend(
                std::fs::read_to_string(list)
                    .map_err(|e| format!("{list}: {e}"))?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            ),
            None => files.push(a.clone()),
        }
    }
    if files.is_empty() {
        return Err("no files given".into());
    }
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_virtual_hosted_style_request(false)
        .build()?;
    let prefix = prefix.trim_matches('/');
    let mut bytes = 0u64;
    let start = Instant::now();
    for (i, file) in files.iter().enumerate() {
        let data = tokio::fs::read(file)
            .await
            .map_err(|e| format!("{file}: {e}"))?;
        bytes += data.len() as u64;
        store
            .put(&Path::from(format!("{prefix}/{i}.dcm")), data.into())
            .await
            .map_err(|e| format!("put {file}: {e}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("put_loop_files {}", files.len());
    println!("put_loop_bytes {bytes}");
    println!("put_loop_seconds {seconds:.6}");
    Ok(())
}
