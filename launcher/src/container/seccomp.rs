//! Seccomp for containers, with docker's profile format and docker's default profile.
//!
//! The default profile is moby's `profiles/seccomp/default.json` (module
//! `github.com/moby/profiles/seccomp` v0.2.3, Apache-2.0), carried unchanged as data in
//! `seccomp-default.json`, so a profile written for `docker run --security-opt
//! seccomp=FILE` works with skiff too. A profile becomes a container's filter in three
//! steps, the ones moby and runc take:
//! 1. [`Profile::parse`]: docker's JSON format.
//! 2. [`Profile::select`]: keeps the rules whose `includes`/`excludes` match the host
//!    (architecture, kernel version) and the container's capabilities (moby's
//!    `setupSeccomp`): e.g. `mount`, `unshare` and `setns` only with CAP_SYS_ADMIN.
//! 3. [`Selection::compile`]: libseccomp turns the rules into a BPF program (runc's
//!    `InitSeccomp`). The program is exported as instructions before the container is
//!    forked, so its init only makes one seccomp(2) call ([`Filter::load`]). Compiled
//!    programs are kept under the skiff root ([`super::seccomp_cache`]), so a container
//!    start runs libseccomp only the first time a profile is used.

use super::seccomp_cache::FilterCache;
use caps::CapsHashSet;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::io::{Read, Seek};
use std::str::FromStr;

/// Docker's default profile, as moby ships it.
pub const DEFAULT_PROFILE: &str = include_str!("seccomp-default.json");

/// The kernel's limit on the length of a seccomp BPF program (`BPF_MAXINSNS`).
pub(super) const MAX_INSTRUCTIONS: usize = 4096;

/// Errors from reading, selecting or compiling a seccomp profile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    /// The profile is not valid JSON in docker's format.
    #[error("decoding seccomp profile failed: {0}")]
    Decode(String),
    /// The profile is JSON but asks for something contradictory or unknown.
    #[error("invalid seccomp profile: {0}")]
    Invalid(String),
    /// libseccomp refused a rule, or exporting the program failed.
    #[error("compiling seccomp profile: {0}")]
    Compile(String),
}

/// A seccomp profile in docker's format (moby's `seccomp.Seccomp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Action for syscalls no rule matches (`SCMP_ACT_ERRNO` in docker's default).
    #[serde(default)]
    pub default_action: String,
    /// errno for a default action of `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// Explicit architectures (`SCMP_ARCH_*`); exclusive with `archMap`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub architectures: Vec<String>,
    /// Per native architecture, the sub-architectures to add (x86 and x32 on x86_64).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub arch_map: Vec<ArchMapping>,
    /// seccomp(2) flags (`SECCOMP_FILTER_FLAG_*`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub flags: Vec<String>,
    /// A seccomp notify listener; skiff has none, so a profile naming one is refused.
    #[serde(default)]
    pub listener_path: Option<String>,
    /// The rules, in order.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub syscalls: Vec<Rule>,
}

/// One `archMap` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMapping {
    /// The native architecture this entry is for (`SCMP_ARCH_X86_64`).
    pub architecture: String,
    /// Architectures whose syscalls the native one also runs (`SCMP_ARCH_X86`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub sub_architectures: Vec<String>,
}

/// One rule: an action for some syscalls, possibly with argument conditions, kept or
/// dropped by `includes`/`excludes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The syscalls.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub names: Vec<String>,
    /// Old profiles' single syscall name; exclusive with `names`.
    #[serde(default)]
    pub name: String,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub args: Vec<ArgCondition>,
    /// The rule applies only when all of these hold.
    #[serde(default)]
    pub includes: Option<Condition>,
    /// The rule is dropped when any of these holds.
    #[serde(default)]
    pub excludes: Option<Condition>,
}

/// A condition on one syscall argument (runtime-spec `LinuxSeccompArg`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgCondition {
    /// Argument index, 0 to 5.
    pub index: u32,
    /// The value compared with; the mask for `SCMP_CMP_MASKED_EQ`.
    pub value: u64,
    /// The value the masked argument must equal for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

