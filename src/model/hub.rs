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

fn download(repo: &str, cache: &Path) -> Result<PathBuf> {
    let client = reqwest::blocking::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(3600)).build()?;
    let base = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join("main");
    std::fs::create_dir_all(&snap)?;
    for file in ["config.json", "model.safetensors"] {
        let url = format!("{base}/{repo}/resolve/main/{file}");
        let mut resp = client.get(&url).send().with_context(|| format!("GET {url}"))?.error_for_status()?;
        let tmp = snap.join(format!(".{file}.part"));
        let mut out = std::fs::File::create(&tmp)?;
        resp.copy_to(&mut out)?;
        std::fs::rename(&tmp, snap.join(file))?;
    }
    std::fs::create_dir_all(root.join("refs"))?;
    std::fs::write(root.join("refs/main"), "main")?;
    Ok(snap)
}
