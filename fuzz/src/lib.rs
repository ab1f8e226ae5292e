//! Fuzz targets for every parser of untrusted input, run on the stable toolchain: a seeded
//! generator plus mutator (no coverage guidance), a `catch_unwind` around each input,
//! and an invariant each target checks beyond "did not panic".
//!
//! | target | what it feeds | what must hold |
//! |---|---|---|
//! | `layer` | tar layers of hostile entries (`..`, links out, whiteouts, devices) | extraction stays inside its root; a sentinel beside it is untouched |
//! | `archive` | image archives mutated at the entry level (contents, names, types, digests) | import never panics, writes only inside the store, loaded images summarise |
//! | `dockerfile` | Dockerfiles mutated from real ones | planning never panics; a static plan's paths are relative and clean |
//! | `skiff-toml` | skiff.toml files mutated from real ones | as for Dockerfiles |
//! | `cgi` | WAGI guest output | parsing never panics |
//! | `host` | `Host` headers and request paths | a label found is one DNS label of the host under the domain |
//! | `manifest` | Kubernetes YAML mutated from real Deployments and Services | reading never panics; what it accepts validates |
//! | `protobuf` | kubectl's own protobuf bodies (Deployments, Services) mutated: bytes, varints, length prefixes, nesting | decoding never panics; what it accepts is an object, at most 32 bytes of JSON a byte of body |
//!
//! `skiff-fuzz` (the binary) runs them for many inputs; `tests/smoke.rs` runs a few
//! thousand of each in CI.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_image::layer::ExtractLimits;

/// One fuzz target.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// Makes one input from the generator.
    generate: fn(&mut Rng) -> Vec<u8>,
    /// Runs the code under test on an input; `true` if the input was accepted. Panics
    /// (the code's or a broken invariant's) are the findings.
    check: fn(&[u8]) -> bool,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "layer",
        generate: gen_layer,
        check: check_layer,
    },
    Target {
        name: "archive",
        generate: gen_archive,
        check: check_archive,
    },
    Target {
        name: "dockerfile",
        generate: gen_dockerfile,
        check: check_dockerfile,
    },
    Target {
        name: "skiff-toml",
        generate: gen_toml,
        check: check_toml,
    },
    Target {
        name: "cgi",
        generate: gen_cgi,
        check: check_cgi,
    },
    Target {
        name: "host",
        generate: gen_host,
        check: check_host,
    },
    Target {
        name: "manifest",
        generate: gen_manifest,
        check: check_manifest,
    },
    Target {
        name: "protobuf",
        generate: gen_protobuf,
        check: check_protobuf,
    },
];

/// What a run found.
pub struct Report {
    /// Inputs run.
    pub runs: u64,
    /// Inputs the code accepted (a measure of how deep the inputs reach).
    pub accepted: u64,
    /// The slowest input.
    pub slowest: Duration,
    /// Files holding inputs that panicked.
    pub crashes: Vec<PathBuf>,
}

/// Runs `target` on `runs` inputs from `seed`.
pub fn run(target: &Target, runs: u64, seed: u64) -> Report {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Report {
        runs: 0,
        accepted: 0,
        slowest: Duration::ZERO,
        crashes: Vec::new(),
    };
    for i in 0..runs {
        let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let input = (target.generate)(&mut rng);
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.check)(&input)));
        report.slowest = report.slowest.max(started.elapsed());
        report.runs += 1;
        match outcome {
            Ok(accepted) => report.accepted += u64::from(accepted),
            Err(_) => report
                .crashes
                .push(save_crash(target.name, seed, i, &input)),
        }
    }
    std::panic::set_hook(hook);
    report
}

/// Runs one saved input again (with panics shown).
pub fn replay(target: &Target, input: &[u8]) -> bool {
    (target.check)(input)
}

