//! Fetching ahead of the dynamic loader, without a recorded profile.
//!
//! Starting a program costs one round trip per library on a cold mount: the loader
//! opens the interpreter, then each `DT_NEEDED` library, then theirs, one after the
//! other, and each waits for its own miss (python3 on Debian: ld.so, libm, libz,
//! libexpat, libc in turn). The names are all in bytes that are fetched anyway: when
//! the head of an ELF file comes in (exec'd program or library), [`Predictor`] reads
//! its interpreter and needed libraries ([`crate::elf`]), resolves them in the merged
//! tree the way the loader will (`DT_RUNPATH`, then the default directories), and
//! queues for each library its first block ([`plan::RANDOM_READ_BLOCK`], the 4 MiB
//! an eStargz chunk gives: all of most libraries) and the other bytes the loader reads
//! before any code runs (symbol tables, the segments it relocates), then does the
//! same for their needs as those arrive. The text of bigger libraries stays lazy:
//! they are mapped and run sparsely.
//!
//! A file's first chunk can be megabytes that take a fifth of a second to arrive,
//! and its dynamic section usually sits in its last chunk. So the predictor also
//! looks at a first chunk while it arrives ([`Predictor::watch_head`]): its program
//! headers put the dynamic section's chunk on the link at once, and the library
//! names in its first segment are predicted before the chunk is whole. These bytes
//! are unverified and only choose fetches.
//!
//! Past the loader, other files name what a program opens next, and are followed
//! the same way: the arguments of a program exec'd from the image
//! ([`Predictor::exec_opened`], [`crate::exec_args`]: a linker is handed its start
//! files and libraries), the inputs of a linker script standing in for a library
//! ([`crate::ld_script`]: glibc's `libc.so`), and the absolute paths in a program's
//! data as its chunks are read ([`Predictor::on_data`]: libnode names the JavaScript
//! files node loads). All are bounded per file and per image, and resolved inside
//! the image's tree.

use crate::elf::{self, Sparse};
use crate::exec_args::{self, ExecWatch};
use crate::fetcher::{Fetcher, Priority};
use crate::plan;
use crate::tree::{LowerId, LowerTree};
use parking_lot::Mutex;
use skiff_proto::index::{Chunk, EntryKind};
use skiff_proto::Digest;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// Bytes of a predicted library fetched first: a block, as a random read of a big
/// file takes. Libraries in small chunks (zstd:chunked) then cost a round trip each,
/// as they do with eStargz's 4 MiB chunks; with only their first 64 KiB, node on
/// zstd:chunked took 3.8 s instead of 3.1 s, python 1.27 s instead of 1.05 s, gcc 3.45
/// s instead of 2.95 s (100 Mbit/s, 20 ms; eStargz and plain gzip within noise).
const HEAD_BYTES: u64 = plan::RANDOM_READ_BLOCK;
/// Where the loader looks after `DT_RUNPATH` when `ld.so.cache` does not say (the
/// multiarch directories of Debian and Ubuntu first, as their cache lists them).
const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];
/// Most files predicted for one mount: a bound on what a hostile image can queue.
const MAX_PREDICTED: usize = 4096;
/// Decoded bytes of a file's first chunk looked at for its program headers.
const PEEK_HEADERS: usize = 4096;
/// Most decoded bytes of a first chunk looked through for library names.
const MAX_PEEK_NAMES: u64 = 4 << 20;
/// Most library names guessed from one file.
const MAX_GUESSED: usize = 64;
/// Largest file fetched because a program's data names it: configuration and
/// script files, not data sets.
const MAX_DATA_FILE: u64 = 1 << 20;
/// Most files fetched because one chunk of a program names them.
const MAX_DATA_FILES: usize = 16;
/// Most chunks of ELF files looked through for data files, per image.
const MAX_SCANNED: usize = 4096;

/// The files of one image whose loads were predicted, and how to fetch ahead.
pub struct Predictor {
    tree: Arc<LowerTree>,
    fetcher: Arc<Fetcher>,
    /// Files examined or queued already (each is looked at once).
    seen: Mutex<HashSet<LowerId>>,
    /// ELF files whose first chunk was peeked at (each once).
    peeked: Mutex<HashSet<LowerId>>,
    /// ELF files looked at (their data chunks are looked through for data files).
    elf_files: Mutex<HashSet<LowerId>>,
    /// Chunks (file, offset) of ELF files looked through for data files (each once).
    scanned: Mutex<HashSet<(LowerId, u64)>>,
    /// Reads the arguments of programs exec'd from the image (started on the first
    /// exec; `None` inside if its thread could not start).
    exec_watch: OnceLock<Option<ExecWatch>>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor")
            .field("seen", &self.seen.lock().len())
            .finish_non_exhaustive()
    }
}

