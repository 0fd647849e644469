//! The device filter on the unified (v2) cgroup hierarchy: cgroup v2 has no `devices`
//! controller, so, as runc and youki do, a `BPF_PROG_TYPE_CGROUP_DEVICE` program is
//! attached to the container's cgroup. It allows exactly the rules of
//! [`super::cgroups::DEFAULT_DEVICE_RULES`] (docker's default list, the same the v1
//! `devices.allow` gets) and denies every other device access (open for read or
//! write, mknod). The kernel consults it on pure v2 hosts and, on hybrid hosts, next
//! to the v1 controller.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Errors from building, loading or attaching the device program.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFilterError {
    /// A rule is not `TYPE MAJOR:MINOR ACCESS` (`c 1:3 rwm`, `c *:* m`).
    #[error("bad device rule {0:?}")]
    BadRule(String),
    /// bpf(BPF_PROG_LOAD) refused the program.
    #[error("loading the device program: {0}")]
    Load(Errno),
    /// Opening the cgroup directory failed.
    #[error("opening cgroup {path}: {errno}")]
    Open {
        /// The cgroup directory.
        path: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// bpf(BPF_PROG_ATTACH) refused to attach it to the cgroup.
    #[error("attaching the device program to {path}: {errno}")]
    Attach {
        /// The cgroup directory.
        path: String,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// One rule: `None` is a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// `BPF_DEVCG_DEV_BLOCK` (1) or `BPF_DEVCG_DEV_CHAR` (2); `None` for `a`.
    pub kind: Option<u32>,
    /// The major number.
    pub major: Option<u32>,
    /// The minor number.
    pub minor: Option<u32>,
    /// `BPF_DEVCG_ACC_*` bits allowed: mknod 1, read 2, write 4.
    pub access: u32,
}

impl DeviceRule {
    /// Parses a v1 `devices.allow` line.
    pub fn parse(rule: &str) -> Result<DeviceRule, DeviceFilterError> {
        let bad = || DeviceFilterError::BadRule(rule.to_string());
        let mut f = rule.split(' ');
        let (kind, numbers, access) = (
            f.next().ok_or_else(bad)?,
            f.next().ok_or_else(bad)?,
            f.next().ok_or_else(bad)?,
        );
        let kind = match kind {
            "a" => None,
            "b" => Some(1),
            "c" => Some(2),
            _ => return Err(bad()),
        };
        let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
        let number = |s: &str| -> Result<Option<u32>, DeviceFilterError> {
            if s == "*" {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        let mut bits = 0;
        for c in access.chars() {
            bits |= match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => return Err(bad()),
            };
        }
        Ok(DeviceRule {
            kind,
            major: number(major)?,
            minor: number(minor)?,
            access: bits,
        })
    }
}

/// One eBPF instruction, as the kernel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const AND64_IMM: u8 = 0x57;
const RSH64_IMM: u8 = 0x77;
const JNE_IMM: u8 = 0x55; // if dst != imm goto pc + 1 + off
const EXIT: u8 = 0x95;

/// The program for `rules`: r2 = device type, r3 = access, r4 = major, r5 = minor
/// (from `struct bpf_cgroup_dev_ctx`); each rule is a block that skips to the next on
/// the first mismatch and returns 1 (allow) at its end; after the last, 0 (deny).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(MOV64_REG, 3, 2, 0, 0),
        insn(AND64_IMM, 2, 0, 0, 0xffff),
        insn(RSH64_IMM, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Each check is one jump (two instructions for access); the block ends with
        // r0 = 1; exit.
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        if let Some(kind) = r.kind {
            checks.push(vec![insn(JNE_IMM, 2, 0, 0, kind as i32)]);
        }
        if r.access & 7 != 7 {
            checks.push(vec![
                insn(MOV64_REG, 0, 3, 0, 0),
                insn(AND64_IMM, 0, 0, 0, (!r.access & 7) as i32),
                insn(JNE_IMM, 0, 0, 0, 0),
            ]);
        }
        if let Some(major) = r.major {
            checks.push(vec![insn(JNE_IMM, 4, 0, 0, major as i32)]);
        }
        if let Some(minor) = r.minor {
            checks.push(vec![insn(JNE_IMM, 5, 0, 0, minor as i32)]);
        }
        let block_len: usize = checks.iter().map(Vec::len).sum::<usize>() + 2;
        let mut emitted = 0;
        for check in checks {
            for mut i in check {
                emitted += 1;
                if i.code == JNE_IMM {
                    // Skip what is left of the block.
                    i.off = (block_len - emitted) as i16;
                }
                p.push(i);
            }
        }
        p.push(insn(MOV64_IMM, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_IMM, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program for `rules` into the kernel.
pub fn load(rules: &[DeviceRule]) -> Result<OwnedFd, DeviceFilterError> {
    let insns = program(rules);
    let license = c"Apache";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // The instructions and license `attr` points to are alive for the call.
    let fd = bpf(BPF_PROG_LOAD, &attr).map_err(DeviceFilterError::Load)?;
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// bpf(2) with command `cmd` on `attr` (one of the `*Attr` structs above, whose
/// pointers the caller keeps alive).
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<libc::c_long, Errno> {
    // SAFETY: bpf(2) reads size_of::<T>() bytes of `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    Errno::result(r)
}

/// Loads the program for `rules` and attaches it to the v2 cgroup `dir`. The program
/// lives as long as the cgroup (the attachment holds it), so no descriptor is kept.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceFilterError> {
    let prog = load(rules)?;
    let cgroup = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| DeviceFilterError::Open {
        path: dir.display().to_string(),
        errno,
    })?;
    let attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &attr).map_err(|errno| DeviceFilterError::Attach {
        path: dir.display().to_string(),
        errno,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_like_devices_allow() {
        assert_eq!(
            DeviceRule::parse("c 136:* rwm").unwrap(),
            DeviceRule {
                kind: Some(2),
                major: Some(136),
                minor: None,
                access: 7
            }
        );
        assert_eq!(
            DeviceRule::parse("b *:* m").unwrap(),
            DeviceRule {
                kind: Some(1),
                major: None,
                minor: None,
                access: 1
            }
        );
        assert!(DeviceRule::parse("x 1:2 r").is_err());
        assert!(DeviceRule::parse("c 1:2 q").is_err());
    }

    #[test]
    fn each_rule_is_a_block_that_skips_to_the_next_on_a_mismatch() {
        let rule = DeviceRule::parse("c 1:3 rw").unwrap();
        let p = program(&[rule]);
        // 6 loads, then: type check, 3 for access, major, minor, allow, then deny.
        assert_eq!(p.len(), 6 + 1 + 3 + 1 + 1 + 2 + 2);
        let jumps: Vec<(i16, i32)> = p
            .iter()
            .filter(|i| i.code == JNE_IMM)
            .map(|i| (i.off, i.imm))
            .collect();
        // Each jump lands on the instruction after the block's exit.
        assert_eq!(jumps, [(7, 2), (4, 0), (3, 1), (2, 3)]);
        // mknod (1) is the only access not allowed.
        assert!(p.iter().any(|i| i.code == AND64_IMM && i.imm == 1));
    }

    /// Real kernel: a shell moved into a cgroup with the filter may open /dev/null
    /// but not a block device (EPERM rather than the ENXIO of a major with no driver).
    #[test]
    fn the_kernel_enforces_the_filter() {
        let Some(unified) = crate::container::cgroups::v2_mount() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let cg = unified.join(format!("skiff-devtest-{}", std::process::id()));
        std::fs::create_dir(&cg).unwrap();
        let rules: Vec<DeviceRule> = crate::container::cgroups::DEFAULT_DEVICE_RULES
            .iter()
            .map(|r| DeviceRule::parse(r).unwrap())
            .collect();
        let attached = attach(&cg, &rules);
        let dir = tempfile::tempdir().unwrap();
        let block = dir.path().join("blk");
        nix::sys::stat::mknod(
            &block,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(240, 250),
        )
        .unwrap();
        let script = format!(
            "echo $$ > {}/cgroup.procs && cat /dev/null && echo null-ok; cat {} 2>&1",
            cg.display(),
            block.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir(&cg);
        attached.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("null-ok"), "{text}");
        assert!(text.contains("Operation not permitted"), "{text}");
    }
}