fn save_crash(target: &str, seed: u64, i: u64, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{seed}-{i}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// xorshift64*: small, fast, reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator; the same seed gives the same inputs.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Byte-level mutations: flips, overwrites, inserts (random bytes or dictionary
/// tokens), deletions, duplications, truncation.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]]) {
    for _ in 0..1 + rng.below(6) {
        let len = data.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let token = rng.pick(dict);
                data.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                let copy: Vec<u8> = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            5 if len > 0 => data.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                let b = rng.next() as u8;
                data.insert(i, b);
            }
        }
    }
}

// ---- layer ---------------------------------------------------------------------------

const NAME_PARTS: &[&str] = &[
    "a",
    "b",
    "site",
    "etc",
    "..",
    ".",
    "",
    ".wh.a",
    ".wh..wh..opq",
    ".wh...",
    ".wh..",
    ".wh.",
    "index.html",
    "outside",
    "passwd",
    "lnk",
    "d",
];

fn tar_header(name: &[u8], link: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_cksum();
    h
}

/// A path from the name pool, sometimes absolute.
fn gen_path(rng: &mut Rng) -> String {
    let parts: Vec<&str> = (0..1 + rng.below(4))
        .map(|_| *rng.pick(NAME_PARTS))
        .collect();
    let path = parts.join("/");
    if rng.chance(8) {
        format!("/{path}")
    } else {
        path
    }
}

fn gen_layer(rng: &mut Rng) -> Vec<u8> {
    use tar::EntryType::*;
    let kinds = [
        Regular, Regular, Regular, Directory, Directory, Symlink, Symlink, Link, Char, Fifo,
    ];
    let mut t = tar::Builder::new(Vec::new());
    for _ in 0..1 + rng.below(10) {
        let name = gen_path(rng);
        let kind = *rng.pick(&kinds);
        // Link targets: the pool, the sentinel beside the root (relative and absolute),
        // or `/`.
        let link = match rng.below(4) {
            0 => "../outside".to_string(),
            1 => OUTSIDE_MARK.to_string(),
            2 => "/".to_string(),
            _ => gen_path(rng),
        };
        let data: Vec<u8> = if kind == Regular {
            vec![b'x'; rng.below(64)]
        } else {
            Vec::new()
        };
        let mode = *rng.pick(&[0o644, 0o777, 0o4755, 0o000]);
        let h = tar_header(
            name.as_bytes(),
            link.as_bytes(),
            kind,
            mode,
            data.len() as u64,
        );
        t.append(&h, data.as_slice()).expect("writing to memory");
    }
    let mut bytes = t.into_inner().expect("writing to memory");
    if rng.chance(4) {
        mutate(rng, &mut bytes, &[b"..", b"/", b"\0", b".wh."]);
    }
    bytes
}

/// Stands for the absolute path of the sentinel directory in generated link targets;
/// the check writes the real path in.
const OUTSIDE_MARK: &str = "/OUTSIDE";

fn check_layer(input: &[u8]) -> bool {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&root).expect("root");
    std::fs::create_dir(&outside).expect("sentinel");
    std::fs::write(outside.join("keep"), b"keep").expect("sentinel file");
    // Point generated absolute links at the real sentinel directory.
    let input = replace_all(
        input,
        OUTSIDE_MARK.as_bytes(),
        outside.to_str().expect("utf-8").as_bytes(),
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode_of = |p: &Path| std::fs::metadata(p).expect("sentinel").permissions().mode() & 0o7777;
    let mode_before = mode_of(&outside);
    let limits = ExtractLimits {
        max_bytes: 1 << 20,
        max_entries: 1000,
        max_depth: 16,
        min_free_bytes: 0,
    };
    let accepted = skiff_image::layer::extract_stream(input.as_slice(), &root, limits).is_ok();
    let mut beside: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["outside", "root"],
        "extraction wrote beside its root"
    );
    let kept: Vec<_> = std::fs::read_dir(&outside)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(kept, ["keep"], "extraction wrote into the sentinel");
    assert_eq!(
        std::fs::read(outside.join("keep")).expect("sentinel"),
        b"keep"
    );
    assert_eq!(
        mode_of(&outside),
        mode_before,
        "extraction changed the sentinel's mode"
    );
    accepted
}

