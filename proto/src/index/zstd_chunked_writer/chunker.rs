//! Where a file's content is cut into chunks, the way containers/storage's
//! compressor cuts it: a run of at least [`HOLE_THRESHOLD`] zero bytes is a chunk of
//! its own (a hole, `chunkType: "zeros"`), and the other bytes are cut where a
//! bup-style rolling checksum over the last 64 bytes has its low [`ROLLSUM_BITS`] bits
//! set (64 KiB chunks on average). Cutting at the same content-defined places as
//! containers/storage lets identical chunks of different layers have the same
//! digests. Unlike it, chunks are also capped (at the caller's maximum), so that
//! pathological content (no cut point in megabytes) still makes chunks a reader
//! accepts.

use std::io;

/// Low bits of the rolling checksum that must all be set for a cut.
pub const ROLLSUM_BITS: u32 = 16;
/// Shortest run of zeros that becomes a hole.
pub const HOLE_THRESHOLD: u64 = 1 << 10;

/// What the chunker tells its sink, in content order.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut<'a> {
    /// Bytes of the current data chunk (which starts with the first of them).
    Data(&'a [u8]),
    /// The current data chunk ends here.
    EndData,
    /// A hole of this many zero bytes: a chunk on its own.
    Hole(u64),
}

/// The rolling checksum of bup (and librsync), as containers/storage uses it.
struct RollSum {
    s1: u32,
    s2: u32,
    window: [u8; WINDOW],
    wofs: usize,
}

const WINDOW: usize = 64;
const CHAR_OFFSET: u32 = 31;

impl RollSum {
    fn new() -> Self {
        RollSum {
            s1: WINDOW as u32 * CHAR_OFFSET,
            s2: WINDOW as u32 * (WINDOW as u32 - 1) * CHAR_OFFSET,
            window: [0; WINDOW],
            wofs: 0,
        }
    }

    fn roll(&mut self, ch: u8) {
        let drop = u32::from(self.window[self.wofs]);
        self.s1 = self.s1.wrapping_add(u32::from(ch)).wrapping_sub(drop);
        self.s2 = self.s2.wrapping_add(
            self.s1
                .wrapping_sub((WINDOW as u32).wrapping_mul(drop + CHAR_OFFSET)),
        );
        self.window[self.wofs] = ch;
        self.wofs = (self.wofs + 1) & (WINDOW - 1);
    }

    /// Rolls `n` zero bytes in: once the window holds only zeros, each further zero
    /// adds the same amount to `s2`, so long holes cost no more than 64 rolls.
    fn roll_zeros(&mut self, n: u64) {
        let first = n.min(WINDOW as u64);
        for _ in 0..first {
            self.roll(0);
        }
        let rest = n - first;
        // Wrapping arithmetic is mod 2^32, so only `rest` mod 2^32 matters.
        let step = self.s1.wrapping_sub(WINDOW as u32 * CHAR_OFFSET);
        self.s2 = self.s2.wrapping_add((rest as u32).wrapping_mul(step));
        self.wofs = (self.wofs + (rest % WINDOW as u64) as usize) & (WINDOW - 1);
    }

    fn on_split(&self) -> bool {
        let mask = (1u32 << ROLLSUM_BITS) - 1;
        self.s2 & mask == mask
    }
}

/// Cuts one file's content into chunks; feed it the content in order, then
/// [`Chunker::finish`].
pub struct Chunker {
    roll: RollSum,
    /// Zero bytes seen and not yet known to be a hole or data.
    zeros: u64,
    /// Length of the current data chunk.
    data_len: u64,
    max_data: u64,
    max_hole: u64,
}

impl Chunker {
    /// A chunker for a new file: data chunks of at most `max_data` bytes, holes of
    /// at most `max_hole` (longer ones are cut into several).
    pub fn new(max_data: u64, max_hole: u64) -> Self {
        Chunker {
            roll: RollSum::new(),
            zeros: 0,
            data_len: 0,
            max_data: max_data.max(1),
            max_hole: max_hole.max(HOLE_THRESHOLD),
        }
    }