/// The `includes`/`excludes` of a rule (moby's `seccomp.Filter`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Capabilities (`CAP_SYS_ADMIN`) of the container's bounding set.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub caps: Vec<String>,
    /// Host architectures in moby's names (`amd64`, `arm64`, `x86`, `arm`).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub arches: Vec<String>,
    /// Host kernel at least this `<kernel>.<major>` version.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// JSON `null` reads as an empty list, as Go's decoder does.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// What of the host a profile's rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// moby's name of the architecture (`amd64`), matched against `arches`.
    pub arch: &'static str,
    /// libseccomp's name of it (`SCMP_ARCH_X86_64`), matched against `archMap`.
    pub scmp_arch: &'static str,
    /// Kernel version and major revision (6.1 for `6.1.0-18-amd64`).
    pub kernel: (u64, u64),
}

impl Host {
    /// The machine skiff runs on.
    pub fn current() -> Host {
        let (arch, scmp_arch) = if cfg!(target_arch = "x86_64") {
            ("amd64", "SCMP_ARCH_X86_64")
        } else if cfg!(target_arch = "aarch64") {
            ("arm64", "SCMP_ARCH_AARCH64")
        } else if cfg!(target_arch = "x86") {
            ("x86", "SCMP_ARCH_X86")
        } else if cfg!(target_arch = "arm") {
            ("arm", "SCMP_ARCH_ARM")
        } else if cfg!(target_arch = "riscv64") {
            ("riscv64", "SCMP_ARCH_RISCV64")
        } else if cfg!(target_arch = "s390x") {
            ("s390x", "SCMP_ARCH_S390X")
        } else if cfg!(target_arch = "powerpc64") {
            ("ppc64le", "SCMP_ARCH_PPC64LE")
        } else {
            ("unknown", "SCMP_ARCH_NATIVE")
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Host {
            arch,
            scmp_arch,
            kernel: parse_kernel_release(&release).unwrap_or((0, 0)),
        }
    }
}

/// `6.1.0-18-amd64` → (6, 1): moby ignores minor revisions and suffixes.
fn parse_kernel_release(release: &str) -> Option<(u64, u64)> {
    let mut parts = release.trim().split(['.', '-']);
    let kernel = parts.next()?.parse().ok()?;
    let major = parts.next()?.parse().ok()?;
    Some((kernel, major))
}

/// A profile's `minKernel`: exactly `<kernel>.<major>`, not 0.0.
fn parse_min_kernel(v: &str) -> Result<(u64, u64), SeccompError> {
    let bad = || {
        SeccompError::Invalid(format!(
            "invalid kernel version {v:?}, expected \"<kernel>.<major>\""
        ))
    };
    let (k, m) = v.split_once('.').ok_or_else(bad)?;
    let version = (
        k.parse::<u8>().map_err(|_| bad())? as u64,
        m.parse::<u8>().map_err(|_| bad())? as u64,
    );
    if version == (0, 0) {
        return Err(bad());
    }
    Ok(version)
}

/// What a rule (or the default) does to a matching syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run it.
    Allow,
    /// Fail it with this errno.
    Errno(u16),
    /// Kill the calling thread.
    KillThread,
    /// Kill the whole process.
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Notify a ptrace tracer with this value.
    Trace(u16),
    /// Run it and log it.
    Log,
}

impl Action {
    /// Reads `SCMP_ACT_*` with its errno (EPERM when absent, as runc does).
    fn parse(name: &str, errno: Option<u32>) -> Result<Action, SeccompError> {
        let ret = match errno {
            None => libc::EPERM as u16,
            Some(e) => u16::try_from(e)
                .map_err(|_| SeccompError::Invalid(format!("errno {e} out of range")))?,
        };
        Ok(match name {
            "SCMP_ACT_ALLOW" => Action::Allow,
            "SCMP_ACT_ERRNO" => Action::Errno(ret),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
            "SCMP_ACT_TRAP" => Action::Trap,
            "SCMP_ACT_TRACE" => Action::Trace(ret),
            "SCMP_ACT_LOG" => Action::Log,
            "SCMP_ACT_NOTIFY" => {
                return Err(SeccompError::Invalid(
                    "SCMP_ACT_NOTIFY needs a notify listener, which skiff does not provide".into(),
                ))
            }
            other => return Err(SeccompError::Invalid(format!("unknown action {other:?}"))),
        })
    }