/// Replaces `from` where it starts a header's link field (offset 157 of a 512-byte
/// block) with `to`, taking the growth out of the field's NUL padding so every block
/// keeps its place, then refreshes the checksums.
fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) && i % 512 == 157 {
            out.extend_from_slice(to);
            // Keep the header's size: drop as many NULs as were added.
            let grow = to.len() - from.len();
            i += from.len();
            let nuls = data[i..].iter().take(grow).take_while(|b| **b == 0).count();
            i += nuls;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    refresh_checksums(&mut out);
    out
}

/// Recomputes every header checksum of an (old-style, unmutated-size) tar in place.
fn refresh_checksums(tar: &mut [u8]) {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let block = &mut tar[at..at + 512];
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let size = std::str::from_utf8(&block[124..135])
            .ok()
            .and_then(|s| {
                u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()
            })
            .unwrap_or(0);
        block[148..156].copy_from_slice(b"        ");
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        let field = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
        at += 512 + (size as usize).div_ceil(512) * 512;
    }
}

// ---- archive -------------------------------------------------------------------------

fn digest_of(data: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(data))
}

/// A valid OCI layout of one static image, entry by entry.
fn seed_archive() -> Vec<(String, Vec<u8>)> {
    let mut layer = tar::Builder::new(Vec::new());
    let h = tar_header(b"site/index.html", b"", tar::EntryType::Regular, 0o644, 2);
    layer.append(&h, &b"hi"[..]).expect("memory");
    let layer = layer.into_inner().expect("memory");
    let config = br#"{"created":"1970-01-01T00:00:00Z","architecture":"wasm","os":"static","dev.skiff.siteRoot":"/site"}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        digest_of(&config),
        config.len(),
        digest_of(&layer),
        layer.len()
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"fuzz:latest"}}}}]}}"#,
        digest_of(&manifest),
        manifest.len()
    )
    .into_bytes();
    let mut entries = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for blob in [config, manifest, layer] {
        entries.push((format!("blobs/sha256/{}", digest_of(&blob)), blob));
    }
    entries
}

const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"0",
    b"-1",
    b"1e999",
    b"\"..\"",
    b"\"/../etc\"",
    b"sha256:",
    b"\"mediaType\"",
    b"\"manifests\"",
    b"\"layers\"",
    b"\"dev.skiff.siteRoot\"",
    b"application/vnd.oci.image.index.v1+json",
    b"\\u0000",
];

fn gen_archive(rng: &mut Rng) -> Vec<u8> {
    let mut entries = seed_archive();
    let names = [
        "manifest.json",
        "repositories",
        "x/layer.tar",
        "x/json",
        "x/VERSION",
        "../evil",
        "/abs",
        "blobs/sha256/zz",
        "cfg.json",
    ];
    for _ in 0..1 + rng.below(4) {
        let n = entries.len();
        match rng.below(6) {
            0 | 1 if n > 0 => {
                let i = rng.below(n);
                mutate(rng, &mut entries[i].1, JSON_TOKENS);
            }
            2 if n > 0 => {
                let i = rng.below(n);
                entries[i].0 = (*rng.pick(&names)).to_string();
            }
            3 if n > 0 => {
                entries.remove(rng.below(n));
            }
            4 if n > 0 => {
                let i = rng.below(n);
                let copy = entries[i].clone();
                entries.push(copy);
            }
            _ => entries.push(((*rng.pick(&names)).to_string(), b"{}".to_vec())),
        }
    }
    // Half the time, blobs are renamed after their (mutated) content, so the importer
    // gets past its digest checks into the documents themselves.
    if rng.chance(2) {
        for (name, data) in &mut entries {
            if name.starts_with("blobs/sha256/") {
                *name = format!("blobs/sha256/{}", digest_of(data));
            }
        }
    }
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in &entries {
        let kind = if rng.chance(20) {
            *rng.pick(&[
                tar::EntryType::Symlink,
                tar::EntryType::Directory,
                tar::EntryType::Link,
            ])
        } else {
            tar::EntryType::Regular
        };
        let h = tar_header(name.as_bytes(), b"../x", kind, 0o644, data.len() as u64);
        t.append(&h, data.as_slice()).expect("memory");
    }
    t.into_inner().expect("memory")
}

