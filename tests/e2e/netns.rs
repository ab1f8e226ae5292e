//! Nodes on separate network addresses: a bridge and one network namespace per node
//! (veth pairs, 10.77.<id>.0/24, the host at .254), made by the test and removed by
//! exact name when it ends, even when it fails. Partitions drop a node's traffic with
//! the other nodes (iptables inside its namespace) while the test still reaches it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::harness::{Node, SKIFF};

/// A bridge and `n` namespaces.
pub struct Net {
    id: u32,
    namespaces: Vec<String>,
    bridge: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Net {
    /// Makes `n` namespaces on a bridge, or says why this machine cannot (not root, no
    /// `ip`/`iptables`): the caller skips, printing it.
    pub fn new(n: usize) -> Result<Net, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        for tool in ["ip", "iptables"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(format!("{tool} is not installed"));
            }
        }
        // Distinct per test process and test, so parallel tests never share a name.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = (std::process::id() * 7 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            % 250
            + 1;
        let mut net = Net {
            id,
            namespaces: Vec::new(),
            bridge: format!("skbr{id}"),
        };
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.{id}.254/24"),
            "dev",
            &net.bridge,
        ])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("sk{id}n{i}");
            let (host, inner) = (format!("sk{id}h{i}"), format!("sk{id}c{i}"));
            run(&["ip", "netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            run(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
            ])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&["ip", "link", "set", &host, "master", &net.bridge])?;
            run(&["ip", "link", "set", &host, "up"])?;
            let addr = format!("{}/24", net.ip(i));
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inner,
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.id, i + 1)
    }

    /// Starts `skiff up --listen <its address>` in namespace `i` on `dir`.
    pub async fn start(&self, i: usize, dir: &Path, extra: &[&str]) -> Node {
        let ip = self.ip(i);
        let mut args = vec!["--listen", ip.as_str()];
        args.extend(extra);
        let ns = self.namespaces[i].clone();
        let mut node = Node::start_customised(dir, &args, move |cmd| {
            let args: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
            *cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns, SKIFF])
                .args(args)
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::piped());
        })
        .await;
        node.ingress = SocketAddr::new(ip.parse().unwrap(), node.ingress.port());
        node
    }

    /// Cuts node `i` off from the other nodes (the test still reaches it).
    pub fn partition(&self, i: usize) {
        for j in (0..self.namespaces.len()).filter(|j| *j != i) {
            let other = self.ip(j);
            for (chain, flag) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.namespaces[i],
                    "iptables",
                    "-A",
                    chain,
                    flag,
                    &other,
                    "-j",
                    "DROP",
                ])
                .unwrap();
            }
        }
    }

    /// Joins node `i` to the others again.
    pub fn heal(&self, i: usize) {
        for chain in ["INPUT", "OUTPUT"] {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.namespaces[i],
                "iptables",
                "-F",
                chain,
            ])
            .unwrap();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Exactly what was made; the veths go with their namespaces.
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "delete", ns]);
        }
        let _ = run(&["ip", "link", "delete", &self.bridge]);
    }
}