    fn to_scmp(self) -> ScmpAction {
        match self {
            Action::Allow => ScmpAction::Allow,
            Action::Errno(e) => ScmpAction::Errno(e.into()),
            Action::KillThread => ScmpAction::KillThread,
            Action::KillProcess => ScmpAction::KillProcess,
            Action::Trap => ScmpAction::Trap,
            Action::Trace(v) => ScmpAction::Trace(v),
            Action::Log => ScmpAction::Log,
        }
    }
}

/// A rule that applies to this container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedRule {
    /// The syscalls.
    pub names: Vec<String>,
    /// What happens when one is called (and the conditions hold).
    pub action: Action,
    /// Conditions on the arguments.
    pub args: Vec<ArgCondition>,
}

/// A profile resolved for one host and one capability set: what goes into the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Action for syscalls no rule matches.
    pub default_action: Action,
    /// Architectures besides the native one (`SCMP_ARCH_*`).
    pub architectures: Vec<String>,
    /// seccomp(2) flags.
    pub flags: Vec<String>,
    /// The rules that apply, in the profile's order.
    pub rules: Vec<SelectedRule>,
}

impl Profile {
    /// Reads a profile in docker's JSON format.
    pub fn parse(json: &str) -> Result<Profile, SeccompError> {
        serde_json::from_str(json).map_err(|e| SeccompError::Decode(e.to_string()))
    }

    /// Docker's default profile.
    pub fn docker_default() -> Profile {
        Profile::parse(DEFAULT_PROFILE).expect("the bundled default profile is valid")
    }

    /// The rules for a container with capabilities `caps` on `host`, as moby selects
    /// them; `None` when the profile disables seccomp (no default action, no rules).
    pub fn select(
        &self,
        host: &Host,
        caps: &CapsHashSet,
    ) -> Result<Option<Selection>, SeccompError> {
        if self.default_action.is_empty() && self.syscalls.is_empty() {
            return Ok(None);
        }
        if !self.architectures.is_empty() && !self.arch_map.is_empty() {
            return Err(SeccompError::Invalid(
                "both 'architectures' and 'archMap' are specified, use either".into(),
            ));
        }
        if let Some(path) = &self.listener_path {
            return Err(SeccompError::Invalid(format!(
                "listenerPath {path:?}: seccomp notify is not supported"
            )));
        }
        let cap_names: HashSet<String> = caps.iter().map(|c| c.to_string()).collect();
        let mut architectures = self.architectures.clone();
        if let Some(m) = self
            .arch_map
            .iter()
            .find(|m| m.architecture == host.scmp_arch)
        {
            architectures.push(m.architecture.clone());
            architectures.extend(m.sub_architectures.iter().cloned());
        }
        let mut rules = Vec::new();
        for rule in &self.syscalls {
            let names = match (rule.name.is_empty(), rule.names.is_empty()) {
                (true, _) => rule.names.clone(),
                (false, true) => vec![rule.name.clone()],
                (false, false) => {
                    return Err(SeccompError::Invalid(
                        "both 'name' and 'names' are specified in a rule, use either".into(),
                    ))
                }
            };
            if !applies(rule, host, &cap_names)? {
                continue;
            }
            rules.push(SelectedRule {
                names,
                action: Action::parse(&rule.action, rule.errno_ret)?,
                args: rule.args.clone(),
            });
        }
        let default_action = Action::parse(&self.default_action, self.default_errno_ret)?;
        Ok(Some(Selection {
            default_action,
            architectures,
            flags: self.flags.clone(),
            rules,
        }))
    }
}

/// moby's test: every `includes` holds and no `excludes` does.
fn applies(rule: &Rule, host: &Host, caps: &HashSet<String>) -> Result<bool, SeccompError> {
    if let Some(ex) = &rule.excludes {
        if ex.arches.iter().any(|a| a == host.arch) || ex.caps.iter().any(|c| caps.contains(c)) {
            return Ok(false);
        }
        if let Some(v) = &ex.min_kernel {
            if host.kernel >= parse_min_kernel(v)? {
                return Ok(false);
            }
        }
    }
    if let Some(inc) = &rule.includes {
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == host.arch) {
            return Ok(false);
        }
        if !inc.caps.iter().all(|c| caps.contains(c)) {
            return Ok(false);
        }
        if let Some(v) = &inc.min_kernel {
            if host.kernel < parse_min_kernel(v)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// A compiled filter, ready to load. Serialized (as its instructions) into the
/// container's state, so `skiff exec` loads the very filter PID 1 got.
#[derive(Clone, serde::Serialize, Deserialize)]
#[serde(into = "FilterRecord", from = "FilterRecord")]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} instructions)", self.program.len())
    }
}

