//! TensorBoard event files: scalars of a run that `tensorboard --logdir runs` shows live.
//!
//! A small writer of TensorBoard's on-disk format, so that no TensorFlow or protobuf runtime is
//! needed. The file is a sequence of records, each `u64` length (little-endian), the masked
//! CRC32C of those 8 bytes, the data, and the masked CRC32C of the data. Each record's data is an
//! `Event` protobuf (tensorflow/core/util/event.proto): `wall_time` (field 1, double), `step`
//! (2, int64) and either `file_version` (3, the first record: `"brain.Event:2"`) or `summary`
//! (5) holding `value` entries (1) of `tag` (1, string) and `simple_value` (2, float). Those few
//! fields are encoded here by hand.
//!
//! The file is `events.out.tfevents.<unix seconds>.<host>` inside the run directory, so a
//! `--logdir` above several run directories shows each run under its name. Every call writes
//! whole records and flushes them, so TensorBoard reading while the run goes never sees a torn
//! record other than a last one still being written (which its reader skips until complete).
//! This module writes files only; it never prints.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The scalar tags a meta-training run logs (the launcher's fit loop writes these; learned
/// hyperparameters go under [`HPARAM_PREFIX`]).
pub mod tags {
    /// Training meta-loss: query loss after adaptation, mean over the meta-batch.
    pub const META_LOSS: &str = "train/meta_loss";
    /// Training query accuracy after adaptation (classification runs).
    pub const QUERY_ACCURACY: &str = "train/query_accuracy";
    /// Throughput of the logged iteration.
    pub const TASKS_PER_S: &str = "train/tasks_per_s";
    /// L2 norm of the all-reduced meta-gradient.
    pub const GRAD_NORM: &str = "train/grad_norm";
    /// The outer learning rate of the logged step (`outer.schedule`).
    pub const OUTER_LR: &str = "train/outer_lr";
    /// The clipped outer steps so far (`outer.clip_grad_norm`).
    pub const OUTER_CLIPS: &str = "train/outer_clips";
    /// The (task, step) pairs whose inner gradient was clipped since the previous line
    /// (`algorithm.inner_clip_grad_norm`).
    pub const INNER_CLIPS: &str = "train/inner_clips";
    /// Validation loss before adaptation (mean over the validation tasks).
    pub const VAL_LOSS_BEFORE: &str = "val/loss_before";
    /// Validation loss after adaptation.
    pub const VAL_LOSS_AFTER: &str = "val/loss_after";
    /// Validation accuracy before adaptation (classification runs).
    pub const VAL_ACCURACY_BEFORE: &str = "val/accuracy_before";
    /// Validation accuracy after adaptation (classification runs).
    pub const VAL_ACCURACY_AFTER: &str = "val/accuracy_after";
    /// Prefix of a learned hyperparameter's tag: `hparams/<name>` (e.g. `hparams/lr`).
    pub const HPARAM_PREFIX: &str = "hparams/";
}

/// The version string TensorBoard expects in the first record.
const FILE_VERSION: &str = "brain.Event:2";

/// An open TensorBoard event file.
#[derive(Debug)]
pub struct TensorBoard {
    path: PathBuf,
    file: File,
}

impl TensorBoard {
    /// Creates a new event file in `dir` (which must exist) and writes its version record.
    /// A second writer in the same directory (a resumed run) gets a file of its own: TensorBoard
    /// reads every event file of a directory as one run.
    pub fn create(dir: &Path) -> Result<TensorBoard> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = hostname();
        let mut n = 0;
        let (path, file) = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!(".{n}")
            };
            let path = dir.join(format!("events.out.tfevents.{now}.{host}{suffix}"));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(source) => return Err(Error::Io { path, source }),
            }
        };
        let mut tb = TensorBoard { path, file };
        let mut event = event_header(wall_time(), 0);
        put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
        tb.write_record(&event)?;
        Ok(tb)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one scalar at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.scalars(step, &[(tag, value)])
    }

    /// Logs several scalars at `step` in one event. Non-finite values are written as they are
    /// (TensorBoard shows NaN and Inf).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_key(&mut v, 2, 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(wall_time(), step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        record.extend_from_slice(data);
        record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// An Event's `wall_time` and `step` fields.
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut e = Vec::new();
    put_key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut e, 2, 0);
    put_varint(&mut e, step);
    e
}

/// A protobuf field key: field number and wire type (0 varint, 1 64-bit, 2 bytes, 5 32-bit).
fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (string, bytes or embedded message).
fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TensorFlow's records use.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TensorFlow's masked CRC: rotated right by 15 bits plus a constant, so that a CRC stored
/// inside checksummed data does not checksum to a fixed value.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 (iSCSI), appendix B.4, and the common "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crc_is_rotation_plus_constant() {
        let crc = crc32c(b"123456789");
        let expected = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), expected);
        assert_ne!(masked_crc32c(b"123456789"), crc);
    }

    #[test]
    fn varints_and_keys_encode_as_protobuf() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xAC, 0x02]);
        let mut k = Vec::new();
        put_key(&mut k, 5, 2);
        assert_eq!(k, [0x2A]);
        let mut s = Vec::new();
        put_bytes(&mut s, 3, b"brain.Event:2");
        assert_eq!(s[..2], [0x1A, 13]);
    }

    #[test]
    fn records_carry_length_and_checksums() {
        let dir = std::env::temp_dir().join(format!("metaloop-tb-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut tb = TensorBoard::create(&dir).unwrap();
        tb.scalar("a", 7, 1.5).unwrap();
        let bytes = std::fs::read(tb.path()).unwrap();
        let mut at = 0;
        let mut records = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc32c(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let data_crc =
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc32c(data));
            at += 16 + len;
            records += 1;
        }
        assert_eq!((records, at), (2, bytes.len()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
