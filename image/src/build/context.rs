//! The build context: every path in it resolved beneath a capability handle on its
//! directory, what a build may read of it, `.dockerignore`, glob matching.
//!
//! Everything here may be crafted: a context arrives as a client's tar (`POST /build`)
//! or is someone else's repository (`skiff build DIR`). So no path from it is joined
//! and opened: the build file, `.dockerignore`, `skiff.toml`'s paths and every COPY
//! source are opened through [`Dir`] (cap-std, `openat2` `RESOLVE_BENEATH` where the
//! kernel has it), which refuses `..` and absolute links that leave the directory. A
//! link named as a source is followed while it stays inside, as Docker follows one
//! within its root; a link met inside a copied directory is copied as a link.

use std::io::Read as _;

use cap_std::fs::{Dir, PermissionsExt as _};

use super::*;
use crate::layer::LayerEntry;

/// The largest build file (Dockerfile, skiff.toml) or `.dockerignore` read, in bytes:
/// 1 MiB, far past any real one.
pub const MAX_BUILD_FILE_BYTES: u64 = 1 << 20;

/// Bounds on what one build reads of its context: a context can hold more files, deeper,
/// than its few compressed bytes suggest, and what a build copies is held in memory
/// until its layer is written.
#[derive(Clone, Copy, Debug)]
pub struct ContextLimits {
    /// Entries (files, links, directories) walked, all sources together. Default 100,000.
    pub max_entries: u64,
    /// Bytes of file content read, all sources together. Default 512 MiB.
    pub max_bytes: u64,
    /// Components in one path of the context. Default 128 (as for image layers).
    pub max_depth: usize,
}

impl Default for ContextLimits {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 512 << 20,
            max_depth: 128,
        }
    }
}

/// A build file's name (as the client knows it: relative to the context, or the path
/// the local user gave) and its text.
#[derive(Clone, Debug)]
pub struct BuildFile {
    /// How messages name it.
    pub name: String,
    /// Its content.
    pub text: String,
}

impl BuildFile {
    /// A build file the local user named outside the context (`skiff build -f
    /// ../Dockerfile DIR`, as `docker build` allows), read with the caller's authority:
    /// for a path the user typed, never for a path from the context.
    pub fn read_local(path: &Path) -> Result<Self, BuildError> {
        let name = path.display().to_string();
        let meta = fs::metadata(path).map_err(|e| other(format!("failed to read {name}: {e}")))?;
        if !meta.is_file() {
            return Err(other(format!("{name} is not a regular file")));
        }
        let file =
            fs::File::open(path).map_err(|e| other(format!("failed to read {name}: {e}")))?;
        Ok(Self {
            text: read_text(file, &name)?,
            name,
        })
    }
}

/// A build context: a capability handle on its directory and the limits a build reads
/// it within.
pub struct Context {
    dir: Dir,
    limits: ContextLimits,
}

