//! IPv4 subnets (`10.89.0.0/16`) for network configs: parsing, overlap, the gateway.

use std::net::Ipv4Addr;

/// An IPv4 subnet: its network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `A.B.C.D/N`; refuses host bits set (as docker does) and prefixes
    /// longer than /30, which leave no room for a gateway and a container.
    pub fn parse(s: &str) -> Option<Ipv4Net> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 30 {
            return None;
        }
        let net = Ipv4Net { addr, prefix };
        (u32::from(addr) & !net.mask() == 0).then_some(net)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The first host address, which skiff gives the bridge (the gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_overlap() {
        let a = Ipv4Net::parse("10.89.0.0/16").unwrap();
        assert_eq!(a.to_string(), "10.89.0.0/16");
        assert_eq!(a.first_host(), Ipv4Addr::new(10, 89, 0, 1));
        assert!(a.contains(Ipv4Addr::new(10, 89, 200, 3)));
        assert!(!a.contains(Ipv4Addr::new(10, 90, 0, 1)));
        let b = Ipv4Net::parse("10.89.3.0/24").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!b.overlaps(&Ipv4Net::parse("10.89.4.0/24").unwrap()));
        for bad in [
            "10.89.0.1/16",
            "10.89.0.0",
            "10.89.0.0/31",
            "x/8",
            "10.0.0.0/33",
        ] {
            assert_eq!(Ipv4Net::parse(bad), None, "{bad}");
        }
    }
}