impl Predictor {
    /// A predictor over `tree`'s files, fetching through `fetcher`.
    pub fn new(tree: Arc<LowerTree>, fetcher: Arc<Fetcher>) -> Predictor {
        Predictor {
            tree,
            fetcher,
            seen: Mutex::new(HashSet::new()),
            peeked: Mutex::new(HashSet::new()),
            exec_watch: OnceLock::new(),
            elf_files: Mutex::new(HashSet::new()),
            scanned: Mutex::new(HashSet::new()),
        }
    }

    /// A program read chunks of lower file `id` past its start (`chunks`, and their
    /// verified `data`): a page fault in its code or data. If the file is an ELF file,
    /// each chunk is looked through once for absolute paths
    /// ([`elf::absolute_paths`]); those naming small regular files of the image that
    /// are not programs are fetched at `Later` priority, as files the program is
    /// about to open. libnode's read-only data names the five JavaScript files node
    /// loads as it starts, which it then read one round trip after another.
    pub fn on_data(self: &Arc<Self>, id: LowerId, chunks: &[Chunk], data: &[Arc<Vec<u8>>]) {
        // (an ELF file whose head was peeked at is known as one before that read is
        // answered; its full look may come after the program's next page fault)
        let elf = self.elf_files.lock().contains(&id) || self.peeked.lock().contains(&id);
        if !elf {
            return;
        }
        let parts = chunks.iter().map(|c| &c.file_offset).zip(data);
        for (offset, bytes) in parts.filter(|(o, _)| **o > 0) {
            {
                let mut scanned = self.scanned.lock();
                if scanned.len() >= MAX_SCANNED || !scanned.insert((id, *offset)) {
                    continue;
                }
            }
            let mut found = 0;
            for path in elf::absolute_paths(bytes) {
                let Some(dep) = self.tree.resolve_file(path) else {
                    continue;
                };
                let Some(node) = self.tree.node(dep) else {
                    continue;
                };
                let data_file = node.entry.mode & 0o111 == 0 && node.entry.size <= MAX_DATA_FILE;
                if !data_file || !self.first_look(dep) {
                    continue;
                }
                if let Some((layer, chunks)) = self.chunks_for(dep, &[0..node.entry.size]) {
                    tracing::debug!(path, "predicted: named in a program's data");
                    self.fetcher
                        .queue_speculative(Priority::Later, layer, chunks);
                }
                found += 1;
                if found == MAX_DATA_FILES {
                    break;
                }
            }
        }
    }

    /// Process `pid` opened lower file `id` for exec: once it runs it, the regular
    /// files of the image its command line names are predicted as libraries are
    /// ([`crate::exec_args`]): gcc's `collect2` is handed the LTO plugin, the start
    /// files and `-lgcc` / `-lc`, which `ld` then opens one after another.
    pub fn exec_opened(self: &Arc<Self>, pid: u32, id: LowerId) {
        let Some(path) = self.tree.node(id).and_then(|n| n.path()) else {
            return;
        };
        let name = crate::tree::split(&path).1;
        let watch = self.exec_watch.get_or_init(|| {
            let me = Arc::downgrade(self);
            let started = ExecWatch::start(Box::new(move |named| {
                if let Some(p) = me.upgrade() {
                    p.predict_named(&named);
                }
            }));
            started
                .map_err(|e| tracing::warn!(error = %e, "no watch of exec'd programs' arguments"))
                .ok()
        });
        if let Some(w) = watch {
            w.exec_opened(pid, name);
        }
    }

    /// Predicts, of each item of `named` (alternative paths), the first that is a
    /// regular file of the image; smallest first, so that the few bytes of start
    /// files and linker scripts do not queue on the link behind a 2 MB archive.
    fn predict_named(self: &Arc<Self>, named: &[Vec<String>]) {
        let mut files: Vec<(u64, LowerId)> = named
            .iter()
            .take(exec_args::MAX_NAMED)
            .filter_map(|candidates| candidates.iter().find_map(|p| self.tree.resolve_file(p)))
            .filter_map(|id| Some((self.tree.node(id)?.entry.size, id)))
            .collect();
        files.sort_unstable();
        files.dedup_by_key(|(_, id)| *id);
        for (_, id) in files {
            if let Some(path) = self.tree.node(id).and_then(|n| n.path()) {
                tracing::debug!(path = %path, "predicted: named on a command line");
            }
            self.predict(id);
        }
    }

