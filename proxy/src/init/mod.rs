//! `weft-proxy init`: programs (or removes) the nat redirection of transparent mode, so a
//! pod's inbound TCP reaches the inbound listener and its outbound TCP the outbound listener.
//! `options` reads the flags, `rules` is the pure ruleset, `backend` runs iptables.

pub(crate) mod backend;
pub(crate) mod options;
pub(crate) mod rules;

use backend::Backend;
use options::{InitArgs, Options};
use rules::Family;

/// Runs `weft-proxy init`; returns the process exit code (2 for flags that do not fit).
pub(crate) fn run(args: InitArgs) -> u8 {
    let opts = match Options::from_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft-proxy init: {e}");
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
