//! The inode journal: every inode number the kernel may hold, and the node it names, written as
//! the table changes into a memory file (memfd) that the supervisor keeps open. When a worker
//! dies or hands over, its successor replays the journal and answers the same numbers for the same
//! nodes, so bind mounts and cached dentries stay valid across the restart.
//!
//! Only numbers and paths are written (`secrets/db`, never a value), and only to memory: a memfd
//! has no name in any filesystem and goes when the last process holding it closes it.
//!
//! Layout: a 16-byte header (magic, then the offset replay starts at), then records, each
//! `len: u32, check: u32, payload` with `check` a digest of the payload. A record is written with
//! one `pwrite`, which a killed process either completed or never started, and replay stops at
//! the first record that does not check out, so a torn tail is simply not there.
//!
//! The file only grows; a checkpoint rewrites the live table at the end, moves the start there
//! and punches a hole in everything before it, which gives the memory back.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::memfd::{MFdFlags, memfd_create};
use parking_lot::Mutex;

const MAGIC: &[u8; 8] = b"KVFSINO1";
const HEADER_LEN: u64 = 16;
const INSERT: u8 = 1;
const REMOVE: u8 = 2;
const NEXT: u8 = 3;
/// Checkpoint once this much was written since the last one and it is more than twice the live
/// table: a churning table costs at most a few MiB.
const CHECKPOINT_MIN_BYTES: u64 = 1 << 20;

/// One change of the inode table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Insert {
        ino: u64,
        path: String,
    },
    Remove {
        ino: u64,
    },
    /// The next number to hand out is at least this (numbers are never reused).
    Next {
        ino: u64,
    },
}

/// The table a journal describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Live inodes and their paths, by number.
    pub live: Vec<(u64, String)>,
    /// The next inode number to hand out.
    pub next: u64,
}

struct Position {
    /// Where the next record goes.
    end: u64,
    /// Bytes written since the last checkpoint, and the size of that checkpoint.
    since_checkpoint: u64,
    checkpoint_bytes: u64,
}

pub(crate) struct Journal {
    file: File,
    position: Mutex<Position>,
}