/// [`Filter`] as stored: each instruction as `[code, jt, jf, k]`, and the flags.
#[derive(serde::Serialize, Deserialize)]
struct FilterRecord {
    program: Vec<[u32; 4]>,
    flags: u64,
}

impl From<Filter> for FilterRecord {
    fn from(f: Filter) -> FilterRecord {
        FilterRecord {
            program: f
                .program
                .iter()
                .map(|i| [i.code.into(), i.jt.into(), i.jf.into(), i.k])
                .collect(),
            // c_ulong is u32 on 32-bit targets.
            #[allow(clippy::unnecessary_cast)]
            flags: f.flags as u64,
        }
    }
}

impl From<FilterRecord> for Filter {
    fn from(r: FilterRecord) -> Filter {
        // Out-of-range fields are truncated: the kernel's verifier refuses a broken
        // program when it is loaded, so nothing here needs to be trusted.
        Filter {
            program: r
                .program
                .iter()
                .map(|[code, jt, jf, k]| libc::sock_filter {
                    code: *code as u16,
                    jt: *jt as u8,
                    jf: *jf as u8,
                    k: *k,
                })
                .collect(),
            flags: r.flags as libc::c_ulong,
        }
    }
}

/// Two filters are equal when they are the same program with the same flags.
impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        let fields = |i: &libc::sock_filter| (i.code, i.jt, i.jf, i.k);
        self.flags == other.flags
            && self.program.len() == other.program.len()
            && self
                .program
                .iter()
                .zip(&other.program)
                .all(|(a, b)| fields(a) == fields(b))
    }
}

impl Eq for Filter {}

impl Filter {
    /// The filter of `program` with seccomp(2) `flags` (the kernel's verifier checks
    /// the program when it is loaded).
    pub(super) fn from_parts(program: Vec<libc::sock_filter>, flags: libc::c_ulong) -> Filter {
        Filter { program, flags }
    }

    /// The BPF instructions.
    pub(super) fn program(&self) -> &[libc::sock_filter] {
        &self.program
    }

    /// The seccomp(2) flags.
    pub(super) fn flags(&self) -> libc::c_ulong {
        self.flags
    }

    /// Number of BPF instructions.
    pub fn instructions(&self) -> usize {
        self.program.len()
    }

    /// Installs the filter on the calling thread. Without no_new_privs the kernel wants
    /// CAP_SYS_ADMIN for this. Makes no allocation: safe between fork and exec.
    pub fn load(&self) -> Result<(), nix::errno::Errno> {
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccomp(2) reads `prog` and the instructions it points to, which
        // live as long as `self`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        nix::errno::Errno::result(r).map(drop)
    }
}

impl Selection {
    /// Builds the BPF program with libseccomp, as runc does: syscalls libseccomp does
    /// not know (newer than it) are left out, a rule whose action is the default is
    /// skipped, and a rule with two conditions on one argument becomes one rule per
    /// condition (libseccomp cannot AND them).
    pub fn compile(&self) -> Result<Filter, SeccompError> {
        let fail = |what: &str| {
            let what = what.to_string();
            move |e: libseccomp::error::SeccompError| SeccompError::Compile(format!("{what}: {e}"))
        };
        let mut ctx = ScmpFilterContext::new(self.default_action.to_scmp())
            .map_err(fail("creating the filter"))?;
        for arch in &self.architectures {
            let a = ScmpArch::from_str(arch)
                .map_err(|_| SeccompError::Invalid(format!("unknown architecture {arch:?}")))?;
            ctx.add_arch(a).map_err(fail(arch))?;
        }
        let flags = filter_flags(&self.flags)?;
        let mut unknown = Vec::new();
        for rule in &self.rules {
            if rule.action == self.default_action {
                continue;
            }
            let action = rule.action.to_scmp();
            let conditions = rule
                .args
                .iter()
                .map(to_compare)
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = HashSet::new();
            let one_per_arg = rule.args.iter().all(|a| seen.insert(a.index));
            for name in &rule.names {
                let Ok(nr) = ScmpSyscall::from_name(name) else {
                    unknown.push(name.as_str());
                    continue;
                };
                let added = if conditions.is_empty() {
                    ctx.add_rule(action, nr)
                } else if one_per_arg {
                    ctx.add_rule_conditional(action, nr, &conditions)
                } else {
                    conditions
                        .iter()
                        .try_for_each(|c| ctx.add_rule_conditional(action, nr, &[*c]).map(drop))
                        .map(|()| &mut ctx)
                };
                added.map_err(fail(&format!("rule for {name}")))?;
            }
        }
        if !unknown.is_empty() {
            tracing::debug!(
                ?unknown,
                "syscalls unknown to libseccomp left out of the filter"
            );
        }
        let program = export(&ctx)?;
        if program.len() > MAX_INSTRUCTIONS {
            return Err(SeccompError::Compile(format!(
                "the filter has {} instructions, more than the kernel's {MAX_INSTRUCTIONS}",
                program.len()
            )));
        }
        Ok(Filter { program, flags })
    }
}

