//! Frames: a big-endian `u32` length, then that many bytes of postcard.
//!
//! Bytes become frames in `tokio_util`'s `LengthDelimitedCodec`, which keeps a partial frame
//! in its buffer, so a read dropped by `select!` loses nothing (the cancel-safety that
//! `read_exact` lacks). It checks the length against the limit before it reserves room for
//! the body, so a hostile prefix costs at most the limit: `HANDSHAKE_FRAME_BYTES_MAX` until a
//! peer has authenticated, `FRAME_BYTES_MAX` after. Frames become typed values here too, and
//! nowhere else.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use haseq_messages::CodecError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

/// A frame could not be read, written, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection at a frame boundary.
    #[error("connection closed by peer")]
    Closed,
    /// A length prefix (read) or a frame (write) exceeds the limit in force.
    #[error("frame exceeds the limit of {limit_bytes} bytes")]
    TooLong {
        /// The limit in force on this connection.
        limit_bytes: usize,
    },
    /// The socket failed (reset, closed mid-frame, ...).
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The frame's bytes are not a valid encoding of the expected message.
    #[error("malformed frame: {0}")]
    Decode(CodecError),
    /// The value could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(CodecError),
}

/// The codec both sides use; `limit_bytes` bounds every frame read or written.
pub(crate) fn codec(limit_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_type::<u32>()
        .max_frame_length(limit_bytes)
        .new_codec()
}

/// Encode a message as a frame body, refusing one over `limit_bytes` before it reaches a
/// connection (where the codec's refusal would break the connection for every caller).
pub(crate) fn encode<T: Serialize>(value: &T, limit_bytes: usize) -> Result<Bytes, FrameError> {
    let bytes = haseq_messages::encode(value).map_err(FrameError::Encode)?;
    if bytes.len() > limit_bytes {
        return Err(FrameError::TooLong { limit_bytes });
    }
    Ok(Bytes::from(bytes))
}

/// Decode a frame body. Arbitrary bytes give `Err`, never a panic.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    haseq_messages::decode(body).map_err(FrameError::Decode)
}

/// Read the next frame. Cancel-safe: a partial frame stays in the stream's buffer.
pub(crate) async fn read_frame<S>(
    stream: &mut S,
    limit_bytes: usize,
) -> Result<BytesMut, FrameError>
where
    S: Stream<Item = io::Result<BytesMut>> + Unpin,
{
    match stream.next().await {
        Some(Ok(body)) => Ok(body),
        Some(Err(e)) => Err(io_error(e, limit_bytes)),
        None => Err(FrameError::Closed),
    }
}

/// Read and decode the next frame as a `T`.
pub(crate) async fn read_msg<T, S>(stream: &mut S, limit_bytes: usize) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    S: Stream<Item = io::Result<BytesMut>> + Unpin,
{
    let body = read_frame(stream, limit_bytes).await?;
    decode(&body)
}

/// Encode and write one message, flushed.
pub(crate) async fn write_msg<T, S>(
    sink: &mut S,
    value: &T,
    limit_bytes: usize,
) -> Result<(), FrameError>
where
    T: Serialize,
    S: Sink<Bytes, Error = io::Error> + Unpin,
{
    let body = encode(value, limit_bytes)?;
    sink.send(body).await.map_err(|e| io_error(e, limit_bytes))
}

/// Split an authenticated connection into its read and write halves, keeping whatever the
/// reader had buffered past the handshake, and raising the frame limit to `limit_bytes`.
pub(crate) fn split(
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    limit_bytes: usize,
) -> (
    FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
) {
    let parts = framed.into_parts();
    // Every handshake write was flushed before the handshake returned.
    debug_assert!(parts.write_buf.is_empty(), "unflushed handshake bytes");
    let mut codec = parts.codec;
    codec.set_max_frame_length(limit_bytes);
    let (r, w) = parts.io.into_split();
    let mut reader = FramedRead::new(r, codec.clone());
    *reader.read_buffer_mut() = parts.read_buf;
    (reader, FramedWrite::new(w, codec))
}

/// Tell the codec's "frame too big" apart from socket errors: it is the peer's fault, not
/// the network's, and it is what a refusal is logged for.
pub(crate) fn io_error(e: io::Error, limit_bytes: usize) -> FrameError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
    {
        FrameError::TooLong { limit_bytes }
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use haseq_messages::wire::{ClientProof, FRAME_BYTES_MAX};
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn round_trip_through_the_codec() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FramedWrite::new(a, codec(FRAME_BYTES_MAX));
        let mut r = FramedRead::new(b, codec(FRAME_BYTES_MAX));
        let msg = ClientProof { proof: [7u8; 32] };
        write_msg(&mut w, &msg, FRAME_BYTES_MAX).await.unwrap();
        let got: ClientProof = read_msg(&mut r, FRAME_BYTES_MAX).await.unwrap();
        assert_eq!(got, msg);
        drop(w);
        assert!(matches!(
            read_frame(&mut r, FRAME_BYTES_MAX).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn over_long_prefix_is_refused_without_reserving_it() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = FramedRead::new(b, codec(64));
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let e = read_frame(&mut r, 64).await.unwrap_err();
        assert!(
            matches!(e, FrameError::TooLong { limit_bytes: 64 }),
            "{e:?}"
        );
        // The codec refused before reserving the declared 4 GiB.
        assert!(
            r.read_buffer().capacity() < 1 << 20,
            "{}",
            r.read_buffer().capacity()
        );
    }

    #[tokio::test]
    async fn a_frame_split_across_cancelled_reads_is_not_lost() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = FramedRead::new(b, codec(FRAME_BYTES_MAX));
        let body = encode(&ClientProof { proof: [9u8; 32] }, FRAME_BYTES_MAX).unwrap();
        let mut wire = BytesMut::new();
        wire.put_u32(body.len() as u32);
        wire.put_slice(&body);
        // Half a frame, then a read that gets cancelled.
        a.write_all(&wire[..10]).await.unwrap();
        tokio::select! {
            biased;
            _ = read_frame(&mut r, FRAME_BYTES_MAX) => panic!("half a frame must not complete"),
            _ = tokio::task::yield_now() => {}
        }
        a.write_all(&wire[10..]).await.unwrap();
        let got: ClientProof = read_msg(&mut r, FRAME_BYTES_MAX).await.unwrap();
        assert_eq!(got.proof, [9u8; 32]);
    }

    #[test]
    fn encode_refuses_an_oversized_value() {
        let e = encode(&vec![0u8; 100], 16).unwrap_err();
        assert!(
            matches!(e, FrameError::TooLong { limit_bytes: 16 }),
            "{e:?}"
        );
    }
}
