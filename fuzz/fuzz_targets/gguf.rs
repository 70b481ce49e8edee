//! The GGUF reader on arbitrary bytes: header, metadata, tensor table and data ranges. Any
//! input must give `Ok` or `Err`, never a panic, an out-of-bounds slice or a huge allocation;
//! for an accepted file every tensor's data range must lie inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quant::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = (file.version(), file.alignment(), file.data_offset());
    for (key, value) in file.metadata() {
        std::hint::black_box((key.len(), format!("{value:?}").len()));
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert!(bytes.len() as u64 <= file.file_len());
        std::hint::black_box((t.n_elements(), bytes.first()));
    }
});