/// A profile's `flags` as seccomp(2) flags.
fn filter_flags(names: &[String]) -> Result<libc::c_ulong, SeccompError> {
    names.iter().try_fold(0, |acc, name| {
        Ok(acc
            | match name.as_str() {
                "SECCOMP_FILTER_FLAG_TSYNC" => libc::SECCOMP_FILTER_FLAG_TSYNC,
                "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG,
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                other => {
                    return Err(SeccompError::Invalid(format!(
                        "unsupported seccomp flag {other:?}"
                    )))
                }
            })
    })
}

/// A condition in libseccomp's terms (runtime-spec: `value` is the mask and
/// `valueTwo` the expected value of a masked comparison).
fn to_compare(a: &ArgCondition) -> Result<ScmpArgCompare, SeccompError> {
    if a.index > 5 {
        return Err(SeccompError::Invalid(format!(
            "argument index {} out of range",
            a.index
        )));
    }
    let (op, datum) = match a.op.as_str() {
        "SCMP_CMP_NE" => (ScmpCompareOp::NotEqual, a.value),
        "SCMP_CMP_LT" => (ScmpCompareOp::Less, a.value),
        "SCMP_CMP_LE" => (ScmpCompareOp::LessOrEqual, a.value),
        "SCMP_CMP_EQ" => (ScmpCompareOp::Equal, a.value),
        "SCMP_CMP_GE" => (ScmpCompareOp::GreaterEqual, a.value),
        "SCMP_CMP_GT" => (ScmpCompareOp::Greater, a.value),
        "SCMP_CMP_MASKED_EQ" => (ScmpCompareOp::MaskedEqual(a.value), a.value_two),
        other => {
            return Err(SeccompError::Invalid(format!(
                "unknown comparison {other:?}"
            )))
        }
    };
    Ok(ScmpArgCompare::new(a.index, op, datum))
}