    /// The chunks of a read from the start of lower file `id` (exec, or the loader
    /// opening a library) are being fetched: looks at the first of them while it
    /// arrives ([`Fetcher::peek`]), before it is verified. From its program headers
    /// the chunk holding the dynamic section is put on the link at once, and the
    /// libraries named in the file's first (table) segment are predicted as soon as
    /// that segment is decoded ([`elf::library_like_names`]): python3.11's 4 MiB first
    /// chunk arrives over 190 ms, its names are in its first 106 KB. Nothing is
    /// served from these bytes; the verified head is looked at as before
    /// ([`Predictor::on_head`]). Returns the digest to [`Fetcher::unpeek`] once the
    /// read ended, if a peek was set.
    pub fn watch_head(self: &Arc<Self>, id: LowerId, chunks: &[Chunk]) -> Option<Digest> {
        let first = *chunks.iter().find(|c| c.file_offset == 0)?;
        if self.peeked.lock().contains(&id) {
            return None;
        }
        let me = Arc::clone(self);
        self.fetcher.peek(
            &first,
            PEEK_HEADERS,
            Box::new(move |head| me.on_early_headers(id, first, head)),
        );
        Some(first.digest)
    }

    /// The first bytes of file `id` (its first chunk, `first`), unverified.
    fn on_early_headers(self: &Arc<Self>, id: LowerId, first: Chunk, head: &[u8]) {
        let file = Sparse::new(vec![(0, head)]);
        let Some(headers) = elf::headers(&file) else {
            return;
        };
        // Each ELF file once (other files are looked at on every fetch of their
        // start, which is cheap: they fail the header test).
        {
            let mut peeked = self.peeked.lock();
            if peeked.len() >= MAX_PREDICTED || !peeked.insert(id) {
                return;
            }
        }
        if let Some(dynamic) = headers.dynamic_range() {
            if let Some((layer, chunks)) = self.chunks_for(id, &[dynamic]) {
                let later: Vec<Chunk> = chunks.into_iter().filter(|c| *c != first).collect();
                self.fetcher
                    .queue_speculative(Priority::Prefetch, layer, later);
            }
        }
        let Some(tables) = headers.first_table_segment() else {
            return;
        };
        let upto = tables.end.min(first.len).min(MAX_PEEK_NAMES) as usize;
        let me = Arc::clone(self);
        self.fetcher.peek(
            &first,
            upto,
            Box::new(move |tables| me.on_early_names(id, tables)),
        );
    }

    /// The first (table) segment of file `id`, unverified: the libraries it seems
    /// to name are predicted (looked up in the default directories only; the
    /// verified dynamic section adds those found through its run path).
    fn on_early_names(self: &Arc<Self>, id: LowerId, tables: &[u8]) {
        let origin = self.origin(id);
        for name in elf::library_like_names(tables).take(MAX_GUESSED) {
            if let Some(dep) = self.find_library(name, &[], &origin) {
                if dep != id {
                    self.predict(dep);
                }
            }
        }
    }

    /// The first bytes of lower file `id` were read (`parts`: the verified chunks the
    /// read got, by file offset). If it is a dynamically linked ELF file seen for the
    /// first time, what its loading will open next is queued.
    pub fn on_head(self: &Arc<Self>, id: LowerId, parts: Vec<(u64, Arc<Vec<u8>>)>) {
        let Some(head) = parts
            .iter()
            .find(|(off, _)| *off == 0)
            .map(|(_, b)| b.clone())
        else {
            return;
        };
        if elf::is_elf(&head) {
            if self.first_look(id) {
                self.examine(id, parts, false, false);
            }
        } else if self.is_small_text(id, &head) {
            // (not marked as seen: the set is for ELF files and predicted ones, and a
            // container reads thousands of small files; looking through 4 KiB costs
            // little, and what a script names is predicted once)
            self.follow_script(id, &head);
        }
    }

