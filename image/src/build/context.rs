//! The build context: files resolved beneath it, `.dockerignore`, glob matching.

use super::*;

/// `base/rel` if it stays inside `base`.
pub(super) fn inside(base: &Path, rel: &Path) -> Option<PathBuf> {
    let base = base.canonicalize().ok()?;
    let joined = base.join(rel).canonicalize().ok()?;
    joined.starts_with(&base).then_some(joined)
}

/// Adds `src` (a file or a directory, recursively) under image path `dest`.
pub(super) fn collect(
    context: &Path,
    src: &Path,
    dest: &str,
    ignore: &DockerIgnore,
    out: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), BuildError> {
    let ctx = context
        .canonicalize()
        .map_err(|e| other(format!("build context {}: {e}", context.display())))?;
    let rel = src
        .strip_prefix(&ctx)
        .unwrap_or(src)
        .to_string_lossy()
        .into_owned();
    if !rel.is_empty() && ignore.ignored(&rel) {
        return Ok(());
    }
    let meta = fs::symlink_metadata(src).map_err(|e| other(format!("{}: {e}", src.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(|e| other(format!("{}: {e}", src.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            let name = e
                .file_name()
                .expect("entries have names")
                .to_string_lossy()
                .into_owned();
            collect(context, &e, &format!("{dest}/{name}"), ignore, out)?;
        }
    } else if meta.is_file() || meta.file_type().is_symlink() {
        let real = src
            .canonicalize()
            .map_err(|e| other(format!("{}: {e}", src.display())))?;
        if !real.starts_with(&ctx) {
            return Err(other(format!(
                "{} links outside the build context",
                src.display()
            )));
        }
        let data = fs::read(&real).map_err(|e| other(format!("{}: {e}", src.display())))?;
        let mode = if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        out.insert(dest.trim_start_matches('/').to_string(), (data, mode));
    }
    Ok(())
}

// ---- .dockerignore ----------------------------------------------------------------

/// `.dockerignore` patterns: `*`, `?`, `**`, leading `!` to re-include, later lines win.
pub(super) struct DockerIgnore {
    pub(super) rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    pub(super) fn load(context: &Path) -> Result<Self, BuildError> {
        let text = match fs::read_to_string(context.join(".dockerignore")) {
            Ok(t) => t,
            Err(_) => return Ok(Self { rules: vec![] }),
        };
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
        Ok(Self { rules })
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
