//! What `.gitmodules` says: each submodule's path and URL, a relative URL resolved against the
//! repository that holds it, and which server a URL names (credentials go to their own server
//! only). Used by `submodules`, which fetches and expands them.

use std::collections::HashMap;

use gix::ObjectId;

/// The content of `.gitmodules` at the top of the tree `tree` (a commit's), if there is one.
pub(crate) fn gitmodules_of_tree(
    repo: &gix::Repository,
    tree: ObjectId,
) -> Result<Option<Vec<u8>>, String> {
    let tree = repo.find_tree(tree).map_err(|e| super::error_chain(&e))?;
    let Some(entry) = tree
        .lookup_entry_by_path(".gitmodules")
        .map_err(|e| super::error_chain(&e))?
    else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Ok(None);
    }
    let blob = repo
        .find_blob(entry.object_id())
        .map_err(|e| super::error_chain(&e))?;
    Ok(Some(blob.data.clone()))
}

/// `.gitmodules`: each submodule's path and URL (git finds a gitlink's submodule by path).
pub(crate) fn parse_gitmodules(bytes: &[u8]) -> Result<HashMap<Vec<u8>, String>, String> {
    let file = gix::config::File::from_bytes_no_includes(
        bytes,
        gix::config::file::Metadata::api(),
        Default::default(),
    )
    .map_err(|e| super::error_chain(&e))?;
    let mut urls = HashMap::new();
    for section in file.sections_by_name("submodule").into_iter().flatten() {
        let (Some(path), Some(url)) = (section.value("path"), section.value("url")) else {
            continue;
        };
        let path: &[u8] = path.as_ref();
        let path = trim_slash(path).to_vec();
        urls.insert(path, String::from_utf8_lossy(url.as_ref()).into_owned());
    }
    Ok(urls)
}

/// Resolve a submodule URL from `.gitmodules` against the URL of the repository that holds it,
/// as git does: `./x` and `../x` are relative to that repository (each `../` drops one path
/// component of its URL; the scheme and host, or scp-like `host:`, stay), anything else is
/// used as it is.
pub(crate) fn resolve_url(base: &str, url: &str) -> Result<String, String> {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return Ok(url.to_string());
    }
    let base = base.trim_end_matches('/');
    // What `../` cannot climb: `scheme://host`, `host:` (scp-like), or nothing (a local path).
    let (head, path) = if let Some(at) = base.find("://") {
        let after = &base[at + 3..];
        match after.find('/') {
            Some(slash) => base.split_at(at + 3 + slash),
            None => (base, ""),
        }
    } else if base.starts_with('/') {
        ("", base)
    } else {
        match base.find(':') {
            Some(colon) => base.split_at(colon + 1),
            None => ("", base),
        }
    };
    let mut components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut rest = url;
    loop {
        if let Some(after) = rest.strip_prefix("./") {
            rest = after;
        } else if let Some(after) = rest.strip_prefix("../") {
            if components.pop().is_none() {
                return Err(format!("'{url}' climbs above the repository's URL"));
            }
            rest = after;
        } else {
            break;
        }
    }
    if !rest.is_empty() {
        components.push(rest);
    }
    let slash = if path.starts_with('/') { "/" } else { "" };
    Ok(format!("{head}{slash}{}", components.join("/")))
}

/// Scheme, host and port of a URL, to tell whether two URLs reach the same server.
pub(crate) fn server_of(url: &str) -> Option<(String, String, Option<u16>)> {
    let parsed = gix::url::parse(gix::bstr::BStr::new(url)).ok()?;
    Some((
        parsed.scheme.as_str().to_string(),
        parsed.host().unwrap_or_default().to_ascii_lowercase(),
        parsed.port_or_default(),
    ))
}

fn trim_slash(path: &[u8]) -> &[u8] {
    path.strip_suffix(b"/").unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_resolve_as_git_resolves_them() {
        let cases = [
            (
                "https://git.example.com/org/dags.git",
                "../lib.git",
                "https://git.example.com/org/lib.git",
            ),
            (
                "https://git.example.com/org/dags.git/",
                "../lib.git",
                "https://git.example.com/org/lib.git",
            ),
            (
                "https://git.example.com/org/dags",
                "./sub",
                "https://git.example.com/org/dags/sub",
            ),
            (
                "https://git.example.com/org/dags",
                "../../other/lib",
                "https://git.example.com/other/lib",
            ),
            (
                "git@git.example.com:org/dags.git",
                "../lib.git",
                "git@git.example.com:org/lib.git",
            ),
            (
                "git@git.example.com:dags.git",
                "../lib.git",
                "git@git.example.com:lib.git",
            ),
            ("file:///srv/git/dags", "../lib", "file:///srv/git/lib"),
            ("/srv/git/dags", "../lib", "/srv/git/lib"),
            (
                "https://git.example.com/org/dags",
                "https://elsewhere.example.com/lib.git",
                "https://elsewhere.example.com/lib.git",
            ),
            (
                "https://git.example.com/org/dags",
                "git@other:lib.git",
                "git@other:lib.git",
            ),
        ];
        for (base, url, expected) in cases {
            assert_eq!(
                resolve_url(base, url).as_deref(),
                Ok(expected),
                "{base} + {url}"
            );
        }
        assert!(resolve_url("https://host/a", "../../../../x").is_err());
    }

    #[test]
    fn gitmodules_maps_paths_to_urls() {
        let text = b"[submodule \"common\"]\n\tpath = libs/common\n\turl = ../common.git\n[submodule \"x\"]\n\tpath = x/\n\turl = https://h/x.git\n[submodule \"nourl\"]\n\tpath = n\n";
        let urls = parse_gitmodules(text).unwrap();
        assert_eq!(
            urls.get(&b"libs/common"[..]).map(String::as_str),
            Some("../common.git")
        );
        assert_eq!(
            urls.get(&b"x"[..]).map(String::as_str),
            Some("https://h/x.git")
        );
        assert!(!urls.contains_key(&b"n"[..]));
        assert!(parse_gitmodules(b"[submodule \"broken").is_err());
    }

    #[test]
    fn servers_are_compared_by_scheme_host_and_port() {
        assert_eq!(
            server_of("https://Git.example.com/a.git"),
            server_of("https://git.example.com/b.git")
        );
        assert_ne!(
            server_of("https://git.example.com/a.git"),
            server_of("https://git.example.com:8443/a.git")
        );
        assert_ne!(
            server_of("https://a.example.com/x"),
            server_of("https://b.example.com/x")
        );
        assert_eq!(server_of("file:///srv/a"), server_of("file:///srv/b"));
    }
}