fn check_archive(input: &[u8]) -> bool {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("store");
    let store = skiff_image::ImageStore::open(&root).expect("store");
    let loaded = skiff_image::archive::import(&store, input, 1 << 20);
    let beside: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, ["store"], "import wrote beside its store");
    match loaded {
        Ok(images) => {
            for image in images {
                // Whatever loaded must be describable (or refused with an error).
                let _ = store.summary(&image.digest);
            }
            true
        }
        Err(_) => false,
    }
}

// ---- build files ---------------------------------------------------------------------

const DOCKERFILES: &[&str] = &[
    "FROM nginx:latest\nCOPY ./html /usr/share/nginx/html\nEXPOSE 80\n",
    "FROM scratch\nCOPY app.wasm /app.wasm\nENV A=1 B=\"two words\"\nENTRYPOINT [\"/app.wasm\"]\nCMD [\"x\"]\nLABEL dev.skiff.memory=64MiB\n",
    "# comment\nFROM nginx\nCOPY html/ /usr/share/nginx/html/\nCOPY [\"html/index.html\", \"/usr/share/nginx/html/x.html\"]\n",
];

const DOCKER_TOKENS: &[&[u8]] = &[
    b"FROM ",
    b"COPY ",
    b"ADD ",
    b"ENV ",
    b"EXPOSE ",
    b"CMD ",
    b"ENTRYPOINT ",
    b"LABEL ",
    b"WORKDIR ",
    b"\\\n",
    b"\"",
    b"[",
    b"]",
    b"..",
    b"../",
    b"/",
    b"*",
    b"?",
    b"scratch",
    b"nginx",
    b"\n",
    b"=",
    b"--from=x ",
    b"${A}",
    b"\0",
];

const TOMLS: &[&str] = &[
    "version = 1\nkind = \"wasm\"\nwasm = \"app.wasm\"\n[env]\nGREETING = \"hi\"\n[limits]\nmemory = \"64MiB\"\ntimeout = \"2s\"\nconcurrency = 4\n",
    "version = 1\nkind = \"static\"\nroot = \"html\"\n",
    "version = 1\nkind = \"static\"\nroot = \"html\"\nports = [80]\n[labels]\na = \"b\"\n",
    "version = 1\nkind = \"wasm\"\nwasm = \"app.wasm\"\nroutes = [\"/api/...\", \"/x\"]\n",
];

const TOML_TOKENS: &[&[u8]] = &[
    b"kind",
    b"wasm",
    b"static",
    b"root",
    b"=",
    b"\"",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"..",
    b"../",
    b"/",
    b"\n",
    b"\"../../etc\"",
    b"routes",
    b"{",
    b"}",
    b"1e99",
    b"-1",
    b"\\u0000",
];

/// A build context: a few files, and a sentinel beside it that must never be read in.
fn build_context() -> &'static Path {
    static CONTEXT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            let tmp = tempfile::tempdir().expect("temp dir");
            let ctx = tmp.path().join("ctx");
            std::fs::create_dir_all(ctx.join("html")).expect("ctx");
            std::fs::write(ctx.join("html/index.html"), "hi").expect("ctx");
            std::fs::write(ctx.join("app.wasm"), b"\0asm\x01\0\0\0").expect("ctx");
            std::fs::write(tmp.path().join("secret"), "SECRET").expect("ctx");
            tmp
        })
        .path()
}

fn gen_text(rng: &mut Rng, seeds: &[&str], dict: &[&[u8]]) -> Vec<u8> {
    let mut text = rng.pick(seeds).as_bytes().to_vec();
    mutate(rng, &mut text, dict);
    text
}

