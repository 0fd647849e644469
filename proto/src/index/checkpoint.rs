//! Random access into one deflate stream through checkpoints (zran).
//!
//! A gzip layer is one long deflate stream (or several gzip members back to back).
//! Deflate can resume at any block boundary if the decoder is given the bit position
//! and the 32 KiB of output that precede it (the back-reference window); zlib's
//! `examples/zran.c` shows the technique. [`crate::index::gzip`] records such
//! [`Checkpoint`]s while indexing; [`inflate_from`] resumes at one.

use super::model::Checkpoint;
use libz_sys as z;
use std::ffi::{c_int, c_void, CStr};

/// Size of the deflate back-reference window.
pub const WINDOW_SIZE: usize = 32 << 10;

/// Window bits for raw deflate (no zlib or gzip wrapper).
pub(crate) const RAW: c_int = -15;
/// Window bits for a gzip (or zlib) wrapper, detected automatically.
pub(crate) const AUTO_HEADER: c_int = 15 + 32;

/// What one [`Inflater::inflate`] call achieved.
pub(crate) struct Step {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
    /// The deflate (or gzip member) stream ended.
    pub stream_end: bool,
    /// Neither input nor output could advance (needs more input).
    pub stalled: bool,
}

/// A safe wrapper around one zlib inflate stream.
pub(crate) struct Inflater {
    // Boxed: zlib's state keeps a pointer back to the z_stream, so it must not move.
    strm: Box<z::z_stream>,
}

extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void);
}

extern "C" fn zalloc(_opaque: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    match (items as usize).checked_mul(size as usize) {
        // SAFETY: plain libc allocation; zlib frees it with `zfree`.
        Some(n) => unsafe { malloc(n) },
        None => std::ptr::null_mut(),
    }
}

extern "C" fn zfree(_opaque: z::voidpf, ptr: z::voidpf) {
    // SAFETY: `ptr` came from `zalloc` (or is null, which free accepts).
    unsafe { free(ptr) }
}

impl Inflater {
    /// A new inflater; `window_bits` is [`RAW`] or [`AUTO_HEADER`].
    pub fn new(window_bits: c_int) -> Result<Inflater, String> {
        let mut strm = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: strm is fully initialised and stays at a fixed address (boxed).
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        if rc != z::Z_OK {
            return Err(format!("inflateInit2 failed with code {rc}"));
        }
        Ok(Inflater { strm })
    }

    /// Restarts the stream, e.g. at the next gzip member.
    pub fn reset(&mut self, window_bits: c_int) -> Result<(), String> {
        // SAFETY: the stream was initialised by `new`.
        let rc = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        self.check(rc, "inflateReset2")
    }

    /// Feeds the `bits` high bits of `byte` that belong to the stream (zran's prime).
    pub fn prime(&mut self, bits: u8, byte: u8) -> Result<(), String> {
        if bits == 0 {
            return Ok(());
        }
        if bits > 7 {
            return Err(format!("checkpoint bit offset {bits} is not 0-7"));
        }
        let value = (byte as c_int) >> (8 - bits);
        // SAFETY: initialised stream; bits in 1..=7.
        let rc = unsafe { z::inflatePrime(&mut *self.strm, bits as c_int, value) };
        self.check(rc, "inflatePrime")
    }

    /// Installs the back-reference window (raw streams only).
    pub fn set_dictionary(&mut self, window: &[u8]) -> Result<(), String> {
        if window.is_empty() {
            return Ok(());
        }
        if window.len() > WINDOW_SIZE {
            return Err(format!(
                "checkpoint window of {} bytes is too large",
                window.len()
            ));
        }
        // SAFETY: pointer and length describe `window`, which zlib copies.
        let rc = unsafe {
            z::inflateSetDictionary(&mut *self.strm, window.as_ptr(), window.len() as z::uInt)
        };
        self.check(rc, "inflateSetDictionary")
    }

    /// zlib's `data_type`: unused bits in the last input byte (0-7), +64 in the last
    /// block, +128 right after a block boundary or a gzip header.
    pub fn data_type(&self) -> c_int {
        self.strm.data_type
    }

