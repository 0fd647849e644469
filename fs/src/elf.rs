//! Just enough ELF to tell, from the bytes of a program or shared library that have
//! been fetched so far, which other files the dynamic loader will open next
//! (`PT_INTERP`, `DT_NEEDED`, `DT_RUNPATH`) and which byte ranges of a library it
//! touches while loading it (headers, the first read-only segment with the symbol
//! tables, the writable segments it relocates).
//!
//! Hand-written rather than a general ELF crate because it must work on a *sparse*
//! file: a few fetched pieces of a lazily read file, where a full parser would refuse
//! the missing parts. Everything is bounds-checked; bytes from an image are hostile,
//! and a malformed file only yields fewer predictions.

use std::ops::Range;

/// `PT_LOAD`.
const PT_LOAD: u32 = 1;
/// `PT_DYNAMIC`.
const PT_DYNAMIC: u32 = 2;
/// `PT_INTERP`.
const PT_INTERP: u32 = 3;
/// Executable and writable segment flags.
const PF_X: u32 = 1;
const PF_W: u32 = 2;
/// Longest library file name [`library_like_names`] takes.
const MAX_LIBRARY_NAME: usize = 128;
/// `DT_NEEDED`, `DT_STRTAB`, `DT_STRSZ`, `DT_RPATH`, `DT_RUNPATH`.
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Most program headers looked at (real files have about a dozen).
const MAX_PHDRS: usize = 64;
/// Most dynamic entries looked at.
const MAX_DYN_ENTRIES: usize = 1024;
/// Most libraries one object may name.
const MAX_NEEDED: usize = 64;
/// Longest name or path taken from a string table.
const MAX_NAME: usize = 4096;

/// Pieces of one file: `(file offset, bytes)`, as fetched.
#[derive(Default)]
pub struct Sparse<'a> {
    parts: Vec<(u64, &'a [u8])>,
}

impl<'a> Sparse<'a> {
    /// A file of which only `parts` are known.
    pub fn new(parts: Vec<(u64, &'a [u8])>) -> Sparse<'a> {
        Sparse { parts }
    }

    /// `len` bytes at `offset`, if one piece holds them all.
    pub fn get(&self, offset: u64, len: u64) -> Option<&'a [u8]> {
        let end = offset.checked_add(len)?;
        self.parts.iter().find_map(|&(start, bytes)| {
            let stop = start.checked_add(bytes.len() as u64)?;
            if offset >= start && end <= stop {
                let from = usize::try_from(offset - start).ok()?;
                bytes.get(from..from + usize::try_from(len).ok()?)
            } else {
                None
            }
        })
    }

    /// The NUL-terminated string at `offset` (within `limit` bytes of it).
    fn c_str(&self, offset: u64, limit: u64) -> Option<String> {
        let (start, bytes) = self.parts.iter().copied().find(|&(start, bytes)| {
            offset >= start && offset < start.saturating_add(bytes.len() as u64)
        })?;
        let from = usize::try_from(offset - start).ok()?;
        let room = bytes
            .len()
            .saturating_sub(from)
            .min(limit.min(MAX_NAME as u64) as usize);
        let text = bytes.get(from..from + room)?;
        let nul = text.iter().position(|&b| b == 0)?;
        String::from_utf8(text[..nul].to_vec()).ok()
    }
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// The program headers of an ELF file (little-endian, 32 or 64 bit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    wide: bool,
    /// File range of the ELF header and program header table.
    header_end: u64,
    segments: Vec<Segment>,
}

/// What the loader will look for after loading an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or the older `DT_RPATH`) directories, `$ORIGIN` not expanded.
    pub runpath: Vec<String>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The strings in `bytes` (taken as NUL-separated, as in a string table) that look
/// like library file names: `lib*.so` or `ld-*.so`, optionally with a numeric version
/// (`libm.so.6`, `libisl.so.23`, `ld-linux-x86-64.so.2`). In an ELF file's string
/// table these are the libraries it needs (and its own soname): a guess at what its
/// dynamic section names, made before that section is in. A guess only: whatever a
/// file holds, these are names to look up, nothing more.
pub fn library_like_names(bytes: &[u8]) -> impl Iterator<Item = &str> {
    bytes.split(|&b| b == 0).filter_map(|s| {
        if s.len() < 6 || s.len() > MAX_LIBRARY_NAME {
            return None;
        }
        if !(s.starts_with(b"lib") || s.starts_with(b"ld-")) {
            return None;
        }
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"._+-".contains(b);
        if !s.iter().all(allowed) {
            return None;
        }
        let text = std::str::from_utf8(s).ok()?;
        let at = text.find(".so").filter(|&at| at > 3)?;
        let version = &text[at + 3..];
        let numeric = version.is_empty()
            || (version.starts_with('.')
                && version[1..]
                    .split('.')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())));
        numeric.then_some(text)
    })
}

