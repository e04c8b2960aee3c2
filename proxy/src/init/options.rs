//! `weft-proxy init`'s flags ([`InitArgs`], read by clap), checked into [`Options`].

use std::net::IpAddr;

/// Which iptables backend programs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// Legacy when the namespace already holds legacy rules, else nft.
    Auto,
    /// iptables-nft
    Nft,
    /// iptables-legacy
    Legacy,
}

/// A port or an inclusive range of ports, as `--skip-*-ports` take them (`8080` or `9000-9010`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// A destination subnet not to redirect, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// What to program (or remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Never redirected inbound, so kubelet probes and scrapes reach it.
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
    pub ipv6: bool,
    pub mode: Mode,
    pub cleanup: bool,
    pub dry_run: bool,
}

impl Options {
    /// Options with the defaults of the contract and `uid` as the proxy's uid.
    #[cfg(test)]
    pub(crate) fn new(proxy_uid: u32) -> Options {
        Options {
            proxy_uid,
            proxy_gid: None,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_subnets: Vec::new(),
            ipv6: false,
            mode: Mode::Auto,
            cleanup: false,
            dry_run: false,
        }
    }

    /// Checks what clap could not check flag by flag: the three ports must differ (every clash
    /// at once, one per line).
    pub(crate) fn from_args(args: InitArgs) -> Result<Options, String> {
        let opts = Options {
            proxy_uid: args.proxy_uid.unwrap_or(0),
            proxy_gid: args.proxy_gid,
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port,
            admin_port: args.admin_port,
            skip_inbound_ports: args.skip_inbound_ports.into_iter().flat_map(|l| l.0).collect(),
            skip_outbound_ports: args.skip_outbound_ports.into_iter().flat_map(|l| l.0).collect(),
            skip_subnets: args.skip_subnets.into_iter().flat_map(|l| l.0).collect(),
            ipv6: args.ipv6,
            mode: args.mode,
            cleanup: args.cleanup,
            dry_run: args.dry_run,
        };
        let ports = [
            ("--inbound-port", opts.inbound_port),
            ("--outbound-port", opts.outbound_port),
            ("--admin-port", opts.admin_port),
        ];
        let mut errors = Vec::new();
        for (i, (flag, port)) in ports.iter().enumerate() {
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                errors.push(format!("{other} and {flag} are both {port}"));
            }
        }
        if errors.is_empty() { Ok(opts) } else { Err(errors.join("\n")) }
    }
}

/// Program (or remove) the nat redirection of transparent mode.
///
/// Inbound TCP goes to the inbound port, outbound TCP to the outbound port, except the proxy's
/// own uid/gid, loopback, skipped ports and subnets. The admin port and the proxy's own ports
/// are never redirected inbound. Re-running is harmless; --cleanup removes exactly these rules;
/// --dry-run prints what it would run.
#[derive(clap::Args, Debug)]
pub(crate) struct InitArgs {
    /// The proxy's uid, whose own traffic is never redirected (it would loop)
    #[arg(long, value_name = "UID", required_unless_present = "cleanup")]
    proxy_uid: Option<u32>,
    /// The proxy's gid, also never redirected
    #[arg(long, value_name = "GID")]
    proxy_gid: Option<u32>,
    /// Where inbound TCP is redirected
    #[arg(long, value_name = "PORT", default_value = "4143", value_parser = parse_port)]
    inbound_port: u16,
    /// Where outbound TCP is redirected
    #[arg(long, value_name = "PORT", default_value = "4140", value_parser = parse_port)]
    outbound_port: u16,
    /// Never redirected inbound, so kubelet probes and scrapes reach it
    #[arg(long, value_name = "PORT", default_value = "4191", value_parser = parse_port)]
    admin_port: u16,
    /// Inbound ports not redirected: ports or ranges, comma-separated (8080,9000-9010)
    #[arg(long, value_name = "P,...", value_parser = parse_ports)]
    skip_inbound_ports: Vec<PortList>,
    /// Outbound ports not redirected: ports or ranges, comma-separated
    #[arg(long, value_name = "P,...", value_parser = parse_ports)]
    skip_outbound_ports: Vec<PortList>,
    /// Destination subnets not redirected, comma-separated (10.0.0.0/8,fd00::/8)
    #[arg(long, value_name = "CIDR,...", value_parser = parse_subnets)]
    skip_subnets: Vec<SubnetList>,
    /// Program the IPv6 nat table too
    #[arg(long)]
    ipv6: bool,
    /// Which iptables programs the rules
    #[arg(long, value_enum, default_value = "auto")]
    mode: Mode,
    /// Remove Weft's rules instead
    #[arg(long)]
    cleanup: bool,
    /// Print the iptables-restore input instead of running it
    #[arg(long)]
    dry_run: bool,
}

