//! An image's `User` (`name`, `uid`, `name:group`, `uid:gid`) as numeric ids, resolved
//! as Docker does against the image's own `/etc/passwd` and `/etc/group`. The files are
//! read through `cap-std`, so a link in the image cannot point the lookup outside it.

use std::path::Path;

/// The ids a container's process runs with.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the primary one and those of `/etc/group` that list the
    /// user.
    pub additional: Vec<u32>,
}

/// One `/etc/passwd` or `/etc/group` entry: its name, id, primary gid (passwd) or
/// members (group).
fn entries<'a>(text: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
}

/// Most of /etc/passwd or /etc/group read: an image's file is its author's, and a node
/// reads it as root.
const MAX_FILE: u64 = 4 << 20;

fn read(root: &cap_std::fs::Dir, path: &str) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    if let Ok(f) = root.open(path) {
        let _ = f.take(MAX_FILE).read_to_string(&mut text);
    }
    text
}

/// An id from the image's files or the user: at most [`skiff_spec::security::MAX_ID`],
/// since (uid_t)-1 makes setresuid(2) change nothing and the process would stay root.
fn bounded(what: &str, id: u32) -> Result<u32, String> {
    if id > skiff_spec::security::MAX_ID {
        return Err(format!(
            "{what} {id} is outside 0..={}",
            skiff_spec::security::MAX_ID
        ));
    }
    Ok(id)
}

/// Resolves `user` in the image tree at `root`, with the supplementary `groups` (ids or
/// names in its /etc/group) added.
pub(super) fn resolve(root: &Path, user: &str, groups: &[String]) -> Result<Ids, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
        .map_err(|e| format!("cannot open the image tree: {e}"))?;
    let passwd = read(&dir, "etc/passwd");
    let groups_text = read(&dir, "etc/group");
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let numeric = user_part.parse::<u32>().ok();
    let entry = entries(&passwd).find(|f| match numeric {
        Some(uid) => f[2].parse() == Ok(uid),
        None => f[0] == user_part,
    });
    let (uid, mut gid, name) = match (entry, numeric) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| format!("the image's /etc/passwd has a bad uid for {}", f[0]))?,
            f[3].parse().unwrap_or(0),
            Some(f[0]),
        ),
        // Any numeric uid may run, listed or not (gid 0, as Docker).
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => {
            return Err(format!(
                "user {user_part} is not in the image's /etc/passwd"
            ));
        }
    };
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entries(&groups_text)
                .find(|f| f[0] == group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {group} is not in the image's /etc/group"))?,
        };
    }
    let uid = bounded("uid", uid)?;
    let gid = bounded("gid", gid)?;
    // As initgroups(3): the primary group, then those listing the user.
    let mut additional = vec![gid];
    if let (Some(name), None) = (name, group_part) {
        additional.extend(
            entries(&groups_text)
                .filter(|f| f[3].split(',').any(|m| m == name))
                .filter_map(|f| f[2].parse::<u32>().ok())
                .filter(|g| *g != gid),
        );
    }
    for group in groups {
        let g = match group.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entries(&groups_text)
                .find(|f| f[0] == group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {group} is not in the image's /etc/group"))?,
        };
        let g = bounded("gid", g)?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(Ids {
        uid,
        gid,
        additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_numbers_like_docker() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nweb:x:34:\nlogs:x:50:www,other\nstaff:x:60:\n",
        )
        .unwrap();
        let ids = |u: &str| resolve(root.path(), u, &[]);
        let of = |uid, gid, additional: &[u32]| {
            Ok(Ids {
                uid,
                gid,
                additional: additional.to_vec(),
            })
        };
        assert_eq!(ids(""), of(0, 0, &[0]));
        assert_eq!(ids("www"), of(33, 34, &[34, 50]));
        assert_eq!(ids("33"), of(33, 34, &[34, 50]));
        assert_eq!(ids("1000"), of(1000, 0, &[0]));
        assert_eq!(ids("www:staff"), of(33, 60, &[60]));
        assert_eq!(ids("1000:7"), of(1000, 7, &[7]));
        assert_eq!(
            ids("ghost").unwrap_err(),
            "user ghost is not in the image's /etc/passwd"
        );
        assert_eq!(
            ids("www:nogroup").unwrap_err(),
            "group nogroup is not in the image's /etc/group"
        );
        // Groups added (`--group-add`, `supplementalGroups`), by id or name.
        assert_eq!(
            resolve(
                root.path(),
                "1000:1000",
                &["60".into(), "logs".into(), "1000".into()]
            ),
            of(1000, 1000, &[1000, 60, 50])
        );
        assert_eq!(
            resolve(root.path(), "1000", &["ghosts".into()]).unwrap_err(),
            "group ghosts is not in the image's /etc/group"
        );
        // (uid_t)-1 would leave setresuid(2) changing nothing: the process would stay
        // root while passing for another user. From the image's files or a flag alike.
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nsneaky:x:4294967295:0::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(
            ids("sneaky").unwrap_err(),
            "uid 4294967295 is outside 0..=2147483647"
        );
        assert!(ids("0:4294967295").is_err());
        // A link out of the image is not followed to the host's files.
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        assert_eq!(
            ids("root").unwrap_err(),
            "user root is not in the image's /etc/passwd"
        );
    }
}