fn digest(payload: &[u8]) -> u32 {
    // FNV-1a, 32 bits: enough to tell a torn or zeroed record from a whole one.
    payload.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn encode(records: &[Record], out: &mut Vec<u8>) {
    for r in records {
        let mut payload = Vec::with_capacity(16);
        match r {
            Record::Insert { ino, path } => {
                payload.push(INSERT);
                payload.extend_from_slice(&ino.to_le_bytes());
                payload.extend_from_slice(path.as_bytes());
            }
            Record::Remove { ino } => {
                payload.push(REMOVE);
                payload.extend_from_slice(&ino.to_le_bytes());
            }
            Record::Next { ino } => {
                payload.push(NEXT);
                payload.extend_from_slice(&ino.to_le_bytes());
            }
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&digest(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
}

/// Records in `bytes` up to the first one that does not check out, and the length they cover.
fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let check = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if len < 9 || digest(payload) != check {
            break;
        }
        let ino = u64::from_le_bytes(payload[1..9].try_into().unwrap_or_default());
        let record = match payload[0] {
            INSERT => match std::str::from_utf8(&payload[9..]) {
                Ok(path) => Record::Insert {
                    ino,
                    path: path.to_string(),
                },
                Err(_) => break,
            },
            REMOVE => Record::Remove { ino },
            NEXT => Record::Next { ino },
            _ => break,
        };
        records.push(record);
        at += 8 + len;
    }
    (records, at)
}

fn apply(records: &[Record]) -> Replayed {
    let mut live = std::collections::BTreeMap::new();
    let mut next = 0;
    for r in records {
        match r {
            Record::Insert { ino, path } => {
                live.insert(*ino, path.clone());
                next = next.max(ino + 1);
            }
            Record::Remove { ino } => {
                live.remove(ino);
                next = next.max(ino + 1);
            }
            Record::Next { ino } => next = next.max(*ino),
        }
    }
    Replayed {
        live: live.into_iter().collect(),
        next,
    }
}

impl Journal {
    /// A new, empty journal.
    pub(crate) fn create() -> io::Result<Journal> {
        let fd = memfd_create("kvfs-inodes", MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&HEADER_LEN.to_le_bytes());
        file.write_all_at(&header, 0)?;
        Ok(Journal {
            file,
            position: Mutex::new(Position {
                end: HEADER_LEN,
                since_checkpoint: 0,
                checkpoint_bytes: 0,
            }),
        })
    }

    /// Take over a journal another process wrote: replay it, and append after its last whole
    /// record.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<(Journal, Replayed)> {
        let file = File::from(fd);
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a kvfs inode journal",
            ));
        }
        let start = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
        let size = file.metadata()?.len();
        if start < HEADER_LEN || start > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "inode journal header points outside the journal",
            ));
        }
        let mut bytes = vec![0u8; (size - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        let (records, used) = decode(&bytes);
        let replayed = apply(&records);
        let journal = Journal {
            file,
            position: Mutex::new(Position {
                end: start + used as u64,
                since_checkpoint: used as u64,
                checkpoint_bytes: 0,
            }),
        };
        Ok((journal, replayed))
    }

    /// Append records (one write). Returns whether a checkpoint is due.
    pub(crate) fn append(&self, records: &[Record]) -> io::Result<bool> {
        let mut buf = Vec::new();
        encode(records, &mut buf);
        let mut p = self.position.lock();
        self.file.write_all_at(&buf, p.end)?;
        p.end += buf.len() as u64;
        p.since_checkpoint += buf.len() as u64;
        Ok(p.since_checkpoint > CHECKPOINT_MIN_BYTES.max(2 * p.checkpoint_bytes))
    }

    /// Rewrite the live table after everything else, start replay there and free what came
    /// before. A process killed midway leaves the old start in place, and replaying old records
    /// followed by part of a checkpoint gives the same table.
    pub(crate) fn checkpoint(
        &self,
        live: impl Iterator<Item = (u64, String)>,
        next: u64,
    ) -> io::Result<()> {
        let mut records = vec![Record::Next { ino: next }];
        records.extend(live.map(|(ino, path)| Record::Insert { ino, path }));
        let mut buf = Vec::new();
        encode(&records, &mut buf);
        let mut p = self.position.lock();
        let start = p.end;
        self.file.write_all_at(&buf, start)?;
        p.end += buf.len() as u64;
        self.file.write_all_at(&start.to_le_bytes(), 8)?;
        p.since_checkpoint = 0;
        p.checkpoint_bytes = buf.len() as u64;
        let dead = start - HEADER_LEN;
        if dead > 0 {
            fallocate(
                &self.file,
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                HEADER_LEN as i64,
                dead as i64,
            )?;
        }
        Ok(())
    }

    /// Bytes of memory the journal holds (what a checkpoint keeps small).
    #[cfg(test)]
    fn resident_bytes(&self) -> u64 {
        let p = self.position.lock();
        p.since_checkpoint + p.checkpoint_bytes
    }

    /// A second descriptor of the same journal, for the supervisor or a successor.
    pub(crate) fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }
}

