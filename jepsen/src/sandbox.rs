//! The sandbox: a network namespace holding a bridge and the harness, and
//! one namespace per member joined to the bridge by a veth pair. The
//! members' addresses exist only inside the sandbox, so the harness enters
//! it before it opens any socket and refuses to run anywhere else: no packet
//! of a run may leave the machine.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use anyhow::{Context, bail};

/// Every namespace the harness creates starts with this prefix, so that
/// `ballast-jepsen clean` can find what a crashed run left.
pub const NAMESPACE_PREFIX: &str = "bj-";
const SUBNET_PREFIX: [u8; 3] = [10, 77, 0];
const HARNESS_HOST: u8 = 254;

pub struct Sandbox {
    name: String,
    members: usize,
}

impl Sandbox {
    /// Builds the topology for `members` members. Runs `ip`, so it needs
    /// root; fails with the command's own message otherwise.
    pub fn create(run_tag: &str, members: usize) -> anyhow::Result<Sandbox> {
        let sandbox = Sandbox {
            name: format!("{NAMESPACE_PREFIX}{run_tag}"),
            members,
        };
        sandbox.build().inspect_err(|_| {
            let _ = sandbox.destroy();
        })?;
        Ok(sandbox)
    }

    fn build(&self) -> anyhow::Result<()> {
        let sandbox = self;
        let bridge_address = format!("{}/24", host_address(HARNESS_HOST));
        run("ip", &["netns", "add", &sandbox.name])?;
        sandbox.ip(&["link", "set", "lo", "up"])?;
        sandbox.ip(&["link", "add", "br0", "type", "bridge"])?;
        sandbox.ip(&["link", "set", "br0", "up"])?;
        sandbox.ip(&["addr", "add", &bridge_address, "dev", "br0"])?;
        for member in 1..=self.members {
            let namespace = sandbox.member_namespace(member);
            let veth = format!("v{member}");
            let address = format!("{}/24", sandbox.member_address(member));
            run("ip", &["netns", "add", &namespace])?;
            sandbox.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ])?;
            sandbox.ip(&["link", "set", &veth, "master", "br0", "up"])?;
            run(
                "ip",
                &["-n", &namespace, "addr", "add", &address, "dev", "eth0"],
            )?;
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn members(&self) -> usize {
        self.members
    }

    pub fn member_namespace(&self, member: usize) -> String {
        format!("{}-n{member}", self.name)
    }

    pub fn member_address(&self, member: usize) -> Ipv4Addr {
        host_address(u8::try_from(member).expect("at most 253 members"))
    }

    /// Moves the calling thread into the sandbox's network namespace. Call
    /// it before any other thread exists: threads inherit the namespace of
    /// the thread that creates them, so the async runtime started afterwards
    /// lives entirely inside the sandbox.
    pub fn enter(&self) -> anyhow::Result<()> {
        let file = File::open(self.namespace_path())
            .with_context(|| format!("opening {}", self.namespace_path()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the sandbox")?;
        self.verify_inside()
    }

    /// Refuses to go on unless this thread is in the sandbox's namespace and
    /// that namespace has no route out of its own subnet.
    pub fn verify_inside(&self) -> anyhow::Result<()> {
        let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
        let sandbox = std::fs::metadata(self.namespace_path())?;
        if (ours.dev(), ours.ino()) != (sandbox.dev(), sandbox.ino()) {
            bail!(
                "refusing to run outside the sandbox namespace {}",
                self.name
            );
        }
        let routes = output("ip", &["route", "show"])?;
        for route in routes.lines() {
            let subnet = format!("{}.0/24", SUBNET_PREFIX.map(|b| b.to_string()).join("."));
            if !route.starts_with(&subnet) {
                bail!("the sandbox has a route out of its subnet ({route}); refusing to run");
            }
        }
        Ok(())
    }

    /// Runs `nft` commands inside a member's namespace, given as one script.
    pub fn nft(&self, member: usize, script: &str) -> anyhow::Result<()> {
        let namespace = self.member_namespace(member);
        run("ip", &["netns", "exec", &namespace, "nft", script])
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn namespace_path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Deletes the member namespaces and the sandbox, killing anything left
    /// in them; tries every one and reports the first failure.
    pub fn destroy(&self) -> anyhow::Result<()> {
        let mut names: Vec<String> = (1..=self.members)
            .map(|m| self.member_namespace(m))
            .collect();
        names.push(self.name.clone());
        let listing = output("ip", &["netns", "list"]).unwrap_or_default();
        let mut first_error = None;
        for name in names {
            let exists = listing
                .lines()
                .any(|line| line.split_whitespace().next() == Some(name.as_str()));
            if exists && let Err(e) = remove_namespace(&name) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn host_address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], SUBNET_PREFIX[2], host)
}

/// Whether this machine lets the harness build a sandbox: root, network
/// namespaces, `ip` and `nft`. The reason it cannot, in one line, otherwise.
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Some("this kernel has no network namespaces".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Removes every namespace a run left behind, killing its processes:
/// `ballast-jepsen clean`. Returns the names removed.
pub fn clean_all() -> anyhow::Result<Vec<String>> {
    let listing = output("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    // Members first: their processes must die before the bridge goes.
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NAMESPACE_PREFIX))
        .collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    for name in names {
        remove_namespace(name)?;
        removed.push(name.to_string());
    }
    Ok(removed)
}

fn remove_namespace(name: &str) -> anyhow::Result<()> {
    let pids = output("ip", &["netns", "pids", name]).unwrap_or_default();
    let own = std::process::id().to_string();
    for pid in pids.split_whitespace().filter(|pid| *pid != own) {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    run("ip", &["netns", "del", name])
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    output(program, args).map(drop)
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
