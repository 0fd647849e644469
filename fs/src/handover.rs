//! What lets a later process serve a mount's FUSE connection after this one is gone
//! (`skiff daemon` restarting without unmounting).
//!
//! The connection itself (the `/dev/fuse` descriptor) is kept open elsewhere and given
//! back; the kernel keeps every inode number and file handle it was told about, so the
//! new server must answer for them. Inode numbers need nothing kept: lower ones are
//! the image's ([`crate::tree::LowerTree::ino`], the same in every process for the
//! same layer indexes), upper ones come from the upper directory, and an inode the new
//! node table does not know is found again from them (`fuse::recover`). File handles
//! are reopened on first use from the inode and the open flags the kernel sends with
//! each request; [`RestartConfig::generation`] keeps new handles from colliding with
//! old ones. What must be kept is what the kernel negotiated at INIT
//! ([`Negotiated`]) and the passthrough backing files registered on the connection
//! ([`Backing`]): the kernel refuses a second backing file for an inode still open in
//! passthrough mode, so a later open of that inode must name the same one.

use std::sync::Arc;

/// What a mount's INIT negotiated that its server decides from (the same for every
/// later server of the connection: the kernel sends INIT once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Negotiated {
    /// The kernel agreed to FUSE passthrough.
    pub passthrough: bool,
}

/// How an open inode's I/O is done on a connection: through a passthrough backing
/// file registered for it, or ([`NO_BACKING`]) through the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backing {
    /// The inode it backs.
    pub ino: u64,
    /// The kernel's backing id (valid on this connection until closed).
    pub id: u32,
    /// Whether the backing file is the upper file (else a cached copy of a lower file).
    pub upper: bool,
}

/// [`Backing::id`] of an inode opened in page-cache mode (no backing file): the
/// kernel refuses passthrough opens of it while such an open lasts. The kernel never
/// gives out backing id 0.
pub const NO_BACKING: u32 = 0;

/// Told, before the kernel hears of it, of every backing file an inode's passthrough
/// starts with (`Some`) and, before it is closed, of its end (`None`), so the record
/// outlives this process.
pub type BackingLog = Arc<dyn Fn(u64, Option<Backing>) + Send + Sync>;

/// How a mount's server continues an earlier one, or prepares for a later one.
#[derive(Clone, Default)]
pub struct RestartConfig {
    /// How many servers this connection had before this one: new file handles start
    /// at `generation << 40`, above every handle an earlier server gave out.
    pub generation: u32,
    /// Set when taking over an initialized connection: what its INIT negotiated.
    pub resumed: Option<Negotiated>,
    /// The backing files earlier servers registered and did not close.
    pub backings: Vec<Backing>,
    /// Where backing files are recorded (`None`: nowhere, the mount ends with us).
    pub backing_log: Option<BackingLog>,
}

impl RestartConfig {
    /// The first file handle this server gives out.
    pub fn fh_base(&self) -> u64 {
        u64::from(self.generation) << 40
    }
}

impl std::fmt::Debug for RestartConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestartConfig")
            .field("generation", &self.generation)
            .field("resumed", &self.resumed)
            .field("backings", &self.backings.len())
            .field("backing_log", &self.backing_log.is_some())
            .finish()
    }
}

/// Puts the requests an earlier server read but never answered back in the
/// connection's queue (`FUSE_NOTIFY_RESEND`, Linux >= 6.9), so a server that died
/// halfway leaves no caller waiting forever. A resent request may have been carried
/// out already (a `mkdir` done but not answered then gets `EEXIST`); reads are simply
/// answered.
pub fn resend_unanswered(fuse: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    // struct fuse_out_header { len: u32, error: i32 (the notify code), unique: u64 = 0 }
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    nix::unistd::write(fuse, &msg)?;
    Ok(())
}
