//! The image verbs of the client: build, push, pull, images, tag, rmi, save, load.

use skiff_registry::{Reference, Registry};

use super::*;

/// A registry session for the CLI: credentials from `SKIFF_REGISTRY_AUTH=user:password`,
/// progress on stderr when it is a terminal.
fn registry(reference: Reference, insecure: bool) -> anyhow::Result<Registry> {
    use std::io::{IsTerminal as _, Write as _};
    let basic = std::env::var("SKIFF_REGISTRY_AUTH").ok().and_then(|a| {
        a.split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))
    });
    let mut r = Registry::new(reference, insecure)?
        .with_basic_auth(basic, "SKIFF_REGISTRY_AUTH (user:password)");
    if std::io::stderr().is_terminal() {
        r = r.with_progress(Box::new(|what| {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{what}");
            let _ = err.flush();
        }));
    }
    Ok(r)
}

impl Client {
    /// Builds locally into a scratch image layout, then loads the result into the node.
    pub(crate) async fn build(
        &self,
        tag: &str,
        file: Option<&Path>,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let name = ImageName::parse(tag)?;
        let scratch = tempfile::tempdir().context("failed to make a scratch directory")?;
        let store = ImageStore::open(scratch.path())?;
        let context = skiff_image::build::Context::open(dir)?;
        // `-f` is a path as the user typed it (from the working directory, as with
        // `docker build -f`): one inside the context is opened beneath it like every
        // other context path; one outside is the user's own file.
        let file = match file {
            Some(f) => match inside_context(dir, f)? {
                Some(rel) => context.build_file(Some(&rel))?,
                None => skiff_image::build::BuildFile::read_local(f)?,
            },
            None => context.build_file(None)?,
        };
        let plan = context.plan(&file.text, &file.name)?;
        let (desc, kind) = skiff_image::build::write(&store, plan)?;
        let mut tar = Vec::new();
        skiff_image::archive::export(&store, &[(Some(name.clone()), desc.digest)], &mut tar)?;
        self.send(self.http.post(self.url("/v1/images")).body(tar))
            .await?;
        println!("{} {name} ({kind})", desc.digest);
        Ok(())
    }

    pub(crate) async fn push(
        &self,
        image: &str,
        reference: &str,
        insecure: bool,
    ) -> anyhow::Result<()> {
        let target = Reference::parse(reference)?;
        let tar = self
            .send(
                self.http
                    .get(self.url("/v1/images/archive"))
                    .query(&[("ref", image)]),
            )
            .await?
            .bytes()
            .await?;
        let scratch = tempfile::tempdir().context("failed to make a scratch directory")?;
        let store = ImageStore::open(scratch.path())?;
        let loaded = skiff_image::archive::import(&store, tar.as_ref(), u64::MAX)?;
        let digest = loaded.first().context("the node sent no image")?.digest;
        registry(target, insecure)?.push(&store, digest).await?;
        println!("{reference}: {digest}");
        Ok(())
    }

    pub(crate) async fn pull(&self, reference: &str, insecure: bool) -> anyhow::Result<()> {
        let source = Reference::parse(reference)?;
        let name = ImageName::parse(&source.local_name())?;
        let scratch = tempfile::tempdir().context("failed to make a scratch directory")?;
        let store = ImageStore::open(scratch.path())?;
        let digest = registry(source, insecure)?.pull(&store).await?;
        let mut tar = Vec::new();
        skiff_image::archive::export(&store, &[(Some(name.clone()), digest)], &mut tar)?;
        self.send(self.http.post(self.url("/v1/images")).body(tar))
            .await?;
        println!("{name}: {digest}");
        Ok(())
    }

    pub(crate) async fn images(&self) -> anyhow::Result<()> {
        let images: Vec<ImageStatus> = self
            .send(self.http.get(self.url("/v1/images")))
            .await?
            .json()
            .await?;
        let mut rows = Vec::new();
        for i in images {
            let tags = if i.tags.is_empty() {
                vec!["<none>:<none>".to_string()]
            } else {
                i.tags.clone()
            };
            for t in tags {
                let (repo, tag) = t.rsplit_once(':').unwrap_or((&t, ""));
                rows.push([
                    repo.to_string(),
                    tag.to_string(),
                    i.id.short(),
                    i.kind.clone(),
                    i.created.clone(),
                    human_size(i.size),
                ]);
            }
        }
        print_table(
            &["REPOSITORY", "TAG", "IMAGE ID", "KIND", "CREATED", "SIZE"],
            &rows,
        );
        Ok(())
    }

    pub(crate) async fn tag(&self, source: &str, target: &str) -> anyhow::Result<()> {
        self.send(
            self.http
                .post(self.url("/v1/images/tag"))
                .query(&[("source", source), ("target", target)]),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn rmi(&self, image: &str, force: bool) -> anyhow::Result<()> {
        let mut q = vec![("ref", image)];
        if force {
            q.push(("force", "true"));
        }
        self.send(self.http.delete(self.url("/v1/images")).query(&q))
            .await?;
        Ok(())
    }

    pub(crate) async fn save(&self, output: &Path, images: &[String]) -> anyhow::Result<()> {
        let q: Vec<(&str, &str)> = images.iter().map(|i| ("ref", i.as_str())).collect();
        let mut resp = self
            .send(self.http.get(self.url("/v1/images/archive")).query(&q))
            .await?;
        // Streamed to disk as it comes: images can be larger than memory.
        let tmp = output.with_extension("partial");
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("failed to create {}", tmp.display()))?;
        while let Some(chunk) = resp.chunk().await.context("the archive stopped mid-way")? {
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .with_context(|| format!("failed to write {}", tmp.display()))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        tokio::fs::rename(&tmp, output)
            .await
            .with_context(|| format!("failed to write {}", output.display()))?;
        Ok(())
    }

    pub(crate) async fn load(&self, input: &Path) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(input)
            .await
            .with_context(|| format!("failed to read {}", input.display()))?;
        let len = file.metadata().await?.len();
        // Streamed from disk, with its length up front (the node refuses an archive over
        // its cap before reading it).
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let loaded: Vec<LoadedImage> = self
            .send(
                self.http
                    .post(self.url("/v1/images"))
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body),
            )
            .await?
            .json()
            .await?;
        for l in loaded {
            if l.tags.is_empty() {
                println!("Loaded image ID: {}", l.id);
            }
            for t in l.tags {
                println!("Loaded image: {t}");
            }
        }
        Ok(())
    }
}

/// `file` (as the user typed it) as a clean path relative to the context `dir`, if it
/// names one lexically inside it; `None` if it lies outside.
fn inside_context(dir: &Path, file: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    let dir = std::path::absolute(dir).context("failed to resolve the build context")?;
    let file = std::path::absolute(file).context("failed to resolve the build file")?;
    Ok(file.strip_prefix(&dir).ok().and_then(|rel| {
        rel.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            .then(|| rel.to_path_buf())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_file_inside_the_context_is_named_relative_to_it() {
        let rel = |dir: &str, file: &str| {
            inside_context(Path::new(dir), Path::new(file))
                .unwrap()
                .map(|p| p.display().to_string())
        };
        assert_eq!(
            rel("/r/site", "/r/site/Dockerfile").as_deref(),
            Some("Dockerfile")
        );
        assert_eq!(
            rel("/r/site", "/r/site/sub/Dockerfile").as_deref(),
            Some("sub/Dockerfile")
        );
        assert_eq!(rel("/r/site", "/r/other/Dockerfile"), None);
        assert_eq!(rel("/r/site", "/r/site/../Dockerfile"), None);
    }
}