/// One `--skip-*-ports` value: the flag may be repeated, each value a list.
#[derive(Clone, Debug)]
pub(crate) struct PortList(Vec<PortRange>);

/// One `--skip-subnets` value.
#[derive(Clone, Debug)]
pub(crate) struct SubnetList(Vec<Subnet>);

fn parse_port(s: &str) -> Result<u16, &'static str> {
    s.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or("expected a port (1-65535)")
}

fn parse_ports(s: &str) -> Result<PortList, &'static str> {
    const WANT: &str = "expected ports or ranges, comma-separated (8080,9000-9010)";
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let (first, last) = (parse_port(a).map_err(|_| WANT)?, parse_port(b).map_err(|_| WANT)?);
            if first > last { Err(WANT) } else { Ok(PortRange { first, last }) }
        })
        .collect::<Result<_, _>>()
        .map(PortList)
}

fn parse_subnets(s: &str) -> Result<SubnetList, &'static str> {
    const WANT: &str = "expected CIDRs, comma-separated (10.0.0.0/8,fd00::/8)";
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (ip, prefix) = c.split_once('/').unwrap_or((c, ""));
            let addr: IpAddr = ip.parse().map_err(|_| WANT)?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = if prefix.is_empty() { max } else { prefix.parse().map_err(|_| WANT)? };
            if prefix > max { Err(WANT) } else { Ok(Subnet { addr, prefix }) }
        })
        .collect::<Result<_, _>>()
        .map(SubnetList)
}

/// Options from `init`'s flags in one string, as clap and [`Options::from_args`] read them.
#[cfg(test)]
pub(crate) fn parse_flags(flags: &str) -> Result<Options, String> {
    let args: Vec<&str> = flags.split_whitespace().collect();
    let args = crate::flags::parse_from::<InitArgs>("init", &args).map_err(|e| e.to_string())?;
    Options::from_args(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::parse_flags as parse;

    #[test]
    fn every_flag_of_the_contract_is_read() {
        let o = parse(
            "--proxy-uid 2102 --proxy-gid 2103 --inbound-port 5143 --outbound-port=5140 --admin-port 5191 \
             --skip-inbound-ports 22,9000-9010 --skip-outbound-ports 3306 \
             --skip-subnets 10.0.0.0/8,fd00::/8,192.168.1.1 --ipv6 --mode legacy --dry-run",
        )
        .unwrap();
        assert_eq!((o.proxy_uid, o.proxy_gid, o.inbound_port, o.outbound_port), (2102, Some(2103), 5143, 5140));
        assert_eq!(o.admin_port, 5191);
        assert_eq!(o.skip_inbound_ports, [PortRange { first: 22, last: 22 }, PortRange { first: 9000, last: 9010 }]);
        assert_eq!(o.skip_outbound_ports, [PortRange { first: 3306, last: 3306 }]);
        assert_eq!(o.skip_subnets.len(), 3);
        assert_eq!(o.skip_subnets[2], Subnet { addr: "192.168.1.1".parse().unwrap(), prefix: 32 });
        assert!(o.ipv6 && o.dry_run && !o.cleanup);
        assert_eq!(o.mode, Mode::Legacy);
    }

    #[test]
    fn defaults_are_the_contracts_ports_and_auto() {
        let o = parse("--proxy-uid 7").unwrap();
        assert_eq!(o, Options::new(7));
        assert_eq!((o.inbound_port, o.outbound_port, o.admin_port, o.mode), (4143, 4140, 4191, Mode::Auto));
    }

    #[test]
    fn a_bad_value_names_its_flag_and_what_it_expects() {
        for (args, want) in [
            ("--skip-subnets 10.0.0.0/33", "expected CIDRs"),
            ("--skip-inbound-ports 9010-9000", "expected ports or ranges"),
            ("--mode fast", "[possible values: auto, nft, legacy]"),
            ("--inbound-port 0", "expected a port (1-65535)"),
            ("--proxy-gid x", "invalid digit"),
        ] {
            let err = parse(&format!("--proxy-uid 7 {args}")).unwrap_err();
            let flag = args.split(' ').next().unwrap();
            assert!(err.contains(flag) && err.contains(want), "{want} in {err}");
        }
        assert!(parse("--proxy-uid 7 --bogus").unwrap_err().contains("'--bogus'"));
        assert!(parse("--ipv6").unwrap_err().contains("--proxy-uid <UID>"), "the uid is required");
    }

    #[test]
    fn every_port_clash_is_reported_at_once() {
        let err = parse("--proxy-uid 7 --inbound-port 4140 --admin-port 4140").unwrap_err();
        assert_eq!(
            err,
            "--inbound-port and --outbound-port are both 4140\n--inbound-port and --admin-port are both 4140"
        );
    }

    #[test]
    fn cleanup_needs_no_uid() {
        assert!(parse("--cleanup").unwrap().cleanup);
    }
}