/// The filter's BPF program, through a memfd (libseccomp 2.5 exports only to an fd).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let io = |e: std::io::Error| SeccompError::Compile(format!("exporting the program: {e}"));
    let fd =
        nix::sys::memfd::memfd_create(c"skiff-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| io(e.into()))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file)
        .map_err(|e| SeccompError::Compile(format!("exporting the program: {e}")))?;
    let mut bytes = Vec::new();
    file.rewind().map_err(io)?;
    file.read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() % 8 != 0 {
        return Err(SeccompError::Compile(format!(
            "exported program of {} bytes is not whole instructions",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect())
}

/// The filter docker would load for a container with capabilities `caps` under
/// `profile` on this host; `None` when the profile disables seccomp. With a `cache`,
/// a program compiled before for the same rules is read from it instead of compiled.
pub fn filter_for(
    profile: &Profile,
    caps: &CapsHashSet,
    cache: Option<&FilterCache>,
) -> Result<Option<Filter>, SeccompError> {
    let Some(selection) = profile.select(&Host::current(), caps)? else {
        return Ok(None);
    };
    match cache {
        Some(cache) => cache.filter(&selection).map(|(f, _)| Some(f)),
        None => selection.compile().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::sys::docker_default_capabilities;
    use caps::Capability;

    fn amd64() -> Host {
        Host {
            arch: "amd64",
            scmp_arch: "SCMP_ARCH_X86_64",
            kernel: (6, 1),
        }
    }

    fn arm64() -> Host {
        Host {
            arch: "arm64",
            scmp_arch: "SCMP_ARCH_AARCH64",
            kernel: (6, 1),
        }
    }

    /// Every (syscall, action, args) the selection gives for `name`.
    fn rules_for<'a>(s: &'a Selection, name: &str) -> Vec<&'a SelectedRule> {
        s.rules
            .iter()
            .filter(|r| r.names.iter().any(|n| n == name))
            .collect()
    }

    fn allowed(s: &Selection, name: &str) -> bool {
        rules_for(s, name)
            .iter()
            .any(|r| r.action == Action::Allow && r.args.is_empty())
    }

    fn with(extra: &[Capability]) -> CapsHashSet {
        let mut caps = docker_default_capabilities();
        caps.extend(extra.iter().copied());
        caps
    }

    #[test]
    fn default_profile_parses_as_docker_wrote_it() {
        let p = Profile::docker_default();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, Some(1));
        let x86 = p
            .arch_map
            .iter()
            .find(|m| m.architecture == "SCMP_ARCH_X86_64")
            .unwrap();
        assert_eq!(x86.sub_architectures, ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        // `"subArchitectures": null` reads as none.
        let riscv = p
            .arch_map
            .iter()
            .find(|m| m.architecture == "SCMP_ARCH_RISCV64")
            .unwrap();
        assert!(riscv.sub_architectures.is_empty());
        assert!(p.syscalls.len() > 30);
    }

    #[test]
    fn default_container_gets_docker_restrictions() {
        let s = Profile::docker_default()
            .select(&amd64(), &docker_default_capabilities())
            .unwrap()
            .unwrap();
        assert_eq!(s.default_action, Action::Errno(libc::EPERM as u16));
        assert_eq!(
            s.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        for name in [
            "read",
            "execve",
            "setuid",
            "capset",
            "chown",
            "arch_prctl",
            "chroot",
        ] {
            assert!(allowed(&s, name), "{name} should be allowed");
        }
        // Only with CAP_SYS_ADMIN, CAP_BPF, ... or never (keyctl and friends).
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "init_module",
            "kcmp",
            "perf_event_open",
            "open_by_handle_at",
        ] {
            assert!(
                rules_for(&s, name).is_empty(),
                "{name} should not be allowed"
            );
        }
        // personality: only the listed personas.
        let persona: Vec<u64> = rules_for(&s, "personality")
            .iter()
            .map(|r| r.args[0].value)
            .collect();
        assert_eq!(persona, [0, 8, 0x20000, 0x20008, 0xffffffff]);
        // clone: no namespace flags; clone3 fails with ENOSYS so libc falls back to it.
        let clone = rules_for(&s, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args[0].op, "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone[0].args[0].value, 0x7E020000);
        assert_eq!(
            rules_for(&s, "clone3")[0].action,
            Action::Errno(libc::ENOSYS as u16)
        );
        // socket: anything but AF_VSOCK (40).
        let socket: Vec<(&str, u64)> = rules_for(&s, "socket")
            .iter()
            .map(|r| (r.args[0].op.as_str(), r.args[0].value))
            .collect();
        assert_eq!(
            socket,
            [
                ("SCMP_CMP_LT", 38),
                ("SCMP_CMP_EQ", 39),
                ("SCMP_CMP_GT", 40)
            ]
        );
    }

    #[test]
    fn capabilities_open_their_syscalls() {
        let p = Profile::docker_default();
        let admin = p
            .select(&amd64(), &with(&[Capability::CAP_SYS_ADMIN]))
            .unwrap()
            .unwrap();
        for name in [
            "mount", "umount2", "unshare", "setns", "bpf", "clone", "clone3",
        ] {
            assert!(allowed(&admin, name), "{name} with CAP_SYS_ADMIN");
        }
        // The flag-filtered clone rule and the ENOSYS clone3 rule are excluded.
        assert_eq!(rules_for(&admin, "clone").len(), 1);
        assert_eq!(rules_for(&admin, "clone3").len(), 1);
        assert!(rules_for(&admin, "keyctl").is_empty());

        let bpf = p
            .select(&amd64(), &with(&[Capability::CAP_BPF]))
            .unwrap()
            .unwrap();
        assert!(allowed(&bpf, "bpf"));
        assert!(!allowed(&bpf, "mount"));

        let ptrace = p
            .select(&amd64(), &with(&[Capability::CAP_SYS_PTRACE]))
            .unwrap()
            .unwrap();
        assert!(allowed(&ptrace, "kcmp"));

        // Dropping a capability docker's rules name removes its syscalls.
        let mut no_chroot = docker_default_capabilities();
        no_chroot.remove(&Capability::CAP_SYS_CHROOT);
        let s = p.select(&amd64(), &no_chroot).unwrap().unwrap();
        assert!(!allowed(&s, "chroot"));
    }

    #[test]
    fn architecture_and_kernel_pick_rules() {
        let p = Profile::docker_default();
        let caps = docker_default_capabilities();
        let arm = p.select(&arm64(), &caps).unwrap().unwrap();
        assert_eq!(arm.architectures, ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]);
        assert!(allowed(&arm, "set_tls"));
        assert!(!allowed(&arm, "arch_prctl"));
        let x86 = p.select(&amd64(), &caps).unwrap().unwrap();
        assert!(!allowed(&x86, "set_tls"));
        // ptrace is allowed from 4.8 on (seccomp could be bypassed with it before).
        assert!(allowed(&x86, "ptrace"));
        let old = Host {
            kernel: (4, 4),
            ..amd64()
        };
        assert!(!allowed(&p.select(&old, &caps).unwrap().unwrap(), "ptrace"));
    }

    #[test]
    fn profile_format_edge_cases() {
        // An empty profile turns seccomp off, as in docker.
        let empty = Profile::parse("{}").unwrap();
        assert_eq!(empty.select(&amd64(), &CapsHashSet::new()).unwrap(), None);
        // The old single `name` field.
        let old = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"name":"mkdir","action":"SCMP_ACT_ERRNO"},
                {"name":"rmdir","action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        )
        .unwrap();
        let s = old.select(&amd64(), &CapsHashSet::new()).unwrap().unwrap();
        assert_eq!(s.rules[0].names, ["mkdir"]);
        assert_eq!(s.rules[0].action, Action::Errno(libc::EPERM as u16));
        assert_eq!(s.rules[1].action, Action::Errno(13));
        assert!(s.architectures.is_empty());

        let bad = |json: &str| {
            Profile::parse(json)
                .and_then(|p| p.select(&amd64(), &CapsHashSet::new()))
                .unwrap_err()
        };
        assert!(matches!(bad("{"), SeccompError::Decode(_)));
        assert!(matches!(
            bad(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#),
            SeccompError::Invalid(_)
        ));
        assert!(matches!(
            bad(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"name":"a","names":["b"],"action":"SCMP_ACT_ALLOW"}]}"#
            ),
            SeccompError::Invalid(_)
        ));
        assert!(matches!(
            bad(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86"],"archMap":[{"architecture":"SCMP_ARCH_X86_64"}]}"#
            ),
            SeccompError::Invalid(_)
        ));
        assert!(matches!(
            bad(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4"}}]}"#
            ),
            SeccompError::Invalid(_)
        ));
        assert!(matches!(
            bad(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#),
            SeccompError::Invalid(_)
        ));
    }

    #[test]
    fn kernel_versions_read_like_moby() {
        assert_eq!(parse_kernel_release("6.1.0-18-amd64\n"), Some((6, 1)));
        assert_eq!(parse_kernel_release("5.15"), Some((5, 15)));
        assert_eq!(parse_kernel_release("4.8-rc5"), Some((4, 8)));
        assert_eq!(parse_min_kernel("4.8"), Ok((4, 8)));
        assert!(parse_min_kernel("0.0").is_err());
        assert!(parse_min_kernel("4.8.1").is_err());
    }

    #[test]
    fn default_profile_compiles_within_the_kernel_limit() {
        for extra in [&[][..], &[Capability::CAP_SYS_ADMIN][..]] {
            let filter = filter_for(&Profile::docker_default(), &with(extra), None)
                .unwrap()
                .unwrap();
            assert!(
                filter.instructions() > 100 && filter.instructions() <= MAX_INSTRUCTIONS,
                "{filter:?}"
            );
        }
        // Two conditions on one argument compile as alternatives (moby's socket rules
        // in one rule, say).
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["socket"],"action":"SCMP_ACT_ALLOW",
                "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        assert!(filter_for(&p, &CapsHashSet::new(), None).unwrap().is_some());
    }
}
