//! Artifacts (uploaded files, checkpoints, adapters) in an object store shared by every API node
//! and worker: a local folder by default, S3-compatible storage by URL (`s3://bucket/prefix`, with
//! the usual `AWS_*` variables). Keys are relative paths (`files/<id>`,
//! `jobs/<id>/checkpoints/<file>`). Readers get a local path: the file itself in a local folder,
//! else a copy fetched once into this node's cache.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (a URL's path).
    prefix: String,
    /// The folder itself, for a local store: read in place, never copied.
    root: Option<PathBuf>,
    /// This node's copies of remote artifacts.
    cache: PathBuf,
}

impl Artifacts {
    /// `location`: a folder, `file:///folder`, or an object-store URL (`s3://bucket/prefix`).
    pub fn open(location: &str, cache: &Path) -> Result<Self> {
        let folder = location.strip_prefix("file://").or((!location.contains("://")).then_some(location));
        if let Some(folder) = folder {
            std::fs::create_dir_all(folder).with_context(|| format!("creating the artifacts folder {folder}"))?;
            let root = std::fs::canonicalize(folder)?;
            let store = LocalFileSystem::new_with_prefix(&root).with_context(|| format!("opening {}", root.display()))?;
            return Ok(Self { store: Arc::new(store), prefix: String::new(), root: Some(root), cache: cache.to_path_buf() });
        }
        let url = url::Url::parse(location).with_context(|| format!("--artifacts `{location}` is neither a folder nor a URL"))?;
        // The store's own configuration keys are the lower-case names of its environment variables.
        let env = std::env::vars().map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&url, env).with_context(|| format!("--artifacts `{location}`"))?;
        Ok(Self { store: Arc::from(store), prefix: prefix.to_string(), root: None, cache: cache.to_path_buf() })
    }

    /// Deletes what uploads cut short left in a folder store: the store's staging files (`…#n`,
    /// written before the rename that completes a put), and uploaded files the database has no
    /// row for (`is_known` says which file ids it has). Only what is older than `min_age` goes:
    /// other processes sharing the folder (workers, API nodes) may be in the middle of a put.
    /// Nodes' scratch folders (`work/`, `cache/`) are not this store's. Returns how many went.
    /// Object stores keep no partial objects, so there is nothing to do for them.
    pub async fn remove_partial_uploads(
        &self,
        min_age: std::time::Duration,
        is_known: impl AsyncFn(&str) -> Result<bool>,
    ) -> Result<usize> {
        let Some(root) = &self.root else { return Ok(0) };
        let old_enough = |p: &Path| {
            std::fs::metadata(p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= min_age)
        };
        let mut removed = 0;
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    if dir == *root && (name == "cache" || name == "work") {
                        continue;
                    }
                    stack.push(path);
                    continue;
                }
                if !old_enough(&path) {
                    continue;
                }
                let staged = name.contains('#');
                let orphan = dir == root.join("files") && !staged && !is_known(&name).await?;
                if (staged || orphan) && std::fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// `text` (an error from this store) without the store's own folder: clients know artifacts
    /// by key, and the server's paths stay in its log.
    pub fn redact(&self, text: &str) -> String {
        match &self.root {
            Some(root) => text.replace(&format!("{}/", root.display()), ""),
            None => text.to_string(),
        }
    }

    fn key(&self, key: &str) -> Result<Key> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == "." || p.is_empty()) {
            bail!("artifact key `{key}` is not a relative path");
        }
        Ok(if self.prefix.is_empty() { Key::from(key) } else { Key::from(format!("{}/{key}", self.prefix)) })
    }

    pub async fn put(&self, key: &str, bytes: impl Into<PutPayload>) -> Result<()> {
        self.store.put(&self.key(key)?, bytes.into()).await.with_context(|| format!("storing artifact {key}"))?;
        Ok(())
    }

    pub async fn put_file(&self, key: &str, local: &Path) -> Result<()> {
        let bytes = tokio::fs::read(local).await.with_context(|| format!("reading {}", local.display()))?;
        self.put(key, bytes).await
    }

    /// Starts an artifact written a piece at a time, never held whole; it exists once
    /// [`ArtifactWriter::finish`] returns (dropped before that, nothing is stored).
    pub async fn writer(&self, key: &str) -> Result<ArtifactWriter> {
        let upload = self.store.put_multipart(&self.key(key)?).await.with_context(|| format!("storing artifact {key}"))?;
        Ok(ArtifactWriter { key: key.to_string(), writer: WriteMultipart::new(upload) })
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let got = self.store.get(&self.key(key)?).await.with_context(|| format!("fetching artifact {key}"))?;
        Ok(got.bytes().await.with_context(|| format!("fetching artifact {key}"))?.to_vec())
    }

    /// The artifact, or None when the store has no such key (one round trip, not a look-up and a get).
    pub async fn get_if_exists(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&self.key(key)?).await {
            Ok(got) => Ok(Some(got.bytes().await.with_context(|| format!("fetching artifact {key}"))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("fetching artifact {key}")),
        }
    }

    /// Writes the artifact to `dest` (atomically), whatever is there.
    pub async fn download(&self, key: &str, dest: &Path) -> Result<()> {
        let bytes = self.get(key).await?;
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&dest, &bytes)).await?
    }

    /// A local path to read an immutable artifact from. Rows written before artifacts had keys
    /// hold absolute paths; those are read where they are.
    pub async fn local(&self, key: &str) -> Result<PathBuf> {
        if Path::new(key).is_absolute() {
            return Ok(PathBuf::from(key));
        }
        self.key(key)?;
        if let Some(root) = &self.root {
            return Ok(root.join(key));
        }
        let path = self.cache.join(key);
        if !path.exists() {
            self.download(key, &path).await?;
        }
        Ok(path)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        if Path::new(key).is_absolute() {
            let _ = tokio::fs::remove_file(key).await;
            return Ok(());
        }
        match self.store.delete(&self.key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting artifact {key}")),
        }
        if self.root.is_none() {
            let _ = tokio::fs::remove_file(self.cache.join(key)).await;
        }
        Ok(())
    }
}

