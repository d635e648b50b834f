//! The GPT-2 family from the Hugging Face hub: found in the local hub cache, or downloaded into it
//! when online. Offline (`HF_HUB_OFFLINE=1`, or no route to the hub) it fails within seconds.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Hub repositories of the names users type.
fn repo_ids(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "gpt2" => &["openai-community/gpt2", "gpt2"],
        "gpt2-medium" => &["openai-community/gpt2-medium", "gpt2-medium"],
        "gpt2-large" => &["openai-community/gpt2-large", "gpt2-large"],
        "gpt2-xl" => &["openai-community/gpt2-xl", "gpt2-xl"],
        "distilgpt2" => &["distilbert/distilgpt2", "distilgpt2"],
        _ => return None,
    })
}

pub fn is_hub_model(name: &str) -> bool {
    repo_ids(name).is_some()
}

/// The hub cache folder, as huggingface_hub resolves it.
pub fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(root.join("refs/main")).ok()?;
    let snap = root.join("snapshots").join(rev.trim());
    (snap.join("config.json").exists() && snap.join("model.safetensors").exists()).then_some(snap)
}

/// A local folder holding `name`'s checkpoint, downloading it if allowed; None for non-hub names.
pub fn find_or_download(name: &str) -> Result<Option<PathBuf>> {
    let Some(repos) = repo_ids(name) else { return Ok(None) };
    let cache = cache_dir();
    if let Some(dir) = repos.iter().find_map(|r| cached_snapshot(&cache, r)) {
        return Ok(Some(dir));
    }
    if std::env::var("HF_HUB_OFFLINE").map(|v| v == "1" || v == "true").unwrap_or(false) {
        bail!("base model `{name}` is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; put config.json and model.safetensors in ./models/{name}/", cache.display());
    }
    download(repos[0], &cache).map(Some).with_context(|| {
        format!("base model `{name}` is not in the Hugging Face cache ({}) and could not be downloaded; put config.json and model.safetensors in ./models/{name}/", cache.display())
    })
}

/// Largest file taken from the hub (GPT-2 XL's weights are 6.4 GB).
const MAX_DOWNLOAD_BYTES: u64 = 16 << 30;

/// Copies `from` into `to`, refusing more than `max` bytes and, when the hub named one, a body
/// whose sha256 differs.
fn copy_checked(mut from: impl std::io::Read, to: &mut impl std::io::Write, max: u64, sha256: Option<&str>) -> Result<u64> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            bail!("more than {max} bytes");
        }
        hash.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    let got = hex::encode(hash.finalize());
    if let Some(want) = sha256 {
        if got != want {
            bail!("sha256 {got}, the hub says {want}");
        }
    }
    Ok(total)
}

fn download(repo: &str, cache: &Path) -> Result<PathBuf> {
    let client = reqwest::blocking::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(3600)).build()?;
    // The hub answers a large (LFS) file with a redirect that names its sha256.
    let head =
        reqwest::blocking::Client::builder().connect_timeout(Duration::from_secs(5)).redirect(reqwest::redirect::Policy::none()).build()?;
    let base = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join("main");
    std::fs::create_dir_all(&snap)?;
    for file in ["config.json", "model.safetensors"] {
        let url = format!("{base}/{repo}/resolve/main/{file}");
        let sha256 = head
            .head(&url)
            .send()
            .ok()
            .and_then(|r| r.headers().get("x-linked-etag").and_then(|v| v.to_str().ok()).map(|v| v.trim_matches('"').to_ascii_lowercase()))
            .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()));
        let resp = client.get(&url).send().with_context(|| format!("GET {url}"))?.error_for_status()?;
        if resp.content_length().is_some_and(|n| n > MAX_DOWNLOAD_BYTES) {
            bail!("{url}: {} bytes, more than the {MAX_DOWNLOAD_BYTES} a download may hold", resp.content_length().unwrap_or(0));
        }
        let tmp = snap.join(format!(".{file}.part"));
        let mut out = std::fs::File::create(&tmp)?;
        if let Err(e) = copy_checked(resp, &mut out, MAX_DOWNLOAD_BYTES, sha256.as_deref()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("downloading {url}")));
        }
        std::fs::rename(&tmp, snap.join(file))?;
    }
    std::fs::create_dir_all(root.join("refs"))?;
    std::fs::write(root.join("refs/main"), "main")?;
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_are_size_capped_and_checked_against_the_hubs_sha256() {
        let body = b"weights".to_vec();
        let sha = "b1f1bd4bfcb4a6dd6a4ee2d4e4ccc5c0d4b4c2a1b5d6e36ef46fbd46b5e1f4c8";
        let mut out = Vec::new();
        let right = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        assert_eq!(copy_checked(&body[..], &mut out, 100, Some(&right)).unwrap(), 7);
        assert_eq!(out, body);
        assert!(copy_checked(&body[..], &mut Vec::new(), 100, Some(sha)).unwrap_err().to_string().contains("the hub says"));
        assert!(copy_checked(&body[..], &mut Vec::new(), 6, None).unwrap_err().to_string().contains("more than 6 bytes"));
    }
}