    /// Whether file `id` is small enough to be a linker script and its `head` holds
    /// all of it.
    fn is_small_text(&self, id: LowerId, head: &[u8]) -> bool {
        self.tree.node(id).is_some_and(|n| {
            n.entry.size as usize <= crate::ld_script::MAX_SCRIPT
                && head.len() as u64 >= n.entry.size
        })
    }

    /// If file `id` (whole in `text`) is a linker script standing in for a library
    /// (glibc's `libc.so`), predicts the files it names, found as the linker finds
    /// them (paths as given; names in the script's directory, then the default
    /// ones).
    fn follow_script(self: &Arc<Self>, id: LowerId, text: &[u8]) {
        let origin = self.origin(id);
        for input in crate::ld_script::inputs(text) {
            let names = match &input {
                crate::ld_script::Input::File(f) => vec![f.clone()],
                crate::ld_script::Input::Library(l) => {
                    vec![format!("lib{l}.so"), format!("lib{l}.a")]
                }
            };
            let found = names
                .iter()
                .find_map(|n| self.find_library(n, std::slice::from_ref(&origin), &origin));
            if let Some(dep) = found {
                if let Some(path) = self.tree.node(dep).and_then(|n| n.path()) {
                    tracing::debug!(path = %path, "predicted: a linker script names it");
                }
                self.predict(dep);
            }
        }
    }

    /// Reads the head of the first regular file of each item of `warm` (candidate
    /// paths) right away, as an on-demand read would: an executable gets the rest of it
    /// queued (files up to `whole_file_max`) and its loader's files predicted, so that
    /// the program the container is about to exec is on its way while the container is
    /// set up. Nothing waits for these reads.
    pub fn warm(self: &Arc<Self>, warm: &[Vec<String>], whole_file_max: u64) {
        let (tree, fetcher) = (&self.tree, &self.fetcher);
        for candidates in warm {
            let Some(id) = candidates.iter().find_map(|p| tree.resolve_file(p)) else {
                continue;
            };
            let Some((layer, head)) = self.chunks_for(id, &[0..HEAD_BYTES]) else {
                continue;
            };
            let Some(node) = tree.node(id) else { continue };
            let executable = whole_file_max > 0
                && node.entry.mode & 0o111 != 0
                && node.entry.size <= whole_file_max;
            // The rest of an executable is queued once its head is in and the
            // loader's files were predicted from it (as a read through the mount
            // does: the head and the loader's next reads come first).
            let rest = match tree.layers.get(layer) {
                Some(idx) if executable => plan::rest_of_file(idx.chunks_of(node.entry), &head),
                _ => Vec::new(),
            };
            let (tail, rest) = plan::tail_and_rest(rest);
            fetcher.queue_speculative(Priority::Prefetch, layer, tail);
            let p = Arc::clone(self);
            let offsets: Vec<u64> = head.iter().map(|c| c.file_offset).collect();
            let watched = executable.then(|| self.watch_head(id, &head)).flatten();
            fetcher.submit(
                layer,
                head,
                Box::new(move |r| {
                    if let Some(d) = watched {
                        p.fetcher.unpeek(&d);
                    }
                    match r {
                        Ok(data) if executable => {
                            p.on_head(id, offsets.into_iter().zip(data).collect())
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "warm-up read failed"),
                    }
                    if !rest.is_empty() {
                        p.fetcher.queue_speculative(Priority::Later, layer, rest);
                    }
                }),
            );
        }
    }

    /// Fetches the libraries `libs` (absolute paths, or names looked up in the
    /// loader's default directories) as if a program being loaded needed them: their
    /// heads, loader ranges and what they need in turn, each once. Meant for the C
    /// library and its loader, which nearly every program of an image loads: fetched
    /// while the container is set up, they are not on the link after the program's
    /// head, where its exec waits for them.
    pub fn warm_libraries(self: &Arc<Self>, libs: &[&str]) {
        for name in libs {
            if let Some(id) = self.find_library(name, &[], "/") {
                self.predict(id);
            }
        }
    }

    /// Marks `id` as seen; false if it was already (or the bound is reached).
    fn first_look(&self, id: LowerId) -> bool {
        let mut seen = self.seen.lock();
        seen.len() < MAX_PREDICTED && seen.insert(id)
    }

