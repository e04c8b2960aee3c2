//! The nat rules of transparent mode, as a pure function of the flags: the `iptables-restore`
//! input that installs them (idempotently) and the one that removes exactly them.

use super::options::{Options, PortRange};

/// Inbound TCP, jumped to from PREROUTING: skipped ports return, the rest is redirected.
pub(crate) const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// Redirects to the inbound listener (from the inbound chain and the hairpin rule).
pub(crate) const IN_REDIRECT_CHAIN: &str = "WEFT_IN_REDIRECT";
/// Outbound TCP, jumped to from OUTPUT.
pub(crate) const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";
/// Every chain this program owns, in the order they are removed.
pub(crate) const CHAINS: [&str; 3] = [INBOUND_CHAIN, OUTPUT_CHAIN, IN_REDIRECT_CHAIN];

/// The jumps from the built-in chains into ours, added once.
const JUMPS: [(&str, &str, &str); 2] =
    [("PREROUTING", INBOUND_CHAIN, "weft/inbound"), ("OUTPUT", OUTPUT_CHAIN, "weft/outbound")];

/// `multiport` takes at most 15 ports per rule, a range counting as two.
const MULTIPORT_MAX: usize = 15;

/// An address family: its rules go through `iptables` or `ip6tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
}

/// The rules of our own chains (`-A CHAIN …`), in order.
pub(crate) fn chain_rules(o: &Options, family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    let mut add = |chain: &str, spec: String, comment: &str, target: String| {
        rules.push(format!("-A {chain} {spec}-m comment --comment weft/{comment} -j {target}"));
    };
    add(IN_REDIRECT_CHAIN, "-p tcp ".into(), "redirect-to-inbound", format!("REDIRECT --to-ports {}", o.inbound_port));

    // Inbound: the admin port and the proxy's own listeners are never redirected.
    let mut inbound_skips = vec![single(o.admin_port), single(o.inbound_port), single(o.outbound_port)];
    inbound_skips.extend(o.skip_inbound_ports.iter().copied());
    dedup(&mut inbound_skips);
    for ports in multiport_groups(&inbound_skips) {
        add(INBOUND_CHAIN, format!("-p tcp -m multiport --dports {ports} "), "inbound-skip-ports", "RETURN".into());
    }
    add(INBOUND_CHAIN, "-p tcp ".into(), "inbound", IN_REDIRECT_CHAIN.into());

    // Outbound: the proxy's own traffic returns (so it never loops), except its calls to this
    // pod's own address, which take the inbound side like any caller's (the hairpin).
    let lo = family.loopback();
    let mut owners = vec![("uid", o.proxy_uid)];
    owners.extend(o.proxy_gid.map(|g| ("gid", g)));
    for (kind, id) in owners {
        let owner = format!("-m owner --{kind}-owner {id} ");
        let hairpin = format!("! -d {lo} -o lo -p tcp ! --dport {} {owner}", o.inbound_port);
        add(OUTPUT_CHAIN, hairpin, &format!("hairpin-proxy-{kind}"), IN_REDIRECT_CHAIN.into());
        add(OUTPUT_CHAIN, owner, &format!("proxy-{kind}"), "RETURN".into());
    }
    // The app's loopback traffic (to 127.0.0.1 or to its own pod address) stays local.
    add(OUTPUT_CHAIN, "-o lo ".into(), "loopback", "RETURN".into());
    for ports in multiport_groups(&o.skip_outbound_ports) {
        add(OUTPUT_CHAIN, format!("-p tcp -m multiport --dports {ports} "), "outbound-skip-ports", "RETURN".into());
    }
    for s in o.skip_subnets.iter().filter(|s| s.addr.is_ipv4() == (family == Family::V4)) {
        add(OUTPUT_CHAIN, format!("-d {}/{} ", s.addr, s.prefix), "skip-subnet", "RETURN".into());
    }
    add(OUTPUT_CHAIN, "-p tcp ".into(), "outbound", format!("REDIRECT --to-ports {}", o.outbound_port));
    rules
}

