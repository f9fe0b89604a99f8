//! After start-up, the process gives up file-system access it does not need, with Landlock
//! where the kernel has it: it may read the folders of the files its config names (so a reload
//! can read their new versions) and the few system files name resolution reads, and nothing
//! else — no writes, no executing anything. Best effort: on a kernel without Landlock it logs
//! that and goes on. `[sandbox] landlock = false` turns it off. ghostunnel does the same; the
//! general-purpose proxies do not.
//!
//! Landlock applies to the calling thread and the threads it starts later, so this runs on the
//! main thread before the async runtime starts its workers.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus,
};

/// System paths name resolution and NSS modules need read access to.
const SYSTEM_READ: &[&str] = &[
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/lib",
    "/lib64",
    "/usr/lib",
];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every restriction is in force.
    Enforced,
    /// The kernel supports only part of it.
    Partial,
    /// The kernel has no Landlock.
    Unsupported,
    /// Turned off in the config.
    Off,
}

/// The folders a reload of `file` must be able to read: the folder as configured, and the
/// folder where its links end now. The first is what a Kubernetes Secret or ConfigMap swap
/// needs: the files are links through `..data`, which the kubelet points at a fresh
/// `..2026_...` folder on every update; granting only where the links ended at start-up
/// (`..v1`) left the new folder unreadable, so a rotated CRL was refused until a restart.
/// The second covers a file that links out of its folder (`/etc/letsencrypt/live/...`).
fn readable_dirs(file: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let resolved = file.canonicalize().unwrap_or_else(|_| absolute.clone());
    [absolute, resolved]
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect()
}

/// What every granted folder allows: reading files and listing folders, and not `Execute`,
/// which landlock's `from_read` includes. certgate runs no program, so nothing may be run:
/// an attacker who gets code execution in the process cannot `execve` a shell or a tool from
/// `/usr/lib` or the config's folders. (Shared libraries loaded by NSS are mapped, not
/// executed; Landlock's `Execute` covers `execve` only.)
fn read_access(abi: ABI) -> BitFlags<AccessFs> {
    AccessFs::from_read(abi) & !BitFlags::from(AccessFs::Execute)
}

/// Restricts the process to reading `files`' folders and the system files above, and to
/// reading and deleting files in `consumable` (the enroll folder: an invitation's bundle is
/// deleted when it is downloaded; nothing may be written there or anywhere).
pub fn restrict(enabled: bool, files: &[PathBuf], consumable: &[PathBuf]) -> Outcome {
    if !enabled {
        tracing::info!("sandbox: landlock off ([sandbox] landlock = false)");
        return Outcome::Off;
    }
    let mut dirs: Vec<PathBuf> = files.iter().flat_map(|f| readable_dirs(f)).collect();
    dirs.sort();
    dirs.dedup();
    let result = (|| {
        let abi = ABI::V3;
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .create()?;
        for path in dirs
            .iter()
            .map(PathBuf::as_path)
            .chain(SYSTEM_READ.iter().map(Path::new))
        {
            if let Ok(fd) = PathFd::new(path) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, read_access(abi)))?;
            }
        }
        for path in consumable {
            if let Ok(fd) = PathFd::new(path) {
                ruleset = ruleset.add_rule(PathBeneath::new(
                    fd,
                    read_access(abi) | AccessFs::RemoveFile,
                ))?;
            }
        }
        ruleset.restrict_self()
    })();
    match result {
        Ok(status) => {
            let outcome = match status.ruleset {
                RulesetStatus::FullyEnforced => Outcome::Enforced,
                RulesetStatus::PartiallyEnforced => Outcome::Partial,
                RulesetStatus::NotEnforced => Outcome::Unsupported,
            };
            let readable: Vec<String> = dirs
                .iter()
                .chain(consumable)
                .map(|d| d.display().to_string())
                .collect();
            match outcome {
                Outcome::Unsupported => tracing::warn!(
                    "sandbox: this kernel has no Landlock; file-system access is not restricted"
                ),
                _ => tracing::info!(
                    status = ?outcome,
                    readable = %readable.join(", "),
                    "sandbox: landlock enforced; read-only access to the config's folders, no writes, no exec"
                ),
            }
            outcome
        }
        Err(e) => {
            tracing::warn!(error = %e, "sandbox: landlock could not be applied; file-system access is not restricted");
            Outcome::Unsupported
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_folders_are_read_only_without_execute() {
        let access = read_access(ABI::V3);
        assert!(!access.contains(AccessFs::Execute), "{access:?}");
        assert!(
            access.contains(AccessFs::ReadFile | AccessFs::ReadDir),
            "{access:?}"
        );
    }

    /// The sandbox, applied for real to a thread of its own (Landlock confines the thread that
    /// asks and what it starts): a program in a granted folder can be read but not run.
    #[test]
    fn a_granted_program_can_be_read_but_not_run() {
        let program = PathBuf::from("/usr/bin/true");
        if !program.exists() {
            return;
        }
        let (read, ran, outcome) = std::thread::spawn(move || {
            let outcome = restrict(true, std::slice::from_ref(&program), &[]);
            let read = std::fs::read(&program).is_ok();
            let ran = std::process::Command::new(&program).status();
            (read, ran, outcome)
        })
        .join()
        .unwrap();
        if outcome == Outcome::Unsupported {
            eprintln!("skipping: no Landlock in this kernel");
            return;
        }
        assert!(read, "the granted folder is not readable");
        let err = ran.expect_err("a program ran under the sandbox");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    }

    #[test]
    fn a_linked_file_grants_its_configured_folder_and_where_it_points() {
        let dir = std::env::temp_dir().join(format!("certgate-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("secret/..v1")).unwrap();
        std::fs::write(dir.join("secret/..v1/ca.crl"), "x").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("secret/..data")).unwrap();
        std::os::unix::fs::symlink("..data/ca.crl", dir.join("secret/ca.crl")).unwrap();
        let dirs = readable_dirs(&dir.join("secret/ca.crl"));
        let canonical = dir.canonicalize().unwrap();
        assert!(dirs.contains(&dir.join("secret")), "{dirs:?}");
        assert!(dirs.contains(&canonical.join("secret/..v1")), "{dirs:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