/// An artifact being written (see [`Artifacts::writer`]).
pub struct ArtifactWriter {
    key: String,
    writer: WriteMultipart,
}

impl ArtifactWriter {
    /// Appends `piece`; waits while a few parts are in flight, so that memory stays a few parts'
    /// size however long the artifact.
    pub async fn write(&mut self, piece: &[u8]) -> Result<()> {
        self.writer.wait_for_capacity(4).await.with_context(|| format!("storing artifact {}", self.key))?;
        self.writer.write(piece);
        Ok(())
    }

    pub async fn finish(self) -> Result<()> {
        self.writer.finish().await.with_context(|| format!("storing artifact {}", self.key))?;
        Ok(())
    }
}

/// Key of an uploaded file.
pub fn file_key(file_id: &str) -> String {
    format!("files/{file_id}")
}

/// Key prefix of a job's checkpoints and adapters.
pub fn job_key(job_id: &str, name: &str) -> String {
    format!("jobs/{job_id}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_folder_round_trips_and_refuses_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open(dir.path().join("store").to_str().unwrap(), &dir.path().join("cache")).unwrap();
        a.put("jobs/j1/x.bin", b"abc".to_vec()).await.unwrap();
        assert_eq!(a.get("jobs/j1/x.bin").await.unwrap(), b"abc");
        assert_eq!(a.get_if_exists("jobs/j1/x.bin").await.unwrap().as_deref(), Some(&b"abc"[..]));
        assert!(a.get_if_exists("jobs/j1/y.bin").await.unwrap().is_none());
        // Read in place: the folder's own file, not a cached copy.
        let p = a.local("jobs/j1/x.bin").await.unwrap();
        assert!(p.starts_with(std::fs::canonicalize(dir.path().join("store")).unwrap()));
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(a.put(bad, vec![1]).await.is_err(), "{bad} accepted");
        }
        a.delete("jobs/j1/x.bin").await.unwrap();
        assert!(a.get_if_exists("jobs/j1/x.bin").await.unwrap().is_none());
        a.delete("jobs/j1/x.bin").await.unwrap();
    }

    #[tokio::test]
    async fn a_remote_store_is_read_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::open("memory:///fpt", &dir.path().join("cache")).unwrap();
        a.put("files/f1", b"data".to_vec()).await.unwrap();
        let p = a.local("files/f1").await.unwrap();
        assert_eq!(p, dir.path().join("cache/files/f1"));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        assert!(a.local("files/missing").await.is_err());
    }
}