impl Context {
    /// Opens the context directory `path` (the caller's own choice of directory, so
    /// opened with ambient authority; nothing beneath it is).
    pub fn open(path: &Path) -> Result<Self, BuildError> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .map_err(|e| other(format!("build context {}: {e}", path.display())))?;
        Ok(Self {
            dir,
            limits: ContextLimits::default(),
        })
    }

    /// The same context read within `limits`.
    pub fn with_limits(self, limits: ContextLimits) -> Self {
        Self { limits, ..self }
    }

    /// Whether the context has an entry `name` (a link counts, wherever it points).
    pub fn contains(&self, name: &str) -> bool {
        self.dir.symlink_metadata(name).is_ok()
    }

    /// Reads the build file `file` (a path inside the context, relative to it; default
    /// `skiff.toml`, else `Dockerfile`). A link on the way is followed only while it
    /// stays inside the context.
    pub fn build_file(&self, file: Option<&Path>) -> Result<BuildFile, BuildError> {
        let name = match file {
            Some(f) => clean(f).ok_or_else(|| {
                refused(format!(
                    "dockerfile {:?} is not a path inside the build context",
                    f.display().to_string()
                ))
            })?,
            None => ["skiff.toml", "Dockerfile"]
                .into_iter()
                .find(|n| self.contains(n))
                .ok_or_else(|| other("no skiff.toml or Dockerfile in the build context"))?
                .to_string(),
        };
        let meta = self.dir.metadata(&name).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                refused(format!("Cannot locate specified Dockerfile: {name}"))
            }
            _ => refused(format!(
                "{name} is not a regular file inside the build context"
            )),
        })?;
        if !meta.is_file() {
            return Err(refused(format!("{name} is not a regular file")));
        }
        // Opened beneath the context again: a link swapped in since resolves inside it.
        let file = self
            .dir
            .open(&name)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
            .ok_or_else(|| {
                refused(format!(
                    "{name} is not a regular file inside the build context"
                ))
            })?;
        Ok(BuildFile {
            text: read_text(file.into_std(), &name)?,
            name,
        })
    }

    /// Reads a build file's `text` (`file` names it: one ending in `.toml` is a
    /// skiff.toml, anything else a Dockerfile) into a plan, taking files from the context.
    pub fn plan(&self, text: &str, file: &str) -> Result<Plan, BuildError> {
        let mut budget = Budget {
            limits: self.limits,
            entries: 0,
            bytes: 0,
        };
        if file.ends_with(".toml") {
            plan_from_manifest(self, &mut budget, text, file)
        } else {
            plan_from_dockerfile(self, &mut budget, text, file)
        }
    }

    /// Opens the source `src` a build file names. Links on its way, the last included,
    /// are followed while they stay inside the context; the error says only "not found
    /// (or outside)", whichever it was.
    pub(super) fn source(&self, src: &str) -> Result<Source, String> {
        let missing = || "not found in the build context (or outside it)".to_string();
        let rel = clean(Path::new(src)).ok_or_else(missing)?;
        let at = if rel.is_empty() { "." } else { rel.as_str() };
        let meta = self.dir.metadata(at).map_err(|_| missing())?;
        let kind = if meta.is_dir() {
            SourceKind::Dir(self.dir.open_dir(at).map_err(|_| missing())?)
        } else if meta.is_file() {
            SourceKind::File(self.dir.open(at).map_err(|_| missing())?)
        } else {
            return Err(format!("{at} is not a regular file or a directory"));
        };
        Ok(Source { rel, kind })
    }

    /// The context's `.dockerignore`, if it has one.
    pub(super) fn dockerignore(&self) -> Result<DockerIgnore, BuildError> {
        const NAME: &str = ".dockerignore";
        let meta = match self.dir.metadata(NAME) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerIgnore::default());
            }
            Err(_) => {
                return Err(refused(format!(
                    "{NAME} is not a regular file inside the build context"
                )));
            }
        };
        if !meta.is_file() {
            return Err(refused(format!("{NAME} is not a regular file")));
        }
        let file = self.dir.open(NAME).map_err(|_| {
            refused(format!(
                "{NAME} is not a regular file inside the build context"
            ))
        })?;
        Ok(DockerIgnore::parse(&read_text(file.into_std(), NAME)?))
    }
}