fn gen_dockerfile(rng: &mut Rng) -> Vec<u8> {
    gen_text(rng, DOCKERFILES, DOCKER_TOKENS)
}

fn gen_toml(rng: &mut Rng) -> Vec<u8> {
    gen_text(rng, TOMLS, TOML_TOKENS)
}

fn check_plan(input: &[u8], file: &str) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let ctx = build_context().join("ctx");
    match skiff_image::build::plan(text, file, &ctx) {
        Ok(plan) => {
            if let skiff_image::build::Content::Static { files, .. } = &plan.content {
                for (path, entry) in files {
                    assert!(
                        !path.starts_with('/') && !path.split('/').any(|c| c == ".."),
                        "{path}"
                    );
                    if let skiff_image::layer::LayerEntry::File { data, .. } = entry {
                        assert_ne!(
                            data.as_slice(),
                            b"SECRET",
                            "a file from outside the context"
                        );
                    }
                }
            }
            true
        }
        Err(e) => {
            // Errors are one line naming what was wrong.
            let message = e.to_string();
            assert!(!message.is_empty());
            assert!(!message.contains("SECRET"), "{message}");
            false
        }
    }
}

fn check_dockerfile(input: &[u8]) -> bool {
    check_plan(input, "Dockerfile")
}

fn check_toml(input: &[u8]) -> bool {
    check_plan(input, "skiff.toml")
}

// ---- cgi -----------------------------------------------------------------------------

const CGI_SEEDS: &[&str] = &[
    "Content-Type: text/plain\n\nhello\n",
    "Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\n<h1>no</h1>",
    "Location: /elsewhere\n\n",
    "Status: 200\nX-A: b\nSet-Cookie: a=b\n\n",
];

fn gen_cgi(rng: &mut Rng) -> Vec<u8> {
    gen_text(
        rng,
        CGI_SEEDS,
        &[
            b"\n",
            b"\r\n",
            b":",
            b"Status: ",
            b"999",
            b"\0",
            b"\xff",
            b" ",
        ],
    )
}

fn check_cgi(input: &[u8]) -> bool {
    skiff_runtime::parse_cgi(&bytes::Bytes::copy_from_slice(input)).is_ok()
}

// ---- host and routes -----------------------------------------------------------------

fn gen_host(rng: &mut Rng) -> Vec<u8> {
    let seeds = [
        "hello.localhost:7780",
        "HELLO.LOCALHOST.",
        "a.b.localhost",
        "localhost",
        "x.localhost:",
        ".localhost",
        "é.localhost",
    ];
    let mut host = rng.pick(&seeds).as_bytes().to_vec();
    mutate(
        rng,
        &mut host,
        &[b".", b":", b"localhost", b"\xc3\xa9", b"%2e", b"[::1]"],
    );
    host
}

fn check_host(input: &[u8]) -> bool {
    let host = String::from_utf8_lossy(input);
    let found = skiff_gateway::host_label(&host, "localhost");
    if let Some(label) = found {
        assert!(
            !label.is_empty() && !label.contains('.'),
            "{label:?} from {host:?}"
        );
        assert!(
            host.to_ascii_lowercase()
                .starts_with(&format!("{}.localhost", label.to_ascii_lowercase()))
        );
    }
    let routes = ["/api/...".to_string(), "/x".to_string(), "/...".to_string()];
    let _ = skiff_spec::route_matches(&routes[..2], &host);
    assert!(
        skiff_spec::route_matches(&routes[2..], &host),
        "/... serves every path"
    );
    found.is_some()
}

// ---- manifests -----------------------------------------------------------------------

const MANIFESTS: &[&str] = &[
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: web:latest\n        ports:\n        - containerPort: 80\n        resources:\n          limits:\n            memory: 64Mi\n            cpu: 500m\n  strategy:\n    rollingUpdate:\n      maxSurge: 25%\n",
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n    - protocol: TCP\n      port: 80\n      targetPort: 80\n---\napiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}\n",
];

