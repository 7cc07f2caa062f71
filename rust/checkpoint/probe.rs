//! What the first message headers of a shard say, read without reading the
//! shard whole: its schema, and whether its batches are compressed. Only
//! regular files inside the checkpoint directory are opened (see
//! [`CheckpointDir::open_regular`]), and no header larger than a shard of
//! ours could hold is allocated.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use arrow_ipc::{root_as_message, CompressionType, MessageHeader};
use arrow_schema::SchemaRef;

use super::dirfd::CheckpointDir;
use super::error::{CheckpointError, IoContext, Result};

/// Messages read before giving up looking for a record batch.
const MAX_PROBED_MESSAGES: usize = 64;
/// A message header (flatbuffer) larger than this is not one we wrote.
const MAX_PROBED_HEADER: u32 = 16 << 20;

/// The schema at the start of the Arrow IPC stream file `name` in `dir`.
/// Only its first message is read: the rows are verified when a task reads
/// the shard. A file that is missing is an I/O error, one that does not
/// start with a schema is `Corrupt`.
pub fn shard_schema(dir: &CheckpointDir, name: &str) -> Result<SchemaRef> {
    let path = dir.path().join(name);
    let (file, _) = dir
        .open_regular(name)?
        .ok_or_else(|| CheckpointError::io(&path, io::Error::from(io::ErrorKind::NotFound)))?;
    let header = next_header(&mut BufReader::new(file)).at(&path)?;
    let no_schema =
        || CheckpointError::corrupt(&path, "it does not start with an Arrow IPC schema");
    let header = header.ok_or_else(no_schema)?;
    let message = root_as_message(&header).map_err(|_| no_schema())?;
    let schema = message.header_as_schema().ok_or_else(no_schema)?;
    arrow_ipc::convert::try_fb_to_schema(schema)
        .map(Arc::new)
        .map_err(|e| CheckpointError::corrupt(&path, format!("invalid schema: {e}")))
}

/// The body compression ("zstd", "lz4_frame") of the first record or
/// dictionary batch of the Arrow IPC stream file `name` in `dir`, reading
/// only message headers; `None` when its batches are not compressed, it
/// has none, or it is no IPC stream. `datasets` never compresses the IPC
/// bodies it writes; this package always does, so a compressed shard in a
/// checkpoint without a manifest was written here.
pub fn batch_compression(dir: &CheckpointDir, name: &str) -> Result<Option<String>> {
    let path = dir.path().join(name);
    let Some((file, _)) = dir.open_regular(name)? else {
        return Ok(None);
    };
    probe_compression(BufReader::new(file)).at(&path)
}

fn probe_compression(mut file: impl Read + Seek) -> io::Result<Option<String>> {
    for _ in 0..MAX_PROBED_MESSAGES {
        let Some(header) = next_header(&mut file)? else {
            return Ok(None);
        };
        let Ok(message) = root_as_message(&header) else {
            return Ok(None);
        };
        let batch = match message.header_type() {
            MessageHeader::RecordBatch => message.header_as_record_batch(),
            MessageHeader::DictionaryBatch => {
                message.header_as_dictionary_batch().and_then(|d| d.data())
            }
            MessageHeader::Schema if message.bodyLength() >= 0 => {
                file.seek(SeekFrom::Current(message.bodyLength()))?;
                continue;
            }
            _ => return Ok(None),
        };
        let codec = batch.and_then(|b| b.compression()).map(|c| c.codec());
        return Ok(codec.map(|c| match c {
            CompressionType::ZSTD => "zstd".to_string(),
            CompressionType::LZ4_FRAME => "lz4_frame".to_string(),
            other => format!("{other:?}").to_lowercase(),
        }));
    }
    Ok(None)
}

/// The flatbuffer header of the next message of an IPC stream
/// (`[0xFFFFFFFF] <u32 len> <header>`), its body left unread; `None` at
/// the end of the file, at the end-of-stream marker, or when the length is
/// more than [`MAX_PROBED_HEADER`].
fn next_header(file: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut word = [0u8; 4];
    if read_or_end(file, &mut word)?.is_none() {
        return Ok(None);
    }
    let mut len = u32::from_le_bytes(word);
    if len == 0xFFFF_FFFF {
        if read_or_end(file, &mut word)?.is_none() {
            return Ok(None);
        }
        len = u32::from_le_bytes(word);
    }
    if len == 0 || len > MAX_PROBED_HEADER {
        return Ok(None);
    }
    let mut header = vec![0u8; len as usize];
    Ok(read_or_end(file, &mut header)?.map(|()| header))
}

/// Fills `buf`; `None` at the end of the file.
fn read_or_end(file: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<()>> {
    match file.read_exact(buf) {
        Ok(()) => Ok(Some(())),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use arrow_array::{ArrayRef, RecordBatch};

    use super::*;

    fn plain_stream() -> (RecordBatch, Vec<u8>) {
        let batch = RecordBatch::try_from_iter([(
            "n",
            Arc::new(arrow_array::Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .unwrap();
        let mut plain = Vec::new();
        let mut writer =
            arrow_ipc::writer::StreamWriter::try_new(&mut plain, &batch.schema()).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        (batch, plain)
    }

    #[test]
    fn batch_compression_tells_our_shards_from_uncompressed_streams() {
        let ours = include_bytes!("../../fuzz/seeds/shard/zstd_text.arrow").to_vec();
        assert_eq!(
            probe_compression(Cursor::new(ours)).unwrap().as_deref(),
            Some("zstd")
        );
        let (_, plain) = plain_stream();
        assert_eq!(probe_compression(Cursor::new(plain)).unwrap(), None);
        for garbage in [&b""[..], b"\xff\xff\xff\xff", b"not an arrow file at all"] {
            assert_eq!(probe_compression(Cursor::new(garbage)).unwrap(), None);
        }
    }

    #[test]
    fn the_schema_is_read_from_the_first_message_only() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp = tmp.path();
        let (batch, plain) = plain_stream();
        std::fs::write(tmp.join("s.arrow"), &plain[..plain.len() / 2]).unwrap();
        std::fs::write(tmp.join("garbage.arrow"), b"not an arrow file at all").unwrap();
        let dir = CheckpointDir::open(tmp).unwrap().unwrap();
        let schema = shard_schema(&dir, "s.arrow").unwrap();
        let garbage = shard_schema(&dir, "garbage.arrow").unwrap_err();
        let missing = shard_schema(&dir, "missing.arrow").unwrap_err();
        assert_eq!(schema, batch.schema());
        assert!(
            matches!(garbage, CheckpointError::Corrupt { .. }),
            "{garbage}"
        );
        assert!(matches!(missing, CheckpointError::Io { .. }), "{missing}");
    }
}