impl AsFd for Journal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(ino: u64, path: &str) -> Record {
        Record::Insert {
            ino,
            path: path.into(),
        }
    }

    #[test]
    fn a_successor_replays_what_was_written() {
        let j = Journal::create().unwrap();
        j.append(&[insert(2, "secrets"), insert(3, "secrets/db")])
            .unwrap();
        j.append(&[insert(4, "secrets/old"), Record::Remove { ino: 4 }])
            .unwrap();
        let (again, replayed) = Journal::adopt(j.try_clone_fd().unwrap()).unwrap();
        assert_eq!(
            replayed.live,
            [(2, "secrets".to_string()), (3, "secrets/db".to_string())]
        );
        assert_eq!(replayed.next, 5, "a removed number is not handed out again");
        // The successor appends after what it replayed.
        again.append(&[insert(5, "keys")]).unwrap();
        let (_, replayed) = Journal::adopt(j.try_clone_fd().unwrap()).unwrap();
        assert_eq!(replayed.live.len(), 3);
    }

    #[test]
    fn a_torn_or_garbled_tail_is_ignored_and_overwritten() {
        let j = Journal::create().unwrap();
        j.append(&[insert(2, "secrets")]).unwrap();
        let end = j.position.lock().end;
        // Half a record, as a process killed inside a (hypothetical) split write would leave.
        let mut half = Vec::new();
        encode(&[insert(3, "secrets/db")], &mut half);
        j.file.write_all_at(&half[..half.len() / 2], end).unwrap();
        let (again, replayed) = Journal::adopt(j.try_clone_fd().unwrap()).unwrap();
        assert_eq!(replayed.live, [(2, "secrets".to_string())]);
        again.append(&[insert(3, "secrets/db")]).unwrap();
        let (_, replayed) = Journal::adopt(j.try_clone_fd().unwrap()).unwrap();
        assert_eq!(replayed.live.len(), 2);
        // Flipped bits in a record stop replay there.
        let mut bad = Vec::new();
        encode(&[insert(9, "keys")], &mut bad);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let end = again.position.lock().end;
        j.file.write_all_at(&bad, end).unwrap();
        assert_eq!(
            Journal::adopt(j.try_clone_fd().unwrap())
                .unwrap()
                .1
                .live
                .len(),
            2
        );
    }

    #[test]
    fn a_checkpoint_keeps_the_table_and_frees_the_rest() {
        let j = Journal::create().unwrap();
        let mut due = false;
        for i in 0..40_000u64 {
            due |= j
                .append(&[
                    insert(10 + i, &format!("secrets/s{i}")),
                    Record::Remove { ino: 10 + i },
                ])
                .unwrap();
        }
        assert!(due, "a churning table asks for a checkpoint");
        let before = j.resident_bytes();
        j.checkpoint([(2, "secrets".to_string())].into_iter(), 40_010)
            .unwrap();
        assert!(j.resident_bytes() < before / 100);
        let (_, replayed) = Journal::adopt(j.try_clone_fd().unwrap()).unwrap();
        assert_eq!(replayed.live, [(2, "secrets".to_string())]);
        assert_eq!(replayed.next, 40_010);
        // The memory before the checkpoint is really gone (a hole reads as zeros).
        let mut first = [0xffu8; 8];
        j.file.read_exact_at(&mut first, HEADER_LEN).unwrap();
        assert_eq!(first, [0; 8]);
    }

    #[test]
    fn a_checkpoint_cut_short_replays_to_the_same_table() {
        let j = Journal::create().unwrap();
        j.append(&[insert(2, "secrets"), insert(3, "secrets/db")])
            .unwrap();
        // The live table written at the end, but the start never moved (killed in between).
        let end = j.position.lock().end;
        let mut partial = Vec::new();
        encode(
            &[Record::Next { ino: 4 }, insert(2, "secrets")],
            &mut partial,
        );
        j.file.write_all_at(&partial, end).unwrap();
        let (_, replayed) = Journal::adopt(j.try_clone_fd().unwrap()).unwrap();
        assert_eq!(replayed.live.len(), 2);
        assert_eq!(replayed.next, 4);
    }

    #[test]
    fn anything_else_is_refused() {
        let fd = memfd_create("other", MFdFlags::MFD_CLOEXEC).unwrap();
        let f = File::from(fd);
        f.write_all_at(b"not a journal at all", 0).unwrap();
        let err = Journal::adopt(f.into()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
