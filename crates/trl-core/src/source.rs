//! Where a model's files are: a local directory or the Hugging Face hub cache.
//!
//! `resolve("path/to/dir")` returns the directory. `resolve("org/name[@revision]")` looks in
//! the hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), laid
//! out as huggingface_hub does:
//!
//! ```text
//! models--org--name/refs/<revision>            a file holding a commit hash
//! models--org--name/snapshots/<commit>/…       the files of that commit
//! ```
//!
//! A revision that is a 40-hex commit hash maps straight to `snapshots/<hash>`. A snapshot
//! counts only when it holds `config.json` (or `adapter_config.json`). When the cache has no
//! such snapshot and the hub is not offline (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`), the
//! config, tokenizer and weight files are downloaded into the same cache with `hf-hub`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Files whose presence makes a snapshot usable.
const MARKERS: [&str; 2] = ["config.json", "adapter_config.json"];

/// Small files fetched with a model, when the repository has them.
const EXTRA_FILES: [&str; 11] = [
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
];

/// Weight files in the order transformers prefers them: a single file, or an index whose shards
/// are fetched too.
const WEIGHTS: [(&str, &str); 4] = [
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ("adapter_model.safetensors", ""),
    ("adapter_model.bin", ""),
];

/// Resolves `model` (a directory, or `org/name[@revision]`) to a local directory, using the hub
/// cache and offline setting of the environment.
pub fn resolve(model: &str) -> Result<PathBuf> {
    HubCache::from_env().resolve(model)
}

/// A hub repository id with a revision: `org/name@revision` (`main` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name` (or a bare legacy `name` such as `gpt2`).
    pub repo: String,
    /// A branch, tag or commit hash.
    pub revision: String,
}

impl HubId {
    /// Parses `org/name[@revision]`; `None` when `s` cannot be a hub id (a path, say).
    pub fn parse(s: &str) -> Option<HubId> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (s, "main"),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let name_ok = |p: &&str| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && !p.ends_with('.')
                && !p.contains("..")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let rev_ok = !revision.is_empty()
            && !revision.starts_with('/')
            && !revision.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            && revision.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        (parts.len() <= 2 && parts.iter().all(name_ok) && rev_ok)
            .then(|| HubId { repo: repo.to_string(), revision: revision.to_string() })
    }

    /// The cache folder name: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// Whether the revision is a full commit hash.
    pub fn is_commit(&self) -> bool {
        is_commit_hash(&self.revision)
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// Whether `s` looks like a hub id (`org/name[@revision]`) rather than a path.
pub fn is_hub_id(s: &str) -> bool {
    HubId::parse(s).is_some()
}

/// Parses `org/name[@revision]`; the revision defaults to `main`.
pub fn parse_hub_id(s: &str) -> Option<HubId> {
    HubId::parse(s)
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The hub cache to look in, and whether the network may be used. Build one with
/// [`HubCache::from_env`], or by hand (tests point `root` at a temp dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    /// The `hub` folder that holds `models--org--name` folders.
    pub root: PathBuf,
    /// Never touch the network.
    pub offline: bool,
    /// The hub's URL (`HF_ENDPOINT`); `None` for huggingface.co.
    pub endpoint: Option<String>,
}

impl HubCache {
    /// A cache at `root`, using huggingface.co unless `offline`.
    pub fn new(root: impl Into<PathBuf>, offline: bool) -> Self {
        Self { root: root.into(), offline, endpoint: None }
    }

    /// From the process environment (see [`HubCache::from_vars`]).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// From environment variables looked up by `var`: the root is `HF_HUB_CACHE` (or the older
    /// `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE`
    /// is `1`/`true`/`yes`/`on`; the endpoint is `HF_ENDPOINT`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let root = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home(&var).join("hub"));
        let truthy = |k: &str| {
            var(k).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        };
        let offline = truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE");
        Self { root, offline, endpoint: var("HF_ENDPOINT") }
    }

    /// `root/models--org--name`.
    pub fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.root.join(id.folder_name())
    }

    /// The cached snapshot of `id`, if there is a usable one. Every path looked at is pushed
    /// onto `tried`.
    pub fn cached(&self, id: &HubId, tried: &mut Vec<PathBuf>) -> Option<PathBuf> {
        let repo = self.repo_dir(id);
        let commit = if id.is_commit() {
            id.revision.clone()
        } else {
            let r = repo.join("refs").join(&id.revision);
            tried.push(r.clone());
            let commit = std::fs::read_to_string(&r).ok()?.trim().to_string();
            if !is_commit_hash(&commit) {
                return None; // not a hash: refuse to follow it anywhere
            }
            commit
        };
        let snap = repo.join("snapshots").join(commit);
        tried.push(snap.clone());
        MARKERS.iter().any(|m| snap.join(m).is_file()).then_some(snap)
    }

    /// Resolves `model`: a local directory wins; then the cache; then (unless offline) a
    /// download into the cache.
    pub fn resolve(&self, model: &str) -> Result<PathBuf> {
        let local = PathBuf::from(model);
        if local.is_dir() {
            return Ok(local);
        }
        let mut tried = vec![local];
        let Some(id) = HubId::parse(model) else {
            return Err(Error::ModelNotFound { id: model.to_string(), tried });
        };
        if let Some(snap) = self.cached(&id, &mut tried) {
            return Ok(snap);
        }
        if self.offline {
            return Err(Error::ModelNotFound { id: model.to_string(), tried });
        }
        self.download(&id)
    }

    /// Downloads `id`'s config, tokenizer and weight files into the cache and returns the
    /// snapshot directory.
    pub fn download(&self, id: &HubId) -> Result<PathBuf> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Cache, Repo, RepoType};

        let fail = |file: &str, e: &dyn std::fmt::Display| Error::Download {
            id: id.to_string(),
            file: file.to_string(),
            reason: e.to_string(),
        };
        let mut builder = ApiBuilder::from_cache(Cache::new(self.root.clone()))
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        if let Some(t) = token() {
            builder = builder.with_token(Some(t));
        }
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let api = builder.build().map_err(|e| fail("(connection)", &e))?;
        let repo = api.repo(Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone()));
        let info = repo.info().map_err(|e| fail("(repository info)", &e))?;
        let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let has = |f: &str| listed.contains(&f);

        let mut files: Vec<String> = EXTRA_FILES.iter().filter(|f| has(f)).map(|f| f.to_string()).collect();
        if !MARKERS.iter().any(|m| has(m)) {
            return Err(fail("config.json", &"the repository has no config.json or adapter_config.json"));
        }
        let mut weights = Vec::new();
        for (single, index) in WEIGHTS {
            if has(single) {
                weights.push(single.to_string());
                break;
            }
            if !index.is_empty() && has(index) {
                let path = repo.get(index).map_err(|e| fail(index, &e))?;
                weights.push(index.to_string());
                let shards = crate::checkpoint::read_index(&path)?;
                let mut shards: Vec<String> = shards.into_values().collect();
                shards.sort();
                shards.dedup();
                weights.extend(shards);
                break;
            }
        }
        if weights.is_empty() {
            return Err(fail("weights", &"the repository has no safetensors or pytorch_model.bin weights"));
        }
        files.extend(weights);
        let mut snapshot = None;
        for f in &files {
            let path = repo.get(f).map_err(|e| fail(f, &e))?;
            // Files sit at the snapshot root (shard names never hold a `/` in practice).
            let depth = Path::new(f).components().count();
            snapshot = path.ancestors().nth(depth).map(Path::to_path_buf);
        }
        snapshot.ok_or_else(|| fail("config.json", &"nothing was downloaded"))
    }
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(h) = var("HF_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = var("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("huggingface");
    }
    let home = var("HOME").or_else(|| var("USERPROFILE")).unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("huggingface")
}