    /// Runs inflate once over `input` into `output` with `flush` (`Z_NO_FLUSH` or
    /// `Z_BLOCK`).
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        flush: c_int,
    ) -> Result<Step, String> {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        self.strm.next_in = input.as_ptr() as *mut u8;
        self.strm.avail_in = in_len as z::uInt;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as z::uInt;
        // SAFETY: next_in/next_out point into live slices of the given lengths; zlib
        // never writes through next_in.
        let rc = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = in_len - self.strm.avail_in as usize;
        let produced = out_len - self.strm.avail_out as usize;
        self.strm.next_in = std::ptr::null_mut();
        self.strm.next_out = std::ptr::null_mut();
        match rc {
            z::Z_OK => Ok(Step {
                consumed,
                produced,
                stream_end: false,
                stalled: false,
            }),
            z::Z_STREAM_END => Ok(Step {
                consumed,
                produced,
                stream_end: true,
                stalled: false,
            }),
            z::Z_BUF_ERROR => Ok(Step {
                consumed,
                produced,
                stream_end: false,
                stalled: true,
            }),
            z::Z_NEED_DICT => Err("deflate stream needs a preset dictionary".into()),
            other => Err(self.message(other, "inflate")),
        }
    }

    fn check(&self, rc: c_int, what: &str) -> Result<(), String> {
        if rc == z::Z_OK {
            Ok(())
        } else {
            Err(self.message(rc, what))
        }
    }

    fn message(&self, rc: c_int, what: &str) -> String {
        let msg = if self.strm.msg.is_null() {
            String::new()
        } else {
            // SAFETY: zlib sets msg to a static NUL-terminated string.
            unsafe { CStr::from_ptr(self.strm.msg) }
                .to_string_lossy()
                .into_owned()
        };
        format!("{what} failed (code {rc}): {msg}")
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`; ends exactly once.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

/// Inflates from `checkpoint` over `raw` (blob bytes starting at the checkpoint's
/// `blob_offset`, or one byte earlier when `bits` is non-zero), drops `skip` output
/// bytes and returns the next `len`. Crossing into a following gzip member is handled
/// (its trailer is skipped and its header parsed).
pub fn inflate_from(
    checkpoint: &Checkpoint,
    raw: &[u8],
    skip: u64,
    len: usize,
) -> Result<Vec<u8>, String> {
    let mut inf = Inflater::new(RAW)?;
    let mut input = raw;
    if checkpoint.bits != 0 {
        let (&first, rest) = input
            .split_first()
            .ok_or_else(|| "no input bytes for a checkpoint with a bit offset".to_string())?;
        inf.prime(checkpoint.bits, first)?;
        input = rest;
    }
    inf.set_dictionary(&checkpoint.window)?;
    let mut out = Vec::with_capacity(len.min(64 << 20));
    let mut to_skip = skip;
    let mut buf = vec![0u8; 64 << 10];
    let mut raw_mode = true;
    while out.len() < len {
        let step = inf.inflate(input, &mut buf, z::Z_NO_FLUSH)?;
        input = &input[step.consumed..];
        let mut produced = &buf[..step.produced];
        if to_skip > 0 {
            let n = (to_skip.min(produced.len() as u64)) as usize;
            produced = &produced[n..];
            to_skip -= n as u64;
        }
        let want = len - out.len();
        out.extend_from_slice(&produced[..produced.len().min(want)]);
        if out.len() >= len {
            break;
        }
        if step.stream_end {
            // End of this gzip member: a raw stream is followed by the 8-byte trailer;
            // a gzip-wrapped one has consumed its own trailer.
            if raw_mode {
                if input.len() < 8 {
                    return Err("input ends inside a gzip member trailer".into());
                }
                input = &input[8..];
                raw_mode = false;
            }
            if input.is_empty() {
                return Err(format!(
                    "deflate stream ended after {} of {len} wanted bytes",
                    out.len()
                ));
            }
            inf.reset(AUTO_HEADER)?;
            continue;
        }
        if step.stalled || (step.consumed == 0 && step.produced == 0) {
            return Err(format!(
                "fetched compressed bytes end after {} of {len} wanted bytes",
                out.len()
            ));
        }
    }
    Ok(out)
}
