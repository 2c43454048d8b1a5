//! Decoding arbitrary bytes as any frame the transport reads returns `Err` or a value, never
//! panics (and never allocates what a hostile length claims).

use haseq_messages::decode;
use haseq_messages::wire::{ClientHello, ClientProof, Request, Response, ServerHello, Welcome};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode::<Request>(&bytes);
        let _ = decode::<Response>(&bytes);
        let _ = decode::<ClientHello>(&bytes);
        let _ = decode::<ServerHello>(&bytes);
        let _ = decode::<ClientProof>(&bytes);
        let _ = decode::<Welcome>(&bytes);
    }

    /// Bytes with a huge sequence length up front (the shape of a hostile snapshot body).
    #[test]
    fn huge_declared_lengths_are_errors(
        // Every variant but FetchBlocks (6), whose first field is a plain integer that a huge
        // varint encodes validly; unknown tags (7 and up) must fail too.
        tag in (0u8..16).prop_filter("FetchBlocks starts with an integer", |t| *t != 6),
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        // id 1, variant `tag`, then a varint length near u64::MAX.
        let mut bytes = vec![1u8, tag];
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        bytes.extend_from_slice(&rest);
        prop_assert!(decode::<Request>(&bytes).is_err());
    }

    /// A frame that is too short for its type is an error.
    #[test]
    fn truncated_client_hello_is_an_error(cut in 0usize..40) {
        let hello = ClientHello {
            version: 1,
            node_id: "n1".into(),
            target: "n2".into(),
            nonce: [3u8; 32],
        };
        let bytes = haseq_messages::encode(&hello).unwrap();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(decode::<ClientHello>(&bytes[..cut]).is_err());
    }
}
