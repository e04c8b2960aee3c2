//! `weft-proxy init`: programs (or removes) the nat redirection of transparent mode, so a
//! pod's inbound TCP reaches the inbound listener and its outbound TCP the outbound listener.
//! `options` reads the flags, `rules` is the pure ruleset, `backend` runs iptables.

pub mod backend;
pub mod options;
pub mod rules;

use backend::Backend;
use options::Options;
use rules::Family;

/// Runs `weft-proxy init ARGS…`; returns the process exit code (2 for bad flags).
pub fn run(args: &[String]) -> u8 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return 0;
    }
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft-proxy init: {e}\n\n{USAGE}");
            return 2;
        }
    };
    let legacy = match opts.mode {
        options::Mode::Auto => backend::legacy_rules(),
        _ => None,
    };
    let (backend, why) = Backend::choose(opts.mode, legacy.as_deref());
    eprintln!("weft-proxy init: using iptables-{} ({why})", backend.name());
    let families: &[Family] = if opts.ipv6 { &[Family::V4, Family::V6] } else { &[Family::V4] };
    for &family in families {
        if let Err(e) = apply(&opts, backend, family) {
            eprintln!("weft-proxy init: {e}");
            return 1;
        }
    }
    0
}

/// Installs or removes the rules of one family (or prints what it would run).
fn apply(opts: &Options, backend: Backend, family: Family) -> Result<(), String> {
    let current = match backend.save(family) {
        Ok(text) => text,
        // A dry run shows the whole ruleset even where it may not read the table (not root).
        Err(e) if opts.dry_run => {
            eprintln!("weft-proxy init: {e}; showing the ruleset for an empty nat table");
            String::new()
        }
        Err(e) => return Err(e),
    };
    let script = if opts.cleanup {
        match rules::cleanup_script(&current) {
            Some(s) => s,
            None => {
                eprintln!("weft-proxy init: no Weft rules in the {family} nat table; nothing to remove");
                return Ok(());
            }
        }
    } else {
        rules::install_script(opts, family, &current)
    };
    if opts.dry_run {
        println!("{} <<'EOF'\n{script}EOF", backend.restore_command(family));
        return Ok(());
    }
    backend.restore(family, &script)?;
    let what = if opts.cleanup { "removed" } else { "installed" };
    let now = backend.save(family).map(|s| rules::count_own_rules(&s)).unwrap_or(0);
    eprintln!("weft-proxy init: {what} the {family} nat rules ({now} Weft rules now)");
    Ok(())
}

const USAGE: &str = "\
USAGE:
    weft-proxy init --proxy-uid UID [--proxy-gid GID] [--inbound-port 4143] [--outbound-port 4140]
        [--admin-port 4191] [--skip-inbound-ports P,...] [--skip-outbound-ports P,...]
        [--skip-subnets CIDR,...] [--ipv6] [--mode auto|nft|legacy] [--cleanup] [--dry-run]
    Programs the nat table for transparent mode: inbound TCP to the inbound port, outbound TCP
    to the outbound port, except the proxy's own uid/gid, loopback, skipped ports and subnets.
    The admin port and the proxy's own ports are never redirected inbound. Re-running is
    harmless; --cleanup removes exactly these rules; --dry-run prints what it would run.
";
