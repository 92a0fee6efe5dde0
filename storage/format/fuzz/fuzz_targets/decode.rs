//! Every decoder of the ledger format on arbitrary bytes: no panic, and whatever decodes
//! re-encodes to exactly the same bytes (decoders accept only canonical encodings).
#![no_main]

use annals_format::block::BlockHeader;
use annals_format::checkpoint::{BranchEntry, CheckpointHeader};
use annals_format::row::decode_row;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(row) = decode_row(data) {
        let owned = row.to_owned_row();
        assert_eq!(owned.encode().expect("decoded rows are canonical"), data);
    }
    if let Ok(h) = BlockHeader::decode(data) {
        assert_eq!(h.encode(), data);
    }
    if let Ok(c) = CheckpointHeader::decode(data) {
        assert_eq!(c.encode().as_slice(), data);
    }
    if let Ok(e) = BranchEntry::decode(data) {
        assert_eq!(e.encode().as_slice(), data);
    }
});
