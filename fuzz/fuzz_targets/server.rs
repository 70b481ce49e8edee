//! The server's chat-completions request path on arbitrary bodies: JSON, model name, options,
//! roles, content parts and image URLs (data URLs decoded) to the library's prompt and options,
//! through the same function the handler calls (`server::chat_call`), without a socket. Any
//! body gives a call the library accepts or a 4xx error with OpenAI's error JSON, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pocketvl::server::chat_call;
use pocketvl::{ImageInput, Prompt};

fuzz_target!(|data: &[u8]| {
    // Both image-URL policies, and both "any model" and a named one.
    for (served, allow_local_files) in [("", false), ("tiny-mha", true)] {
        match chat_call(data, served, allow_local_files) {
            Ok(call) => {
                assert!(
                    call.opts.check().is_ok(),
                    "accepted options fail their check"
                );
                let Prompt::Chat(turns) = &call.prompt else {
                    panic!("the server builds chat prompts only")
                };
                assert_eq!(turns.len(), call.req.messages.len());
                for image in turns.iter().flat_map(|t| &t.images) {
                    if let ImageInput::Path(_) = image {
                        assert!(allow_local_files, "a local path accepted without the flag");
                    }
                }
            }
            Err(e) => {
                assert!(e.status().is_client_error(), "{e:?}");
                std::hint::black_box(e.body().to_string());
            }
        }
    }
});