/// `path` as clean relative components joined by `/` (`""` for the context itself), or
/// `None` if it is absolute or climbs above the context.
pub(super) fn clean(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::RootDir | std::path::Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// A refusal of something the context holds or a client named in it (the Docker API
/// answers it 400).
pub(super) fn refused(msg: impl Into<String>) -> BuildError {
    BuildError::Context(msg.into())
}

/// Reads a build file or `.dockerignore` of at most [`MAX_BUILD_FILE_BYTES`] as UTF-8;
/// errors name the file, never its content.
fn read_text(file: fs::File, name: &str) -> Result<String, BuildError> {
    let mut bytes = Vec::new();
    file.take(MAX_BUILD_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| other(format!("failed to read {name}: {}", e.kind())))?;
    if bytes.len() as u64 > MAX_BUILD_FILE_BYTES {
        return Err(refused(format!(
            "{name} is larger than {MAX_BUILD_FILE_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|_| refused(format!("{name} is not UTF-8 text")))
}

/// A source a build file named, opened beneath the context.
pub(super) struct Source {
    /// Its clean path in the context (`""` for the context itself).
    pub(super) rel: String,
    pub(super) kind: SourceKind,
}

pub(super) enum SourceKind {
    Dir(Dir),
    File(cap_std::fs::File),
}

impl Source {
    /// Its last component (`None` for the context itself).
    pub(super) fn name(&self) -> Option<&str> {
        self.rel.rsplit('/').next().filter(|n| !n.is_empty())
    }

    pub(super) fn is_dir(&self) -> bool {
        matches!(self.kind, SourceKind::Dir(_))
    }
}

/// What a plan has read of its context so far.
pub(super) struct Budget {
    limits: ContextLimits,
    entries: u64,
    bytes: u64,
}

impl Budget {
    fn entry(&mut self, rel: &str) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(format!(
                "the build context has more than {} entries (at {rel})",
                self.limits.max_entries
            ));
        }
        let depth = rel.split('/').count();
        if depth > self.limits.max_depth {
            return Err(format!(
                "{rel} is {depth} directories deep; the limit is {}",
                self.limits.max_depth
            ));
        }
        Ok(())
    }

    fn bytes(&mut self, rel: &str, size: u64) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(format!(
                "the files read from the build context add up to more than {} bytes (at {rel})",
                self.limits.max_bytes
            ));
        }
        Ok(())
    }
}

/// Reads the regular file `file` (at `rel` in the context) within the budget; its
/// content and the mode it gets in the image.
pub(super) fn read_file(
    file: cap_std::fs::File,
    rel: &str,
    budget: &mut Budget,
) -> Result<(Vec<u8>, u32), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("{rel}: {}", e.kind()))?;
    if !meta.is_file() {
        return Err(format!("{rel} is not a regular file"));
    }
    budget.bytes(rel, meta.len())?;
    let mut data = Vec::new();
    // The size checked is all that is read, should the file grow meanwhile.
    file.into_std()
        .take(meta.len())
        .read_to_end(&mut data)
        .map_err(|e| format!("{rel}: {}", e.kind()))?;
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    Ok((data, mode))
}

/// Adds `source` (a file, or a directory and everything beneath it) under image path
/// `dest`. Links inside a directory are copied as links, never followed.
pub(super) fn collect(
    source: Source,
    dest: &str,
    ignore: &DockerIgnore,
    budget: &mut Budget,
    out: &mut BTreeMap<String, LayerEntry>,
) -> Result<(), String> {
    if !source.rel.is_empty() && ignore.ignored(&source.rel) {
        return Ok(());
    }
    let at = if source.rel.is_empty() {
        "."
    } else {
        source.rel.as_str()
    };
    budget.entry(at)?;
    match source.kind {
        SourceKind::File(file) => {
            let (data, mode) = read_file(file, at, budget)?;
            out.insert(image_key(dest), LayerEntry::File { data, mode });
        }
        SourceKind::Dir(dir) => walk(&dir, &source.rel, dest, ignore, budget, out)?,
    }
    Ok(())
}

/// The directory `dir` (at `rel` in the context) into image path `dest`.
fn walk(
    dir: &Dir,
    rel: &str,
    dest: &str,
    ignore: &DockerIgnore,
    budget: &mut Budget,
    out: &mut BTreeMap<String, LayerEntry>,
) -> Result<(), String> {
    let name_of = |n: &str| {
        if rel.is_empty() {
            n.to_string()
        } else {
            format!("{rel}/{n}")
        }
    };
    let mut names = Vec::new();
    for entry in dir
        .entries()
        .map_err(|e| format!("{}: {}", display(rel), e.kind()))?
    {
        let entry = entry.map_err(|e| format!("{}: {}", display(rel), e.kind()))?;
        let name = entry.file_name();
        let child = name_of(&name.to_string_lossy());
        if ignore.ignored(&child) {
            continue;
        }
        // Counted before it is kept, so a directory of a million names stops early.
        budget.entry(&child)?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let child = name_of(&name.to_string_lossy());
        let target = format!("{dest}/{}", name.to_string_lossy());
        let meta = dir
            .symlink_metadata(&name)
            .map_err(|e| format!("{child}: {}", e.kind()))?;
        if meta.is_symlink() {
            let link = dir
                .read_link_contents(&name)
                .map_err(|e| format!("{child}: {}", e.kind()))?;
            let key = image_key(&target);
            let link = link
                .to_str()
                .filter(|l| crate::layer::link_stays_inside(&key, l))
                .ok_or_else(|| {
                    format!("{child} is a link that leads outside the image from /{key}")
                })?;
            out.insert(
                key,
                LayerEntry::Symlink {
                    target: link.to_string(),
                },
            );
        } else if meta.is_dir() {
            // A link swapped in since is still resolved beneath `dir`.
            let sub = dir
                .open_dir(&name)
                .map_err(|e| format!("{child}: {}", e.kind()))?;
            walk(&sub, &child, &target, ignore, budget, out)?;
        } else if meta.is_file() {
            let file = dir
                .open(&name)
                .map_err(|e| format!("{child}: {}", e.kind()))?;
            let (data, mode) = read_file(file, &child, budget)?;
            out.insert(image_key(&target), LayerEntry::File { data, mode });
        }
        // Sockets, fifos and devices are left out, as before (the node's extractor
        // refuses them in a context tar; a local directory may hold them).
    }
    Ok(())
}

