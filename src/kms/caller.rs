//! Who is asking: the process's real uid and groups, with names resolved for policy matching.

use crate::error::{KmsError, Result};
use nix::unistd::{Gid, Group, Uid, User};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub uid: u32,
    /// Primary and supplementary group ids.
    pub gids: Vec<u32>,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub pid: u32,
}

fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_names(gids: &[u32]) -> Vec<String> {
    gids.iter()
        .filter_map(|g| Group::from_gid(Gid::from_raw(*g)).ok().flatten())
        .map(|g| g.name)
        .collect()
}

impl Caller {
    /// Builds a caller from ids, resolving names from the system's user and group databases.
    pub fn from_ids(uid: u32, mut gids: Vec<u32>, pid: u32) -> Caller {
        gids.sort_unstable();
        gids.dedup();
        Caller {
            uid,
            user: user_name(uid),
            groups: group_names(&gids),
            gids,
            pid,
        }
    }

    /// The calling process (real ids, as a setuid-free CLI has).
    pub fn current() -> Caller {
        let mut gids: Vec<u32> = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_default();
        gids.push(nix::unistd::getgid().as_raw());
        Caller::from_ids(nix::unistd::getuid().as_raw(), gids, std::process::id())
    }

    /// A caller named the way policies name principals (`uid:N` or `user:NAME`), with that user's
    /// groups from the group database; used by `policy explain` and the lockout check.
    pub fn for_principal(p: &str) -> Result<Caller> {
        let user = if let Some(n) = p.strip_prefix("uid:") {
            let uid: u32 = n
                .parse()
                .map_err(|_| KmsError::validation(format!("bad uid in {p:?}")))?;
            match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(u)) => u,
                // A uid without a passwd entry is still a principal, with no groups.
                _ => return Ok(Caller::from_ids(uid, Vec::new(), 0)),
            }
        } else if let Some(n) = p.strip_prefix("user:") {
            User::from_name(n)
                .ok()
                .flatten()
                .ok_or_else(|| KmsError::validation(format!("no such user {n:?}")))?
        } else {
            return Err(KmsError::validation(format!(
                "principal {p:?}: use uid:N or user:NAME"
            )));
        };
        let mut gids = vec![user.gid.as_raw()];
        if let Ok(name) = std::ffi::CString::new(user.name.clone()) {
            if let Ok(list) = nix::unistd::getgrouplist(&name, user.gid) {
                gids.extend(list.into_iter().map(Gid::as_raw));
            }
        }
        Ok(Caller::from_ids(user.uid.as_raw(), gids, 0))
    }
}