const YAML_TOKENS: &[&[u8]] = &[
    b"---\n",
    b"...\n",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"- ",
    b": ",
    b"\n  ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b"|\n",
    b">\n",
    b"!!str ",
    b"!!binary ",
    b"~",
    b"-1",
    b"1e9",
    b"0x10",
    b"#",
    b"\t",
    b"%YAML 1.2\n",
    b"kind: Job\n",
    b"matchExpressions: [{key: a, operator: In}]\n",
];

fn gen_manifest(rng: &mut Rng) -> Vec<u8> {
    gen_text(rng, MANIFESTS, YAML_TOKENS)
}

fn check_manifest(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    match skiff_spec::manifest::parse("fuzz.yaml", text) {
        Ok(docs) => {
            for d in &docs {
                let problems = match &d.object {
                    skiff_spec::manifest::Object::Deployment(x) => {
                        skiff_spec::manifest::validate_deployment(x)
                    }
                    skiff_spec::manifest::Object::Service(x) => {
                        skiff_spec::manifest::validate_service(x)
                    }
                };
                assert!(problems.is_empty(), "accepted with problems: {problems:?}");
            }
            !docs.is_empty()
        }
        Err(e) => {
            assert_eq!(e.to_string().lines().count(), 1, "errors are one line: {e}");
            false
        }
    }
}

// ---- protobuf ------------------------------------------------------------------------

/// What kubectl 1.33's `create deployment` and `create service` send.
const PROTOBUF_BODIES: &[&[u8]] = &[
    include_bytes!("../../spec/testdata/protobuf/create-deployment.pb"),
    include_bytes!("../../spec/testdata/protobuf/create-deployment-port-replicas-command.pb"),
    include_bytes!("../../spec/testdata/protobuf/create-service-clusterip.pb"),
    include_bytes!("../../spec/testdata/protobuf/create-service-nodeport.pb"),
];

/// Protobuf's shapes: keys of every wire type, the longest varints, lengths that
/// claim more than is there, nested messages, and the magic.
const PROTOBUF_TOKENS: &[&[u8]] = &[
    b"k8s\0",
    &[0x0a, 0x00],
    &[0x0a, 0x7f],
    &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f],
    &[
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ],
    &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ],
    &[0x0b],
    &[0x0c],
    &[0x0d, 0, 0, 0, 0],
    &[0x09, 0, 0, 0, 0, 0, 0, 0, 0],
    &[0x0a, 0x04, 0x0a, 0x02, 0x0a, 0x00],
    &[0x1a, 0x02, 0x08, 0x01],
    &[0x22, 0x03, b'a', b'b', b'c'],
];

fn gen_protobuf(rng: &mut Rng) -> Vec<u8> {
    let mut body = rng.pick(PROTOBUF_BODIES).to_vec();
    if !rng.chance(8) {
        mutate(rng, &mut body, PROTOBUF_TOKENS);
    }
    // Messages nested deep: a length prefix each, as a crafted body would.
    if rng.chance(16) {
        let mut nested = Vec::new();
        for _ in 0..rng.below(200) {
            let mut outer = vec![0x0a];
            let mut n = nested.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    outer.push(b);
                    break;
                }
                outer.push(b | 0x80);
            }
            outer.extend_from_slice(&nested);
            nested = outer;
        }
        let at = rng.below(body.len() + 1);
        body.splice(at..at, nested);
    }
    body
}

fn check_protobuf(input: &[u8]) -> bool {
    use skiff_spec::protobuf::{Kind, decode};
    let mut accepted = false;
    for kind in [Kind::Deployment, Kind::Service] {
        if let Ok(object) = decode(kind, input) {
            assert!(object.is_object(), "decoded to a non-object: {object}");
            // No amplification beyond field names: a byte of key becomes at most a
            // quoted name, a byte of varint a few digits.
            let size = serde_json::to_vec(&object).map_or(0, |v| v.len());
            assert!(
                size <= 32 * input.len() + 4096,
                "{} bytes decoded to {size} bytes of JSON",
                input.len()
            );
            accepted = true;
        }
    }
    accepted
}