/// Refuses an image where a path is a link and also holds entries beneath it (two
/// COPYs laid over each other): extracting it would replace the link or lose the files.
pub(super) fn links_hold_nothing(files: &BTreeMap<String, LayerEntry>) -> Result<(), BuildError> {
    for (path, entry) in files {
        if let LayerEntry::Symlink { .. } = entry {
            let beneath = format!("{path}/");
            if let Some((inner, _)) = files
                .range(beneath.clone()..)
                .next()
                .filter(|(k, _)| k.starts_with(&beneath))
            {
                return Err(refused(format!(
                    "/{path} is a link in the image and also holds /{inner}"
                )));
            }
        }
    }
    Ok(())
}

fn display(rel: &str) -> &str {
    if rel.is_empty() { "." } else { rel }
}

/// An absolute image path as a layer key (no leading `/`).
fn image_key(dest: &str) -> String {
    dest.trim_start_matches('/').to_string()
}

// ---- .dockerignore ----------------------------------------------------------------

/// `.dockerignore` patterns: `*`, `?`, `**`, leading `!` to re-include, later lines win.
#[derive(Default)]
pub(super) struct DockerIgnore {
    pub(super) rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    pub(super) fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (negate, pat) = l.strip_prefix('!').map_or((false, l), |p| (true, p));
                let parts = pat
                    .trim_start_matches("./")
                    .trim_matches('/')
                    .split('/')
                    .map(str::to_string)
                    .collect();
                (negate, parts)
            })
            .collect();
        Self { rules }
    }

    pub(super) fn ignored(&self, rel: &str) -> bool {
        let path: Vec<&str> = rel.split('/').collect();
        let mut ignored = false;
        for (negate, pat) in &self.rules {
            // A pattern matching a directory also matches everything beneath it.
            let hit = (1..=path.len()).any(|n| glob_path(pat, &path[..n]));
            if hit {
                ignored = !negate;
            }
        }
        ignored
    }
}

pub(super) fn glob_path(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| glob_path(rest, &path[i..])),
        Some((p, rest)) => {
            !path.is_empty()
                && glob(p.as_bytes(), path[0].as_bytes())
                && glob_path(rest, &path[1..])
        }
    }
}

pub(super) fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