/// Longest absolute path [`absolute_paths`] returns.
const MAX_PATH: usize = 255;

/// The NUL-terminated strings in `bytes` that look like absolute paths of files
/// (`/usr/share/nodejs/undici/undici-fetch.js`: at least two components of file
/// name characters, no `.` or `..` component). In a program's read-only data these
/// are files it may open (libnode names the five JavaScript files node loads as it
/// starts). Names to look up, nothing more.
pub fn absolute_paths(bytes: &[u8]) -> impl Iterator<Item = &str> {
    memchr::memmem::find_iter(bytes, b"\0/").filter_map(move |at| {
        let rest = &bytes[at + 1..];
        let end = memchr::memchr(0, rest)?;
        let s = &rest[..end];
        if s.len() < 4 || s.len() > MAX_PATH {
            return None;
        }
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"._+-/@".contains(b);
        if !s.iter().all(allowed) {
            return None;
        }
        let text = std::str::from_utf8(s).ok()?;
        let components: Vec<&str> = text[1..].split('/').collect();
        let plain = components.len() >= 2
            && components
                .iter()
                .all(|c| !c.is_empty() && *c != "." && *c != "..");
        plain.then_some(text)
    })
}

/// Whether `head` (a file's first bytes) starts like an ELF file.
pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

/// The program headers, if the file's start (ELF header and program header table)
/// is among the known pieces. Big-endian files are not handled (`None`).
pub fn headers(file: &Sparse) -> Option<Headers> {
    let ident = file.get(0, 16)?;
    if !is_elf(ident) || ident[5] != 1 {
        return None;
    }
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let eh = file.get(0, if wide { 64 } else { 52 })?;
    let (phoff, phentsize, phnum) = if wide {
        (u64_at(eh, 0x20)?, u16_at(eh, 0x36)?, u16_at(eh, 0x38)?)
    } else {
        (
            u64::from(u32_at(eh, 0x1c)?),
            u16_at(eh, 0x2a)?,
            u16_at(eh, 0x2c)?,
        )
    };
    let (entsize, phnum) = (u64::from(phentsize), usize::from(phnum).min(MAX_PHDRS));
    if entsize < if wide { 56 } else { 32 } {
        return None;
    }
    let table_len = entsize.checked_mul(phnum as u64)?;
    let table = file.get(phoff, table_len)?;
    let mut segments = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let p = table.get(i * entsize as usize..)?;
        segments.push(if wide {
            Segment {
                kind: u32_at(p, 0)?,
                flags: u32_at(p, 4)?,
                offset: u64_at(p, 8)?,
                vaddr: u64_at(p, 16)?,
                filesz: u64_at(p, 32)?,
            }
        } else {
            Segment {
                kind: u32_at(p, 0)?,
                offset: u64::from(u32_at(p, 4)?),
                vaddr: u64::from(u32_at(p, 8)?),
                filesz: u64::from(u32_at(p, 16)?),
                flags: u32_at(p, 24)?,
            }
        });
    }
    Some(Headers {
        wide,
        header_end: phoff
            .checked_add(table_len)?
            .max(if wide { 64 } else { 52 }),
        segments,
    })
}