/// The user's hub token, as huggingface_hub finds it: `HF_TOKEN`, else the file
/// `$HF_TOKEN_PATH`, else `$HF_HOME/token`.
fn token() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(t) = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_string());
    }
    let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home(&var).join("token"));
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids() {
        let id = parse_hub_id("openai-community/gpt2").unwrap();
        assert_eq!((id.repo.as_str(), id.revision.as_str()), ("openai-community/gpt2", "main"));
        assert_eq!(id.folder_name(), "models--openai-community--gpt2");
        let id = parse_hub_id("Qwen/Qwen2.5-0.5B@v1.0").unwrap();
        assert_eq!(id.to_string(), "Qwen/Qwen2.5-0.5B@v1.0");
        assert!(parse_hub_id("a/b@refs/pr/1").is_some());
        assert!(is_hub_id("gpt2"));
        let hash = "0123456789abcdef0123456789abcdef01234567";
        assert!(parse_hub_id(&format!("a/b@{hash}")).unwrap().is_commit());
        for bad in
            ["", "/abs/path", "./dir", "a/b/c", "a/../b", "a/b@", "a/b@../x", "a b/c", "../x", "a//b", "a/b@x//y"]
        {
            assert!(!is_hub_id(bad), "{bad} should not be a hub id");
        }
    }

    #[test]
    fn env_lookup_order() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let c = HubCache::from_vars(vars(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h"), ("HOME", "/u")]));
        assert_eq!((c.root, c.offline), (PathBuf::from("/c"), false));
        let c = HubCache::from_vars(vars(&[("HF_HOME", "/h"), ("HOME", "/u"), ("HF_HUB_OFFLINE", "1")]));
        assert_eq!((c.root, c.offline), (PathBuf::from("/h/hub"), true));
        let c = HubCache::from_vars(vars(&[("HOME", "/u"), ("TRANSFORMERS_OFFLINE", "TRUE")]));
        assert_eq!((c.root, c.offline), (PathBuf::from("/u/.cache/huggingface/hub"), true));
        let c = HubCache::from_vars(vars(&[("HOME", "/u"), ("HF_HUB_OFFLINE", "0")]));
        assert!(!c.offline);
    }
}