    /// Looks at what is known of file `id`. A library being predicted also gets its
    /// loader ranges queued. When the dynamic section is not among the pieces yet,
    /// those ranges are fetched once and the file looked at again.
    fn examine(
        self: &Arc<Self>,
        id: LowerId,
        parts: Vec<(u64, Arc<Vec<u8>>)>,
        as_library: bool,
        second_look: bool,
    ) {
        let file = Sparse::new(parts.iter().map(|(o, b)| (*o, b.as_slice())).collect());
        let Some(headers) = elf::headers(&file) else {
            // Not ELF: maybe a linker script a command line named (`-lc`).
            if let Some((_, head)) = parts.iter().find(|(o, _)| *o == 0) {
                if self.is_small_text(id, head) {
                    self.follow_script(id, head);
                }
            }
            return;
        };
        {
            let mut elf_files = self.elf_files.lock();
            if elf_files.len() < MAX_PREDICTED {
                elf_files.insert(id);
            }
        }
        let origin = self.origin(id);
        if let Some(interp) = headers.interp(&file) {
            if let Some(dep) = self.tree.resolve_file(&interp) {
                self.predict(dep);
            }
        }
        let loader_chunks = self.chunks_for(id, &headers.loader_ranges());
        match headers.dynamic(&file) {
            Some(dynamic) => {
                for name in &dynamic.needed {
                    if let Some(dep) = self.find_library(name, &dynamic.runpath, &origin) {
                        self.predict(dep);
                    }
                }
                if as_library && !second_look {
                    if let Some((layer, chunks)) = loader_chunks {
                        self.fetcher
                            .queue_speculative(Priority::Prefetch, layer, chunks);
                    }
                }
            }
            None if !second_look => {
                // The dynamic section is not among the pieces: it goes on the link
                // first, alone, then the chunk holding the needed names, alone (side
                // by side with the loader's other ranges, it came in with the last of
                // them); those follow once the libraries named are queued.
                let rest = loader_chunks.clone();
                if !self.fetch_dynamic_then_names(id, &headers, as_library, rest) {
                    if let Some((layer, chunks)) = loader_chunks {
                        self.fetch_then_examine(id, layer, chunks, as_library, true);
                    }
                }
            }
            None => {}
        }
    }

    /// Queues the head of library `id` (once); its loader ranges and needs follow
    /// when the head is in.
    fn predict(self: &Arc<Self>, id: LowerId) {
        if !self.first_look(id) {
            return;
        }
        let Some((layer, chunks)) = self.chunks_for(id, &[0..HEAD_BYTES]) else {
            return;
        };
        if let Some(path) = self.tree.node(id).and_then(|n| n.path()) {
            tracing::debug!(path = %path, "predicted: the loader will open it");
        }
        let watched = self.watch_head(id, &chunks);
        let me = Arc::clone(self);
        self.fetch_parts_watched(layer, chunks, watched, move |parts| {
            me.examine(id, parts, true, false)
        });
    }

    /// Fetches the chunks of file `id` holding its headers and dynamic section, then
    /// those holding the names the dynamic section points at, and looks at the file
    /// again with all of them; then queues `rest` (the loader's other chunks) at
    /// `Later` priority, behind the libraries named (the loader maps them all before
    /// it relocates anything). A big library's needed names sit at the end of a
    /// string table megabytes long (libnode's: 6.5 MB in, the second of its twelve
    /// chunks), so they are known once that chunk is in, not after every range the
    /// loader reads (libnode's 2.2 MB of them took 210 ms). False (nothing done) if
    /// the file has no dynamic section to start from.
    fn fetch_dynamic_then_names(
        self: &Arc<Self>,
        id: LowerId,
        headers: &elf::Headers,
        as_library: bool,
        rest: Option<(usize, Vec<Chunk>)>,
    ) -> bool {
        let (head, dynamic) = match headers.dynamic_range() {
            Some(d) => (headers.header_range(), d),
            None => return false,
        };
        let Some((layer, chunks)) = self.chunks_for(id, &[head.clone(), dynamic.clone()]) else {
            return false;
        };
        let me = Arc::clone(self);
        self.fetch_parts(layer, chunks, move |parts| {
            let file = Sparse::new(parts.iter().map(|(o, b)| (*o, b.as_slice())).collect());
            let names = elf::headers(&file).and_then(|h| h.needed_strings(&file));
            let found = names.and_then(|n| me.chunks_for(id, &[head, dynamic, n]));
            let Some((layer, chunks)) = found else {
                me.queue_later(rest);
                return;
            };
            let again = Arc::clone(&me);
            me.fetch_parts(layer, chunks, move |parts| {
                again.examine(id, parts, as_library, true);
                again.queue_later(rest);
            });
        });
        true
    }

