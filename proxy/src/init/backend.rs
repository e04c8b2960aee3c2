//! Which iptables backend to use (`--mode`), and running its save and restore binaries.

use std::io::Write;
use std::process::{Command, Stdio};

use super::options::Mode;
use super::rules::Family;

/// How long `iptables-restore` waits for the xtables lock held by another writer.
const LOCK_WAIT_SECONDS: &str = "5";

/// The iptables backend whose binaries program the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `iptables-nft`: rules in nf_tables, the default of current distributions and clusters.
    Nft,
    /// `iptables-legacy`: the x_tables kernel interface.
    Legacy,
}

impl Backend {
    /// Resolves `mode`. `auto` is legacy when the namespace already holds legacy rules (rules
    /// split across both backends are evaluated in an order nobody chose), else nft.
    /// `legacy_rules` is what `iptables-legacy-save` printed, `None` when it could not run.
    pub(crate) fn choose(mode: Mode, legacy_rules: Option<&str>) -> (Backend, &'static str) {
        match mode {
            Mode::Nft => (Backend::Nft, "--mode nft"),
            Mode::Legacy => (Backend::Legacy, "--mode legacy"),
            Mode::Auto if legacy_rules.is_some_and(|s| s.lines().any(|l| l.starts_with("-A "))) => {
                (Backend::Legacy, "auto: rules already exist in iptables-legacy")
            }
            Mode::Auto => (Backend::Nft, "auto: no rules in iptables-legacy"),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn binary(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}-{tool}", self.name())
    }

    /// The command that prints the nat table.
    #[cfg(test)]
    pub(crate) fn save_command(self, family: Family) -> String {
        format!("{} -t nat", self.binary(family, "save"))
    }

    /// The command that applies a ruleset read from stdin, as shown by `--dry-run`.
    pub(crate) fn restore_command(self, family: Family) -> String {
        format!("{} -w {LOCK_WAIT_SECONDS} --noflush", self.binary(family, "restore"))
    }

    /// `iptables-save -t nat` of `family`.
    pub(crate) fn save(self, family: Family) -> Result<String, String> {
        let bin = self.binary(family, "save");
        let out = Command::new(&bin).args(["-t", "nat"]).output().map_err(|e| format!("cannot run {bin}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{bin} -t nat failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies `script` atomically with `iptables-restore --noflush`.
    pub(crate) fn restore(self, family: Family, script: &str) -> Result<(), String> {
        let bin = self.binary(family, "restore");
        let mut child = Command::new(&bin)
            .args(["-w", LOCK_WAIT_SECONDS, "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(|e| format!("writing to {bin}: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("waiting for {bin}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{bin} failed: {}\ninput was:\n{script}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }
}

/// What `iptables-legacy-save` prints (every table the legacy kernel interface has loaded),
/// `None` when it cannot run (no legacy support: then nft is the only choice anyway).
pub(crate) fn legacy_rules() -> Option<String> {
    let out = Command::new("iptables-legacy-save").stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_legacy_only_when_legacy_rules_exist() {
        let with_rules = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j KUBE-SERVICES\nCOMMIT\n";
        let without = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(Backend::choose(Mode::Auto, Some(with_rules)).0, Backend::Legacy);
        assert_eq!(Backend::choose(Mode::Auto, Some(without)).0, Backend::Nft);
        assert_eq!(Backend::choose(Mode::Auto, None).0, Backend::Nft);
        assert_eq!(Backend::choose(Mode::Nft, Some(with_rules)).0, Backend::Nft, "an explicit mode wins");
        assert_eq!(Backend::choose(Mode::Legacy, None).0, Backend::Legacy);
    }

    #[test]
    fn binaries_are_named_by_family_and_backend() {
        assert_eq!(Backend::Nft.save_command(Family::V6), "ip6tables-nft-save -t nat");
        assert_eq!(Backend::Legacy.restore_command(Family::V4), "iptables-legacy-restore -w 5 --noflush");
    }
}