    /// Takes the next bytes of the file.
    pub fn feed(
        &mut self,
        buf: &[u8],
        sink: &mut impl FnMut(Cut<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        // `buf[start..i]` are data bytes not yet handed to `sink`.
        let mut start = 0;
        for (i, &b) in buf.iter().enumerate() {
            if b == 0 {
                if start < i {
                    sink(Cut::Data(&buf[start..i]))?;
                }
                start = i + 1;
                self.zeros += 1;
                continue;
            }
            if self.zeros > 0 {
                self.flush_zeros(sink)?;
            }
            self.roll.roll(b);
            self.data_len += 1;
            if self.roll.on_split() || self.data_len >= self.max_data {
                sink(Cut::Data(&buf[start..=i]))?;
                sink(Cut::EndData)?;
                self.data_len = 0;
                start = i + 1;
            }
        }
        if start < buf.len() {
            sink(Cut::Data(&buf[start..]))?;
        }
        Ok(())
    }

    /// Ends the file: the last chunk ends.
    pub fn finish(mut self, sink: &mut impl FnMut(Cut<'_>) -> io::Result<()>) -> io::Result<()> {
        self.flush_zeros(sink)?;
        if self.data_len > 0 {
            sink(Cut::EndData)?;
        }
        Ok(())
    }

    /// The pending zeros become a hole, or data bytes when there are too few.
    fn flush_zeros(&mut self, sink: &mut impl FnMut(Cut<'_>) -> io::Result<()>) -> io::Result<()> {
        let n = std::mem::take(&mut self.zeros);
        if n >= HOLE_THRESHOLD {
            if self.data_len > 0 {
                sink(Cut::EndData)?;
                self.data_len = 0;
            }
            self.roll.roll_zeros(n);
            let mut left = n;
            while left > 0 {
                let len = left.min(self.max_hole);
                sink(Cut::Hole(len))?;
                left -= len;
            }
            return Ok(());
        }
        static ZEROS: [u8; HOLE_THRESHOLD as usize] = [0; HOLE_THRESHOLD as usize];
        let mut run = 0usize;
        for _ in 0..n {
            self.roll.roll(0);
            self.data_len += 1;
            run += 1;
            if self.roll.on_split() || self.data_len >= self.max_data {
                sink(Cut::Data(&ZEROS[..run]))?;
                sink(Cut::EndData)?;
                self.data_len = 0;
                run = 0;
            }
        }
        if run > 0 {
            sink(Cut::Data(&ZEROS[..run]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Chunks of `data` fed in `piece`-byte pieces: (is a hole, bytes).
    fn chunks(data: &[u8], piece: usize, max: u64) -> Vec<(bool, Vec<u8>)> {
        let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut open = false;
        let mut sink = |c: Cut<'_>| {
            match c {
                Cut::Data(b) => {
                    if !open {
                        out.push((false, Vec::new()));
                        open = true;
                    }
                    out.last_mut().unwrap().1.extend_from_slice(b);
                }
                Cut::EndData => {
                    assert!(open, "end of a chunk never started");
                    open = false;
                }
                Cut::Hole(n) => {
                    assert!(!open, "hole inside a data chunk");
                    out.push((true, vec![0; n as usize]));
                }
            }
            Ok(())
        };
        let mut c = Chunker::new(max, 1 << 20);
        for p in data.chunks(piece) {
            c.feed(p, &mut sink).unwrap();
        }
        c.finish(&mut sink).unwrap();
        assert!(!open, "last chunk left open");
        out
    }

    /// Bytes with no structure (xorshift) from `seed`.
    pub(crate) fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn cuts_are_content_defined_and_cover_the_content() {
        let mut data = pseudo_random(600_000, 7);
        data[100_000..103_000].fill(0); // a hole
        (data[99_999], data[103_000]) = (1, 1);
        data[200_000..200_500].fill(0); // too short for a hole
        let a = chunks(&data, 4096, u64::MAX);
        let b = chunks(&data, 77, u64::MAX);
        assert_eq!(a, b, "cuts depend on how the content is fed");
        let joined: Vec<u8> = a.iter().flat_map(|c| c.1.clone()).collect();
        assert!(joined == data);
        assert!(a.len() > 4, "{} chunks", a.len());
        let holes: Vec<usize> = a.iter().filter(|c| c.0).map(|c| c.1.len()).collect();
        assert_eq!(holes, [3000]);
        // The same content after a different prefix is cut at the same places.
        let mut shifted = pseudo_random(1000, 9);
        shifted.extend_from_slice(&data[300_000..]);
        let tail: Vec<Vec<u8>> = chunks(&shifted, 4096, u64::MAX)
            .into_iter()
            .map(|c| c.1)
            .collect();
        let common = a.iter().filter(|c| tail.contains(&c.1)).count();
        assert!(common >= 2, "no chunk shared after a shift");
    }

    #[test]
    fn chunks_are_capped_and_zeros_roll_like_bytes() {
        let data = vec![1u8; 10_000];
        let c = chunks(&data, 1000, 3000);
        assert_eq!(
            c.iter().map(|c| c.1.len()).collect::<Vec<_>>(),
            [3000, 3000, 3000, 1000]
        );
        for n in [0u64, 5, 64, 65, 1000, 1 << 33] {
            let (mut fast, mut slow) = (RollSum::new(), RollSum::new());
            for b in pseudo_random(100, n) {
                fast.roll(b);
                slow.roll(b);
            }
            fast.roll_zeros(n);
            for _ in 0..n.min(100_000) {
                slow.roll(0);
            }
            if n <= 100_000 {
                assert_eq!(
                    (fast.s1, fast.s2, fast.wofs, fast.window),
                    (slow.s1, slow.s2, slow.wofs, slow.window),
                    "{n} zeros"
                );
            }
        }
    }
}
