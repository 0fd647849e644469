//! Resolving `user[:group]` in the container's own `/etc/passwd` and `/etc/group`,
//! the way runc's `user.GetExecUser` does (numeric ids allowed, missing files tolerated
//! for numeric ids, supplementary groups from `/etc/group`).

/// Errors from resolving a user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A name was given but no `/etc/passwd` entry matches it.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A group name was given but no `/etc/group` entry matches it.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// The `user[:group]` spec itself is malformed (empty part, too many colons).
    #[error("invalid user spec {0:?}")]
    BadSpec(String),
}

/// The identity the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Real and effective user id.
    pub uid: u32,
    /// Real and effective group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership of the user's name).
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd` (`/` when unknown).
    pub home: String,
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(|s| s.trim().to_string())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `spec` (`user`, `uid`, `user:group`, `uid:gid`, empty = root) against
/// the contents of the container's `/etc/passwd` and `/etc/group` (pass "" for a
/// missing file).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => {
            if g.contains(':') || g.is_empty() || u.is_empty() {
                return Err(UserError::BadSpec(spec.to_string()));
            }
            (u, Some(g))
        }
        None => (if spec.is_empty() { "0" } else { spec }, None),
    };
    let users = parse_passwd(passwd);
    let groups = parse_group(group);

    let (uid, mut gid, name, home) = match user_part.parse::<u32>() {
        Ok(uid) => match users.iter().find(|u| u.uid == uid) {
            Some(u) => (u.uid, u.gid, Some(u.name.clone()), u.home.clone()),
            None => (uid, 0, None, "/".to_string()),
        },
        Err(_) => match users.iter().find(|u| u.name == user_part) {
            Some(u) => (u.uid, u.gid, Some(u.name.clone()), u.home.clone()),
            None => return Err(UserError::UnknownUser(user_part.to_string())),
        },
    };

    let mut additional_gids = Vec::new();
    if let Some(g) = group_part {
        // An explicit group replaces the primary group and, as in runc, the
        // supplementary groups from /etc/group are not added.
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        };
    } else if let Some(name) = &name {
        for e in &groups {
            if e.members.iter().any(|m| m == name) && !additional_gids.contains(&e.gid) {
                additional_gids.push(e.gid);
            }
        }
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// [`resolve`], plus the supplementary groups of `--group-add` (names looked up in
/// the container's `/etc/group`, or numeric ids).
pub fn resolve_with_groups(
    spec: &str,
    passwd: &str,
    group: &str,
    extra: &[String],
) -> Result<ResolvedUser, UserError> {
    let mut user = resolve(spec, passwd, group)?;
    let groups = parse_group(group);
    for g in extra {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == *g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.clone()))?,
        };
        if !user.additional_gids.contains(&gid) {
            user.additional_gids.push(gid);
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        # comment\n\
        broken line\n\
        nobody:x:65534:65534::/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:bob, alice\n";

    #[test]
    fn root_by_default() {
        let u = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert!(u.additional_gids.is_empty());
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        let u = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10, 29]);
        assert_eq!(u.home, "/home/alice");
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        let u = resolve("4242:4343", "", "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4343, "/"));
        let u = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
    }

    #[test]
    fn explicit_group_by_name() {
        let u = resolve("alice:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        assert!(u.additional_gids.is_empty());
    }

    #[test]
    fn group_add_by_name_or_id() {
        let extra = ["audio".to_string(), "4000".to_string(), "10".to_string()];
        let u = resolve_with_groups("alice", PASSWD, GROUP, &extra).unwrap();
        assert_eq!(u.additional_gids, vec![10, 29, 4000]);
        let u = resolve_with_groups("0:0", PASSWD, GROUP, &extra).unwrap();
        assert_eq!(u.additional_gids, vec![29, 4000, 10]);
        assert_eq!(
            resolve_with_groups("", PASSWD, GROUP, &["staff".to_string()]),
            Err(UserError::UnknownGroup("staff".into()))
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("mallory", PASSWD, GROUP),
            Err(UserError::UnknownUser("mallory".into()))
        );
        assert_eq!(
            resolve("alice:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
        assert!(matches!(
            resolve("a:b:c", PASSWD, GROUP),
            Err(UserError::BadSpec(_))
        ));
        assert!(matches!(
            resolve(":0", PASSWD, GROUP),
            Err(UserError::BadSpec(_))
        ));
    }
}