    /// Fetches `chunks` (at prefetch priority) and hands them, by file offset, to
    /// `then`; a failure is only logged.
    fn fetch_parts(
        &self,
        layer: usize,
        chunks: Vec<Chunk>,
        then: impl FnOnce(Vec<(u64, Arc<Vec<u8>>)>) + Send + 'static,
    ) {
        self.fetch_parts_watched(layer, chunks, None, then)
    }

    /// [`Predictor::fetch_parts`], dropping the peek at chunk `watched` once the
    /// fetch ended ([`Predictor::watch_head`]).
    fn fetch_parts_watched(
        &self,
        layer: usize,
        chunks: Vec<Chunk>,
        watched: Option<Digest>,
        then: impl FnOnce(Vec<(u64, Arc<Vec<u8>>)>) + Send + 'static,
    ) {
        let offsets: Vec<u64> = chunks.iter().map(|c| c.file_offset).collect();
        let fetcher = Arc::downgrade(&self.fetcher);
        self.fetcher.submit_with(
            Priority::Prefetch,
            layer,
            chunks,
            Box::new(move |r| {
                crate::reader::unpeek(&fetcher, watched);
                match r {
                    Ok(data) => then(offsets.into_iter().zip(data).collect()),
                    Err(e) => tracing::debug!(error = %e, "fetch ahead of the loader failed"),
                }
            }),
        );
    }

    /// Queues `chunks` (of a layer) at `Later` priority.
    fn queue_later(&self, chunks: Option<(usize, Vec<Chunk>)>) {
        if let Some((layer, chunks)) = chunks {
            self.fetcher
                .queue_speculative(Priority::Later, layer, chunks);
        }
    }

    /// Fetches `chunks` of file `id` (at prefetch priority) and looks at the file
    /// again with them ([`Predictor::examine`]).
    fn fetch_then_examine(
        self: &Arc<Self>,
        id: LowerId,
        layer: usize,
        chunks: Vec<Chunk>,
        as_library: bool,
        second_look: bool,
    ) {
        let me = Arc::clone(self);
        self.fetch_parts(layer, chunks, move |parts| {
            me.examine(id, parts, as_library, second_look)
        });
    }

    /// The layer and chunks of regular file `id` that cover `ranges` (file offsets),
    /// in file order, each once.
    fn chunks_for(&self, id: LowerId, ranges: &[Range<u64>]) -> Option<(usize, Vec<Chunk>)> {
        let node = self.tree.node(id)?;
        if node.entry.kind != EntryKind::Reg {
            return None;
        }
        let index = self.tree.layers.get(node.layer)?;
        let all = index.chunks_of(&node.entry);
        let size = node.entry.size;
        let mut picked: Vec<usize> = Vec::new();
        for r in ranges {
            let (start, end) = (r.start.min(size), r.end.min(size));
            if start >= end {
                continue;
            }
            picked.extend(plan::chunk_range(all, start, end));
        }
        picked.sort_unstable();
        picked.dedup();
        let chunks: Vec<Chunk> = picked
            .into_iter()
            .filter_map(|i| all.get(i).copied())
            .collect();
        (!chunks.is_empty()).then_some((node.layer, chunks))
    }

    /// The directory of file `id` (the loader's `$ORIGIN`).
    fn origin(&self, id: LowerId) -> String {
        let path = self
            .tree
            .node(id)
            .and_then(|n| n.path())
            .unwrap_or_default();
        let dir = crate::tree::split(&path).0;
        format!("/{dir}")
    }

    /// Where the loader finds library `name`: a path as given, else the first of the
    /// run path (with `$ORIGIN`) and the default directories that holds it.
    fn find_library(&self, name: &str, runpath: &[String], origin: &str) -> Option<LowerId> {
        if name.contains('/') {
            return if name.starts_with('/') {
                self.tree.resolve_file(name)
            } else {
                None
            };
        }
        let expanded = runpath
            .iter()
            .map(|d| d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin));
        expanded
            .chain(DEFAULT_DIRS.iter().map(|d| d.to_string()))
            .find_map(|dir| self.tree.resolve_file(&format!("{dir}/{name}")))
    }
}
