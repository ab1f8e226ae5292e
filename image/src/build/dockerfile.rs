//! Builds from a Dockerfile: the subset skiff reads and its plan.

use super::*;

pub(super) enum Base {
    Scratch,
    Nginx,
}

/// An absolute path in the image, cleaned as Docker cleans COPY and WORKDIR paths:
/// `.` dropped, `..` taken back (never above `/`), a trailing `/` kept. No path in a
/// built image ever holds `..`.
pub(super) fn image_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

/// Docker's instruction keywords: the only words of a Dockerfile line an error repeats.
/// A build file may not be what it claims (a link to another file, once), so a parse
/// error names the line and, if it is one of these, the keyword; never other text.
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// COPY's flags in Docker, which an error may name.
const COPY_FLAGS: &[&str] = &[
    "--from",
    "--chown",
    "--chmod",
    "--link",
    "--parents",
    "--exclude",
];

/// `word` if it is an instruction keyword, else a description that repeats nothing.
fn keyword(word: &str) -> &str {
    KEYWORDS
        .iter()
        .find(|k| **k == word)
        .copied()
        .unwrap_or("an unknown instruction")
}

pub(super) fn plan_from_dockerfile(
    context: &Context,
    budget: &mut Budget,
    text: &str,
    file: &str,
) -> Result<Plan, BuildError> {
    let at = |line: usize, message: String| BuildError::At {
        file: file.into(),
        line,
        message,
    };
    let ignore = context.dockerignore()?;
    let mut base = None;
    let mut run = RunConfig::default();
    let mut files: BTreeMap<String, LayerEntry> = BTreeMap::new();
    for (line, instr) in logical_lines(text) {
        let (word, args) = instr
            .split_once(char::is_whitespace)
            .map_or((instr.as_str(), ""), |(w, a)| (w, a.trim()));
        let word = word.to_ascii_uppercase();
        if base.is_none() && word != "FROM" {
            return Err(at(
                line,
                format!(
                    "{} before FROM: a Dockerfile starts with FROM",
                    keyword(&word)
                ),
            ));
        }
        match word.as_str() {
            "FROM" => {
                if base.is_some() {
                    return Err(at(
                        line,
                        "a second FROM: multi-stage builds are not supported".into(),
                    ));
                }
                let mut parts = args.split_whitespace();
                let image = parts.next().unwrap_or("");
                if parts.next().is_some() {
                    return Err(at(
                        line,
                        "FROM IMAGE AS NAME: named stages are not supported".into(),
                    ));
                }
                let repo = image.split(['@', ':']).next().unwrap_or("");
                base = Some(match repo {
                    "scratch" => Base::Scratch,
                    "nginx"
                    | "library/nginx"
                    | "docker.io/library/nginx"
                    | "nginx-unprivileged" => Base::Nginx,
                    _ => {
                        return Err(at(
                            line,
                            "FROM: this base image is not supported: skiff builds FROM scratch (a Wasm image) or FROM nginx (a static site)".into(),
                        ));
                    }
                });
            }
            "COPY" => {
                let words = words(args).map_err(|m| at(line, format!("COPY: {m}")))?;
                if let Some(flag) = words.iter().find(|w| w.starts_with("--")) {
                    let name = flag.split('=').next().unwrap_or_default();
                    let name = COPY_FLAGS
                        .iter()
                        .find(|f| **f == name)
                        .map_or("an unknown flag", |f| f);
                    return Err(at(line, format!("COPY {name} is not supported")));
                }
                let (dest, srcs) = words
                    .split_last()
                    .filter(|(_, s)| !s.is_empty())
                    .ok_or_else(|| at(line, "COPY needs a source and a destination".into()))?;
                let dest = if dest.starts_with('/') {
                    image_abs(dest)
                } else {
                    image_abs(&format!("{}/{dest}", run.working_dir.trim_end_matches('/')))
                };
                for src in srcs {
                    let refused = |why: String| {
                        BuildError::Context(format!("{file}:{line}: COPY {src}: {why}"))
                    };
                    let source = context.source(src).map_err(refused)?;
                    let into_dir = dest.ends_with('/') || srcs.len() > 1 || source.is_dir();
                    let target = if source.is_dir() {
                        dest.trim_end_matches('/').to_string()
                    } else if into_dir {
                        format!(
                            "{}/{}",
                            dest.trim_end_matches('/'),
                            source.name().unwrap_or_default()
                        )
                    } else {
                        dest.clone()
                    };
                    collect(source, &target, &ignore, budget, &mut files).map_err(refused)?;
                }
            }
            "ENV" => {
                let words = words(args).map_err(|m| at(line, format!("ENV: {m}")))?;
                if words.len() == 2 && !words[0].contains('=') {
                    run.env.push(format!("{}={}", words[0], words[1]));
                } else {
                    for w in words {
                        let (k, v) = w
                            .split_once('=')
                            .ok_or_else(|| at(line, "ENV: expected KEY=VALUE".into()))?;
                        run.env.retain(|e| !e.starts_with(&format!("{k}=")));
                        run.env.push(format!("{k}={v}"));
                    }
                }
            }
            "EXPOSE" => {
                for p in args.split_whitespace() {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp") {
                        return Err(at(line, "EXPOSE: expected PORT or PORT/tcp".into()));
                    }
                    run.exposed_ports
                        .insert(format!("{port}/{proto}"), serde_json::json!({}));
                }
            }
            "LABEL" => {
                for w in words(args).map_err(|m| at(line, format!("LABEL: {m}")))? {
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| at(line, "LABEL: expected KEY=VALUE".into()))?;
                    run.labels.insert(k.to_string(), v.to_string());
                }
            }
            "WORKDIR" => {
                let dir = args.trim();
                run.working_dir = if dir.starts_with('/') {
                    image_abs(dir)
                } else {
                    image_abs(&format!("{}/{dir}", run.working_dir.trim_end_matches('/')))
                };
            }
            "CMD" | "ENTRYPOINT" => {
                let argv = if args.trim_start().starts_with('[') {
                    serde_json::from_str::<Vec<String>>(args).map_err(|e| {
                        // serde's message can quote the text; its column cannot.
                        at(
                            line,
                            format!("{word}: invalid JSON array (at column {})", e.column()),
                        )
                    })?
                } else {
                    words(args).map_err(|m| at(line, format!("{word}: {m}")))?
                };
                if word == "CMD" {
                    run.cmd = argv
                } else {
                    run.entrypoint = argv
                }
            }
            other => {
                return Err(at(
                    line,
                    format!(
                        "{} is not supported (skiff builds run nothing; supported: FROM, COPY, ENV, EXPOSE, LABEL, WORKDIR, CMD, ENTRYPOINT)",
                        keyword(other)
                    ),
                ));
            }
        }
    }
    let content = match base {
        None => return Err(other(format!("{file}: no FROM line"))),
        Some(Base::Nginx) => {
            links_hold_nothing(&files)?;
            Content::Static {
                files,
                root: NGINX_ROOT.into(),
            }
        }
        Some(Base::Scratch) => {
            // The binary is what ENTRYPOINT names, else the one .wasm copied in.
            let wanted = run
                .entrypoint
                .first()
                .map(|e| e.trim_start_matches('/').to_string());
            let key = match wanted {
                Some(w) => w,
                None => {
                    let wasm: Vec<&String> =
                        files.keys().filter(|k| k.ends_with(".wasm")).collect();
                    match wasm.as_slice() {
                        [one] => (*one).clone(),
                        _ => {
                            return Err(other(format!(
                                "{file}: FROM scratch needs ENTRYPOINT [\"/app.wasm\"] naming the copied module"
                            )));
                        }
                    }
                }
            };
            let wasm = match files.remove(&key) {
                Some(LayerEntry::File { data, .. }) => data,
                Some(LayerEntry::Symlink { .. }) => {
                    return Err(other(format!(
                        "{file}: ENTRYPOINT /{key} is a link; a Wasm image holds its module as a file"
                    )));
                }
                None => {
                    return Err(other(format!(
                        "{file}: ENTRYPOINT /{key} was not copied into the image"
                    )));
                }
            };
            if let Some(extra) = files.keys().next() {
                return Err(other(format!(
                    "{file}: a Wasm image holds only its module; /{extra} was also copied"
                )));
            }
            // The module is the entrypoint; only its arguments remain.
            if !run.entrypoint.is_empty() {
                run.entrypoint.remove(0);
            }
            Content::Wasm(wasm)
        }
    };
    Ok(Plan { content, run })
}

/// Joins `\`-continued lines and drops comments and blanks; yields (first line, text).
pub(super) fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if current.is_some() && line.starts_with('#') {
            continue;
        }
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        if let Some(cont) = line.strip_suffix('\\') {
            acc.push_str(cont);
            acc.push(' ');
            current = Some((start, acc));
        } else {
            acc.push_str(line);
            out.push((start, acc));
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    out
}

/// Splits shell-like words: whitespace-separated, with "double" or 'single' quotes.
pub(super) fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut has = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                has = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (None, c) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (_, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}
