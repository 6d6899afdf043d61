//! File requests: upload, download, list, stat, delete; all confined to the workspace.

use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::workspace::{PathError, WorkspacePath};
use super::{Agent, Failure, Rx, Tx, reply, send};
use crate::protocol::{DATA_CHUNK_LEN, ErrorBody, ErrorKind, Frame, FrameKind, Response};

/// The highest permission bits an upload may ask for: no setuid, setgid or sticky bits.
const MAX_MODE: u32 = 0o777;

/// The mode of an upload that names none.
const DEFAULT_MODE: u32 = 0o644;

/// `put_file`: checks the path and prepares a temporary file, says `ready`, writes the data
/// frames, then syncs and renames the file into place.
pub(super) async fn put_file(
    agent: &Arc<Agent>,
    raw_path: String,
    mode: Option<u32>,
    rx: &mut Rx,
    tx: &mut Tx,
) -> Result<(), Failure> {
    let mode = mode.unwrap_or(DEFAULT_MODE);
    if mode > MAX_MODE {
        return Err(ErrorBody::new(
            ErrorKind::InvalidRequest,
            format!("mode {mode:#o} is not allowed; give permission bits up to 0o777"),
        )
        .into());
    }
    let path = WorkspacePath::parse(&raw_path)?;
    let target = path.clone();
    let mut upload = agent
        .blocking(move |workspace| workspace.begin_upload(&target, mode))
        .await?;
    let file = upload
        .take_file()
        .ok_or_else(|| ErrorBody::new(ErrorKind::Io, "the upload has no file"))?;
    let mut file = tokio::fs::File::from_std(file);
    reply(tx, &Response::Ready).await?;

    let write_error = |source| PathError::Io {
        path: path.to_string(),
        op: "write",
        source,
    };
    let mut size: u64 = 0;
    loop {
        // Returning early drops `upload`, which removes the temporary file: a cut-off upload
        // never becomes visible.
        let frame = match rx.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                return Err(
                    ErrorBody::new(ErrorKind::InvalidRequest, crate::error_chain(&err)).into(),
                );
            }
            None => return Err(Failure::Gone),
        };
        match frame.kind {
            FrameKind::Data => {
                file.write_all(&frame.payload).await.map_err(write_error)?;
                size += frame.payload.len() as u64;
            }
            FrameKind::End => break,
            kind => {
                return Err(ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    format!("unexpected {kind:?} frame in an upload; send Data frames and End"),
                )
                .into());
            }
        }
    }
    file.flush().await.map_err(write_error)?;
    // Durable before it is visible: after a crash the name holds the old or the new contents,
    // never an empty file.
    file.sync_all().await.map_err(write_error)?;
    drop(file);
    agent.blocking(move |_| upload.commit()).await?;
    reply(tx, &Response::Written { size }).await
}

/// `get_file`: opens the file (failing before anything is streamed), then streams it.
pub(super) async fn get_file(
    agent: &Arc<Agent>,
    raw_path: String,
    tx: &mut Tx,
) -> Result<(), Failure> {
    let path = WorkspacePath::parse(&raw_path)?;
    let shown = path.to_string();
    let (file, size) = agent
        .blocking(move |workspace| workspace.open_file(&path))
        .await?;
    reply(tx, &Response::File { size }).await?;
    let mut chunks = ReaderStream::with_capacity(tokio::fs::File::from_std(file), DATA_CHUNK_LEN);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|source| PathError::Io {
            path: shown.clone(),
            op: "read",
            source,
        })?;
        send(tx, Frame::data(chunk)).await?;
    }
    send(tx, Frame::end()).await
}

/// `archive`: packs on a blocking thread and streams the tar as it is written, so a large
/// workspace never sits in memory.
pub(super) async fn archive(
    agent: &Arc<Agent>,
    raw_path: String,
    tx: &mut Tx,
) -> Result<(), Failure> {
    let dir = agent.dir_path(&raw_path).await?;
    reply(tx, &Response::Archive).await?;
    let (chunks, mut received) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let packer = tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(DATA_CHUNK_LEN, ChannelWriter(chunks));
        let stats = kiln_archive::pack(&dir, &mut out, &kiln_archive::PackOptions::default())
            .map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
        Ok::<_, String>(stats)
    });
    while let Some(chunk) = received.recv().await {
        send(tx, Frame::data(chunk)).await?;
    }
    match packer.await {
        Ok(Ok(_)) => send(tx, Frame::end()).await,
        Ok(Err(e)) => {
            Err(ErrorBody::new(ErrorKind::Io, format!("packing the workspace: {e}")).into())
        }
        Err(e) => Err(ErrorBody::new(ErrorKind::Io, format!("packing the workspace: {e}")).into()),
    }
}

/// A `Write` that hands each buffer to the async side; a gone receiver is a broken pipe.
struct ChannelWriter(tokio::sync::mpsc::Sender<bytes::Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(bytes::Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `list_dir`.
pub(super) async fn list_dir(
    agent: &Arc<Agent>,
    raw_path: String,
    tx: &mut Tx,
) -> Result<(), Failure> {
    let path = WorkspacePath::parse(&raw_path)?;
    let entries = agent
        .blocking(move |workspace| workspace.list_dir(&path))
        .await?;
    reply(tx, &Response::Entries { entries }).await
}

/// `stat`.
pub(super) async fn stat(agent: &Arc<Agent>, raw_path: String, tx: &mut Tx) -> Result<(), Failure> {
    let path = WorkspacePath::parse(&raw_path)?;
    let stat = agent
        .blocking(move |workspace| workspace.stat(&path))
        .await?;
    reply(tx, &Response::Stat(stat)).await
}

/// `delete`.
pub(super) async fn delete(
    agent: &Arc<Agent>,
    raw_path: String,
    recursive: bool,
    tx: &mut Tx,
) -> Result<(), Failure> {
    let path = WorkspacePath::parse(&raw_path)?;
    agent
        .blocking(move |workspace| workspace.delete(&path, recursive))
        .await?;
    reply(tx, &Response::Ok).await
}