impl Headers {
    /// The program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`), if
    /// its bytes are known.
    pub fn interp(&self, file: &Sparse) -> Option<String> {
        let s = self.segments.iter().find(|s| s.kind == PT_INTERP)?;
        file.c_str(s.offset, s.filesz).filter(|p| !p.is_empty())
    }

    /// The file range of the ELF header and program header table.
    pub fn header_range(&self) -> Range<u64> {
        0..self.header_end
    }

    /// The file range of the dynamic section, if the file has one.
    pub fn dynamic_range(&self) -> Option<Range<u64>> {
        let s = self.segments.iter().find(|s| s.kind == PT_DYNAMIC)?;
        Some(s.offset..s.offset.checked_add(s.filesz)?)
    }

    /// The file ranges the dynamic loader reads while loading this object as a
    /// library, before any of its code runs: the headers, the first loadable segment
    /// (symbol, string and hash tables and relocations sit there in what linkers
    /// write today), every writable loadable segment (relocated in place) and the
    /// dynamic section. Text pages are left to be read when they are run.
    pub fn loader_ranges(&self) -> Vec<Range<u64>> {
        let mut out = vec![0..self.header_end];
        let loads = self.segments.iter().filter(|s| s.kind == PT_LOAD);
        for (i, s) in loads.enumerate() {
            if i == 0 || s.flags & PF_W != 0 {
                if let Some(end) = s.offset.checked_add(s.filesz) {
                    out.push(s.offset..end);
                }
            }
        }
        out.extend(self.dynamic_range());
        out
    }

    /// The file range of the first loadable segment, when it starts the file and is
    /// not executable: where linkers put the dynamic symbol and string tables in
    /// what they write today (and so the names of the libraries needed), before the
    /// text.
    pub fn first_table_segment(&self) -> Option<Range<u64>> {
        let s = self.segments.iter().find(|s| s.kind == PT_LOAD)?;
        (s.offset == 0 && s.flags & PF_X == 0).then_some(0..s.filesz)
    }

