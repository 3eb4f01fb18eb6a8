//! Documentation generated from the command-line definition: shell completions and man pages.

use crate::cli::args::Cli;
use crate::error::{KmsError, Result};
use clap::CommandFactory;
use std::path::Path;

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kmsfs", &mut script);
    use std::io::Write;
    std::io::stdout()
        .write_all(&script)
        .map_err(|e| KmsError::validation(format!("writing the completion script: {e}")))
}

/// Writes `kmsfs.1` and `kmsfs-<sub>[-<subsub>].1` for every subcommand; returns their names.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_page(dir, &cmd, "kmsfs", &mut written)?;
    Ok(written)
}

fn write_page(
    dir: &Path,
    cmd: &clap::Command,
    name: &str,
    written: &mut Vec<String>,
) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_string());
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    let file = format!("{name}.1");
    std::fs::write(dir.join(&file), out)?;
    written.push(file);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(dir, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}

pub fn man_pages(dir: &Path) -> Result<()> {
    let files = write_man_pages(dir)
        .map_err(|e| KmsError::validation(format!("{}: {e}", dir.display())))?;
    println!("{} man pages written to {}", files.len(), dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand's help ends with at least one example.
    #[test]
    fn every_subcommand_has_an_example() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", c.get_name());
            let has = c
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Example"));
            if !has && c.get_subcommands().next().is_none() {
                missing.push(name.clone());
            }
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(s, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example in: {missing:#?}");
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_man_pages(dir.path()).unwrap();
        for want in [
            "kmsfs.1",
            "kmsfs-mount.1",
            "kmsfs-key-create.1",
            "kmsfs-key-policy-put.1",
        ] {
            assert!(files.iter().any(|f| f == want), "{want} in {files:?}");
        }
        let page = std::fs::read_to_string(dir.path().join("kmsfs-mount.1")).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH kmsfs-mount"),
            "{page}"
        );
        assert!(page.contains("idle"));
    }
}
