use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `docker run --restart`: what happens to a container when it stops or the node
/// restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Stays stopped.
    #[default]
    No,
    /// Comes back if it ended with a non-zero code (a node crash counts).
    OnFailure,
    /// Comes back whenever the node starts.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(Self::No),
            "on-failure" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "invalid restart policy {other:?}: use no, on-failure or always"
            )),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::No => "no",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        })
    }
}

/// `-p [IP:]HOST:CONTAINER`: a host port that reaches the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Address the node listens on (default loopback, like every skiff listener).
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// The container's port (its EXPOSEd port).
    pub container_port: u16,
}

impl std::str::FromStr for PortMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid port mapping {s:?}: use HOST:CONTAINER or IP:HOST:CONTAINER, e.g. 8080:80"
            )
        };
        let spec = s.strip_suffix("/tcp").unwrap_or(s);
        let (rest, container) = spec.rsplit_once(':').ok_or_else(bad)?;
        let container_port: u16 = container.parse().map_err(|_| bad())?;
        let (host_ip, host) = match rest.rsplit_once(':') {
            Some((ip, port)) => (
                ip.trim_matches(['[', ']']).parse().map_err(|_| bad())?,
                port,
            ),
            None => (IpAddr::from([127, 0, 0, 1]), rest),
        };
        let host_port: u16 = host.parse().map_err(|_| bad())?;
        if host_port == 0 || container_port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host_ip,
            host_port,
            container_port,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/tcp",
            self.host_ip, self.host_port, self.container_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_policies() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(p.to_string(), "127.0.0.1:8080->80/tcp");
        let p: PortMapping = "0.0.0.0:80:80/tcp".parse().unwrap();
        assert_eq!(
            (p.host_ip.to_string().as_str(), p.host_port),
            ("0.0.0.0", 80)
        );
        for bad in ["80", "x:80", "8080:y", "0:80", "1.2.3:80:80", "70000:80"] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
        assert_eq!("always".parse::<RestartPolicy>(), Ok(RestartPolicy::Always));
        assert!(
            "sometimes"
                .parse::<RestartPolicy>()
                .unwrap_err()
                .contains("no, on-failure or always")
        );
    }
}