/// The `iptables-restore --noflush` input that installs the rules, given what
/// `iptables-save -t nat` printed (`current`): declaring a chain creates it or flushes it, so
/// a re-run leaves one copy of each rule, and a jump already present is not added again.
pub(crate) fn install_script(o: &Options, family: Family, current: &str) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in chain_rules(o, family) {
        out.push_str(&rule);
        out.push('\n');
    }
    for (from, to, comment) in JUMPS {
        if jumps(current, from, to).next().is_none() {
            out.push_str(&format!("-A {from} -p tcp -m comment --comment {comment} -j {to}\n"));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes exactly our jumps and chains from the
/// table `current` describes; `None` when none of them is there.
pub(crate) fn cleanup_script(current: &str) -> Option<String> {
    let mut body = String::new();
    for (from, to, _) in JUMPS {
        for rule in jumps(current, from, to) {
            body.push_str(&format!("-D {}\n", &rule["-A ".len()..]));
        }
    }
    let present: Vec<&str> = CHAINS.into_iter().filter(|c| has_chain(current, c)).collect();
    for chain in &present {
        body.push_str(&format!("-F {chain}\n"));
    }
    for chain in &present {
        body.push_str(&format!("-X {chain}\n"));
    }
    if body.is_empty() { None } else { Some(format!("*nat\n{body}COMMIT\n")) }
}

/// How many rules of ours `current` holds (our chains' rules and the jumps into them).
pub(crate) fn count_own_rules(current: &str) -> usize {
    let own = current.lines().filter(|l| CHAINS.iter().any(|c| l.starts_with(&format!("-A {c} ")))).count();
    own + JUMPS.iter().map(|(from, to, _)| jumps(current, from, to).count()).sum::<usize>()
}

/// The rules of `from` in `iptables-save` output that jump to `to`.
fn jumps<'a>(current: &'a str, from: &'a str, to: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    current.lines().map(str::trim_end).filter(move |l| {
        l.strip_prefix("-A ").and_then(|r| r.strip_prefix(from)).is_some_and(|r| r.starts_with(' '))
            && l.ends_with(&format!(" -j {to}"))
    })
}

fn has_chain(current: &str, chain: &str) -> bool {
    current.lines().any(|l| l.strip_prefix(':').and_then(|r| r.strip_prefix(chain)).is_some_and(|r| r.starts_with(' ')))
}

fn single(port: u16) -> PortRange {
    PortRange { first: port, last: port }
}

fn dedup(ports: &mut Vec<PortRange>) {
    let mut seen = Vec::with_capacity(ports.len());
    ports.retain(|p| {
        let new = !seen.contains(p);
        seen.push(*p);
        new
    });
}