    /// The file offset of virtual address `vaddr`, through the loadable segments.
    fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| s.kind == PT_LOAD)
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
            .and_then(|s| s.offset.checked_add(vaddr - s.vaddr))
    }

    /// The dynamic section's entries (tag, value), if its bytes are known.
    fn dynamic_entries(&self, file: &Sparse) -> Option<Vec<(u64, u64)>> {
        let range = self.dynamic_range()?;
        let bytes = file.get(range.start, range.end - range.start)?;
        let size = if self.wide { 16 } else { 8 };
        let mut entries = Vec::new();
        for e in bytes.chunks_exact(size).take(MAX_DYN_ENTRIES) {
            let (tag, val) = if self.wide {
                (u64_at(e, 0)?, u64_at(e, 8)?)
            } else {
                (u64::from(u32_at(e, 0)?), u64::from(u32_at(e, 4)?))
            };
            if tag == 0 {
                break;
            }
            entries.push((tag, val));
        }
        Some(entries)
    }

    /// The string table's file offset and size, from the dynamic section `entries`.
    fn string_table(&self, entries: &[(u64, u64)]) -> Option<(u64, u64)> {
        let find = |t: u64| entries.iter().find(|(tag, _)| *tag == t).map(|(_, v)| *v);
        let strtab = self.file_offset(find(DT_STRTAB)?)?;
        Some((strtab, find(DT_STRSZ).unwrap_or(MAX_NAME as u64)))
    }

    /// The file range holding the names the dynamic section points at (needed
    /// libraries, run path), once the dynamic section's bytes are known: in a big
    /// library they sit at the end of a string table megabytes long, chunks away
    /// from both the headers and the dynamic section. `None` without such names.
    pub fn needed_strings(&self, file: &Sparse) -> Option<Range<u64>> {
        let entries = self.dynamic_entries(file)?;
        let (strtab, strsz) = self.string_table(&entries)?;
        let offsets = entries
            .iter()
            .filter(|(tag, _)| matches!(*tag, DT_NEEDED | DT_RUNPATH | DT_RPATH))
            .map(|(_, v)| *v)
            .filter(|v| *v < strsz);
        let (first, last) = offsets.fold(None, |acc: Option<(u64, u64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })?;
        let end = last.saturating_add(MAX_NAME as u64).min(strsz);
        Some(strtab.checked_add(first)?..strtab.checked_add(end)?)
    }

    /// The libraries and search path the dynamic section names, if it and its string
    /// table are among the known pieces.
    pub fn dynamic(&self, file: &Sparse) -> Option<Dynamic> {
        let entries = self.dynamic_entries(file)?;
        let (strtab, strsz) = self.string_table(&entries)?;
        let string = |off: u64| {
            if off >= strsz {
                return None;
            }
            file.c_str(strtab.checked_add(off)?, strsz - off)
        };
        let mut dynamic = Dynamic::default();
        for &(tag, val) in &entries {
            match tag {
                DT_NEEDED if dynamic.needed.len() < MAX_NEEDED => {
                    // A name whose string is not fetched yet makes the answer
                    // incomplete: report nothing rather than half.
                    dynamic.needed.push(string(val)?);
                }
                DT_RUNPATH | DT_RPATH => {
                    let paths = string(val)?;
                    dynamic
                        .runpath
                        .extend(paths.split(':').filter(|p| !p.is_empty()).map(String::from));
                }
                _ => {}
            }
        }
        Some(dynamic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself: a real ELF file with a dynamic section (cargo links
    /// test binaries dynamically against libc).
    fn this_binary() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn the_needed_names_are_found_from_the_dynamic_section_alone() {
        let bytes = this_binary();
        let whole = Sparse::new(vec![(0, &bytes[..])]);
        let h = headers(&whole).expect("an ELF file");
        let want = h.dynamic(&whole).expect("dynamic section");
        // Only the headers and the dynamic section known: where the names are, not
        // what they say.
        let head = h.header_range();
        let dynr = h.dynamic_range().unwrap();
        let pieces = |ranges: &[std::ops::Range<u64>]| {
            Sparse::new(
                ranges
                    .iter()
                    .map(|r| (r.start, &bytes[r.start as usize..r.end as usize]))
                    .collect(),
            )
        };
        let known = pieces(&[head.clone(), dynr.clone()]);
        assert_eq!(h.dynamic(&known), None);
        let names = h.needed_strings(&known).expect("where the names are");
        assert!(names.end <= bytes.len() as u64 && names.start < names.end);
        // With that range too, the names read as from the whole file.
        let more = pieces(&[head, dynr, names]);
        assert_eq!(h.dynamic(&more), Some(want));
    }

    #[test]
    fn reads_interp_needed_and_loader_ranges_of_a_real_binary() {
        let bytes = this_binary();
        let file = Sparse::new(vec![(0, &bytes[..])]);
        let h = headers(&file).expect("an ELF file");
        let interp = h.interp(&file).expect("PT_INTERP");
        assert!(
            interp.starts_with('/') && interp.contains("ld-"),
            "{interp}"
        );
        let d = h.dynamic(&file).expect("dynamic section");
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        let ranges = h.loader_ranges();
        assert_eq!(ranges[0].start, 0);
        assert!(ranges.iter().all(|r| r.end <= bytes.len() as u64));
        assert!(ranges.contains(&h.dynamic_range().unwrap()));
    }

    #[test]
    fn works_on_a_sparse_file_and_says_nothing_without_the_pieces() {
        let bytes = this_binary();
        let full = Sparse::new(vec![(0, &bytes[..])]);
        let h = headers(&full).unwrap();
        let want = h.dynamic(&full).unwrap();
        // Only the pieces the loader reads: the same answer.
        let pieces: Vec<(u64, &[u8])> = h
            .loader_ranges()
            .into_iter()
            .map(|r| (r.start, &bytes[r.start as usize..r.end as usize]))
            .collect();
        let sparse = Sparse::new(pieces);
        assert_eq!(headers(&sparse).as_ref(), Some(&h));
        assert_eq!(h.dynamic(&sparse), Some(want));
        // Only the header page: headers, but no dynamic section.
        let head = Sparse::new(vec![(0, &bytes[..4096])]);
        let h2 = headers(&head).unwrap();
        assert_eq!(h2.dynamic(&head), None);
        // Nothing at offset 0: nothing at all.
        assert!(headers(&Sparse::new(vec![(4096, &bytes[4096..8192])])).is_none());
    }

    #[test]
    fn absolute_paths_are_found_between_nuls() {
        let data = b"/first/not/after/a/nul\0/usr/share/nodejs/acorn/dist/acorn.js\0\
            /etc\0/etc/hosts\0x/usr/lib/a\0/usr/../etc/shadow\0/usr//lib\0/a b/c\0\
            /opt/app/@scope/mod-1.2+x.js\0/usr/lib/unterminated";
        let found: Vec<&str> = absolute_paths(data).collect();
        assert_eq!(
            found,
            [
                "/usr/share/nodejs/acorn/dist/acorn.js",
                "/etc/hosts",
                "/opt/app/@scope/mod-1.2+x.js"
            ]
        );
        let long = format!("\0/{}\0", "a/".repeat(200));
        assert_eq!(absolute_paths(long.as_bytes()).count(), 0);
    }

    #[test]
    fn library_names_are_guessed_from_a_string_table() {
        let table = b"\0libm.so.6\0sin\0libz.so.1\0GLIBC_2.2.5\0libstdc++.so.6\0\
            ld-linux-x86-64.so.2\0libfoo.so\0libbar.so.x\0libc.so.6.\0lib.so\0\
            notlib.so.1\0libsp ace.so.1\0libisl.so.23\0";
        let names: Vec<&str> = library_like_names(table).collect();
        assert_eq!(
            names,
            [
                "libm.so.6",
                "libz.so.1",
                "libstdc++.so.6",
                "ld-linux-x86-64.so.2",
                "libfoo.so",
                "libisl.so.23"
            ]
        );
        // The test binary's first segment names the libraries its dynamic section
        // needs.
        let bin = this_binary();
        let file = Sparse::new(vec![(0, &bin[..])]);
        let h = headers(&file).unwrap();
        let needed = h.dynamic(&file).unwrap().needed;
        let tables = h.first_table_segment().expect("a read-only first segment");
        let guessed: Vec<&str> =
            library_like_names(&bin[tables.start as usize..tables.end as usize]).collect();
        for n in &needed {
            assert!(
                guessed.contains(&n.as_str()),
                "{n} not guessed from {guessed:?}"
            );
        }
    }

    #[test]
    fn hostile_bytes_give_no_answer_and_no_panic() {
        let bytes = this_binary();
        assert!(headers(&Sparse::new(vec![(0, b"\x7fELF".as_slice())])).is_none());
        assert!(headers(&Sparse::new(vec![(0, b"#!/bin/sh\n".as_slice())])).is_none());
        // Every prefix, and garbage program header offsets: never a panic.
        for cut in [16, 52, 63, 64, 100, 500, 4000] {
            let file = Sparse::new(vec![(0, &bytes[..cut])]);
            if let Some(h) = headers(&file) {
                let _ = (h.interp(&file), h.dynamic(&file), h.loader_ranges());
            }
        }
        let mut evil = bytes[..4096].to_vec();
        evil[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(headers(&Sparse::new(vec![(0, &evil[..])])).is_none());
        let mut evil = bytes[..4096].to_vec();
        evil[0x36..0x38].copy_from_slice(&1u16.to_le_bytes());
        assert!(headers(&Sparse::new(vec![(0, &evil[..])])).is_none());
    }
}