// ---- Dockerfile -------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// What a test's secret file holds: the shape of a passwd line, and of a Dockerfile
    /// line (an error quoting either would show it).
    const SECRET: &str = "s3cr3t:x:0:0:root:/root:/bin/sh\nFROM s3cr3t AS s3cr3t\n";

    /// A context directory beside a directory of secrets (`secret/passwd`), as a node's
    /// scratch directory sits beside its data.
    struct Scene {
        _tmp: tempfile::TempDir,
        ctx: PathBuf,
        secret: PathBuf,
    }

    fn scene(files: &[(&str, &str)], links: &[(&str, &str)]) -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let (ctx, secret) = (tmp.path().join("ctx"), tmp.path().join("secret"));
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("passwd"), SECRET).unwrap();
        fs::create_dir_all(&ctx).unwrap();
        for (p, text) in files {
            let path = ctx.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        for (p, target) in links {
            let target = target.replace("$SECRET", &secret.display().to_string());
            let path = ctx.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, path).unwrap();
        }
        Scene {
            _tmp: tmp,
            ctx,
            secret,
        }
    }

    /// Builds `scene` with `file`; the error, checked to hold no byte of what the links
    /// point at: neither the secret nor a line of the host's /etc/passwd.
    fn refused_build(scene: &Scene, file: Option<&str>) -> String {
        let out = tempfile::tempdir().unwrap();
        let store = ImageStore::open(out.path()).unwrap();
        let err = build(&store, &scene.ctx, file.map(Path::new)).unwrap_err();
        assert!(matches!(err, BuildError::Context(_)), "{err:?}");
        let text = err.to_string();
        assert_no_secret(&text);
        assert!(
            !text.contains(&scene.secret.display().to_string()),
            "{text}"
        );
        text
    }

    fn assert_no_secret(text: &str) {
        let lower = text.to_lowercase();
        assert!(!lower.contains("s3cr3t"), "{text}");
        assert!(!lower.contains("root:"), "{text}");
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        for line in passwd.lines().filter(|l| l.len() > 8) {
            assert!(!lower.contains(&line.to_lowercase()), "{text}");
        }
    }

    #[test]
    fn a_dockerfile_named_through_a_link_out_is_refused_and_never_read() {
        let s = scene(
            &[("real/Dockerfile", "FROM nginx\n")],
            &[
                ("etc", "/etc"),
                ("sub", "$SECRET"),
                ("up", "../secret"),
                ("passwd", "$SECRET/passwd"),
                ("rel", "../secret/passwd"),
                // A chain whose last link leaves.
                ("a", "b"),
                ("b", "real/c"),
                ("real/c", "../../secret/passwd"),
            ],
        );
        for (file, named) in [
            (
                "etc/passwd",
                "etc/passwd is not a regular file inside the build context",
            ),
            (
                "sub/passwd",
                "sub/passwd is not a regular file inside the build context",
            ),
            (
                "up/passwd",
                "up/passwd is not a regular file inside the build context",
            ),
            (
                "passwd",
                "passwd is not a regular file inside the build context",
            ),
            ("rel", "rel is not a regular file inside the build context"),
            ("a", "a is not a regular file inside the build context"),
            (
                "../secret/passwd",
                "dockerfile \"../secret/passwd\" is not a path inside",
            ),
            (
                "/etc/passwd",
                "dockerfile \"/etc/passwd\" is not a path inside",
            ),
            ("real", "real is not a regular file"),
            ("missing", "Cannot locate specified Dockerfile: missing"),
        ] {
            let err = refused_build(&s, Some(file));
            assert!(err.starts_with(named), "{file}: {err}");
        }
        // The default build file, a link out, likewise.
        let s = scene(&[], &[("Dockerfile", "$SECRET/passwd")]);
        let err = refused_build(&s, None);
        assert!(err.starts_with("Dockerfile is not a regular file"), "{err}");
    }

    #[test]
    fn links_that_stay_inside_are_followed_where_docker_follows_them() {
        let s = scene(
            &[
                (
                    "build/Dockerfile.prod",
                    "FROM nginx\nCOPY site /usr/share/nginx/html\n",
                ),
                ("html/index.html", "hi"),
                ("html/css/a.css", "a{}"),
            ],
            &[
                // A build file and a COPY source that are links inside the context,
                // through a chain.
                ("Dockerfile", "build/link"),
                ("build/link", "Dockerfile.prod"),
                ("site", "html"),
                // Links inside a copied directory are copied as links: absolute ones
                // mean the image's own root, relative ones stay in the image.
                ("html/passwd", "/etc/passwd"),
                ("html/style.css", "css/a.css"),
            ],
        );
        let out = tempfile::tempdir().unwrap();
        let store = ImageStore::open(out.path()).unwrap();
        let (desc, _) = build(&store, &s.ctx, Some(Path::new("Dockerfile"))).unwrap();
        let crate::Runnable::Static { layers, .. } = store.summary(&desc.digest).unwrap().runnable
        else {
            panic!("static")
        };
        let tar = fs::read(store.blobs().path(&layers[0].digest)).unwrap();
        let mut entries = BTreeMap::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            entries.insert(
                e.path().unwrap().display().to_string(),
                (e.header().entry_type(), link, e.size()),
            );
        }
        let html = "usr/share/nginx/html";
        assert_eq!(
            entries[&format!("{html}/passwd")],
            (tar::EntryType::Symlink, Some("/etc/passwd".into()), 0)
        );
        assert_eq!(
            entries[&format!("{html}/style.css")],
            (tar::EntryType::Symlink, Some("css/a.css".into()), 0)
        );
        assert_eq!(entries[&format!("{html}/index.html")].2, 2);
        assert!(!String::from_utf8_lossy(&tar).contains("root:"));
        // The layer extracts (its links are the extractor's to check) with the link kept.
        let dest = tempfile::tempdir().unwrap();
        crate::layer::extract(store.blobs(), &layers, dest.path(), Default::default()).unwrap();
        let root = dest.path().join(html);
        assert_eq!(
            fs::read_link(root.join("passwd")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(fs::read(root.join("style.css")).unwrap(), b"a{}");
    }

    #[test]
    fn copy_sources_through_links_out_or_dot_dot_are_refused_by_name() {
        let links: &[(&str, &str)] = &[
            ("etc", "/etc"),
            ("sub", "$SECRET"),
            ("up", "../secret"),
            ("a", "b"),
            ("b", "../secret/passwd"),
        ];
        for (src, named) in [
            (
                "etc/passwd",
                "Dockerfile:2: COPY etc/passwd: not found in the build context (or outside it)",
            ),
            ("sub/passwd", "Dockerfile:2: COPY sub/passwd: not found"),
            ("sub", "Dockerfile:2: COPY sub: not found"),
            ("up/passwd", "Dockerfile:2: COPY up/passwd: not found"),
            ("a", "Dockerfile:2: COPY a: not found"),
            (
                "../secret/passwd",
                "Dockerfile:2: COPY ../secret/passwd: not found",
            ),
            ("/etc/passwd", "Dockerfile:2: COPY /etc/passwd: not found"),
        ] {
            let dockerfile = format!("FROM nginx\nCOPY {src} /usr/share/nginx/html/x\n");
            let s = scene(&[("Dockerfile", &dockerfile)], links);
            let err = refused_build(&s, None);
            assert!(err.starts_with(named), "{src}: {err}");
        }
        // A link in a copied directory that would climb out of the image is refused,
        // naming it, not copied to fail at every start.
        let s = scene(
            &[(
                "Dockerfile",
                "FROM nginx\nCOPY html /usr/share/nginx/html\n",
            )],
            &[("html/up", "../../../../../../etc/passwd")],
        );
        let err = refused_build(&s, None);
        assert!(
            err.starts_with(
                "Dockerfile:2: COPY html: html/up is a link that leads outside the image"
            ),
            "{err}"
        );
        // Nor is a file laid beneath a link another COPY made (it would land wherever
        // the link points once extracted).
        let s = scene(
            &[
                (
                    "Dockerfile",
                    "FROM nginx\nCOPY html /usr/share/nginx/html\nCOPY f /usr/share/nginx/html/css/f\n",
                ),
                ("f", "f"),
            ],
            &[("html/css", "/etc")],
        );
        let err = refused_build(&s, None);
        assert_eq!(
            err,
            "/usr/share/nginx/html/css is a link in the image and also holds /usr/share/nginx/html/css/f"
        );
        // skiff.toml's paths and .dockerignore are resolved beneath the context too.
        for (toml, named) in [
            (
                "version = 1\nkind = \"wasm\"\nwasm = \"sub/passwd\"\n",
                "skiff.toml: wasm = \"sub/passwd\": not found",
            ),
            (
                "version = 1\nkind = \"static\"\nroot = \"sub\"\n",
                "skiff.toml: root = \"sub\": not found",
            ),
            (
                "version = 1\nkind = \"static\"\nroot = \"../secret\"\n",
                "skiff.toml: root = \"../secret\": not found",
            ),
        ] {
            let s = scene(&[("skiff.toml", toml)], links);
            let err = refused_build(&s, None);
            assert!(err.starts_with(named), "{err}");
        }
        let s = scene(
            &[
                (
                    "Dockerfile",
                    "FROM nginx\nCOPY html /usr/share/nginx/html\n",
                ),
                ("html/a", "a"),
            ],
            &[(".dockerignore", "$SECRET/passwd")],
        );
        let err = refused_build(&s, None);
        assert!(
            err.starts_with(".dockerignore is not a regular file inside"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_name_the_line_and_keyword_never_the_text() {
        let s = scene(&[], &[]);
        let context = Context::open(&s.ctx).unwrap();
        // /etc/passwd or a mailbox ("From ...") read as a Dockerfile, and a Dockerfile
        // whose every argument is the secret.
        let texts = [
            "s3cr3t:x:0:0:root:/root:/bin/sh\n".to_string(),
            "From s3cr3t Fri Jul  8 12:08:34 2011\n".to_string(),
            "FROM s3cr3t\n".to_string(),
            "FROM nginx\ns3cr3t x\n".to_string(),
            "FROM nginx\nENV s3cr3t\n".to_string(),
            "FROM nginx\nLABEL s3cr3t\n".to_string(),
            "FROM nginx\nEXPOSE s3cr3t\n".to_string(),
            "FROM nginx\nCMD [\"a\", s3cr3t]\n".to_string(),
            "FROM nginx\nENTRYPOINT \"s3cr3t\n".to_string(),
            "FROM nginx\nCOPY --s3cr3t=1 a b\n".to_string(),
            "FROM nginx\nCOPY \"s3cr3t a b\n".to_string(),
        ];
        for text in texts {
            let err = context.plan(&text, "Dockerfile").unwrap_err().to_string();
            assert!(err.starts_with("Dockerfile:"), "{err}");
            assert_no_secret(&err);
        }
        let err = context
            .plan("s3cr3t:x:0:0:root\n", "Dockerfile")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Dockerfile:1: an unknown instruction before FROM: a Dockerfile starts with FROM"
        );
    }

    #[test]
    fn contexts_past_their_limits_are_refused_naming_the_limit_and_path() {
        let limits = ContextLimits {
            max_entries: 50,
            max_bytes: 1000,
            max_depth: 8,
        };
        let plan_of = |files: &[(&str, &str)]| {
            let mut all = vec![(
                "Dockerfile",
                "FROM nginx\nCOPY html /usr/share/nginx/html\n",
            )];
            all.extend_from_slice(files);
            let s = scene(&all, &[]);
            let context = Context::open(&s.ctx).unwrap().with_limits(limits);
            let file = context.build_file(None).unwrap();
            context.plan(&file.text, &file.name).map(|_| ())
        };
        // Within the limits, it builds.
        plan_of(&[("html/a", "a")]).unwrap();

        let many: Vec<(String, &str)> = (0..60).map(|i| (format!("html/{i}"), "")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(p, t)| (p.as_str(), *t)).collect();
        let err = plan_of(&many).unwrap_err();
        assert!(matches!(err, BuildError::Context(_)), "{err:?}");
        assert!(
            err.to_string().contains("more than 50 entries (at html/"),
            "{err}"
        );

        let deep = format!("html/{}/f", ["d"; 10].join("/"));
        let err = plan_of(&[(&deep, "x")]).unwrap_err().to_string();
        assert_eq!(
            err,
            "Dockerfile:2: COPY html: html/d/d/d/d/d/d/d/d is 9 directories deep; the limit is 8"
        );

        let big = "x".repeat(600);
        let err = plan_of(&[("html/a", &big), ("html/b", &big)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("add up to more than 1000 bytes (at html/b)"),
            "{err}"
        );

        // A build file past its own cap is refused unread.
        let s = scene(
            &[("Dockerfile", &"#".repeat(MAX_BUILD_FILE_BYTES as usize + 1))],
            &[],
        );
        let err = refused_build(&s, None);
        assert_eq!(
            err,
            format!("Dockerfile is larger than {MAX_BUILD_FILE_BYTES} bytes")
        );
    }
}