/// `multiport --dports` arguments, each within the module's limit.
fn multiport_groups(ports: &[PortRange]) -> Vec<String> {
    let mut groups: Vec<(usize, String)> = Vec::new();
    for p in ports {
        let (cost, text) =
            if p.first == p.last { (1, p.first.to_string()) } else { (2, format!("{}:{}", p.first, p.last)) };
        match groups.last_mut() {
            Some((used, list)) if *used + cost <= MULTIPORT_MAX => {
                *used += cost;
                list.push(',');
                list.push_str(&text);
            }
            _ => groups.push((cost, text)),
        }
    }
    groups.into_iter().map(|(_, list)| list).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &str) -> Options {
        crate::init::options::parse_flags(args).unwrap()
    }

    const REDIRECT_IN: &str =
        "-A WEFT_IN_REDIRECT -p tcp -m comment --comment weft/redirect-to-inbound -j REDIRECT --to-ports 4143";
    const SKIP_OWN: &str = "-A WEFT_INBOUND -p tcp -m multiport --dports 4191,4143,4140 -m comment --comment weft/inbound-skip-ports -j RETURN";
    const INBOUND: &str = "-A WEFT_INBOUND -p tcp -m comment --comment weft/inbound -j WEFT_IN_REDIRECT";
    const HAIRPIN_UID: &str = "-A WEFT_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 4143 -m owner --uid-owner 2102 -m comment --comment weft/hairpin-proxy-uid -j WEFT_IN_REDIRECT";
    const PROXY_UID: &str = "-A WEFT_OUTPUT -m owner --uid-owner 2102 -m comment --comment weft/proxy-uid -j RETURN";
    const LOOPBACK: &str = "-A WEFT_OUTPUT -o lo -m comment --comment weft/loopback -j RETURN";
    const OUTBOUND: &str = "-A WEFT_OUTPUT -p tcp -m comment --comment weft/outbound -j REDIRECT --to-ports 4140";

    /// Flag sets and the exact rules each gives, for IPv4 unless the case says v6.
    #[test]
    fn golden_rules_for_each_flag_set() {
        let cases: &[(&str, Family, &[&str])] = &[
            (
                "--proxy-uid 2102",
                Family::V4,
                &[REDIRECT_IN, SKIP_OWN, INBOUND, HAIRPIN_UID, PROXY_UID, LOOPBACK, OUTBOUND],
            ),
            (
                "--proxy-uid 2102 --proxy-gid 2103",
                Family::V4,
                &[
                    REDIRECT_IN,
                    SKIP_OWN,
                    INBOUND,
                    HAIRPIN_UID,
                    PROXY_UID,
                    "-A WEFT_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 4143 -m owner --gid-owner 2103 -m comment --comment weft/hairpin-proxy-gid -j WEFT_IN_REDIRECT",
                    "-A WEFT_OUTPUT -m owner --gid-owner 2103 -m comment --comment weft/proxy-gid -j RETURN",
                    LOOPBACK,
                    OUTBOUND,
                ],
            ),
            (
                "--proxy-uid 2102 --skip-inbound-ports 8081,9000-9010,4191 --skip-outbound-ports 3306,5432 --skip-subnets 10.96.0.0/12,fd00::/8",
                Family::V4,
                &[
                    REDIRECT_IN,
                    "-A WEFT_INBOUND -p tcp -m multiport --dports 4191,4143,4140,8081,9000:9010 -m comment --comment weft/inbound-skip-ports -j RETURN",
                    INBOUND,
                    HAIRPIN_UID,
                    PROXY_UID,
                    LOOPBACK,
                    "-A WEFT_OUTPUT -p tcp -m multiport --dports 3306,5432 -m comment --comment weft/outbound-skip-ports -j RETURN",
                    "-A WEFT_OUTPUT -d 10.96.0.0/12 -m comment --comment weft/skip-subnet -j RETURN",
                    OUTBOUND,
                ],
            ),
            (
                "--proxy-uid 2102 --skip-subnets 10.96.0.0/12,fd00::/8 --inbound-port 5143 --outbound-port 5140 --admin-port 5191",
                Family::V6,
                &[
                    "-A WEFT_IN_REDIRECT -p tcp -m comment --comment weft/redirect-to-inbound -j REDIRECT --to-ports 5143",
                    "-A WEFT_INBOUND -p tcp -m multiport --dports 5191,5143,5140 -m comment --comment weft/inbound-skip-ports -j RETURN",
                    INBOUND,
                    "-A WEFT_OUTPUT ! -d ::1/128 -o lo -p tcp ! --dport 5143 -m owner --uid-owner 2102 -m comment --comment weft/hairpin-proxy-uid -j WEFT_IN_REDIRECT",
                    PROXY_UID,
                    LOOPBACK,
                    "-A WEFT_OUTPUT -d fd00::/8 -m comment --comment weft/skip-subnet -j RETURN",
                    "-A WEFT_OUTPUT -p tcp -m comment --comment weft/outbound -j REDIRECT --to-ports 5140",
                ],
            ),
        ];
        for (flags, family, want) in cases {
            assert_eq!(chain_rules(&opts(flags), *family), *want, "rules for {flags} ({family:?})");
        }
    }

    #[test]
    fn more_than_fifteen_skipped_ports_take_several_rules() {
        let ports: Vec<String> = (1..=20).map(|p| (1000 + p).to_string()).collect();
        let o = opts(&format!("--proxy-uid 1 --skip-outbound-ports {}", ports.join(",")));
        let skips: Vec<String> =
            chain_rules(&o, Family::V4).into_iter().filter(|r| r.contains("outbound-skip")).collect();
        assert_eq!(skips.len(), 2);
        assert!(
            skips[0].contains("--dports 1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014,1015 ")
        );
        assert!(skips[1].contains("--dports 1016,1017,1018,1019,1020 "));
    }

    const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                             :POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    #[test]
    fn a_first_install_declares_the_chains_and_adds_both_jumps() {
        let script = install_script(&opts("--proxy-uid 2102"), Family::V4, EMPTY_NAT);
        let mut want = String::from("*nat\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTPUT - [0:0]\n:WEFT_IN_REDIRECT - [0:0]\n");
        for r in [REDIRECT_IN, SKIP_OWN, INBOUND, HAIRPIN_UID, PROXY_UID, LOOPBACK, OUTBOUND] {
            want.push_str(r);
            want.push('\n');
        }
        want.push_str("-A PREROUTING -p tcp -m comment --comment weft/inbound -j WEFT_INBOUND\n");
        want.push_str("-A OUTPUT -p tcp -m comment --comment weft/outbound -j WEFT_OUTPUT\nCOMMIT\n");
        assert_eq!(script, want);
    }

    /// What `iptables-save -t nat` prints after an install (it quotes comments).
    const INSTALLED: &str = "# Generated by iptables-nft-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n\
        :INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [3:180]\n:POSTROUTING ACCEPT [0:0]\n:WEFT_INBOUND - [0:0]\n\
        :WEFT_IN_REDIRECT - [0:0]\n:WEFT_OUTPUT - [0:0]\n:OTHER - [0:0]\n\
        -A PREROUTING -p tcp -m comment --comment \"weft/inbound\" -j WEFT_INBOUND\n\
        -A OUTPUT -p tcp -m comment --comment \"weft/outbound\" -j WEFT_OUTPUT\n\
        -A OUTPUT -p tcp -j OTHER\n\
        -A WEFT_INBOUND -p tcp -m comment --comment \"weft/inbound\" -j WEFT_IN_REDIRECT\n\
        -A WEFT_OUTPUT -o lo -m comment --comment \"weft/loopback\" -j RETURN\nCOMMIT\n";

    #[test]
    fn a_rerun_does_not_add_the_jumps_again() {
        let script = install_script(&opts("--proxy-uid 2102"), Family::V4, INSTALLED);
        assert!(!script.contains("-A PREROUTING") && !script.contains("-A OUTPUT"), "{script}");
        assert!(script.contains(":WEFT_OUTPUT - [0:0]\n"), "the chains are declared, so flushed: {script}");
    }

    #[test]
    fn cleanup_removes_exactly_our_jumps_and_chains() {
        let want = "*nat\n-D PREROUTING -p tcp -m comment --comment \"weft/inbound\" -j WEFT_INBOUND\n\
                    -D OUTPUT -p tcp -m comment --comment \"weft/outbound\" -j WEFT_OUTPUT\n\
                    -F WEFT_INBOUND\n-F WEFT_OUTPUT\n-F WEFT_IN_REDIRECT\n\
                    -X WEFT_INBOUND\n-X WEFT_OUTPUT\n-X WEFT_IN_REDIRECT\nCOMMIT\n";
        assert_eq!(cleanup_script(INSTALLED).as_deref(), Some(want));
        assert_eq!(cleanup_script(EMPTY_NAT), None, "nothing of ours: nothing to run");
    }

    #[test]
    fn own_rules_are_counted_and_others_are_not() {
        assert_eq!(count_own_rules(INSTALLED), 4);
        assert_eq!(count_own_rules(EMPTY_NAT), 0);
    }
}
